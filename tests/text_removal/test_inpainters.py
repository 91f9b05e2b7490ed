from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from weldray.text_removal import MissingWeightsError, TextCleaner, create_inpainter, text_mask
from weldray.text_removal.inpainters import LamaInpainter, OpenCVInpainter


class _TinyLama(torch.nn.Module):
    """Same call signature as big-lama.pt; refuses unpadded input like the real network would
    misbehave, and fills the hole with the mean colour of the known pixels."""

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if image.shape[2] % 8 != 0 or image.shape[3] % 8 != 0:
            raise RuntimeError("input must be padded to a multiple of 8")
        known = 1.0 - mask
        mean = (image * known).sum(dim=(2, 3), keepdim=True) / known.sum(dim=(2, 3), keepdim=True).clamp(
            min=1.0
        )
        return image * known + mean * mask


@pytest.fixture()
def tiny_lama_path(tmp_path):
    path = tmp_path / "big-lama.pt"
    torch.jit.script(_TinyLama()).save(str(path))
    return path


def _square_hole(h=61, w=77):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[20:40, 30:50] = 255
    return img, mask


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_fills_hole_and_keeps_the_rest(method):
    img, mask = _square_hole()
    img[20:40, 30:50] = (255, 0, 0)  # "text" inside the hole
    out = OpenCVInpainter(method=method).inpaint(img, mask)
    assert np.array_equal(out[mask == 0], img[mask == 0])
    assert np.abs(out[25:35, 35:45].astype(int) - [255, 0, 0]).sum(-1).mean() > 100


def test_lama_loader_pads_crops_and_blends(tiny_lama_path):
    img, mask = _square_hole()  # 61x77: not a multiple of 8
    lama = LamaInpainter(tiny_lama_path, device="cpu")
    out = lama.inpaint(img, mask)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[mask == 0], img[mask == 0])
    # The fill is the mean of the known pixels of the padded image: flat and close to the image mean.
    hole = out[mask > 0].astype(float)
    assert hole.std(axis=0).max() < 1.0
    assert np.abs(hole.mean(0) - img[mask == 0].mean(0)).max() < 3.0


def test_lama_through_the_registry(tiny_lama_path, printed_sample, tr_cfg):
    cfg = dataclasses.replace(tr_cfg, inpainter="lama", lama_model_path=str(tiny_lama_path), device="cpu")
    cleaner = TextCleaner(cfg)
    res = cleaner.clean(printed_sample.image)
    assert res.mask.any()
    assert np.array_equal(res.image[res.mask == 0], printed_sample.image[res.mask == 0])


@pytest.mark.parametrize("path", [None, "/nonexistent/big-lama.pt"])
def test_lama_missing_file_says_how_to_provide_it(path, tr_cfg):
    cfg = dataclasses.replace(tr_cfg, inpainter="lama", lama_model_path=path)
    with pytest.raises(MissingWeightsError, match="big-lama.pt") as err:
        create_inpainter(cfg)
    assert "text_removal.lama_model_path" in str(err.value)


def test_opencv_removes_procedural_text(printed_sample, tr_cfg):
    cleaner = TextCleaner(tr_cfg)
    res = cleaner.clean(printed_sample.image)
    assert res.mask.any() and not cleaner.residual(res.image)


def test_text_mask_dilation():
    from weldray.text_removal import Detection

    d = Detection(box=np.array([[40, 40], [60, 40], [60, 50], [40, 50]], np.float32), det_score=1.0)
    m0, m5 = text_mask([d], (100, 100), 0), text_mask([d], (100, 100), 5)
    assert m0[45, 50] == 255 and m0[45, 30] == 0
    assert m5[45, 36] == 255 and m5[45, 30] == 0 and (m5 > 0).sum() > (m0 > 0).sum()
    d.kept = False
    assert not text_mask([d], (100, 100), 5).any()
