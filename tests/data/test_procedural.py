"""Procedural weld generator: determinism, exact text masks, dataset layout and a learnable task."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weldray.data import procedural
from weldray.data.procedural import (
    DEFECT_TYPES,
    TEXT_KINDS,
    WATERMARK_MIN_DELTA,
    ProceduralSpec,
    SpecMismatchError,
    generate_dataset,
    render_weld,
)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(list(key))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_per_class", 0),
        ("image_size", 8),
        ("text_fraction", 1.5),
        ("seed", -1),
        ("defect_types", ("rust",)),
        ("defect_types", ()),
        ("defect_types", "crack"),
        ("image_format", "gif"),
    ],
)
def test_spec_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ProceduralSpec(**{field: value})


def test_spec_accepts_lists_from_configs() -> None:
    spec = ProceduralSpec(defect_types=["crack", "porosity"])  # type: ignore[arg-type]
    assert spec.defect_types == ("crack", "porosity")
    hash(spec)


# --------------------------------------------------------------------------------------- render


def test_render_is_deterministic() -> None:
    a = render_weld(_rng(3, 1, 7), label="bad_weld", size=160, with_text=True)
    b = render_weld(_rng(3, 1, 7), label="bad_weld", size=160, with_text=True)
    assert a.image.dtype == np.uint8 and a.image.shape == (160, 160, 3)
    assert a.text_mask.dtype == bool and a.text_mask.shape == (160, 160)
    assert a.overlay_mask.dtype == bool and a.overlay_mask.shape == (160, 160)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.text_mask, b.text_mask)
    assert np.array_equal(a.overlay_mask, b.overlay_mask)
    assert (a.defects, a.text_kinds, a.texts) == (b.defects, b.text_kinds, b.texts)
    c = render_weld(_rng(3, 1, 8), label="bad_weld", size=160, with_text=True)
    assert not np.array_equal(a.image, c.image)


def test_overlay_mask_is_exactly_the_changed_pixels_and_holds_the_text_mask() -> None:
    """Ground truth for text removal: outside overlay_mask the image equals the text-free render, and
    the glyph mask (text_mask) is a non-empty part of it."""
    kinds_seen: set[str] = set()
    for i in range(16):
        label = ("good_weld", "bad_weld")[i % 2]
        with_text = render_weld(_rng(5, i), label=label, size=192, with_text=True)
        plain = render_weld(_rng(5, i), label=label, size=192, with_text=False)
        changed = (with_text.image != plain.image).any(axis=-1)
        assert with_text.text_mask.any() and with_text.texts
        assert np.array_equal(changed, with_text.overlay_mask)
        assert not (with_text.text_mask & ~with_text.overlay_mask).any()
        assert with_text.defects == plain.defects
        assert set(with_text.text_kinds) <= set(TEXT_KINDS)
        kinds_seen |= set(with_text.text_kinds)
        if with_text.text_kinds == ["watermark"]:
            delta = np.abs(with_text.image.astype(int) - plain.image.astype(int)).max(axis=-1)
            assert delta[with_text.text_mask].min() >= WATERMARK_MIN_DELTA
    assert kinds_seen == set(TEXT_KINDS)


def test_text_free_images_have_empty_masks() -> None:
    for i in range(4):
        s = render_weld(_rng(6, i), label="bad_weld", size=96, with_text=False)
        assert not s.text_mask.any() and not s.overlay_mask.any() and s.text_kinds == [] and s.texts == []


def _first_with_kinds(kinds: set[str], size: int = 192):
    for i in range(300):
        s = render_weld(_rng(9, i), label="good_weld", size=size, with_text=True)
        if set(s.text_kinds) == kinds:
            return s
    raise AssertionError(f"no render with text kinds {kinds}")


def test_title_banner_is_overlay_but_not_text() -> None:
    """A title's banner is in overlay_mask only: most banner pixels are not glyphs, every glyph is."""
    s = _first_with_kinds({"title"})
    banner_only = s.overlay_mask & ~s.text_mask
    assert banner_only.sum() > 2 * s.text_mask.sum() > 0


def test_printed_and_watermark_text_masks_equal_the_overlay() -> None:
    """Printed text (glyphs + outlines) and watermarks have no non-text graphics: both masks agree."""
    for kinds in ({"printed"}, {"watermark"}):
        s = _first_with_kinds(kinds)
        assert np.array_equal(s.text_mask, s.overlay_mask), kinds


