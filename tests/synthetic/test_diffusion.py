"""The sdxl_turbo generator on a tiny random SDXL + ControlNet saved to local folders (CPU, offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.synthetic.tiny_sdxl import (  # noqa: F401  (fixtures)
    TinySdxl,
    offline_one_thread,
    tiny_config,
    tiny_sdxl,
    weld_photo,
)

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'weldray[synth]')")

from weldray.config.synthetic import BASE_GUIDANCE_SCALE  # noqa: E402
from weldray.synthetic.diffusion import (  # noqa: E402
    MissingWeightsError,
    SdxlTurboGenerator,
    check_weights,
    class_prompt,
)


@pytest.fixture(scope="module")
def generator(tiny_sdxl: TinySdxl) -> SdxlTurboGenerator:  # noqa: F811
    return SdxlTurboGenerator(tiny_config(tiny_sdxl), device="cpu")


def pixels(result: tuple) -> np.ndarray:
    return np.asarray(result[0], dtype=np.int16)


def test_loads_local_folders_as_turbo(generator: SdxlTurboGenerator) -> None:
    from diffusers import ControlNetModel, EulerAncestralDiscreteScheduler

    assert isinstance(generator.pipe.controlnet, ControlNetModel)
    assert isinstance(generator.pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert generator.pipe.scheduler.config.timestep_spacing == "trailing"
    assert generator.guidance_scale == 0.0
    assert generator.device.type == "cpu" and generator.dtype.is_floating_point


def test_generation_is_deterministic_by_seed_and_records_its_parameters(
    generator: SdxlTurboGenerator, tiny_sdxl: TinySdxl  # noqa: F811
) -> None:
    photos = [weld_photo(0), weld_photo(1)]
    labels = ["good_weld", "bad_weld"]
    first = generator.generate(photos, labels, [11, 12])
    again = generator.generate(photos, labels, [11, 12])
    assert [pixels(r).tolist() for r in first] == [pixels(r).tolist() for r in again]
    other_seeds = generator.generate(photos, labels, [21, 22])
    for a, b in zip(first, other_seeds, strict=True):
        assert np.abs(pixels(a) - pixels(b)).mean() > 1.0
    image, params = first[1]
    assert image.size == (64, 64) and image.mode == "RGB"
    assert params == {
        "prompt": class_prompt("bad_weld"),
        "seed": 12,
        "strength": 0.5,
        "num_inference_steps": 2,
        "guidance_scale": 0.0,
        "controlnet_conditioning_scale": 0.8,
        "width": 64,
        "height": 64,
        "sdxl_model": str(tiny_sdxl.sdxl_dir),
        "controlnet_model": str(tiny_sdxl.controlnet_dir),
        "base_model": "turbo",
        "lora_path": None,
    }
    assert "good weld" in class_prompt("good_weld") and "bad weld" in class_prompt("bad_weld")


def test_output_keeps_the_source_aspect_and_input_order(generator: SdxlTurboGenerator) -> None:
    # Long side image_size (64); sides rounded to the model's multiple (tiny VAE x UNet downscale: 4).
    photos = [weld_photo(0, (96, 64)), weld_photo(1, (64, 64)), weld_photo(2, (40, 100))]
    results = generator.generate(photos, ["good_weld"] * 3, [1, 2, 3])
    assert [r[0].size for r in results] == [(64, 44), (64, 64), (24, 64)]
    assert [(r[1]["width"], r[1]["height"]) for r in results] == [(64, 44), (64, 64), (24, 64)]
    assert [r[1]["seed"] for r in results] == [1, 2, 3]


def test_prompt_source_and_control_settings_steer_the_image(
    generator: SdxlTurboGenerator, tiny_sdxl: TinySdxl  # noqa: F811
) -> None:
    photo = weld_photo(3)
    base = pixels(generator.generate([photo], ["good_weld"], [5])[0])
    other_label = pixels(generator.generate([photo], ["bad_weld"], [5])[0])
    other_source = pixels(generator.generate([weld_photo(4)], ["good_weld"], [5])[0])
    # The tiny random text encoders steer weakly, but the class prompt must reach the UNet.
    assert (base != other_label).mean() > 0.1
    assert np.abs(base - other_source).mean() > 1.0
    no_control = SdxlTurboGenerator(tiny_config(tiny_sdxl, controlnet_conditioning_scale=0.0), device="cpu")
    assert np.abs(base - pixels(no_control.generate([photo], ["good_weld"], [5])[0])).mean() > 0.5


def test_missing_model_folder_names_the_key_and_the_layout(tmp_path: Path, tiny_sdxl: TinySdxl) -> None:  # noqa: F811
    missing = tmp_path / "no_such_model"
    with pytest.raises(MissingWeightsError, match=r"synthetic\.sdxl_model.*not found.*save_pretrained"):
        SdxlTurboGenerator(tiny_config(tiny_sdxl, sdxl_model=str(missing)))
    with pytest.raises(MissingWeightsError, match=r"synthetic\.controlnet_model.*not found.*save_pretrained"):
        check_weights(tiny_config(tiny_sdxl, controlnet_model=str(missing)))


def test_incomplete_pipeline_folder_names_the_missing_file(tmp_path: Path, tiny_sdxl: TinySdxl) -> None:  # noqa: F811
    broken = tmp_path / "sdxl"
    shutil.copytree(tiny_sdxl.sdxl_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(MissingWeightsError, match=r"no weight file .* in .*unet.*save_pretrained"):
        check_weights(tiny_config(tiny_sdxl, sdxl_model=str(broken)))
    (broken / "model_index.json").unlink()
    with pytest.raises(MissingWeightsError, match=r"model_index\.json not found"):
        check_weights(tiny_config(tiny_sdxl, sdxl_model=str(broken)))


def test_hub_id_offline_and_not_cached_fails_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_sdxl: TinySdxl  # noqa: F811
) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    with pytest.raises(MissingWeightsError, match=r"synthetic\.sdxl_model='stabilityai/sdxl-turbo'.*cache"):
        check_weights(tiny_config(tiny_sdxl, sdxl_model="stabilityai/sdxl-turbo"))
    with pytest.raises(MissingWeightsError, match=r"synthetic\.controlnet_model='xinsir/controlnet-tile-sdxl-1\.0'"):
        check_weights(tiny_config(tiny_sdxl, controlnet_model="xinsir/controlnet-tile-sdxl-1.0"))


def test_missing_lora_fails_fast(tmp_path: Path, tiny_sdxl: TinySdxl) -> None:  # noqa: F811
    with pytest.raises(MissingWeightsError, match=r"synthetic\.lora_path.*weldray train-lora"):
        check_weights(tiny_config(tiny_sdxl, lora_path=str(tmp_path / "lora")))


def test_base_model_samples_with_classifier_free_guidance(
    generator: SdxlTurboGenerator, tiny_sdxl: TinySdxl  # noqa: F811
) -> None:
    base = SdxlTurboGenerator(tiny_config(tiny_sdxl, base_model="base"), device="cpu")
    image, params = base.generate([weld_photo(6)], ["bad_weld"], [8])[0]
    turbo, _ = generator.generate([weld_photo(6)], ["bad_weld"], [8])[0]
    assert params["guidance_scale"] == BASE_GUIDANCE_SCALE > 1 and params["base_model"] == "base"
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(turbo, dtype=np.int16)).mean() > 0.1
    # synthetic.guidance_scale reaches the sampler: another scale, another image.
    weak = SdxlTurboGenerator(tiny_config(tiny_sdxl, base_model="base", guidance_scale=1.5), device="cpu")
    weak_image, weak_params = weak.generate([weld_photo(6)], ["bad_weld"], [8])[0]
    assert weak_params["guidance_scale"] == 1.5
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(weak_image, dtype=np.int16)).mean() > 0.1
