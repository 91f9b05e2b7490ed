"""Class activation maps: an exact per-location decomposition of the logits, for every head and backbone kind."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.parametrize(
    ("backbone", "head"),
    [("efficientnet_lite0", "arcface"), ("efficientnet_lite0", "softmax"), ("convnextv2_atto", "cosface")],
)
def test_maps_average_to_the_logits(backbone: str, head: str) -> None:
    from weldray.config import ModelConfig
    from weldray.models import build_classifier
    from weldray.models.cam import class_maps

    torch.manual_seed(0)
    model = build_classifier(ModelConfig(backbone=backbone, pretrained=False, image_size=96, head=head), 2)
    bn = model.embedding[1]
    bn.running_mean.normal_()  # trained-like statistics, so the BatchNorm's shift matters
    bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.rand(3, 3, 96, 96) * 255
    with torch.no_grad():
        logits, maps = class_maps(model, x)
        expected = model(x)
    assert maps.shape == (3, 2, 3, 3)  # stride 32
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # The maps are not flat: where the evidence lies differs between locations.
    assert (maps.flatten(2).std(2) > 0).all()
    with pytest.raises(ValueError, match="eval"):
        class_maps(model.train(), x)


def test_evidence_map_is_the_positive_margin_scaled_to_one() -> None:
    import numpy as np

    from weldray.inference.explain import evidence_map, peak_xy, upsample

    maps = np.zeros((2, 3, 4), np.float32)
    maps[1, 2, 3] = 4.0  # class 1's evidence at row 2, column 3
    maps[0, 0, 0] = 1.0
    heat = evidence_map(maps, 1)
    assert heat.max() == 1.0 and heat[2, 3] == 1.0 and heat[0, 0] == 0.0
    assert peak_xy(upsample(heat, (400, 300))) [0] > 300  # the right-hand side of a 400 x 300 photo
    assert evidence_map(maps * 0, 0).max() == 0.0
