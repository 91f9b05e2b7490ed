"""Config composition, profiles and validation errors that name the key."""

from __future__ import annotations

import pytest

from weldray.config import PROFILES, ConfigError, WeldrayConfig, load_config


def test_default_profile_is_cpu() -> None:
    cfg = load_config()
    assert isinstance(cfg, WeldrayConfig)
    assert cfg.profile == "cpu"
    assert cfg.model.backbone == "efficientnet_lite0"


def test_production_profile_is_the_seed_recipe() -> None:
    cfg = load_config(["profile=production"])
    assert cfg.model.backbone == "convnextv2_nano.fcmae_ft_in22k_in1k_384"
    assert cfg.model.image_size == 448
    assert cfg.training.epochs == 90
    assert cfg.training.batch_size == 64
    assert cfg.training.mix_real_ratio == 0.25
    # The design's diffusion generator, not copy_paste (which lowered the paired CV on the real photos).
    assert (cfg.synthetic.generator, cfg.synthetic.train_lora) == ("sdxl_turbo", True)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_composes(profile: str) -> None:
    assert load_config([f"profile={profile}"]).profile == profile


def test_overrides_reach_every_group() -> None:
    cfg = load_config(["training.epochs=50", "data.n_folds=3", "serve.port=9000", "model.margin=0.3"])
    assert (cfg.training.epochs, cfg.data.n_folds, cfg.serve.port, cfg.model.margin) == (50, 3, 9000, 0.3)


def test_command_line_beats_profile() -> None:
    assert load_config(["profile=production", "training.epochs=3"]).training.epochs == 3


def test_interpolation_follows_output_dir() -> None:
    assert load_config(["output_dir=/tmp/x"]).ray.storage_path == "/tmp/x/ray_results"


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.epochs=abc", "training.epochs"),
        ("training.epochs=0", "training.epochs"),
        ("model.head=triplet", "model.head"),
        ("data.val_fraction=1.5", "data.val_fraction"),
        ("data.hash_method=md5", "data.hash_method"),
        ("serve.port=70000", "serve.port"),
        ("serve.ingress=nginx", "serve.ingress"),
        ("text_removal.detector=tesseract", "text_removal.detector"),
        ("text_removal.segmenter=craft", "text_removal.segmenter"),
        ("text_removal.segmenter_threshold=1.5", "text_removal.segmenter_threshold"),
        ("export.format=tflite", "export.format"),
        ("training.image_sizes=[100]", "training.image_sizes"),
        ("training.crop_scale=[0.8,0.5]", "training.crop_scale"),
        ("training.crop_scale=[0,1]", "training.crop_scale"),
        ("training.freeze_epochs=24", "training.freeze_epochs"),
        ("training.freeze_epochs=-1", "training.freeze_epochs"),
        ("training.box_crop_prob=1.5", "training.box_crop_prob"),
        ("synthetic.generator=gan", "synthetic.generator"),
        ("synthetic.num_inference_steps=8", "synthetic.num_inference_steps"),
        ("synthetic.base_model=sd15", "synthetic.base_model"),
        ("synthetic.strength=0", "synthetic.strength"),
        ("synthetic.strength=0.4", "synthetic.strength"),  # int(2 steps x 0.4) = 0 denoising steps
        ("synthetic.base_model=base synthetic.num_inference_steps=51", "synthetic.num_inference_steps"),
        ("synthetic.guidance_scale=5.0", "synthetic.guidance_scale"),  # turbo samples without guidance
        ("synthetic.base_model=base synthetic.guidance_scale=-1", "synthetic.guidance_scale"),
        ("synthetic.scale_range=[1.5,0.5]", "synthetic.scale_range"),
        ("synthetic.min_teacher_confidence=1.5", "synthetic.min_teacher_confidence"),
        ("synthetic.train_lora=true", "synthetic.train_lora"),  # copy_paste has no LoRA
        ("synthetic.generator=sdxl_turbo synthetic.train_lora=true synthetic.lora_path=/l", "synthetic.train_lora"),
        ("synthetic.image_size=100", "synthetic.image_size"),
        ("data.labels_dir=a/b", "data.labels_dir"),
    ],
)
def test_invalid_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(override.split())
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_sampling_steps_and_guidance_follow_the_base_model() -> None:
    turbo = load_config(["synthetic.num_inference_steps=1", "synthetic.strength=1.0"]).synthetic
    assert turbo.sampling_guidance_scale == 0.0
    assert load_config(["synthetic.guidance_scale=0"]).synthetic.sampling_guidance_scale == 0.0
    base = load_config(["synthetic.base_model=base", "synthetic.num_inference_steps=30"]).synthetic
    assert base.sampling_guidance_scale == 5.0
    tuned = load_config(["synthetic.base_model=base", "synthetic.guidance_scale=7.5"]).synthetic
    assert tuned.sampling_guidance_scale == 7.5


def test_mixing_without_a_synthetic_source_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(["training.mix_real_ratio=0.5", "synthetic.generator=none"])
    assert info.value.key == "training.mix_real_ratio" and "synthetic.generator" in str(info.value)
    assert load_config(["training.mix_real_ratio=0.5", "synthetic.generator=none",
                        "training.synthetic_data=/data/syn"]).training.synthetic_data == "/data/syn"


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="training.epochz"):
        load_config(["training.epochz=3"])


def test_unknown_profile_is_rejected() -> None:
    with pytest.raises(ConfigError, match="profile"):
        load_config(["profile=gigantic"])


def test_fingerprint_changes_with_config() -> None:
    assert load_config().fingerprint() == load_config().fingerprint()
    assert load_config().fingerprint() != load_config(["training.epochs=99"]).fingerprint()
