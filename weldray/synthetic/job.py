"""The generate job on Ray Data: plan (source, seed) tasks -> generator actor pool -> candidate images and
records -> quality gate -> accepted images in the class-folder layout.

Layout written under OUTPUT (local folder or s3:// prefix)::

    OUTPUT/<class folder>/<name>.jpg                       accepted images (ingestible as a dataset)
    OUTPUT/_synthetic/candidates/<class folder>/<name>.jpg  every generated image, accepted or not
    OUTPUT/_synthetic/records.parquet                       one row per task: lineage, parameters, verdict
    OUTPUT/_synthetic/summary.json, contact_sheet.png

Sources are the real rows the training of the same config trains on (``training.cv_fold``, ``training.holdout``
select them exactly as in training), so a CV fold's synthetic set never starts from its held-out photos.
Re-running with the same OUTPUT resumes: a task whose record is ok and whose candidate file exists is not
generated again (its key is (source, seed)).
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, replace
from itertools import chain, zip_longest
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from weldray import io as wio
from weldray.config import WeldrayConfig
from weldray.synthetic.base import GeneratorUnavailable, Task, generator_class
from weldray.synthetic.lineage import lora_lineage

log = logging.getLogger(__name__)

META_DIR = "_synthetic"
RECORD_COLUMNS = [
    "name", "label", "generator", "source", "seed", "source_ids", "params", "status", "reason", "candidate",
    "output", "accepted", "teacher_confidence", "nearest_real_distance", "gate_reason", "gen_ms",
]
THUMB = 192


@dataclass
class GenerateReport:
    output: str
    records_path: str
    summary: dict[str, Any]
    records: pd.DataFrame
    contact_sheet_path: str | None


def class_folders(cfg: WeldrayConfig) -> dict[str, str]:
    """label -> the first class folder that data.classes maps to it."""
    out: dict[str, str] = {}
    for folder, label in cfg.data.classes.items():
        out.setdefault(label, folder)
    return out


def _relpath(task: Task, folders: dict[str, str]) -> str:
    return f"{folders[task.label]}/{task.name}.jpg"


def _encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _record(task: Task, generator: str) -> dict[str, Any]:
    return {"name": task.name, "label": task.label, "generator": generator, "source": task.source,
            "seed": task.seed, "source_ids": json.dumps([task.source]), "params": "{}", "status": "", "reason": "",
            "candidate": "", "output": "", "accepted": False, "teacher_confidence": float("nan"),
            "nearest_real_distance": -1, "gate_reason": "", "gen_ms": 0.0}


class GenerateActor:
    """Ray Data actor: one generator per actor (a diffusion pipeline loads once), reused across batches."""

    def __init__(self, cfg: WeldrayConfig, sources: pd.DataFrame, output: str) -> None:
        self.cfg, self.output = cfg, output
        self.generator = generator_class(cfg.synthetic.generator)(cfg, sources)
        self.folders = class_folders(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        tasks = [Task(str(lbl), str(src), int(seed))
                 for lbl, src, seed in zip(batch["label"], batch["source"], batch["seed"], strict=True)]
        t0 = time.perf_counter()
        results = self.generator.generate(tasks)
        ms = (time.perf_counter() - t0) * 1000 / max(len(tasks), 1)
        rows = []
        for task, result in zip(tasks, results, strict=True):
            rec = _record(task, self.cfg.synthetic.generator)
            if isinstance(result, Exception):
                rec.update(status="reject", reason=f"{type(result).__name__}: {result}")
            else:
                uri = wio.join(self.output, META_DIR, "candidates", _relpath(task, self.folders))
                wio.write_bytes(uri, _encode_jpeg(result.image, self.cfg.synthetic.jpeg_quality),
                                self.cfg.data.s3_endpoint_url)
                rec.update(status="ok", candidate=uri, source_ids=json.dumps(result.source_ids),
                           params=json.dumps(result.params, default=float), gen_ms=ms)
            rows.append(rec)
        return {k: [r[k] for r in rows] for k in RECORD_COLUMNS}


def generate_loop(tasks: list[Task], rows: pd.DataFrame, output: str, cfg: WeldrayConfig) -> pd.DataFrame:
    """The actors' work (generate, encode, write, record) in one process without Ray: the benchmark's baseline."""
    actor = GenerateActor(cfg, rows, output)
    batch = {"label": np.array([t.label for t in tasks]), "source": np.array([t.source for t in tasks]),
             "seed": np.array([t.seed for t in tasks])}
    return pd.DataFrame(actor(batch), columns=RECORD_COLUMNS)


def source_rows(input_uri: str, cfg: WeldrayConfig) -> tuple[pd.DataFrame, str, str]:
    """(the train rows of this config, their description, the manifest path) for a folder, URI or manifest."""
    from weldray.data import load_manifest, resolve_dataset
    from weldray.training.data import split_rows

    manifest_path = resolve_dataset(replace(cfg, data=replace(cfg.data, root=input_uri)))
    splits = split_rows(load_manifest(manifest_path), cfg.training.cv_fold, cfg.training.holdout)
    return splits.train, splits.description, str(manifest_path)


def load_previous(output: str, endpoint_url: str | None) -> pd.DataFrame | None:
    """Earlier records whose candidate image still exists (what a resumed run keeps)."""
    path = wio.join(output, META_DIR, "records.parquet")
    if not wio.exists(path, endpoint_url):
        return None
    prev = pd.read_parquet(io.BytesIO(wio.read_bytes(path, endpoint_url)))
    if any(c not in prev.columns for c in RECORD_COLUMNS):
        log.warning("%s was written by another weldray version: every image is generated again", path)
        return None
    ok = prev[prev["status"] == "ok"]
    return ok[[wio.exists(u, endpoint_url) for u in ok["candidate"]]].reset_index(drop=True)


def generate(input_uri: str, output: str, cfg: WeldrayConfig, *, progress: bool = True) -> GenerateReport:
    """Run the whole job; see the module docstring for what lands where. Raises :class:`GeneratorUnavailable`
    (with the reason) when the generator cannot work on these sources."""
    import ray

    from weldray.ray_utils import PoolActors, collect_rows, init_ray, map_with_actor_pool, own_ray

    syn, endpoint = cfg.synthetic, cfg.data.s3_endpoint_url
    if syn.generator == "none":
        raise GeneratorUnavailable("synthetic.generator=none: choose copy_paste or sdxl_turbo")
    if syn.train_lora and wio.is_s3(output):
        raise ValueError(f"synthetic.train_lora writes the LoRA into OUTPUT/{META_DIR}/lora: OUTPUT must be a folder "
                         f"(local or shared by the cluster's nodes), not {output}")
    rows, description, manifest_path = source_rows(input_uri, cfg)
    gen_cls = generator_class(syn.generator)
    gen_cls.preflight(cfg)
    # A given LoRA that saw a held-out photo is refused here, before Ray starts; an own one is made from rows.
    lora = None if syn.train_lora else lora_lineage(cfg, rows)
    prev = load_previous(output, endpoint)
    new_rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with own_ray():
        if syn.train_lora:
            cfg, retrained = own_lora(cfg, rows, output)
            if retrained and prev is not None and not prev.empty:
                log.warning("generate: the LoRA was trained again, so all %d earlier images are made again", len(prev))
                prev = None
            lora = lora_lineage(cfg, rows)
        tasks = gen_cls.plan(cfg, rows)
        done = set() if prev is None else set(zip(prev["source"], prev["seed"].astype(int), strict=True))
        todo = [t for t in tasks if (t.source, t.seed) not in done]
        log.info("generate %s: %d tasks from %d source rows (%s), %d resumed", syn.generator, len(tasks), len(rows),
                 description, len(tasks) - len(todo))
        if todo:
            init_ray(cfg.ray, job_name="generate")
            ray.data.DataContext.get_current().enable_progress_bars = False

            def dataset(part: list[Task], actors: PoolActors) -> Any:
                ds = ray.data.from_items([{"label": t.label, "source": t.source, "seed": t.seed} for t in part],
                                         override_num_blocks=max(1, min(len(part), 4 * syn.concurrency)))
                return map_with_actor_pool(
                    ds, GenerateActor, syn.concurrency, actors,
                    fn_constructor_kwargs=dict(cfg=cfg, sources=rows, output=output),
                    batch_size=syn.batch_size,
                    num_cpus=syn.num_cpus_per_actor,
                    num_gpus=syn.num_gpus_per_actor,
                )

            new_rows = collect_rows(
                dataset, todo, lambda t: (t.source, t.seed), lambda row: (row["source"], int(row["seed"])),
                "generate", lambda row: f"{row['status']:6s} {row['name']}", progress=progress,
            )
    wall = time.perf_counter() - t0
    wio.remove_stray_temps(output, endpoint)  # after a lost actor: nothing writes any more
    new = pd.DataFrame(new_rows, columns=RECORD_COLUMNS).assign(resumed=False)
    keep = {(t.source, t.seed) for t in tasks}
    old = (prev[[(s, int(d)) in keep for s, d in zip(prev["source"], prev["seed"], strict=True)]].assign(resumed=True)
           if prev is not None else None)
    records = pd.concat([new, old], ignore_index=True) if old is not None and not old.empty else new
    records = records.sort_values(["label", "source", "seed"], ignore_index=True)
    records = apply_gate(records, rows, cfg, output)
    summary = _summary(records, cfg, rows, description, manifest_path, n_tasks=len(tasks), n_new=len(todo),
                       wall_s=wall, lora=lora)
    return _write(records, summary, output, cfg)


def own_lora(cfg: WeldrayConfig, rows: pd.DataFrame, output: str) -> tuple[WeldrayConfig, bool]:
    """``synthetic.train_lora``: the config generating with a LoRA fine-tuned on exactly ``rows`` (the job's
    sources) in ``OUTPUT/_synthetic/lora/``, and whether it was trained now (False: a resumed job's LoRA of the
    same settings and rows is kept). Trained in a Ray task that gets a GPU when the actors do
    (``synthetic.num_gpus_per_actor`` > 0): on a cluster the driver's node may have none."""
    import ray

    from weldray.ray_utils import init_ray
    from weldray.synthetic.lora import lora_matches, train_lora_on_rows

    syn = cfg.synthetic
    lora_dir = str(PurePosixPath(output) / META_DIR / "lora")
    trained = not lora_matches(lora_dir, syn, rows["relpath"].tolist())
    if trained:
        log.info("generate: fine-tuning a LoRA (rank %d, %d steps) on the %d source rows into %s",
                 syn.lora_rank, syn.lora_steps, len(rows), lora_dir)
        init_ray(cfg.ray, job_name="generate")
        task = ray.remote(train_lora_on_rows).options(
            name="train_lora", num_cpus=1, num_gpus=1 if syn.num_gpus_per_actor > 0 else 0, max_retries=0
        )
        ray.get(task.remote(rows, lora_dir, cfg))
    return replace(cfg, synthetic=replace(syn, train_lora=False, lora_path=lora_dir)), trained


