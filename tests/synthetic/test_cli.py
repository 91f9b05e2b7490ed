"""``weldray train-lora``: listed, a missing model named in one line (nothing built), and a real run on the tiny
SDXL whose LoRA records exactly the CV fold's train photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.synthetic.tiny_sdxl import TinySdxl, tiny_sdxl  # noqa: F401  (session fixture)
from weldray.cli import app


@pytest.fixture(autouse=True)
def offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def test_train_lora_is_a_command() -> None:
    result = CliRunner().invoke(app, ["train-lora", "--help"])
    assert result.exit_code == 0 and "synthetic.lora_path" in result.output


def test_missing_model_folder_is_one_line_and_exit_1(tmp_path: Path) -> None:
    missing = tmp_path / "no_sdxl_here"
    result = CliRunner().invoke(
        app, ["train-lora", str(tmp_path / "data"), str(tmp_path / "lora"), f"synthetic.sdxl_model={missing}"]
    )
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: synthetic.sdxl_model=") and str(missing) in lines[0]
    assert not (tmp_path / "lora").exists()


def test_train_lora_end_to_end_on_a_cv_fold(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:  # noqa: F811
    import torch

    from tests.data.helpers import write_dataset
    from weldray.config import load_config
    from weldray.data import ingest, load_manifest
    from weldray.synthetic.diffusion import LORA_WEIGHT_NAME
    from weldray.synthetic.lora import lora_source_ids
    from weldray.training.data import split_rows

    overrides = ["profile=quick_test", f"output_dir={tmp_path / 'out'}", "data.n_folds=2", "training.cv_fold=0",
                 f"synthetic.sdxl_model={tiny_sdxl.sdxl_dir}", "synthetic.image_size=64", "synthetic.lora_rank=4",
                 "synthetic.lora_steps=1"]
    manifest_path = ingest(str(write_dataset(tmp_path / "ds", 8)), load_config(overrides)).manifest_path
    out = tmp_path / "lora"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: one thread is faster on a busy 2-core machine
    try:
        result = CliRunner().invoke(app, ["train-lora", str(manifest_path), str(out), *overrides])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert (out / LORA_WEIGHT_NAME).stat().st_size > 0
    manifest = load_manifest(manifest_path)
    assert lora_source_ids(out) == sorted(split_rows(manifest, 0).train["relpath"])
