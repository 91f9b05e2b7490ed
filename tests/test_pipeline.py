"""Pipeline orchestration: run records, skipping up-to-date stages, re-running, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.data.helpers import write_dataset
from weldray.config import ConfigError, load_config
from weldray.config.pipeline import STAGES
from weldray.pipeline import PIPELINE, StageError, run_pipeline, split_args


def test_stage_order_is_the_documented_one() -> None:
    assert tuple(s.name for s in PIPELINE) == STAGES == (
        "clean", "ingest", "generate", "pretrain", "sweep", "train", "evaluate", "export"
    )
    assert load_config().pipeline.stages == [s for s in STAGES if s != "sweep"]  # the sweep is off by default


def test_split_args_turns_data_into_an_override() -> None:
    assert split_args(["../welds", "training.epochs=3"]) == ["training.epochs=3", "data.root=../welds"]
    assert split_args(["profile=quick_test"]) == ["profile=quick_test"]
    assert split_args([]) == []


def _overrides(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [f"data.root={data}", f"output_dir={tmp_path / 'out'}", "data.n_folds=2", "text_removal.enabled=false",
            "pipeline.stages=[clean,ingest]", *extra]


def test_records_stages_and_skips_what_is_up_to_date(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", 10)
    run_dir = run_pipeline(_overrides(tmp_path, data))
    assert run_dir == (tmp_path / "out" / "pipelines" / "ds-cpu").resolve()
    doc = json.loads((run_dir / "pipeline.json").read_text())
    assert doc["stages"]["clean"]["status"] == "skipped"
    assert "text_removal.enabled=false" in doc["stages"]["clean"]["note"]
    assert doc["stages"]["pretrain"]["status"] == "skipped"  # the DINO warm-up is off by default
    assert doc["stages"]["pretrain"]["note"] == "pipeline.pretrain=false"
    assert doc["stages"]["sweep"]["status"] == "skipped"  # the sweep stage too, until given a space
    assert doc["stages"]["sweep"]["note"] == "pipeline.sweep_space=null"
    ingest = doc["stages"]["ingest"]
    assert ingest["status"] == "done" and ingest["metrics"]["n_images"] == 20
    assert Path(ingest["outputs"]["manifest"]).is_file()

    # Same command again: nothing re-runs.
    run_pipeline(_overrides(tmp_path, data))
    again = json.loads((run_dir / "pipeline.json").read_text())["stages"]["ingest"]
    assert again["started"] == ingest["started"] and again["key"] == ingest["key"]

    # A config change that affects the stage re-runs it.
    run_pipeline(_overrides(tmp_path, data, "data.near_duplicate_distance=4"))
    changed = json.loads((run_dir / "pipeline.json").read_text())["stages"]["ingest"]
    assert changed["key"] != ingest["key"]

    # Deleted outputs re-run too.
    Path(changed["outputs"]["manifest"]).unlink()
    run_pipeline(_overrides(tmp_path, data, "data.near_duplicate_distance=4"))
    assert Path(changed["outputs"]["manifest"]).is_file()


def test_pretrain_stage_feeds_its_weights_to_train_and_takes_the_synthetic_images(tmp_path: Path) -> None:
    from weldray.pipeline import PipelineRun, StageRecord, _pretrain_config, _stage_key, _train_config

    def run_for(*overrides: str) -> PipelineRun:
        return PipelineRun(list(overrides), load_config(list(overrides)), tmp_path)

    stage = next(s for s in PIPELINE if s.name == "pretrain")
    # Off: its keys do not change what train depends on; on: they do.
    assert _stage_key(stage, run_for("pretrain.epochs=3"), []) == _stage_key(stage, run_for(), [])
    assert _stage_key(stage, run_for("pipeline.pretrain=true", "pretrain.epochs=3"), []) != _stage_key(
        stage, run_for("pipeline.pretrain=true"), [])

    run = run_for("pipeline.pretrain=true", "profile=quick_test")
    run.records["ingest"] = StageRecord("ingest", "done", outputs={"manifest": str(tmp_path / "manifest.parquet")})
    run.records["generate"] = StageRecord("generate", "done", outputs={"synthetic_data": str(tmp_path / "generate")})
    assert _pretrain_config(run).pretrain.synthetic_data == str(tmp_path / "generate")
    assert _train_config(run).model.weights is None
    run.records["pretrain"] = StageRecord("pretrain", "done", outputs={"backbone": str(tmp_path / "b.safetensors")})
    train = _train_config(run)
    assert train.model.weights == str(tmp_path / "b.safetensors") and train.model.pretrained  # quick_test: false


def test_a_stage_cannot_run_before_its_inputs_exist(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", 10)
    with pytest.raises(StageError, match="ingest"):
        run_pipeline(_overrides(tmp_path, data, "pipeline.stages=[train]"))


def test_failed_stage_is_recorded_with_how_to_rerun(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "good_welds").mkdir(parents=True)
    (empty / "bad_welds").mkdir()
    with pytest.raises(StageError, match=r"pipeline.stages=\[ingest,generate,pretrain,train,evaluate,export\]"):
        run_pipeline(_overrides(tmp_path, empty))
    doc = json.loads((tmp_path / "out" / "pipelines" / "empty-cpu" / "pipeline.json").read_text())
    assert doc["stages"]["ingest"]["status"] == "failed"
    assert "no files" in doc["stages"]["ingest"]["note"]


@pytest.mark.ray
def test_generate_stage_makes_one_set_per_training_and_is_cached(tmp_path: Path) -> None:
    from tests.synthetic.helpers import write_labelled_dataset

    data = write_labelled_dataset(tmp_path / "ds", 8)
    tiny = ["profile=quick_test", "model.backbone=test_efficientnet", "model.pretrained=false",
            "model.image_size=64", "synthetic.n_per_class=3", "synthetic.concurrency=1",
            "synthetic.min_teacher_confidence=0", "pipeline.cv_folds=[1]"]
    overrides = _overrides(tmp_path, data, "pipeline.stages=[clean,ingest,generate]", *tiny)

    run_dir = run_pipeline([*overrides, "training.mix_real_ratio=1.0"])
    stage = json.loads((run_dir / "pipeline.json").read_text())["stages"]["generate"]
    assert stage["status"] == "skipped" and "mix_real_ratio=1.0" in stage["note"]

    run_pipeline([*overrides, "training.mix_real_ratio=0.5"])
    stage = json.loads((run_dir / "pipeline.json").read_text())["stages"]["generate"]
    assert stage["status"] == "done"
    out = Path(stage["outputs"]["synthetic_data"])
    fold1 = json.loads((out / "fold1" / "_synthetic" / "summary.json").read_text())
    final = json.loads((out / "all" / "_synthetic" / "summary.json").read_text())
    manifest = pd.read_parquet(run_dir / "dataset" / "manifest.parquet")
    assert set(fold1["source_rows"]) == set(manifest.loc[manifest["fold"] != 1, "relpath"])
    assert set(final["source_rows"]) == set(manifest["relpath"])
    assert {"fold1.bad_weld.acceptance_rate", "all.good_weld.acceptance_rate"} <= set(stage["metrics"])

    run_pipeline([*overrides, "training.mix_real_ratio=0.5"])  # unchanged inputs: not generated again
    again = json.loads((run_dir / "pipeline.json").read_text())["stages"]["generate"]
    assert again["started"] == stage["started"]
    none = run_pipeline([*overrides, "training.mix_real_ratio=0.5", "synthetic.generator=none",
                         "training.synthetic_data=elsewhere"])
    stage = json.loads((none / "pipeline.json").read_text())["stages"]["generate"]
    assert stage["status"] == "skipped" and stage["note"] == "synthetic.generator=none"


def test_sweep_stage_runs_the_space_on_the_ingested_data_and_train_takes_best_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring, with only the search replaced: the stage validates the space with this command's overrides,
    writes best.yaml as a sweep does (the space's fixed overrides, this command's, then the chosen values), is
    cached like the other stages, and the train stage's config takes best.yaml's overrides."""
    import yaml

    from weldray.pipeline import _load_records, _train_config
    from weldray.sweep.results import write_best
    from weldray.sweep.run import sweep_dir_for
    from weldray.sweep.space import load_space

    calls = []

    def search_free_sweep(space: str, data: str, overrides: list[str], *, root: Path) -> Path:
        calls.append({"space": space, "data": data, "overrides": list(overrides), "root": root})
        study = load_space(space, overrides)
        sweep_dir = sweep_dir_for(study, root)
        sweep_dir.mkdir(parents=True)
        chosen = study.trial_overrides({"training.lr": 0.00123, "model.margin": 0.33})
        write_best(sweep_dir, study, {"sweep": study.name, "chosen": "trial-abc", "reason": "test",
                                      "overrides": chosen, "data": data})
        return sweep_dir

    monkeypatch.setattr("weldray.sweep.driver.run_sweep", search_free_sweep)
    data = write_dataset(tmp_path / "ds", 10)
    overrides = _overrides(tmp_path, data, "pipeline.stages=[ingest,sweep]", "pipeline.sweep_space=smoke",
                           "pipeline.sweep_overrides=['sweep.num_samples=2']", "training.epochs=3")
    run_dir = run_pipeline(overrides)
    doc = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    swept, manifest = doc["sweep"], doc["ingest"]["outputs"]["manifest"]
    assert swept["status"] == "done" and swept["metrics"]["chosen"] == "trial-abc"
    [call] = calls
    assert Path(call["space"]).name == "smoke.yaml" and call["data"] == manifest
    assert call["root"] == run_dir / "sweeps" and Path(swept["outputs"]["sweep_dir"]).parent == run_dir / "sweeps"
    # The sweep's settings, then the trials' fixed overrides: this command's, less its data, folders and
    # pipeline keys (the sweep sets those itself).
    assert call["overrides"][:2] == [f"sweep.name={Path(swept['outputs']['sweep_dir']).name}", "sweep.num_samples=2"]
    assert "training.epochs=3" in call["overrides"] and "data.n_folds=2" in call["overrides"]
    assert not [o for o in call["overrides"] if o.startswith(("data.root", "output_dir", "pipeline."))]

    # Unchanged inputs: the stage is up to date, not swept again; a changed recipe sweeps again.
    run_pipeline(overrides)
    assert len(calls) == 1
    assert json.loads((run_dir / "pipeline.json").read_text())["stages"]["sweep"]["started"] == swept["started"]

    # The train stage's config: best.yaml's overrides over this command's (which best.yaml holds too).
    best = yaml.safe_load(Path(swept["outputs"]["best"]).read_text())
    assert best["overrides"][-2:] == ["training.lr=0.00123", "model.margin=0.33"]
    from weldray.pipeline import PipelineRun

    run = PipelineRun(overrides, load_config(overrides), run_dir, records=_load_records(run_dir))
    train = _train_config(run)
    assert (train.training.lr, train.model.margin) == (0.00123, 0.33)
    assert train.profile == "quick_test" and train.training.epochs == 3  # the space's fixed, then the user's
    assert train.data.root == manifest and train.output_dir == str(run_dir)

    run_pipeline([*overrides, "training.epochs=2"])
    assert len(calls) == 2 and calls[1]["overrides"][0] != calls[0]["overrides"][0]  # a new sweep folder


