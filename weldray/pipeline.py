"""The end-to-end pipeline: clean -> ingest -> generate -> [pretrain] -> [sweep] -> train -> evaluate -> export.

Each stage's inputs, outputs, metrics and timing are recorded in ``RUN_DIR/pipeline.json``.
A stage whose input key (its config slice plus the keys of the stages before it) is unchanged
and whose outputs still exist is skipped, so re-running the same command resumes a run, and a
failed stage can be re-run alone with ``pipeline.stages=[train]``.

The same code runs under ``python jobs/pipeline.py`` (private local Ray) and under
``ray job submit`` (joins the cluster through ``$RAY_ADDRESS``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from weldray import io
from weldray.config import ConfigError, WeldrayConfig, load_config
from weldray.config.pipeline import STAGES

log = logging.getLogger(__name__)

RUN_FILE = "pipeline.json"


class StageError(RuntimeError):
    """A stage failed; the run file records it and says how to re-run it."""


@dataclass
class StageRecord:
    name: str
    status: str  # "done" | "skipped" | "failed"
    key: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    duration_s: float = 0.0
    driver_node_id: str = ""
    note: str = ""


@dataclass
class PipelineRun:
    """State shared by the stages: the overrides the user gave, the run folder and the records."""

    overrides: list[str]
    cfg: WeldrayConfig
    run_dir: Path
    records: dict[str, StageRecord] = field(default_factory=dict)

    def stage_config(self, *extra: str) -> WeldrayConfig:
        """The user's config recomposed with stage-specific overrides (keeps interpolations right)."""
        return load_config([*self.overrides, *extra])

    def output(self, stage: str, name: str) -> str:
        record = self.records.get(stage)
        if record is None or name not in record.outputs:
            raise StageError(f"stage {stage!r} has no output {name!r} yet; run it first (pipeline.stages=[{stage}])")
        return record.outputs[name]

    def save(self) -> None:
        doc = {
            "run_dir": str(self.run_dir),
            "config_fingerprint": self.cfg.fingerprint(),
            "overrides": self.overrides,
            "updated": _now(),
            "stages": {name: asdict(r) for name, r in self.records.items()},
        }
        io.write_bytes(str(self.run_dir / RUN_FILE), json.dumps(doc, indent=2, default=str).encode())


@dataclass(frozen=True)
class Stage:
    name: str
    # Config slice (and upstream stages) that decide whether a recorded result is still valid.
    key_inputs: Callable[[PipelineRun], dict[str, Any]]
    run: Callable[[PipelineRun], tuple[dict[str, str], dict[str, Any]]]
    # Returns a reason to skip (e.g. disabled in config) or None.
    skip_reason: Callable[[PipelineRun], str | None] = lambda run: None
    # Checks on the driver, before any stage runs, that raise what would otherwise fail the stage later:
    # missing weights, a missing data root (errors that no retry can fix).
    preflight: Callable[[PipelineRun], None] = lambda run: None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _source_images(run: PipelineRun) -> str:
    """The raw image folder: data.root, or the procedural sample generated on first use."""
    root = run.cfg.data.root
    if root is not None:
        return root
    from weldray.data.procedural import ProceduralSpec, generate_dataset

    p = run.cfg.data.procedural
    spec = ProceduralSpec(n_per_class=p.n_per_class, image_size=p.image_size, text_fraction=p.text_fraction,
                          seed=p.seed)
    return str(generate_dataset(p.out_dir, spec, progress=True))


def _is_manifest(root: str | None) -> bool:
    if not root:
        return False
    return root.endswith(".parquet") or (not io.is_s3(root) and (Path(root) / "manifest.parquet").is_file())


# --- clean -------------------------------------------------------------------------------------------

def _clean_skip(run: PipelineRun) -> str | None:
    if _is_manifest(run.cfg.data.root):
        return "data.root is a manifest of already prepared images"
    if not run.cfg.text_removal.enabled:
        return "text_removal.enabled=false"
    return None


def _clean_preflight(run: PipelineRun) -> None:
    from weldray.text_removal.pipeline import preflight

    root = run.cfg.data.root
    if root is not None and not io.is_s3(root) and not Path(root).exists():
        raise FileNotFoundError(f"data.root={root}: no such folder or file")
    preflight(run.cfg.text_removal)


