"""copy_paste: defects land inside the weld region, both classes carry seams, results follow the seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.synthetic.helpers import write_labelled_dataset
from weldray.config import load_config
from weldray.data import ingest, load_manifest
from weldray.synthetic.base import GeneratorUnavailable, Task, generator_class, list_generators
from weldray.synthetic.copy_paste import CopyPasteGenerator


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, pd.DataFrame]:
    tmp = tmp_path_factory.mktemp("cp")
    cfg = load_config([f"output_dir={tmp / 'out'}", "data.n_folds=2", "synthetic.n_per_class=12"])
    manifest = load_manifest(ingest(str(write_labelled_dataset(tmp / "ds", 8)), cfg).manifest_path)
    return cfg, manifest


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).max(axis=2) > 0


def test_registry_knows_the_generators_without_importing_diffusers() -> None:
    import os
    import subprocess
    import sys

    assert {"copy_paste", "sdxl_turbo"} <= set(list_generators())
    assert generator_class("copy_paste") is CopyPasteGenerator
    # In a fresh interpreter: other test modules of this session import diffusers themselves.
    code = ("import sys; from weldray.synthetic.base import generator_class, list_generators; list_generators(); "
            "generator_class('copy_paste'); print('diffusers' in sys.modules)")
    root = str(Path(__file__).resolve().parents[2])  # this checkout's weldray, not an installed one
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=root, env=env)
    assert out.stdout.strip() == "False"
    with pytest.raises(GeneratorUnavailable, match="no such generator"):
        generator_class("gan")


def test_plan_balances_classes_over_good_backgrounds(labelled) -> None:  # type: ignore[no-untyped-def]
    cfg, manifest = labelled
    tasks = CopyPasteGenerator.plan(cfg, manifest)
    assert [t.label for t in tasks].count("bad_weld") == [t.label for t in tasks].count("good_weld") == 12
    assert {t.source for t in tasks} == set(manifest.loc[manifest["label"] == "good_weld", "relpath"])
    assert len({(t.source, t.seed) for t in tasks}) == len(tasks)  # the resume key is unique


def test_defects_are_pasted_inside_the_weld_region(labelled) -> None:  # type: ignore[no-untyped-def]
    cfg, manifest = labelled
    gen = CopyPasteGenerator(cfg, manifest)
    tasks = CopyPasteGenerator.plan(cfg, manifest)
    results = gen.generate(tasks)
    assert not [r for r in results if isinstance(r, Exception)]
    for task, res in zip(tasks, results, strict=True):
        x0, y0, x1, y1 = res.params["weld_box"]
        background = gen.load(task.source)
        changed = _changed(res.image, background)
        assert changed.any(), task
        ys, xs = np.nonzero(changed)
        # Poisson blending only writes inside the pasted masks, and every mask lies inside the weld box.
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1, task
        for patch in res.params["patches"]:
            px0, py0, px1, py1 = patch["box"]
            assert x0 <= px0 < px1 <= x1 and y0 <= py0 < py1 <= y1
        if task.label == "bad_weld":
            assert all(s.startswith("bad_welds/") for s in res.source_ids[1:])  # patches of Defect boxes
        assert res.source_ids[0] == task.source


def test_both_classes_carry_seams_from_other_photos(labelled) -> None:  # type: ignore[no-untyped-def]
    cfg, manifest = labelled
    gen = CopyPasteGenerator(cfg, manifest)
    tasks = CopyPasteGenerator.plan(cfg, manifest)
    by_label: dict[str, list[int]] = {"bad_weld": [], "good_weld": []}
    for task, res in zip(tasks, gen.generate(tasks), strict=True):
        assert len(res.params["patches"]) >= 1
        assert all(p["source"] != task.source for p in res.params["patches"])  # pasted from another photo
        by_label[task.label].append(int(_changed(res.image, gen.load(task.source)).sum()))
    # Both classes are edited by the same blending, with patches of the same size pool.
    assert min(by_label["good_weld"]) > 0 and min(by_label["bad_weld"]) > 0
    ratio = np.median(by_label["good_weld"]) / np.median(by_label["bad_weld"])
    assert 0.3 < ratio < 3.0


def test_same_seed_same_image_other_seed_other_image(labelled) -> None:  # type: ignore[no-untyped-def]
    cfg, manifest = labelled
    task = CopyPasteGenerator.plan(cfg, manifest)[0]
    a = CopyPasteGenerator(cfg, manifest).generate([task])[0]
    b = CopyPasteGenerator(cfg, manifest).generate([task])[0]
    c = CopyPasteGenerator(cfg, manifest).generate([Task(task.label, task.source, task.seed + 1)])[0]
    assert np.array_equal(a.image, b.image) and a.params == b.params
    assert not np.array_equal(a.image, c.image)


def test_dataset_without_boxes_is_skipped_with_the_reason(tmp_path: Path) -> None:
    cfg = load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=2"])
    manifest = load_manifest(ingest(str(write_labelled_dataset(tmp_path / "ds", 8, labels=False)), cfg).manifest_path)
    with pytest.raises(GeneratorUnavailable, match=r"needs YOLO box labels and none of the 16 source photos"):
        CopyPasteGenerator.plan(cfg, manifest)
    no_defects = manifest.assign(boxes=manifest["boxes"].fillna('[{"cls": "Good Weld", "x": 0.5, "y": 0.5, '
                                                                '"w": 0.5, "h": 0.2}]'))
    with pytest.raises(GeneratorUnavailable, match=r"\['Defect'\] box"):
        CopyPasteGenerator.plan(cfg, no_defects)


def test_real_photos_defects_land_in_their_weld_boxes(real_welds_dir: Path, tmp_path: Path) -> None:
    cfg = load_config([f"output_dir={tmp_path}", "synthetic.n_per_class=10"])
    manifest = load_manifest(ingest(str(real_welds_dir), cfg).manifest_path)
    gen = CopyPasteGenerator(cfg, manifest)
    tasks = CopyPasteGenerator.plan(cfg, manifest)
    results = gen.generate(tasks)
    made = [(t, r) for t, r in zip(tasks, results, strict=True) if not isinstance(r, Exception)]
    assert len(made) >= 18
    for task, res in made:
        x0, y0, x1, y1 = res.params["weld_box"]
        ys, xs = np.nonzero(_changed(res.image, gen.load(task.source)))
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
