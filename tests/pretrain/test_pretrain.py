"""The DINO warm-up: its loss falls, its weights load into the classifier through ``model.weights=``, bad config and
missing weights fail before Ray starts, and the images it learns from (DATA, extra folders, synthetic)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from tests.data.helpers import distinct_image
from weldray.cli import app
from weldray.config import ConfigError, WeldrayConfig, load_config

DINOV2 = "vit_small_patch14_dinov2.lvd142m"


def _cfg(procedural_dir: Path, tmp: Path, *extra: str) -> WeldrayConfig:
    return load_config(
        [
            "profile=quick_test",
            f"data.root={procedural_dir}",
            f"output_dir={tmp}",
            f"ray.storage_path={tmp / 'ray_results'}",
            *extra,
        ]
    )


# ----- a run on Ray Train -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def warmed_up(procedural_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: None) -> Path:
    """4 short epochs from the ImageNet Lite0 weights (offline, pip-shipped) at the quick_test crop sizes, on the 32
    photos plus 96 unlabelled procedural welds in extra folders: 16 steps an epoch, the default recipe. In trial runs
    the loss fell by 0.5-0.85 over the 4 epochs; with 8 steps an epoch the epoch-to-epoch noise (~0.2) was as large
    as the fall."""
    from weldray.data.procedural import ProceduralSpec, generate_dataset
    from weldray.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("pretrain")
    extra = generate_dataset(tmp / "unlabelled", ProceduralSpec(n_per_class=48, image_size=160, seed=8))
    cfg = _cfg(procedural_dir, tmp, "model.pretrained=true", "pretrain.epochs=4", "pretrain.run_name=warm",
               f"pretrain.extra_data=[{extra / 'good_welds'},{extra / 'bad_welds'}]")
    return pretrain(cfg)


@pytest.mark.ray
def test_dino_loss_falls_and_the_run_directory_holds_weights_metrics_and_config(warmed_up: Path) -> None:
    assert warmed_up.name == "warm" and warmed_up.parent.name == "pretrain"
    for name in ("backbone.safetensors", "metrics.json", "config.yaml"):
        assert (warmed_up / name).is_file(), name
    m = json.loads((warmed_up / "metrics.json").read_text())
    losses = [h["loss"] for h in m["history"]]
    assert [h["epoch"] for h in m["history"]] == [0, 1, 2, 3]
    assert losses[-1] < losses[0], losses
    assert m["loss_first"] == losses[0] and m["loss_last"] == losses[-1]
    assert m["images"]["n_data"] == 32 and m["images"]["n_extra"] == 96 and m["images"]["n_decoded"] == 128
    assert m["initial_weights"].startswith("pip:")  # ImageNet Lite0, resolved the usual way
    # The teacher's momentum follows its cosine schedule up to momentum_end.
    assert m["history"][0]["teacher_momentum"] >= 0.996 and m["history"][-1]["teacher_momentum"] == 1.0


@pytest.mark.ray
def test_written_backbone_loads_into_the_classifier_through_model_weights(warmed_up: Path) -> None:
    from safetensors.torch import load_file

    from weldray.models import build_classifier

    weights = warmed_up / "backbone.safetensors"
    saved = load_file(str(weights))
    cfg = load_config(["profile=quick_test", "model.pretrained=true", f"model.weights={weights}"])
    model = build_classifier(cfg.model, 2)
    assert model.weights_source == f"file:{weights}"
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(saved)
    for key, tensor in saved.items():
        assert loaded[key].shape == tensor.shape, key
        assert torch.equal(loaded[key], tensor), key
    # The warm-up changed the ImageNet weights it started from.
    imagenet = build_classifier(load_config(["profile=quick_test", "model.pretrained=true"]).model, 2).backbone
    assert any(not torch.equal(imagenet.state_dict()[k], v) for k, v in saved.items() if v.is_floating_point())


# ----- checks before Ray starts -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("pretrain.epochs=0", "pretrain.epochs"),
        ("pretrain.batch_size=1", "pretrain.batch_size"),
        ("pretrain.local_crop_size=300", "pretrain.local_crop_size"),
        ("pretrain.global_crop_scale=[0.9,0.4]", "pretrain.global_crop_scale"),
        ("pretrain.local_crop_scale=[0,0.4]", "pretrain.local_crop_scale"),
        ("pretrain.n_local_crops=-1", "pretrain.n_local_crops"),
        ("pretrain.out_dim=0", "pretrain.out_dim"),
        ("pretrain.teacher_temp=0.2", "pretrain.teacher_temp"),
        ("pretrain.warmup_teacher_temp=0", "pretrain.warmup_teacher_temp"),
        ("pretrain.momentum_end=0.9", "pretrain.momentum_end"),
        ("pretrain.momentum_start=1.5", "pretrain.momentum_start"),
        ("pretrain.run_name=a/b", "pretrain.run_name"),
        ("pretrain.epochs=many", "pretrain.epochs"),
    ],
)
def test_invalid_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert info.value.key == key and str(info.value).startswith(key)


def test_help_says_what_it_writes() -> None:
    result = CliRunner().invoke(app, ["pretrain", "--help"])
    assert result.exit_code == 0, result.output
    assert "DINO" in result.output and "model.weights" in result.output


def test_config_error_from_the_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pretrain", str(tmp_path), "pretrain.teacher_temp=0.5"])
    assert result.exit_code == 2, result.output
    assert "pretrain.teacher_temp" in result.output and "Traceback" not in result.output


def test_every_profile_sets_a_pretrain_scale() -> None:
    quick, cpu, production = (load_config([f"profile={p}"]).pretrain for p in ("quick_test", "cpu", "production"))
    assert quick.epochs < cpu.epochs < production.epochs
    assert quick.global_crop_size < cpu.global_crop_size


def test_missing_dinov2_weights_fail_before_ray_starts(procedural_dir: Path, tmp_path: Path) -> None:
    import ray

    from weldray.models.weights import WeightsNotFoundError
    from weldray.pretrain import pretrain

    was_up = ray.is_initialized()  # the session's Ray may be up (other tests): it must not start one
    missing = tmp_path / "dinov2_vits14.safetensors"
    cfg = _cfg(procedural_dir, tmp_path, f"model.backbone={DINOV2}", "model.pretrained=true",
               f"model.weights={missing}")
    with pytest.raises(WeightsNotFoundError, match=str(missing)):
        pretrain(cfg)
    assert ray.is_initialized() == was_up
    assert not (tmp_path / "pretrain").exists()


def test_missing_dinov2_weights_offline_say_which_file_to_provide(
    procedural_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(
        app, ["pretrain", str(procedural_dir), "profile=quick_test", f"model.backbone={DINOV2}",
              "model.pretrained=true", f"output_dir={tmp_path}"],
    )
    assert result.exit_code == 1, result.output
    assert DINOV2 in result.output and "model.weights=" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "pretrain").exists()


def test_dinov2_vit_from_a_local_file_takes_global_and_local_views(tmp_path: Path) -> None:
    """What the workers build for a DINOv2 ViT (random weights stand in for the user's file): it loads the file
    and runs the multi-crop views, whose sizes differ from the ViT's native 518 px."""
    import timm
    from safetensors.torch import save_file

    from weldray.pretrain import preflight
    from weldray.pretrain.loop import DinoNet, build_backbone

    weights = tmp_path / "dinov2.safetensors"
    save_file(timm.create_model(DINOV2, pretrained=False, num_classes=0).state_dict(), str(weights))
    cfg = load_config(["profile=quick_test", f"model.backbone={DINOV2}", "model.pretrained=true",
                       f"model.weights={weights}"])
    state, source, mean, std = preflight(cfg)
    assert source == f"file:{weights}" and len(mean) == len(std) == 3
    net = DinoNet(build_backbone(cfg.model), {**cfg.pretrain.__dict__})
    net.backbone.load_state_dict(state)
    p = cfg.pretrain
    views = [torch.rand(2, 3, p.global_crop_size, p.global_crop_size)] * 2
    views += [torch.rand(2, 3, p.local_crop_size, p.local_crop_size)] * p.n_local_crops
    with torch.no_grad():
        out = net(views)
    assert len(out) == len(views) and all(o.shape == (2, p.out_dim) for o in out)


def test_view_size_the_backbone_cannot_take_names_the_key() -> None:
    from weldray.pretrain import preflight

    # A CoAtNet's attention stages are sized for its native input: the 64 px global views do not fit.
    cfg = load_config(["profile=quick_test", "model.backbone=test_coatnet"])
    with pytest.raises(ConfigError) as info:
        preflight(cfg)
    assert info.value.key == "pretrain.global_crop_size" and "test_coatnet cannot take 64 px views" in str(info.value)


# ----- the images it learns from -------------------------------------------------------------------------------------

def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        distinct_image(seed + i, 64).save(folder / f"img_{i}.png")


def test_extra_folders_add_every_image_but_weldray_side_folders(procedural_dir: Path, tmp_path: Path) -> None:
    from weldray.pretrain.data import pretrain_rows

    extra = tmp_path / "unlabelled"
    _images(extra / "a", 3, 100)
    _images(extra / "b" / "deeper", 2, 200)
    _images(extra / "_text_removal" / "masks", 4, 300)  # a `weldray clean` output's masks: not photos
    cfg = _cfg(procedural_dir, tmp_path, f"pretrain.extra_data=[{extra},{procedural_dir / 'good_welds'}]")
    rows, sources = pretrain_rows(cfg)
    assert sources["n_data"] == 32 and sources["n_extra"] == 5
    assert len(rows) == 32 + 5  # DATA's photos named again in extra_data are not learnt from twice
    assert not rows["path"].str.contains("_text_removal").any()
    assert (rows["label_index"] == -1).all()  # labels are not used


def test_missing_or_empty_extra_folder_is_named(procedural_dir: Path, tmp_path: Path) -> None:
    from weldray.pretrain import preflight

    (tmp_path / "empty").mkdir()
    for folder, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "no images")):
        cfg = _cfg(procedural_dir, tmp_path, f"pretrain.extra_data=[{folder}]")
        with pytest.raises(FileNotFoundError, match=f"pretrain.extra_data: .*{words}"):
            preflight(cfg)