def _clean(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    from weldray.text_removal.pipeline import clean_dataset

    out = str(run.run_dir / "clean")
    report = clean_dataset(_source_images(run), out, run.cfg, progress=True)
    metrics = {k: v for k, v in report.summary.items() if isinstance(v, (int, float, str))}
    return {"images": out, "records": report.records_path, "audit": report.audit_path}, metrics


# --- ingest ------------------------------------------------------------------------------------------

def _ingest(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    from weldray.data import ingest, manifest_sha256

    if _is_manifest(run.cfg.data.root):
        from weldray.data import resolve_dataset

        manifest = resolve_dataset(run.cfg)
        return {"manifest": str(manifest), "manifest_sha256": manifest_sha256(manifest)}, {}
    clean = run.records.get("clean")
    images = clean.outputs["images"] if clean and clean.status == "done" else _source_images(run)
    cfg = run.stage_config(f"data.manifest_dir={run.run_dir / 'dataset'}")
    result = ingest(images, cfg, progress=True)
    metrics = {"n_images": result.n_images, "n_rejects": len(result.rejects),
               "near_duplicate_groups": len(result.near_duplicate_groups),
               "label_conflicts": len(result.label_conflicts), **{f"n_{k}": v for k, v in result.per_label.items()}}
    return {"manifest": str(result.manifest_path), "manifest_sha256": manifest_sha256(result.manifest_path),
            "split_report": str(result.manifest_dir / "split_report.md")}, metrics


# --- generate ----------------------------------------------------------------------------------------

def _generate_skip(run: PipelineRun) -> str | None:
    if run.cfg.synthetic.generator == "none":
        return "synthetic.generator=none"
    if run.cfg.training.mix_real_ratio >= 1:
        return "training.mix_real_ratio=1.0: training uses real photos only"
    if run.cfg.training.synthetic_data is not None:
        return f"training.synthetic_data={run.cfg.training.synthetic_data} is given"
    return None


def _generate_preflight(run: PipelineRun) -> None:
    from weldray.synthetic.base import generator_class

    generator_class(run.cfg.synthetic.generator).preflight(run.cfg)


def _generate(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    """One synthetic set per training the train stage runs (each CV fold, then the final fit), each made from
    and gated on that training's own rows only: ``generate/<scope>/`` (weldray.synthetic.lineage)."""
    from dataclasses import replace

    from weldray.synthetic.job import generate
    from weldray.synthetic.lineage import scope_name

    cfg = _train_config(run)
    out = run.run_dir / "generate"
    folds = [] if cfg.training.holdout else (cfg.pipeline.cv_folds or list(range(cfg.data.n_folds)))
    metrics: dict[str, Any] = {}
    for fold in [*folds, None]:
        scoped = replace(cfg, training=replace(cfg.training, cv_fold=fold))
        scope = scope_name(scoped.training)
        summary = generate(run.output("ingest", "manifest"), str(out / scope), scoped, progress=True).summary
        for label, a in summary["acceptance"].items():
            metrics[f"{scope}.{label}.accepted"] = a["accepted"]
            metrics[f"{scope}.{label}.acceptance_rate"] = a["acceptance_rate"]
    return {"synthetic_data": str(out)}, metrics


# --- pretrain ----------------------------------------------------------------------------------------

def _pretrain_skip(run: PipelineRun) -> str | None:
    return None if run.cfg.pipeline.pretrain else "pipeline.pretrain=false"


def _pretrain_key(run: PipelineRun) -> dict[str, Any]:
    """What the warm-up depends on; a constant while it is off, so its keys do not invalidate train."""
    if not run.cfg.pipeline.pretrain:
        return {"pretrain": False}
    return {**_slice(run.cfg, "pretrain", "model", "seed"), "holdout": run.cfg.training.holdout}


def _pretrain_config(run: PipelineRun) -> WeldrayConfig:
    """The cleaned photos of ingest, plus the generate stage's synthetic images when it made them."""
    extra = [f"output_dir={run.run_dir}"]
    generated = run.records.get("generate")
    if run.cfg.pretrain.synthetic_data is None and generated is not None and generated.status == "done":
        extra.append(f"pretrain.synthetic_data={generated.outputs['synthetic_data']}")
    return run.stage_config(f"data.root={run.output('ingest', 'manifest')}", *extra)


def _pretrain_preflight(run: PipelineRun) -> None:
    from weldray.pretrain import preflight

    preflight(run.cfg)  # lightly, start weights, view sizes, extra folders


def _pretrain(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    """The DINO warm-up on every photo the final fit trains on. The train stage's cross-validation folds then
    start from a backbone that saw their held-out photos (unlabelled): its figures measure the shipped
    workflow, not a warm-up that never saw them (`weldray pretrain DATA training.cv_fold=k` does that)."""
    from weldray.pretrain import pretrain
    from weldray.pretrain.trainer import WEIGHTS_FILE

    run_dir = Path(pretrain(_pretrain_config(run)))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"run_dir": str(run_dir), "backbone": str(run_dir / WEIGHTS_FILE)}, _scalars(metrics)


# --- sweep -------------------------------------------------------------------------------------------

#: The user's overrides a sweep does not take: its data and folder are the stage's, pipeline.* are not trial
#: settings, and the keys the sweep sets itself (weldray.sweep.space.RESERVED) would be refused.
_NOT_SWEPT = ("data.root", "output_dir", "pipeline.", "training.run_name", "training.cv_fold", "training.holdout")


def _sweep_skip(run: PipelineRun) -> str | None:
    return None if run.cfg.pipeline.sweep_space else "pipeline.sweep_space=null"


def _sweep_space(run: PipelineRun) -> Path:
    from weldray.sweep.space import resolve_space

    try:
        return resolve_space(str(run.cfg.pipeline.sweep_space))
    except FileNotFoundError as exc:
        raise ConfigError("pipeline.sweep_space", str(exc)) from None


def _sweep_key(run: PipelineRun) -> dict[str, Any]:
    """The space file's text, the sweep's settings and the recipe the trials start from; a constant while
    the stage is off, so that turning it off or on re-runs train."""
    if not run.cfg.pipeline.sweep_space:
        return {"sweep": None}
    return {"space": _sweep_space(run).read_text(), "sweep_overrides": run.cfg.pipeline.sweep_overrides,
            **_slice(run.cfg, "model", "training", "seed")}


def _sweep_overrides(run: PipelineRun, *extra: str) -> list[str]:
    """The sweep's settings, then the trials' fixed overrides: this command's own (the trials tune the recipe
    train will use) and ``extra`` (what the train stage adds: the warm-up's weights)."""
    fixed = [o for o in run.overrides if not o.lstrip("+~").startswith(_NOT_SWEPT)]
    return [*run.cfg.pipeline.sweep_overrides, *fixed, *extra]


def _sweep_preflight(run: PipelineRun) -> None:
    """The space validates with this command's overrides, as ``weldray sweep`` checks it, before any stage."""
    from weldray.sweep.space import load_space

    if _generate_skip(run) is None:
        raise ConfigError(
            "pipeline.sweep_space",
            "the sweep stage does not take the generate stage's synthetic images (its trials and confirmation "
            "folds train on other rows than the sets generate makes): set training.mix_real_ratio=1.0",
        )
    try:
        load_space(_sweep_space(run), _sweep_overrides(run))
    except ConfigError as exc:
        raise ConfigError("pipeline.sweep_space", str(exc)) from None


def _sweep(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    """``weldray sweep`` of the space on the ingested data (under ``RUN_DIR/sweeps/``); train then takes the
    overrides of its ``best.yaml`` (the space's default when no candidate beat it). The sweep is named after
    its inputs, so a re-run after a failure continues it and changed inputs start a new one."""
    from weldray.sweep.driver import run_sweep
    from weldray.sweep.results import read_best

    manifest = run.output("ingest", "manifest")
    space = _sweep_space(run)
    overrides = _sweep_overrides(run, *_warm_start(run))
    digest = hashlib.sha256(
        json.dumps([space.read_text(), overrides, run.output("ingest", "manifest_sha256")]).encode()
    ).hexdigest()[:8]
    sweep_dir = run_sweep(str(space), manifest, [f"sweep.name={space.stem}-{digest}", *overrides],
                          root=run.run_dir / "sweeps")
    best = read_best(sweep_dir)
    metrics = {"chosen": best["chosen"], "reason": best["reason"], **_scalars(best.get("cv", {}), "cv.")}
    return {"sweep_dir": str(sweep_dir), "best": str(sweep_dir / "best.yaml")}, metrics


def _best_overrides(run: PipelineRun) -> list[str]:
    """The sweep stage's chosen overrides, when it ran."""
    from weldray.sweep.results import read_best

    swept = run.records.get("sweep")
    if swept is None or swept.status != "done":
        return []
    return list(read_best(swept.outputs["sweep_dir"])["overrides"])


# --- train / evaluate / export -----------------------------------------------------------------------

def _warm_start(run: PipelineRun) -> list[str]:
    """The pretrain stage's backbone, when it ran."""
    warmed = run.records.get("pretrain")
    if warmed is None or warmed.status != "done":
        return []
    return ["model.pretrained=true", f"model.weights={warmed.outputs['backbone']}"]


def _train_config(run: PipelineRun) -> WeldrayConfig:
    """This command's config on the ingested data, with the generate stage's images, the warm-up's weights and,
    last, the sweep's chosen overrides (which hold this command's own, so the user's settings still apply)."""
    extra = [f"output_dir={run.run_dir}"]
    generated = run.records.get("generate")
    if generated is not None and generated.status == "done":
        extra.append(f"training.synthetic_data={generated.outputs['synthetic_data']}")
    extra += _warm_start(run)
    return run.stage_config(f"data.root={run.output('ingest', 'manifest')}", *extra, *_best_overrides(run))


def _train_preflight(run: PipelineRun) -> None:
    from weldray.training.trainer import initial_model

    initial_model(run.cfg, run.cfg.data.labels)  # resolves and loads the pretrained weights


def _train(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    """Cross-validation of the recipe (``pipeline.cv_folds``), then the final fit on every labelled row,
    which takes its temperature and figures from the out-of-fold predictions; with ``training.holdout``
    one run on the manifest's train split instead."""
    from weldray.training import cross_validate, train

    cfg = _train_config(run)
    outputs: dict[str, str] = {}
    if not cfg.training.holdout:
        outputs["cv_summary"] = cross_validate(cfg, cfg.pipeline.cv_folds)["path"]
    run_dir = Path(train(cfg))
    metrics_file = run_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {"run_dir": str(run_dir), "checkpoint": str(run_dir / "model.pt"), **outputs}, _scalars(metrics)


def _evaluate(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    """The final fit's report is its cross-validation's out-of-fold report (it trained on every row);
    a holdout run is evaluated on its held-out test rows."""
    from weldray.evaluation import evaluate

    if "cv_summary" in run.records["train"].outputs:
        report = Path(json.loads(Path(run.output("train", "cv_summary")).read_text())["report"])
    else:
        report = Path(evaluate(Path(run.output("train", "run_dir")), _train_config(run)))
    link = run.run_dir / "report"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(report.parent.resolve(), target_is_directory=True)
    metrics_file = report.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {"report": str(report)}, _scalars(metrics)


def _export(run: PipelineRun) -> tuple[dict[str, str], dict[str, Any]]:
    from weldray.export.pipeline import export_checkpoint

    output = run.run_dir / "model" / "weld_classifier.onnx"
    manifest = run.output("ingest", "manifest")
    # The run's own manifest holds its real photos: parity and INT8 checks on them, unless the user chose others.
    check = [] if run.cfg.export.check_images else [f"export.check_images={manifest}"]
    cfg = run.stage_config(f"data.root={manifest}", f"export.output={output}", *check)
    result = export_checkpoint(run.output("train", "checkpoint"), cfg)
    return {"model": str(result.path), **result.artefacts}, _scalars(result.report)


def _scalars(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested metrics to dotted scalar keys for the run file."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float, str, bool)):
            out[f"{prefix}{k}"] = v
    return out


def _slice(cfg: WeldrayConfig, *names: str) -> dict[str, Any]:
    """The named top-level config entries, as plain data for a stage key."""
    return {n: (asdict(v) if is_dataclass(v := getattr(cfg, n)) else v) for n in names}


PIPELINE: tuple[Stage, ...] = (
    Stage("clean", lambda r: {"source": r.cfg.data.root, "procedural": asdict(r.cfg.data.procedural),
                              **_slice(r.cfg, "text_removal")}, _clean, _clean_skip, _clean_preflight),
    Stage("ingest", lambda r: _slice(r.cfg, "data"), _ingest),
    Stage("generate", lambda r: {**_slice(r.cfg, "synthetic", "model", "seed"), "cv_folds": r.cfg.pipeline.cv_folds,
                                 "holdout": r.cfg.training.holdout}, _generate, _generate_skip, _generate_preflight),
    Stage("pretrain", _pretrain_key, _pretrain, _pretrain_skip, _pretrain_preflight),
    Stage("sweep", _sweep_key, _sweep, _sweep_skip, _sweep_preflight),
    Stage("train", lambda r: {**_slice(r.cfg, "model", "training", "seed"), "cv_folds": r.cfg.pipeline.cv_folds},
          _train, preflight=_train_preflight),
    Stage("evaluate", lambda r: {"tta": r.cfg.training.tta}, _evaluate),
    Stage("export", lambda r: _slice(r.cfg, "export"), _export),
)


def default_run_name(cfg: WeldrayConfig) -> str:
    root = cfg.data.root
    name = "procedural" if root is None else root.rstrip("/").rsplit("/", 1)[-1].removesuffix(".parquet") or "data"
    return f"{name}-{cfg.profile}"


def _stage_key(stage: Stage, run: PipelineRun, upstream: list[str]) -> str:
    blob = json.dumps({"inputs": stage.key_inputs(run), "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _outputs_exist(record: StageRecord) -> bool:
    return all(io.exists(v) for k, v in record.outputs.items() if k != "manifest_sha256")


def run_pipeline(overrides: Sequence[str] = ()) -> Path:
    """Run the configured stages in order and return the run directory."""
    from rich.console import Console

    console = Console(stderr=True)
    overrides = list(overrides)
    cfg = load_config(overrides)
    run_dir = Path(cfg.output_dir) / "pipelines" / (cfg.pipeline.run_name or default_run_name(cfg))
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run = PipelineRun(overrides=overrides, cfg=cfg, run_dir=run_dir)
    previous = _load_records(run_dir)
    console.rule(f"weldray pipeline → {run_dir}")
    for stage in PIPELINE:
        if stage.name in cfg.pipeline.stages and not stage.skip_reason(run):
            stage.preflight(run)
    upstream: list[str] = []
    for stage in PIPELINE:
        key = _stage_key(stage, run, upstream)
        old = previous.get(stage.name)
        selected = stage.name in cfg.pipeline.stages
        reason = stage.skip_reason(run)
        if not selected and not reason:
            later = any(s in cfg.pipeline.stages for s in STAGES[STAGES.index(stage.name) + 1 :])
            if later and (old is None or old.status != "done"):
                raise StageError(
                    f"stage {stage.name!r} has not completed in {run_dir}; add it to pipeline.stages"
                )
            if old is not None:
                run.records[stage.name] = old
            upstream.append(old.key if old else "")
            continue
        if reason:
            run.records[stage.name] = StageRecord(stage.name, "skipped", key=key, note=reason, started=_now())
            console.print(f"[yellow]- {stage.name}: skipped ({reason})")
        elif old and old.status == "done" and old.key == key and not cfg.pipeline.force and _outputs_exist(old):
            run.records[stage.name] = old
            console.print(f"[green]✓ {stage.name}: up to date (recorded {old.started})")
        else:
            console.print(f"[bold]▶ {stage.name}")
            node_id = _driver_node_id(cfg)
            started, t0 = _now(), time.perf_counter()
            try:
                outputs, metrics = stage.run(run)
            except Exception as exc:
                run.records[stage.name] = StageRecord(
                    stage.name, "failed", key=key, started=started, duration_s=round(time.perf_counter() - t0, 2),
                    driver_node_id=node_id, note="".join(traceback.format_exception_only(type(exc), exc)).strip(),
                )
                run.save()
                raise StageError(
                    f"stage {stage.name!r} failed: {exc}\nfix the cause and run the same command again (a Ray job: "
                    f"submit it again with pipeline.run_name={run_dir.name}): it resumes after the stages that "
                    f"completed; or re-run from this stage with pipeline.stages="
                    f"[{','.join(_rerun_stages(stage.name, cfg))}] (run dir {run_dir})"
                ) from exc
            run.records[stage.name] = StageRecord(
                stage.name, "done", key=key, outputs=outputs, metrics=metrics, started=started,
                duration_s=round(time.perf_counter() - t0, 2), driver_node_id=node_id,
            )
            console.print(f"[green]✓ {stage.name}[/] {run.records[stage.name].duration_s:.1f}s")
        upstream.append(run.records[stage.name].key)
        run.save()
    return run_dir


def _rerun_stages(failed: str, cfg: WeldrayConfig) -> list[str]:
    """The failed stage and those after it, the optional sweep only when this run selected it."""
    return [s for s in STAGES[STAGES.index(failed) :] if s != "sweep" or s in cfg.pipeline.stages]


def _driver_node_id(cfg: WeldrayConfig) -> str:
    """Join/start Ray only when a stage actually runs (a fully up-to-date run needs no cluster)."""
    import ray

    from weldray.ray_utils import init_ray

    init_ray(cfg.ray, job_name="pipeline")
    return ray.get_runtime_context().get_node_id()


def _load_records(run_dir: Path) -> dict[str, StageRecord]:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    known = {f.name for f in fields(StageRecord)}
    # Records from other weldray versions: keep what is understood, so an old run still resumes.
    return {name: StageRecord(**{k: v for k, v in rec.items() if k in known})
            for name, rec in doc.get("stages", {}).items()}


def split_args(args: Sequence[str]) -> list[str]:
    """``[DATA] [key=value ...]`` -> Hydra overrides (DATA becomes ``data.root=DATA``)."""
    args = list(args)
    if args and "=" not in args[0] and not args[0].startswith("~"):
        return [*args[1:], f"data.root={args[0]}"]
    return args