def apply_gate(records: pd.DataFrame, rows: pd.DataFrame, cfg: WeldrayConfig, output: str) -> pd.DataFrame:
    """Judge every generated image and put exactly the accepted ones into OUTPUT's class folders."""
    from weldray.preprocessing import decode_image
    from weldray.synthetic.gate import Teacher, judge

    endpoint = cfg.data.s3_endpoint_url
    records = records.copy()
    ok = records.index[records["status"] == "ok"]
    teacher = None
    if len(ok) and cfg.synthetic.min_teacher_confidence > 0:
        log.info("gate: fitting the teacher on %d real train photos", len(rows))
        teacher = Teacher(cfg, rows)
        records.attrs["teacher"] = {"fitted_on": len(rows), "cv_balanced_accuracy": round(teacher.cv_accuracy, 4),
                                    "train_ids": teacher.train_ids, "backbone": cfg.model.backbone}
    folders = class_folders(cfg)
    for start in range(0, len(ok), 64):
        idx = ok[start : start + 64]
        data = [wio.read_bytes(u, endpoint) for u in records.loc[idx, "candidate"]]
        images = [np.asarray(decode_image(d)) for d in data]
        verdicts = judge(teacher, images, records.loc[idx, "label"].tolist(),
                         [json.loads(s) for s in records.loc[idx, "source_ids"]], rows, cfg)
        for i, raw, v in zip(idx, data, verdicts, strict=True):
            target = wio.join(output, folders[records.at[i, "label"]], f"{records.at[i, 'name']}.jpg")
            records.loc[i, ["accepted", "teacher_confidence", "nearest_real_distance", "gate_reason"]] = [
                v.accepted, v.teacher_confidence, v.nearest_real_distance, v.reason]
            if v.accepted:
                wio.write_bytes(target, raw, endpoint)
                records.at[i, "output"] = target
            elif wio.exists(target, endpoint):  # accepted by an earlier gate, not by this one
                _delete(target, endpoint)
    records["accepted"] = records["accepted"].astype(bool)
    return records