def test_held_out_fold_is_left_out(procedural_dir: Path, tmp_path: Path) -> None:
    from weldray.pretrain.data import pretrain_rows

    rows, sources = pretrain_rows(_cfg(procedural_dir, tmp_path, "training.cv_fold=0"))
    manifest = pd.read_parquet(sources["manifest"])
    assert set(rows["path"]) == set(manifest.loc[manifest["fold"] != 0, "path"])
    assert sources["rows"] == "every fold but 0"


def _generate_output(root: Path, sources: list[str]) -> Path:
    """The parts of a `weldray generate` output that training's synthetic mix reads: accepted images with the
    real photos each came from."""
    (root / "_synthetic").mkdir(parents=True)
    records = []
    for i, source in enumerate(sources):
        out = root / "bad_welds" / f"syn_{i}.jpg"
        out.parent.mkdir(exist_ok=True)
        distinct_image(500 + i, 64).save(out)
        records.append({"name": f"syn_{i}", "label": "bad_weld", "output": str(out), "accepted": True,
                        "source_ids": json.dumps([source])})
    pd.DataFrame(records).to_parquet(root / "_synthetic" / "records.parquet")
    (root / "_synthetic" / "summary.json").write_text(json.dumps({"scope": "all", "teacher": None, "lora": None}))
    return root


def test_synthetic_images_join_when_their_sources_are_learnt_from(procedural_dir: Path, tmp_path: Path) -> None:
    from weldray.data import load_manifest, resolve_dataset
    from weldray.pretrain.data import pretrain_rows
    from weldray.synthetic.lineage import LineageError

    manifest = load_manifest(resolve_dataset(_cfg(procedural_dir, tmp_path)))
    in_fold0 = manifest.loc[manifest["fold"] == 0, "relpath"].tolist()
    synthetic = _generate_output(tmp_path / "generated", in_fold0[:2])
    rows, sources = pretrain_rows(_cfg(procedural_dir, tmp_path, f"pretrain.synthetic_data={synthetic}"))
    assert sources["n_synthetic"] == 2 and len(rows) == 34
    # Made from fold 0's photos: refused when fold 0 is held out (it would reach the model judged on it).
    with pytest.raises(LineageError, match="come from photos this training does not train on"):
        pretrain_rows(_cfg(procedural_dir, tmp_path, f"pretrain.synthetic_data={synthetic}", "training.cv_fold=0"))