def test_marker_strokes_are_overlay_but_not_text() -> None:
    """Handwritten notes with loops/arrows/underlines: the strokes add overlay pixels that are not text."""
    extra = []
    for i in range(40):
        s = render_weld(_rng(10, i), label="bad_weld", size=192, with_text=True)
        if s.text_kinds == ["handwritten"]:
            extra.append((s.overlay_mask & ~s.text_mask).sum() / s.overlay_mask.sum())
    assert extra and max(extra) > 0.2, extra  # some notes carry marker strokes
    assert min(extra) < 0.05, extra  # and notes without strokes are all glyphs


@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_each_defect_changes_the_weld_region(defect: str) -> None:
    """Same rng, good vs bad: only the defect differs, visibly and around the bead."""
    for i in range(3):
        good, _ = procedural._render(_rng(8, i), "good_weld", 224, False, DEFECT_TYPES)
        bad, zone = procedural._render(_rng(8, i), "bad_weld", 224, False, (defect,))
        assert bad.label == "bad_weld" and bad.defects == [defect] and good.defects == []
        diff = np.abs(bad.image.astype(int) - good.image.astype(int)).max(axis=-1) > 25
        assert diff.mean() > 0.002, f"{defect} barely changes the image"
        assert diff[zone].sum() >= 0.9 * diff.sum(), f"{defect} drawn away from the bead"


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label"):
        render_weld(_rng(0), label="ok", size=64, with_text=False)
    with pytest.raises(ValueError, match="defect_types"):
        render_weld(_rng(0), label="bad_weld", size=64, with_text=False, defect_types=("dent",))


# -------------------------------------------------------------------------------------- dataset


def test_dataset_layout_csv_and_masks(tmp_path: Path) -> None:
    spec = ProceduralSpec(n_per_class=5, image_size=64, text_fraction=0.6, seed=11)
    out = generate_dataset(tmp_path / "ds", spec)
    with (out / "samples.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == procedural.CSV_COLUMNS == [
        "path", "label", "defects", "text_kinds", "texts", "mask_path", "overlay_mask_path"
    ]
    assert [r["label"] for r in rows].count("good_weld") == [r["label"] for r in rows].count("bad_weld") == 5
    assert sorted(p.name for p in (out / "good_welds").iterdir()) == [
        f"good_{i:04d}.jpg" for i in range(1, 6)
    ]
    assert sorted(p.name for p in (out / "bad_welds").iterdir()) == [f"bad_{i:04d}.jpg" for i in range(1, 6)]
    for r in rows:
        image = np.asarray(Image.open(out / r["path"]))
        mask = np.asarray(Image.open(out / r["mask_path"]))
        overlay = np.asarray(Image.open(out / r["overlay_mask_path"]))
        assert r["mask_path"] == f"text_masks/{r['path'][:-4]}.png"
        assert r["overlay_mask_path"] == f"overlay_masks/{r['path'][:-4]}.png"
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64) and mask.dtype == np.uint8
        assert overlay.shape == (64, 64) and overlay.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255} and set(np.unique(overlay)) <= {0, 255}
        assert bool(mask.any()) == bool(overlay.any()) == bool(r["text_kinds"]) == bool(r["texts"])
        assert not ((mask > 0) & (overlay == 0)).any()
        defects = r["defects"].split(";") if r["defects"] else []
        assert (r["label"] == "bad_weld") == bool(defects) and set(defects) <= set(DEFECT_TYPES)
        assert set(filter(None, r["text_kinds"].split(";"))) <= set(TEXT_KINDS)
    stored = json.loads((out / "spec.json").read_text())
    assert stored == {"version": procedural.VERSION, "spec": spec.to_json()}


def test_png_files_equal_the_documented_per_image_render(tmp_path: Path) -> None:
    """Image i of a class is render_weld(default_rng([seed, label_id, i])): order independent."""
    spec = ProceduralSpec(n_per_class=3, image_size=80, text_fraction=1.0, seed=4, image_format="png")
    out = generate_dataset(tmp_path, spec)
    s = render_weld(_rng(4, 1, 2), label="bad_weld", size=80, with_text=True)
    assert np.array_equal(np.asarray(Image.open(out / "bad_welds/bad_0002.png")), s.image)
    mask = np.asarray(Image.open(out / "text_masks/bad_welds/bad_0002.png"))
    assert np.array_equal(mask > 0, s.text_mask)
    overlay = np.asarray(Image.open(out / "overlay_masks/bad_welds/bad_0002.png"))
    assert np.array_equal(overlay > 0, s.overlay_mask)


