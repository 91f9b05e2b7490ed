"""LoRA fine-tuning of the tiny SDXL UNet: it learns, saves in diffusers format, loads back exactly (CPU, offline)."""

from __future__ import annotations

import json
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

from weldray.synthetic.diffusion import (  # noqa: E402
    LORA_WEIGHT_NAME,
    MissingWeightsError,
    SdxlTurboGenerator,
    class_prompt,
)
from weldray.synthetic.lora import (  # noqa: E402
    TRAIN_LOG_NAME,
    LoraTrainer,
    lora_source_ids,
    train_lora,
    train_lora_on_dataset,
)

LABELS = ["good_weld", "bad_weld"] * 3


@pytest.fixture(scope="module")
def photos() -> list:
    return [weld_photo(i, (80, 64)) for i in range(len(LABELS))]


@pytest.fixture(scope="module")
def trained_lora(tiny_sdxl: TinySdxl, photos: list, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    cfg = tiny_config(tiny_sdxl, lora_rank=4, lora_lr=1e-1, lora_steps=10, seed=3)
    ids = [f"{label}s/photo{i}.jpg" for i, label in enumerate(LABELS)]
    return train_lora(photos, LABELS, cfg, tmp_path_factory.mktemp("lora"), device="cpu", source_ids=ids)


def test_training_lowers_the_loss_and_writes_a_diffusers_lora(trained_lora: Path) -> None:
    from safetensors.torch import load_file

    log = json.loads((trained_lora / TRAIN_LOG_NAME).read_text())
    assert len(log["losses"]) == 10 and all(np.isfinite(log["losses"]))
    # Same images, noise and timesteps before and after: a lower loss is what the LoRA learnt (deterministic by
    # seed, the adapter's initial weights included, whatever the tests before it drew).
    assert log["eval_loss_after"] < 0.98 * log["eval_loss_before"]  # 4-7 % lower over seeds 3-6
    assert log["captions"] == {"bad_weld": class_prompt("bad_weld"), "good_weld": class_prompt("good_weld")}
    assert log["images_per_label"] == {"good_weld": 3, "bad_weld": 3}
    # Lineage: which real photos influenced the LoRA (and so every image generated with it).
    expected_ids = sorted(f"{label}s/photo{i}.jpg" for i, label in enumerate(LABELS))
    assert lora_source_ids(trained_lora) == lora_source_ids(trained_lora / LORA_WEIGHT_NAME) == expected_ids
    weights = load_file(trained_lora / LORA_WEIGHT_NAME)
    # diffusers LoRA layout: unet.<module>.lora.down/up.weight for every targeted attention projection.
    assert weights and all(k.startswith("unet.") and ".lora." in k for k in weights)
    downs = {k.removesuffix(".lora.down.weight") for k in weights if k.endswith(".lora.down.weight")}
    ups = {k.removesuffix(".lora.up.weight") for k in weights if k.endswith(".lora.up.weight")}
    assert downs == ups and {k.rsplit(".", 1)[-1] for k in downs} >= {"to_k", "to_q", "to_v"}
    assert all(w.shape[0] == 4 for k, w in weights.items() if k.endswith("down.weight"))  # rank
    assert any(w.abs().max() > 0 for k, w in weights.items() if k.endswith("up.weight"))  # trained (init: zeros)


def test_saved_lora_loads_back_exactly(tiny_sdxl: TinySdxl, photos: list, tmp_path: Path) -> None:  # noqa: F811
    import torch
    from diffusers import StableDiffusionXLPipeline

    cfg = tiny_config(tiny_sdxl, lora_rank=4, lora_lr=1e-2, lora_steps=2)
    trainer = LoraTrainer(cfg, photos[:2], LABELS[:2], device="cpu")
    trainer.fit()
    trainer.save(tmp_path)
    idx = torch.arange(2)
    draw = trainer.draw(idx, torch.tensor([300, 700]))
    with torch.no_grad():
        trained, _ = trainer.predict(idx, *draw)
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl.sdxl_dir, local_files_only=True)
        trainer.unet = pipe.unet
        base, _ = trainer.predict(idx, *draw)
        pipe.load_lora_weights(tmp_path)
        loaded, _ = trainer.predict(idx, *draw)
    assert torch.equal(trained, loaded)
    assert (trained - base).abs().max() > 1e-4  # the LoRA is not a no-op


def test_lora_changes_generation_and_is_recorded(tiny_sdxl: TinySdxl, trained_lora: Path) -> None:  # noqa: F811
    photo = [weld_photo(9)]
    tuned = SdxlTurboGenerator(tiny_config(tiny_sdxl, lora_path=str(trained_lora)), device="cpu")
    image, params = tuned.generate(photo, ["bad_weld"], [4])[0]
    assert params["lora_path"] == str(trained_lora / LORA_WEIGHT_NAME)
    assert np.array_equal(np.asarray(tuned.generate(photo, ["bad_weld"], [4])[0][0]), np.asarray(image))
    tuned.pipe.disable_lora()  # the same pipeline without its LoRA: the base model's image
    base = tuned.generate(photo, ["bad_weld"], [4])[0][0]
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(base, dtype=np.int16)).mean() > 1.0


def test_bad_training_input_fails_before_loading(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:  # noqa: F811
    cfg = tiny_config(tiny_sdxl)
    with pytest.raises(ValueError, match="at least one image"):
        train_lora([], [], cfg, tmp_path)
    with pytest.raises(ValueError, match="differ in length"):
        train_lora([weld_photo(0)], ["good_weld", "bad_weld"], cfg, tmp_path)
    missing = tiny_config(tiny_sdxl, sdxl_model=str(tmp_path / "no_model"))
    with pytest.raises(MissingWeightsError, match=r"synthetic\.sdxl_model.*not found"):
        train_lora([weld_photo(0)], ["good_weld"], missing, tmp_path / "lora")
    assert not any(tmp_path.iterdir())


def test_train_lora_on_dataset_uses_only_the_folds_train_rows(tiny_sdxl: TinySdxl, tmp_path: Path) -> None:  # noqa: F811
    from tests.data.helpers import write_dataset
    from weldray.config import load_config
    from weldray.data import ingest, load_manifest
    from weldray.training.data import split_rows

    cfg = load_config([
        "profile=quick_test", f"output_dir={tmp_path / 'out'}", "data.n_folds=2", "training.cv_fold=0",
        f"synthetic.sdxl_model={tiny_sdxl.sdxl_dir}", f"synthetic.controlnet_model={tiny_sdxl.controlnet_dir}",
        "synthetic.image_size=64", "synthetic.lora_rank=4", "synthetic.lora_steps=2",
    ])
    manifest_path = ingest(str(write_dataset(tmp_path / "ds", 8)), cfg).manifest_path
    manifest = load_manifest(manifest_path)
    out = train_lora_on_dataset(str(manifest_path), tmp_path / "lora", cfg, device="cpu")
    assert (out / LORA_WEIGHT_NAME).is_file()
    ids = lora_source_ids(out)
    assert ids == sorted(split_rows(manifest, 0).train["relpath"])
    assert set(ids).isdisjoint(manifest.loc[manifest["fold"] == 0, "relpath"])  # the held-out fold never
