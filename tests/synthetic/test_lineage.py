"""The LoRA's lineage on a CV fold: a LoRA that saw a held-out photo is refused by the generate job (before any
worker starts) and by training (its ids are in the generate summary); a LoRA without a record is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.data.helpers import write_dataset
from tests.synthetic.tiny_sdxl import TinySdxl, tiny_sdxl  # noqa: F401  (session fixture)
from weldray.config import load_config
from weldray.data import ingest, load_manifest
from weldray.synthetic.lineage import LineageError, check_lineage, lora_lineage
from weldray.synthetic.lora import TRAIN_LOG_NAME
from weldray.training.data import split_rows


@pytest.fixture(autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("lineage")
    cfg = load_config(["profile=quick_test", f"output_dir={tmp / 'out'}", "data.n_folds=2"])
    path = ingest(str(write_dataset(tmp / "ds", 8)), cfg).manifest_path
    return path, load_manifest(path)


def fake_lora(folder: Path, source_ids: list[str] | None) -> Path:
    """A LoRA folder as `weldray train-lora` leaves it; the weights are never loaded by these checks."""
    folder.mkdir(parents=True)
    (folder / "pytorch_lora_weights.safetensors").write_bytes(b"not loaded")
    if source_ids is not None:
        (folder / TRAIN_LOG_NAME).write_text(json.dumps({"source_ids": source_ids}))
    return folder


def fold_config(models: TinySdxl, tmp: Path, fold: int, lora: Path):  # type: ignore[no-untyped-def]
    return load_config([
        "profile=quick_test", f"output_dir={tmp / 'out'}", "data.n_folds=2", f"training.cv_fold={fold}",
        "synthetic.generator=sdxl_turbo", f"synthetic.sdxl_model={models.sdxl_dir}",
        f"synthetic.controlnet_model={models.controlnet_dir}", f"synthetic.lora_path={lora}",
    ])


def test_generate_refuses_a_lora_that_saw_a_held_out_photo(
    manifest: tuple[Path, pd.DataFrame], tiny_sdxl: TinySdxl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    import weldray.ray_utils
    from weldray.synthetic.job import generate

    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started: the refusal must come before any worker")

    monkeypatch.setattr(weldray.ray_utils, "init_ray", no_ray)

    path, rows = manifest
    fold0_train = sorted(split_rows(rows, 0).train["relpath"])  # = fold 1's held-out photos
    lora = fake_lora(tmp_path / "lora_fold0", fold0_train)
    # Fold 0 may use it: every photo it saw is among fold 0's source rows.
    cfg0 = fold_config(tiny_sdxl, tmp_path, 0, lora)
    assert lora_lineage(cfg0, split_rows(rows, 0).train) == {"path": str(lora), "train_ids": fold0_train}
    # Fold 1 holds those photos out: refused on the driver, before Ray starts or anything is written.
    out = tmp_path / "syn"
    with pytest.raises(LineageError, match=r"LoRA was trained on \d+ photos outside this run's"):
        generate(str(path), str(out), fold_config(tiny_sdxl, tmp_path, 1, lora), progress=False)
    assert not out.exists()
    unrecorded = fake_lora(tmp_path / "lora_elsewhere", None)
    with pytest.raises(LineageError, match="no record of the photos the LoRA was trained on"):
        generate(str(path), str(out), fold_config(tiny_sdxl, tmp_path, 0, unrecorded), progress=False)


def test_training_refuses_synthetic_images_whose_lora_saw_a_held_out_photo(
    manifest: tuple[Path, pd.DataFrame],
) -> None:
    _, rows = manifest
    train, held_out = split_rows(rows, 0).train, rows.loc[rows["fold"] == 0, "relpath"]
    records = pd.DataFrame({"name": ["syn_0"], "source_ids": [json.dumps([train["relpath"].iloc[0]])]})
    fine = {"scope": "fold 0", "lora": {"path": "/loras/fold0", "train_ids": sorted(train["relpath"])}}
    check_lineage(records, fine, train, "syn/_synthetic")  # sources, teacher and LoRA inside the train rows
    check_lineage(records, {"scope": "fold 0", "lora": None}, train, "syn/_synthetic")  # no LoRA
    leaked = {**fine, "lora": {"path": "/loras/all", "train_ids": [*fine["lora"]["train_ids"], held_out.iloc[0]]}}
    with pytest.raises(LineageError, match=r"LoRA /loras/all was trained on 1 photos this training holds out"):
        check_lineage(records, leaked, train, "syn/_synthetic")


@pytest.mark.ray
def test_generate_trains_one_lora_per_fold_on_that_folds_rows(
    manifest: tuple[Path, pd.DataFrame], tiny_sdxl: TinySdxl, tmp_path: Path, ray_local: None  # noqa: F811
) -> None:
    """synthetic.train_lora: the pipeline's generate stage gets a LoRA per training, each from its own rows."""
    from weldray.synthetic.diffusion import LORA_WEIGHT_NAME
    from weldray.synthetic.job import generate
    from weldray.synthetic.lineage import synthetic_rows
    from weldray.synthetic.lora import lora_source_ids

    path, rows = manifest
    out = tmp_path / "generate"  # the pipeline's layout: one <scope>/ folder per training

    def fold_cfg(fold: int):  # type: ignore[no-untyped-def]
        return load_config([
            "profile=quick_test", f"output_dir={tmp_path / 'out'}", "data.n_folds=2", f"training.cv_fold={fold}",
            "synthetic.generator=sdxl_turbo", f"synthetic.sdxl_model={tiny_sdxl.sdxl_dir}",
            f"synthetic.controlnet_model={tiny_sdxl.controlnet_dir}", "synthetic.image_size=64",
            "synthetic.train_lora=true", "synthetic.lora_rank=4", "synthetic.lora_steps=2", "synthetic.n_per_class=1",
            "synthetic.concurrency=1", "synthetic.min_teacher_confidence=0", f"training.synthetic_data={out}",
            "training.mix_real_ratio=0.5",
        ])

    for fold in (0, 1):
        report = generate(str(path), str(out / f"fold{fold}"), fold_cfg(fold), progress=False)
        train_ids = sorted(split_rows(rows, fold).train["relpath"])
        assert lora_source_ids(out / f"fold{fold}" / "_synthetic" / "lora") == train_ids
        assert report.summary["lora"] == {"path": str(out / f"fold{fold}" / "_synthetic" / "lora"),
                                          "train_ids": train_ids}
        assert report.summary["n_generated"] == 2
        # The fold's training takes its set: sources and LoRA lie inside its train rows.
        assert len(synthetic_rows(fold_cfg(fold), split_rows(rows, fold).train)) == 2

    # Fold 0's set (sources and LoRA from fold 0's train rows = fold 1's held-out photos) cannot train fold 1.
    with pytest.raises(LineageError):
        check_lineage(pd.read_parquet(out / "fold0" / "_synthetic" / "records.parquet"),
                      json.loads((out / "fold0" / "_synthetic" / "summary.json").read_text()),
                      split_rows(rows, 1).train, "fold0")

    # Re-running resumes: the LoRA of the same settings and rows is kept, no image is made again.
    weights = out / "fold0" / "_synthetic" / "lora" / LORA_WEIGHT_NAME
    before = weights.stat().st_mtime_ns
    again = generate(str(path), str(out / "fold0"), fold_cfg(0), progress=False)
    assert weights.stat().st_mtime_ns == before and again.summary["n_resumed"] == 2