def test_dataset_is_byte_identical_and_subset_independent(tmp_path: Path) -> None:
    spec = ProceduralSpec(n_per_class=4, image_size=64, seed=2)
    a, b = _files(generate_dataset(tmp_path / "a", spec)), _files(generate_dataset(tmp_path / "b", spec))
    assert a == b
    small = _files(generate_dataset(tmp_path / "small", ProceduralSpec(n_per_class=2, image_size=64, seed=2)))
    images = [k for k in small if k.endswith((".jpg", ".png"))]
    assert len(images) == 12 and all(small[k] == a[k] for k in images)  # 4 photos, 4 text + 4 overlay masks


def test_text_fraction_is_respected_and_label_independent(tmp_path: Path) -> None:
    for fraction in (0.0, 0.3, 0.75, 1.0):
        flags = [procedural._has_text(9, i, fraction) for i in range(1, 201)]
        assert abs(np.mean(flags) - fraction) <= 0.02
    spec = ProceduralSpec(n_per_class=20, image_size=32, text_fraction=0.3, seed=9)
    with (generate_dataset(tmp_path, spec) / "samples.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    per_class = {
        lab: sum(bool(r["texts"]) for r in rows if r["label"] == lab) for lab in ("good_weld", "bad_weld")
    }
    assert per_class["good_weld"] == per_class["bad_weld"]
    assert abs(per_class["good_weld"] / 20 - 0.3) <= 0.1


def test_generate_is_idempotent_and_refuses_other_specs(tmp_path: Path) -> None:
    spec = ProceduralSpec(n_per_class=2, image_size=48, seed=1)
    out = generate_dataset(tmp_path, spec)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert generate_dataset(tmp_path, spec, progress=True) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    with pytest.raises(SpecMismatchError, match="seed"):
        generate_dataset(tmp_path, ProceduralSpec(n_per_class=2, image_size=48, seed=2))
    foreign = tmp_path.parent / (tmp_path.name + "_foreign")
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SpecMismatchError, match="not empty"):
        generate_dataset(foreign, spec)


def test_interrupted_run_is_detected_and_redone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ProceduralSpec(n_per_class=3, image_size=48, seed=5)
    reference = _files(generate_dataset(tmp_path / "ref", spec))
    calls = {"n": 0}
    real_save = procedural._save

    def flaky_save(*args: object) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        real_save(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(procedural, "_save", flaky_save)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(tmp_path / "run", spec)
    assert not (tmp_path / "run" / "spec.json").exists()
    monkeypatch.setattr(procedural, "_save", real_save)
    assert _files(generate_dataset(tmp_path / "run", spec)) == reference


# --------------------------------------------------------------------------------- learnability


@pytest.fixture(scope="module")
def small_task() -> dict[str, np.ndarray]:
    """Text-free 96 px images: 80 per class to train, 50 per class held out (different seeds)."""

    def render(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for i in range(n):
            for label_id, label in enumerate(("good_weld", "bad_weld")):
                images.append(
                    render_weld(_rng(seed, label_id, i), label=label, size=96, with_text=False).image
                )
                labels.append(label_id)
        return np.stack(images), np.array(labels)

    x_train, y_train = render(100, 80)
    x_test, y_test = render(200, 50)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def test_class_is_not_given_away_by_brightness(small_task: dict[str, np.ndarray]) -> None:
    brightness = small_task["x_train"].mean(axis=(1, 2, 3))
    good, bad = brightness[small_task["y_train"] == 0], brightness[small_task["y_train"] == 1]
    pooled = np.sqrt((good.var() + bad.var()) / 2)
    assert abs(good.mean() - bad.mean()) < 0.5 * pooled


def test_small_cnn_learns_good_vs_bad(small_task: dict[str, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is faster, and far faster on a busy machine
    try:
        accuracy = _train_and_score(small_task)
    finally:
        torch.set_num_threads(threads)
    assert accuracy >= 0.8


def _train_and_score(small_task: dict[str, np.ndarray]) -> float:
    """Held-out accuracy of a 3-conv CNN with global max pooling (a defect anywhere makes a weld bad)."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    def tensor(x: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25

    x_train, y_train = tensor(small_task["x_train"]), torch.from_numpy(small_task["y_train"])
    x_test, y_test = tensor(small_task["x_test"]), torch.from_numpy(small_task["y_test"])
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(32, 2),
    )  # fmt: skip
    epochs, batch = 15, 16
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-3, total_steps=epochs * -(-len(y_train) // batch))
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(y_train))
        for start in range(0, len(perm), batch):
            idx = perm[start : start + batch]
            xb = torch.rot90(x_train[idx], int(torch.randint(4, (1,))), (2, 3))  # defects have no orientation
            if torch.rand(1) < 0.5:
                xb = xb.flip(3)
            loss = nn.functional.cross_entropy(net(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return (net(x_test).argmax(1) == y_test).float().mean().item()
