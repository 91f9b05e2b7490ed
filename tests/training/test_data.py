"""Training views: the random resized crop's scale, crops around the photos' YOLO boxes, and their Ray Data path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from weldray.data.labels import Box, boxes_to_json
from weldray.training.data import Augment, box_crop, epoch_batches

# A 200 px black photo with one white 20 px square: its box, relative.
SQUARE = Box("Defect", 0.7, 0.3, 0.1, 0.1)


def _photo_with_square() -> np.ndarray:
    img = np.zeros((200, 200, 3), np.uint8)
    img[50:70, 130:150] = 255
    return img


def _white(view: np.ndarray) -> float:
    """Share of a CxHxW view's pixels that are (near) white."""
    return float((view.min(axis=0) > 160).mean())


@pytest.mark.parametrize("seed", range(5))
def test_a_box_crop_centres_and_enlarges_its_box(seed: int) -> None:
    torch.manual_seed(seed)
    view = box_crop(torch.from_numpy(_photo_with_square()).permute(2, 0, 1), [SQUARE], 60).numpy()
    assert view.shape == (3, 60, 60)
    # The square is 1 % of the photo; the crop (at least 30 % of the photo's side) makes it 5.5-11 % of the view,
    # near the middle (centre jittered by at most a tenth of the side).
    assert 0.04 < _white(view) < 0.13
    assert _white(view[:, 20:40, 20:40]) > 0.2


def test_a_box_as_large_as_the_photo_crops_all_of_it() -> None:
    photo = torch.from_numpy(_photo_with_square()).permute(2, 0, 1)
    whole = box_crop(photo, [Box("Good Weld", 0.5, 0.5, 0.9, 0.6)], 50)
    assert abs(_white(whole.numpy()) - 0.01) < 0.004


def test_only_photos_with_boxes_get_box_crops() -> None:
    batch = {
        "image": np.stack([_photo_with_square()] * 2),
        "label": np.array([1, 0]),
        "path": np.array(["a.jpg", "b.jpg"]),
        "boxes": np.array([boxes_to_json([SQUARE]), None], dtype=object),
    }
    plain = Augment(64, seed=3)(batch)["image"]
    boxed = Augment(64, seed=3, box_crop_prob=1.0)(batch)["image"]
    assert not np.array_equal(plain[0], boxed[0]) and _white(boxed[0]) > 0.03
    assert np.array_equal(plain[1], boxed[1])  # no boxes: the same random resized crop as without box crops
    with pytest.raises(ValueError, match="'boxes' column"):
        Augment(64, box_crop_prob=0.5)({k: v for k, v in batch.items() if k != "boxes"})


def _colours_seen(view: np.ndarray) -> int:
    """How many of the quadrants' four colours cover >= 3 % of a view's (non-black) pixels."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.float32)
    pixels = view.reshape(3, -1).T.astype(np.float32)
    pixels = pixels[pixels.sum(1) > 90]  # the rotation's black corners
    nearest = np.argmin(((pixels[:, None] - colours[None]) ** 2).sum(-1), axis=1)
    return int((np.bincount(nearest, minlength=4) >= 0.03 * len(pixels)).sum())


def test_crop_scale_sets_how_much_of_the_photo_a_view_keeps() -> None:
    quadrants = np.zeros((128, 128, 3), np.uint8)
    quadrants[:64, :64], quadrants[:64, 64:], quadrants[64:, :64], quadrants[64:, 64:] = (
        (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))
    batch = {"image": np.stack([quadrants] * 16), "label": np.zeros(16), "path": np.array([f"{i}" for i in range(16)])}
    whole = [_colours_seen(v) for v in Augment(64, seed=0, crop_scale=(1.0, 1.0))(batch)["image"]]
    small = [_colours_seen(v) for v in Augment(64, seed=0, crop_scale=(0.02, 0.02))(batch)["image"]]
    assert whole == [4] * 16
    assert np.mean(small) < 2


def test_box_crops_run_in_the_ray_data_path_and_repeat_by_seed(tmp_path: Path, ray_local: None) -> None:
    from tests.synthetic.helpers import write_labelled_dataset
    from weldray.config import load_config
    from weldray.data import ingest, load_manifest, read_manifest_dataset

    root = write_labelled_dataset(tmp_path / "ds", size=96)
    cfg = load_config([f"output_dir={tmp_path / 'out'}"])
    rows = load_manifest(ingest(str(root), cfg).manifest_path)
    assert rows["boxes"].notna().all()
    decoded = read_manifest_dataset(rows, image_size=96, boxes=True).materialize()
    assert all(json.loads(r["boxes"]) for r in decoded.take_all())

    def epoch(seed: int) -> list[torch.Tensor]:
        aug = Augment(64, seed=seed, box_crop_prob=1.0)
        return [b["image"] for b in epoch_batches(decoded, augment=aug, batch_size=4, num_cpus=0.5, device="cpu")]

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert [b.shape for b in first] == [(4, 3, 64, 64)] * 4  # 16 photos
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
