"""The registry's sdxl_turbo entry: tasks from each class's own photos, handed to the diffusion generator's
``generate(images, labels, seeds)`` and wrapped with their lineage (the diffusion model itself is tested in
test_diffusion*; here a stand-in records the calls)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.synthetic.helpers import write_labelled_dataset
from weldray.config import load_config
from weldray.data import ingest, load_manifest
from weldray.synthetic.base import Generated, generator_class


class FakeSdxl:
    calls: list[tuple[list[tuple[int, int]], list[str], list[int]]] = []

    def __init__(self, cfg) -> None:  # type: ignore[no-untyped-def]
        self.cfg = cfg

    def generate(
        self, images: list[Image.Image], labels: list[str], seeds: list[int]
    ) -> list[tuple[Image.Image, dict]]:
        FakeSdxl.calls.append(([im.size for im in images], labels, seeds))
        return [(im.resize((64, 64)), {"seed": s}) for im, s in zip(images, seeds, strict=True)]


def test_adapter_plans_per_class_and_wraps_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import weldray.synthetic.diffusion as diffusion

    monkeypatch.setattr(diffusion, "SdxlTurboGenerator", FakeSdxl)
    cfg = load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=2", "synthetic.generator=sdxl_turbo",
                       "synthetic.n_per_class=5"])
    manifest = load_manifest(ingest(str(write_labelled_dataset(tmp_path / "ds", 8, labels=False)), cfg).manifest_path)
    cls = generator_class("sdxl_turbo")
    tasks = cls.plan(cfg, manifest)  # no boxes needed: img2img starts from whole photos
    labels = manifest.set_index("relpath")["label"]
    assert len(tasks) == 10 and all(labels[t.source] == t.label for t in tasks)

    broken = tasks[1].source
    Path(manifest.set_index("relpath").at[broken, "path"]).write_bytes(b"not an image")
    FakeSdxl.calls.clear()
    results = cls(cfg, manifest).generate(tasks[:4])
    assert isinstance(results[1], Exception)
    made = [r for r in results if isinstance(r, Generated)]
    assert len(made) == 3 and all(r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8 for r in made)
    assert [r.source_ids for r in made] == [[t.source] for i, t in enumerate(tasks[:4]) if i != 1]
    (sizes, call_labels, seeds), = FakeSdxl.calls  # one batched call, broken source left out
    assert call_labels == [t.label for i, t in enumerate(tasks[:4]) if i != 1]
    assert seeds == [t.seed for i, t in enumerate(tasks[:4]) if i != 1] and sizes == [(128, 128)] * 3