def _delete(uri: str, endpoint_url: str | None) -> None:
    fs, path = wio.filesystem(uri, endpoint_url)
    fs.delete_file(path)


def _summary(records: pd.DataFrame, cfg: WeldrayConfig, rows: pd.DataFrame, description: str, manifest_path: str,
             *, n_tasks: int, n_new: int, wall_s: float, lora: dict | None) -> dict[str, Any]:
    from weldray.synthetic.gate import acceptance

    rejects = records[records["status"] == "reject"]
    generated_now = int(((records["status"] == "ok") & ~records["resumed"]).sum())
    return {
        "generator": cfg.synthetic.generator,
        "manifest": manifest_path,
        "scope": description,
        "cv_fold": cfg.training.cv_fold,
        "holdout": cfg.training.holdout,
        # Lineage: every image's sources are among these rows (training checks it against its own rows).
        "source_rows": sorted(rows["relpath"]),
        "n_tasks": n_tasks,
        "n_generated": int((records["status"] == "ok").sum()),
        "n_resumed": int(records["resumed"].sum()),
        "n_rejects": len(rejects),
        "rejects": [{"name": r.name, "source": r.source, "reason": r.reason} for r in rejects.itertuples()],
        "n_accepted": int(records["accepted"].sum()),
        "acceptance": acceptance(records),
        "teacher": records.attrs.get("teacher"),
        # The LoRA's training photos: it influences every image (training checks them like the sources).
        "lora": lora,
        "min_teacher_confidence": cfg.synthetic.min_teacher_confidence,
        "generate_wall_s": round(wall_s, 2),
        "images_per_s": round(generated_now / wall_s, 3) if n_new and wall_s > 0 else None,
        "config": {k: v for k, v in vars(cfg.synthetic).items()},
    }


