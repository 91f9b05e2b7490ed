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