def test_sweep_stage_space_is_validated_before_any_stage_runs(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", 10)
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  training.no_such_key: {type: float, low: 0.1, high: 0.2}\n")
    cases = {
        "missing": ("pipeline.sweep_space=no_such_space", "no_such_space.*not found"),
        "invalid": (f"pipeline.sweep_space={bad}", "training.no_such_key: unknown config key"),
        # smoke searches training.lr: this command cannot also fix it.
        "conflict": ("pipeline.sweep_space=smoke", "training.lr: searched by this space and also fixed"),
    }
    for name, (space, reason) in cases.items():
        extra = ["training.lr=0.01"] if name == "conflict" else []
        with pytest.raises(ConfigError, match=rf"^pipeline.sweep_space: .*{reason}"):
            run_pipeline(_overrides(tmp_path, data, "pipeline.stages=[ingest,sweep,train]", space, *extra))
        run_dir = tmp_path / "out" / "pipelines" / "ds-cpu"
        assert not (run_dir / "pipeline.json").exists() and not (run_dir / "dataset").exists(), name
    with pytest.raises(ConfigError, match="^pipeline.sweep_space: the sweep stage needs a space file"):
        load_config(["pipeline.stages=[ingest,sweep,train]"])
    with pytest.raises(ConfigError, match="^pipeline.sweep_overrides: .*'training.lr=0.1'"):
        load_config(["pipeline.sweep_overrides=['training.lr=0.1']"])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(1800)
def test_pipeline_with_the_smoke_sweep_trains_the_chosen_configuration(procedural_dir: Path, tmp_path: Path) -> None:
    """The real thing: smoke.yaml's search and confirmation on the ingested procedural photos, then train with
    best.yaml's recipe; a re-run has nothing to do."""
    import yaml
    from omegaconf import OmegaConf

    from weldray.config import WeldrayConfig
    from weldray.training.cv import recipe_fingerprint

    overrides = [f"data.root={procedural_dir}", f"output_dir={tmp_path}", "text_removal.enabled=false",
                 "pipeline.stages=[clean,ingest,sweep,train]", "pipeline.sweep_space=smoke", "training.holdout=true"]
    run_dir = run_pipeline(overrides)
    stages = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert stages["sweep"]["status"] == stages["train"]["status"] == "done"
    sweep_dir = Path(stages["sweep"]["outputs"]["sweep_dir"])
    assert sweep_dir.parent == run_dir / "sweeps" and (sweep_dir / "trials.parquet").is_file()
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["data"] == stages["ingest"]["outputs"]["manifest"]
    chosen = load_config([*best["overrides"], f"data.root={best['data']}"])
    config_yaml = Path(stages["train"]["outputs"]["run_dir"]) / "config.yaml"
    written = OmegaConf.create(yaml.safe_load(config_yaml.read_text()))
    trained = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WeldrayConfig), written))
    assert recipe_fingerprint(trained) == recipe_fingerprint(chosen)  # what train ran is what best.yaml says
    assert trained.profile == "quick_test"  # smoke.yaml's fixed overrides reached the train stage

    run_pipeline(overrides)
    again = json.loads((run_dir / "pipeline.json").read_text())["stages"]
    assert again["sweep"]["started"] == stages["sweep"]["started"]
    assert again["train"]["started"] == stages["train"]["started"]
