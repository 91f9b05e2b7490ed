"""Synthetic rows for training: which generate output belongs to a run, the lineage guard, and the mix.

A generate output (``weldray generate``, or the pipeline's ``generate/<scope>/`` folders) records for every
image the real photos it came from, and its summary the rows its gate's teacher was fitted on and the photos
the diffusion LoRA (``synthetic.lora_path``) was trained on: a LoRA influences every image made with it.
Training takes a synthetic image only when all of those lie in its own train rows: otherwise a held-out photo
(test split, CV fold) would influence the model judged on it. A violation is refused with an error, never
silently dropped, because it means the synthetic set was made for another split.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pandas as pd

from weldray import io as wio
from weldray.config import TrainingConfig, WeldrayConfig

log = logging.getLogger(__name__)


class LineageError(ValueError):
    """Synthetic images whose sources (or gate teacher) reach outside the training's own rows."""


def scope_name(training: TrainingConfig) -> str:
    """The rows a run trains on, as a folder name: ``fold<k>`` (CV fold k held out), ``holdout`` or ``all``."""
    if training.cv_fold is not None:
        return f"fold{training.cv_fold}"
    return "holdout" if training.holdout else "all"


def _meta(root: str, training: TrainingConfig, endpoint_url: str | None) -> str:
    """``<root>/_synthetic`` of a generate output, or of its ``<root>/<scope>/`` sub-output (pipeline layout)."""
    from weldray.synthetic.job import META_DIR

    for base in (root, wio.join(root, scope_name(training))):
        if wio.exists(wio.join(base, META_DIR, "records.parquet"), endpoint_url):
            return wio.join(base, META_DIR)
    raise FileNotFoundError(
        f"training.synthetic_data={root}: no {META_DIR}/records.parquet there or in its {scope_name(training)}/ "
        "folder (write one with `weldray generate INPUT OUTPUT` and the same training.cv_fold / holdout)"
    )


def synthetic_rows(cfg: WeldrayConfig, train: pd.DataFrame) -> pd.DataFrame:
    """The accepted synthetic images of ``training.synthetic_data`` as training rows (``synthetic`` = True),
    after checking their lineage against ``train``, the run's real train rows."""
    endpoint = cfg.data.s3_endpoint_url
    meta = _meta(str(cfg.training.synthetic_data), cfg.training, endpoint)
    records = pd.read_parquet(io.BytesIO(wio.read_bytes(wio.join(meta, "records.parquet"), endpoint)))
    summary = json.loads(wio.read_bytes(wio.join(meta, "summary.json"), endpoint))
    accepted = records[records["accepted"].astype(bool)].reset_index(drop=True)
    check_lineage(accepted, summary, train, meta)
    unknown = sorted(set(accepted["label"]) - set(cfg.data.labels))
    if unknown:
        raise ValueError(f"{meta}: synthetic labels {unknown} are not in data.classes' labels {cfg.data.labels}")
    return pd.DataFrame({
        "path": accepted["output"], "relpath": accepted["name"], "label": accepted["label"],
        "label_index": [cfg.data.labels.index(lbl) for lbl in accepted["label"]],
        "split": "train", "fold": -1, "synthetic": True, "source_ids": accepted["source_ids"],
    })


def check_lineage(records: pd.DataFrame, summary: dict, train: pd.DataFrame, where: str) -> None:
    """Raise :class:`LineageError` when an image's sources or the gate teacher's rows are outside ``train``."""
    allowed = set(train["relpath"])
    outside = [(r.name, sorted(set(json.loads(r.source_ids)) - allowed)) for r in records.itertuples()]
    outside = [(name, ids) for name, ids in outside if ids]
    if outside:
        name, ids = outside[0]
        raise LineageError(
            f"{where}: {len(outside)} of {len(records)} synthetic images come from photos this training does not "
            f"train on (e.g. {name} from {ids[:3]}): they were made for other rows ({summary.get('scope')}). "
            "Generate with the same training.cv_fold / holdout as the training"
        )
    teacher = (summary.get("teacher") or {}).get("train_ids", [])
    leaked = sorted(set(teacher) - allowed)
    if leaked:
        raise LineageError(
            f"{where}: the gate's teacher was fitted on {len(leaked)} photos this training holds out "
            f"(e.g. {leaked[:3]}): its verdicts would carry them into training. Generate for this training's rows"
        )
    lora = summary.get("lora") or {}
    leaked = sorted(set(lora.get("train_ids", [])) - allowed)
    if leaked:
        raise LineageError(
            f"{where}: the LoRA {lora.get('path')} was trained on {len(leaked)} photos this training holds out "
            f"(e.g. {leaked[:3]}): every image generated with it carries them. Train the LoRA "
            "(`weldray train-lora`) and generate with this training's training.cv_fold / holdout"
        )