def _write(records: pd.DataFrame, summary: dict[str, Any], output: str, cfg: WeldrayConfig) -> GenerateReport:
    endpoint = cfg.data.s3_endpoint_url
    meta = wio.join(output, META_DIR)
    records_path = wio.join(meta, "records.parquet")
    buf = io.BytesIO()
    records.drop(columns=["resumed"]).to_parquet(buf, index=False)
    wio.write_bytes(records_path, buf.getvalue(), endpoint)
    sheet = contact_sheet(records, cfg.synthetic.contact_sheet_size, endpoint)
    sheet_path = None
    if sheet is not None:
        sheet_path = wio.join(meta, "contact_sheet.png")
        wio.write_bytes(sheet_path, sheet, endpoint)
    summary["contact_sheet"] = sheet_path
    wio.write_bytes(wio.join(meta, "summary.json"), json.dumps(summary, indent=2, default=str).encode(), endpoint)
    return GenerateReport(output, records_path, summary, records, sheet_path)


def sheet_rows(records: pd.DataFrame, n: int) -> list[Any]:
    """The records a contact sheet of ``n`` shows: accepted ones, then rejected ones (up to half the sheet, and
    each side fills what the other lacks), each alternating the classes and, within a class, one image per source
    photo before a second from any (a sheet of one photo's variants says little). A fixed order: reproducible."""
    ok = records[records["status"] == "ok"]
    sides = []
    for accepted in (True, False):
        part = ok[ok["accepted"] == accepted]
        by_class = [
            g.assign(_nth=g.groupby("source").cumcount()).sort_values("_nth", kind="stable").head(n).itertuples()
            for _, g in part.groupby("label")
        ]
        sides.append([r for r in chain.from_iterable(zip_longest(*by_class)) if r is not None])
    kept, dropped = sides
    n_dropped = min(len(dropped), n // 2)
    n_kept = min(len(kept), n - n_dropped)
    return kept[:n_kept] + dropped[: n - n_kept]


def contact_sheet(records: pd.DataFrame, n: int, endpoint_url: str | None = None) -> bytes | None:
    """PNG: accepted images (green caption) then rejected ones (red), both classes, pasted regions outlined."""
    from PIL import Image, ImageDraw

    from weldray.preprocessing import decode_image

    picks = sheet_rows(records, n)
    if not picks:
        return None
    cap, tiles = 30, []
    for r in picks:
        img = Image.fromarray(np.asarray(decode_image(wio.read_bytes(r.candidate, endpoint_url))))
        draw = ImageDraw.Draw(img)
        for p in json.loads(r.params).get("patches", []):
            draw.rectangle(p["box"], outline=(255, 220, 0), width=max(2, img.width // 160))
        img.thumbnail((THUMB, THUMB))
        tile = Image.new("RGB", (THUMB, THUMB + cap), "white")
        tile.paste(img, (0, cap))
        d = ImageDraw.Draw(tile)
        color = (0, 130, 0) if r.accepted else (200, 0, 0)
        why = "" if r.accepted else (" near-duplicate" if r.gate_reason.startswith("near") else " by teacher")
        d.text((3, 2), f"{'KEPT' if r.accepted else 'DROPPED'}{why}", fill=color)
        conf = "" if np.isnan(r.teacher_confidence) else f" p={r.teacher_confidence:.2f}"  # NaN: no teacher ran
        d.text((3, 15), f"{r.label}{conf} {PurePosixPath(r.source).stem}"[:34], fill=color)
        tiles.append(tile)
    cols = min(4, len(tiles))
    sheet = Image.new("RGB", (cols * (THUMB + 8), ((len(tiles) + cols - 1) // cols) * (THUMB + cap + 8)),
                      (230, 230, 230))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * (THUMB + 8) + 4, (i // cols) * (THUMB + cap + 8) + 4))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