def lora_lineage(cfg: WeldrayConfig, rows: pd.DataFrame) -> dict | None:
    """``{"path", "train_ids"}`` of the LoRA the generator uses (None without one), checked on the driver before
    any worker starts: the LoRA must record its training photos (``weldray train-lora`` writes them) and they
    must all be among ``rows``, the source rows of this generate run, else its images would carry photos the
    run's training holds out."""
    from weldray.synthetic.lora import TRAIN_LOG_NAME, lora_source_ids

    path = cfg.synthetic.lora_path
    if cfg.synthetic.generator != "sdxl_turbo" or path is None:
        return None
    ids = lora_source_ids(path)
    if ids is None:
        raise LineageError(
            f"synthetic.lora_path={path}: no record of the photos the LoRA was trained on ({TRAIN_LOG_NAME} "
            "with source_ids beside it), so no lineage check could keep held-out photos out of training. "
            "Train it with `weldray train-lora` and the same training.cv_fold / holdout"
        )
    outside = sorted(set(ids) - set(rows["relpath"]))
    if outside:
        raise LineageError(
            f"synthetic.lora_path={path}: the LoRA was trained on {len(outside)} photos outside this run's "
            f"{len(rows)} source rows (e.g. {outside[:3]}). Train it with `weldray train-lora` and the same "
            "training.cv_fold / holdout as this run"
        )
    return {"path": str(path), "train_ids": sorted(ids)}


def mix(real: pd.DataFrame, synthetic: pd.DataFrame, ratio: float, seed: int) -> pd.DataFrame:
    """Real rows plus ``round(n_real * (1 - ratio) / ratio)`` synthetic rows, so real images are ``ratio`` of
    each epoch's samples. The synthetic rows are drawn once per run, per class in the pool's class shares,
    without replacement while the pool lasts (then repeated: logged, since repeats add no new images)."""
    real = real.assign(synthetic=False)
    want = int(round(len(real) * (1 - ratio) / ratio))
    if want == 0:
        return real.reset_index(drop=True)
    if synthetic.empty:
        raise ValueError(
            f"training.mix_real_ratio={ratio} needs {want} synthetic images and the gate accepted none: lower "
            "synthetic.min_teacher_confidence or generate more (synthetic.n_per_class)"
        )
    missing = sorted(set(real["label"]) - set(synthetic["label"]))
    if missing:
        log.warning("mix: the gate accepted no synthetic %s images: the synthetic share is other classes only "
                    "(see the generate summary's acceptance)", ", ".join(missing))
    rng = np.random.default_rng(seed)
    shares = synthetic["label"].value_counts(normalize=True).sort_index()
    counts = np.floor(shares.to_numpy() * want).astype(int)
    counts[np.argsort(-(shares.to_numpy() * want - counts))[: want - counts.sum()]] += 1  # largest remainders
    picked = []
    for label, n in zip(shares.index, counts, strict=True):
        pool = synthetic[synthetic["label"] == label]
        idx = rng.permutation(len(pool))[: min(n, len(pool))]
        if n > len(pool):
            log.warning("mix: %d synthetic %s images wanted, %d accepted: repeating some", n, label, len(pool))
            idx = np.concatenate([idx, rng.integers(0, len(pool), n - len(pool))])
        picked.append(pool.iloc[idx])
    return pd.concat([real, *picked], ignore_index=True)
