"""Ray Train runs on the procedural sample: learning, run directory contents, kill-and-resume."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from weldray.config import WeldrayConfig, load_config

pytestmark = pytest.mark.ray


def _cfg(procedural_dir: Path, tmp: Path, *extra: str) -> WeldrayConfig:
    return load_config(
        [
            "profile=quick_test",
            f"data.root={procedural_dir}",
            f"output_dir={tmp}",
            f"ray.storage_path={tmp / 'ray_results'}",
            # ImageNet weights (offline, pip-shipped) make a few short epochs enough to learn.
            # Softmax head and no MixUp/CutMix: ArcFace (s=30, m=0.5) needs far more than ~12
            # steps to leave the one-class solution (its math is tested in tests/models).
            "model.pretrained=true",
            "model.head=softmax",
            "training.mixup_prob=0",
            "training.epochs=4",
            "training.early_stopping_patience=0",
            "training.batch_size=8",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def cv_and_final_fit(
    procedural_dir: Path, tmp_path_factory: pytest.TempPathFactory, ray_local: None
) -> tuple[dict, Path]:
    """What `weldray cv` then `weldray train` with the same overrides do (one fold, to stay quick)."""
    from weldray.training import cross_validate, train

    cfg = _cfg(procedural_dir, tmp_path_factory.mktemp("train"))
    summary = cross_validate(cfg, [0])
    return summary, train(
        _cfg(procedural_dir, Path(cfg.output_dir), "training.run_name=learn", "training.log_mlflow=true")
    )


@pytest.fixture(scope="module")
def trained_run(cv_and_final_fit: tuple[dict, Path]) -> Path:
    return cv_and_final_fit[1]


def test_run_directory_layout(trained_run: Path) -> None:
    for name in ("model.pt", "config.yaml", "metrics.json"):
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    m = json.loads((trained_run / "metrics.json").read_text())
    assert m["epochs_run"] == 4 and [h["epoch"] for h in m["history"]] == list(range(4))
    # No early stopping: the run keeps its final (EMA) weights, not a noisy best-validation epoch.
    assert m["kept"]["epoch"] == 3
    assert m["temperature"] > 0


def test_mlflow_records_the_run_and_its_epochs_in_the_output_folder(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """training.log_mlflow with the default URI: MLflow 3's file store, no server, beside the runs."""
    pytest.importorskip("mlflow", reason="the tracking extra (mlflow) is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this reader; the run's worker sets its own
    client = MlflowClient(f"file:{trained_run.parent.parent / 'mlruns'}")
    (run,) = client.search_runs([client.get_experiment_by_name("weldray").experiment_id])
    assert run.info.run_name == "learn" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]


def test_final_fit_trains_on_every_labelled_row(trained_run: Path) -> None:
    import pandas as pd

    m = json.loads((trained_run / "metrics.json").read_text())
    manifest = pd.read_parquet(m["manifest"])
    assert m["n_train"] == int((manifest["split"] != "excluded").sum()) > 0
    assert m["n_val"] == m["n_test"] == 0 and "test" not in m
    assert "val_bal_acc" not in m["history"][-1]  # nothing held out, nothing validated


def test_final_fit_takes_figures_and_temperature_from_the_out_of_fold_predictions(
    cv_and_final_fit: tuple[dict, Path],
) -> None:
    import numpy as np

    from weldray.evaluation.metrics import fit_temperature
    from weldray.evaluation.report import read_predictions
    from weldray.models import load_checkpoint

    summary, run_dir = cv_and_final_fit
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["evaluation"]["cv_summary"] == summary["path"]
    assert "out-of-fold" in m["evaluation"]["source"] and m["evaluation"]["folds"] == [0]
    # The pooled out-of-fold rows are fold 0's rows, each predicted by the model that never saw it.
    rows, logits = read_predictions(Path(summary["folds"][0]["run_dir"]) / "report")
    assert summary["oof"]["n"] == len(rows) == json.loads(
        (Path(summary["folds"][0]["run_dir"]) / "metrics.json").read_text())["n_test"]
    expected = fit_temperature(logits, rows["label_index"].to_numpy())
    assert summary["oof_temperature"] == pytest.approx(expected)
    assert m["temperature"] == pytest.approx(summary["oof_temperature"])
    _, meta = load_checkpoint(run_dir / "model.pt")
    assert meta.temperature == pytest.approx(expected)
    assert meta.metrics["cv_balanced_accuracy"] == pytest.approx(summary["oof"]["balanced_accuracy"])
    assert np.isfinite(summary["oof"]["nll"]) and Path(summary["report"]).is_file()


@pytest.mark.slow
def test_a_seed_ensemble_reuses_the_finished_cv_of_its_first_seed(
    cv_and_final_fit: tuple[dict, Path], procedural_dir: Path
) -> None:
    """`weldray cv DATA --seeds 2` after `weldray cv DATA`: seed 42's CV is reused as it is, only seed 43's folds
    train, and the ensemble's fold row keeps both members' figures."""
    from weldray.training import cross_validate

    first, _ = cv_and_final_fit
    written = Path(first["path"]).stat().st_mtime_ns
    cfg = _cfg(procedural_dir, Path(first["path"]).parents[1])
    summary = cross_validate(cfg, [0], seeds=2)
    assert Path(first["path"]).stat().st_mtime_ns == written
    second = json.loads(Path(summary["members"][1]).read_text())
    assert summary["members"][0] == first["path"] and second["path"] != first["path"]
    run_dir = Path(second["folds"][0]["run_dir"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 43
    assert json.loads((run_dir / "metrics.json").read_text())["n_test"] == summary["oof"]["n"]
    assert summary["folds"][0]["member_balanced_accuracy"] == [
        first["folds"][0]["balanced_accuracy"], second["folds"][0]["balanced_accuracy"]
    ]
    assert summary["name"].endswith("-2seeds") and Path(summary["report"]).is_file()


def test_export_writes_a_model_card_whose_command_rebuilds_the_recipe(
    cv_and_final_fit: tuple[dict, Path], procedural_dir: Path, tmp_path: Path
) -> None:
    """MODEL_CARD.md says what was trained on what and how well (the CV figures, named as such), and its
    `weldray train` line composes a config with the same recipe hash as the run's (a user can rebuild it)."""
    import re
    import shlex

    import yaml

    from weldray.config import WeldrayConfig
    from weldray.export import export_checkpoint
    from weldray.export.model_card import _as_config
    from weldray.training.cv import recipe_fingerprint

    summary, run_dir = cv_and_final_fit
    cfg = load_config([f"export.check_images={procedural_dir}", "export.parity_images=4"])
    result = export_checkpoint(run_dir, cfg, output=tmp_path / "m.onnx")
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert result.artefacts["model_card"] == str(tmp_path / "MODEL_CARD.md")
    m = json.loads((run_dir / "metrics.json").read_text())
    assert "`good_weld`, `bad_weld`" in card and f"{m['n_train']} training images" in card
    assert f"balanced accuracy {summary['oof']['balanced_accuracy']:.3f}" in card and "out-of-fold" in card
    assert f"Temperature {m['temperature']:.3g}" in card and "ONNX fp32 vs PyTorch: argmax agreement" in card
    train_line = re.search(r"^weldray train .*$", card, re.M).group(0)
    data, *overrides = shlex.split(train_line)[2:]
    rebuilt = load_config([*overrides, f"data.root={data}", f"output_dir={tmp_path}"])
    ran = _as_config(yaml.safe_load((run_dir / "config.yaml").read_text()), WeldrayConfig)
    assert recipe_fingerprint(rebuilt) == recipe_fingerprint(ran) and recipe_fingerprint(ran) in card
    assert re.search(r"^weldray export \S+.*export\.check_images=", card, re.M)


def test_train_with_seeds_exports_one_graph_of_its_final_fits(
    procedural_dir: Path, tmp_path: Path, ray_local: None
) -> None:
    """`weldray train DATA --seeds 2 training.run_name=ens`: the final fits of seeds 42 and 43, each on every
    labelled row, and one ONNX graph of both, each member calibrated by its own temperature. The same command
    again resumes its finished members: no epoch is trained twice."""
    from weldray.inference import WeldClassifierInference
    from weldray.models import load_checkpoint
    from weldray.training import train_seed_ensemble

    cfg = _cfg(
        procedural_dir, tmp_path, "training.run_name=ens", "training.epochs=2",
        f"export.check_images={procedural_dir}", "export.parity_images=4",
    )
    ensemble = train_seed_ensemble(cfg, 2)
    runs, result = ensemble.runs, ensemble.export
    assert ensemble.cv_summary is None  # `weldray cv --seeds 2` has not run
    assert [r.name for r in runs] == ["ens-seed42", "ens-seed43"]
    for run, seed in zip(runs, (42, 43), strict=True):
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == seed
        m = json.loads((run / "metrics.json").read_text())
        assert m["n_train"] > 0 and m["n_val"] == m["n_test"] == 0
    (a, meta_a), (b, meta_b) = (load_checkpoint(run) for run in runs)
    assert any(not (a.state_dict()[k] == b.state_dict()[k]).all() for k in a.state_dict())  # two models
    assert result.path == tmp_path / "ensembles" / "ens-2seeds" / "weld_classifier.onnx"
    assert result.report["onnx_vs_torch"]["argmax_agreement"] == 1.0
    clf = WeldClassifierInference(result.path, providers="cpu")
    assert clf.metadata["ensemble_members"] == 2
    assert [m["temperature"] for m in clf.sidecar.members] == [meta_a.temperature, meta_b.temperature]

    def checkpoints() -> list[list[str]]:
        storage = [Path(json.loads((run / "metrics.json").read_text())["ray_storage"]) for run in runs]
        return [sorted(p.name for p in s.glob("checkpoint_*")) for s in storage]

    saved = checkpoints()
    assert all(saved)
    again = train_seed_ensemble(cfg, 2)
    assert again.runs == runs and again.export.path == result.path
    assert checkpoints() == saved  # each member resumed from its last epoch's checkpoint and trained none
    a2, _ = load_checkpoint(runs[0])
    assert all((a.state_dict()[k] == a2.state_dict()[k]).all() for k in a.state_dict())


def test_a_seed_ensemble_refuses_an_export_this_machine_cannot_make_before_training(tmp_path: Path) -> None:
    from weldray.export import TensorRTUnavailableError, require_tensorrt
    from weldray.training import train_seed_ensemble

    try:
        require_tensorrt()
        pytest.skip("this machine has a GPU with TensorRT: it can export the engine")
    except TensorRTUnavailableError:
        pass
    cfg = load_config(["export.format=tensorrt", f"output_dir={tmp_path}", "data.root=/nonexistent"])
    with pytest.raises(TensorRTUnavailableError, match="needs an NVIDIA GPU"):
        train_seed_ensemble(cfg, 2)
    with pytest.raises(ValueError, match="2 or more seeds"):
        train_seed_ensemble(load_config([f"output_dir={tmp_path}"]), 1)
    assert not (tmp_path / "runs").exists()


def test_a_cv_fold_trains_on_every_row_outside_it(cv_and_final_fit: tuple[dict, Path]) -> None:
    summary, run_dir = cv_and_final_fit
    fold = json.loads((Path(summary["folds"][0]["run_dir"]) / "metrics.json").read_text())
    final = json.loads((run_dir / "metrics.json").read_text())
    assert fold["n_val"] == 0 and fold["n_train"] + fold["n_test"] == final["n_train"]


def test_the_same_seed_trains_the_same_model(procedural_dir: Path, tmp_path: Path, ray_local: None) -> None:
    """Two runs with one seed (augmentation, shuffling and MixUp/CutMix on, two image sizes) end with the same
    weights and losses, epoch by epoch; another seed trains another model."""
    import torch

    from weldray.models import load_checkpoint
    from weldray.training import train

    runs = [
        train(_cfg(procedural_dir, tmp_path, f"training.run_name=s{i}", f"seed={seed}", "training.epochs=2",
                   "training.mixup_prob=1.0", "training.image_sizes=[64,96]", "model.image_size=96"))
        for i, seed in enumerate((7, 7, 8))
    ]
    losses = [[h["train_loss"] for h in json.loads((r / "metrics.json").read_text())["history"]] for r in runs]
    assert losses[0] == losses[1] != losses[2]
    weights = [load_checkpoint(r)[0].state_dict() for r in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


@pytest.mark.slow
def test_training_learns(tmp_path: Path, ray_local: None) -> None:
    """Accuracy well above chance (0.5) on the procedural images, and the training loss falls.
    Slow: it needs more images (50 per class at 128 px) and steps than the default-suite run, whose
    16 images per class and ~10 optimizer steps reach only ~0.55-0.65."""
    from weldray.data.procedural import ProceduralSpec, generate_dataset
    from weldray.evaluation import predict_logits
    from weldray.models import load_checkpoint
    from weldray.training import train

    data = generate_dataset(tmp_path / "welds", ProceduralSpec(n_per_class=50, image_size=128, seed=11))
    run_dir = train(_cfg(data, tmp_path, "training.run_name=learn", "training.epochs=8", "model.image_size=128",
                         "training.image_sizes=[128]", "training.batch_size=16",
                         "training.backbone_lr_mult=1.0"))
    m = json.loads((run_dir / "metrics.json").read_text())
    losses = [h["train_loss"] for h in m["history"]]
    assert losses[-1] < losses[0]
    model, meta = load_checkpoint(run_dir)
    paths = sorted(data.glob("*_welds/*.jpg"))
    labels = [meta.classes.index("bad_weld" if p.parent.name == "bad_welds" else "good_weld") for p in paths]
    pred = predict_logits(model, [str(p) for p in paths], meta.image_size).argmax(1)
    acc = float((pred == labels).mean())
    assert acc >= 0.75, acc


def test_checkpoint_meta(trained_run: Path) -> None:
    from weldray.models import load_checkpoint

    model, meta = load_checkpoint(trained_run / "model.pt")
    assert meta.classes == ["good_weld", "bad_weld"] and meta.image_size == 96
    assert meta.run_id == "learn" and meta.manifest_sha256
    assert "out-of-fold" in meta.metrics["evaluation_source"]


def test_scaling_plan_leaves_cpu_for_ray_data() -> None:
    from weldray.training import scaling_plan

    cfg = load_config(["training.num_workers=2"])
    plan = scaling_plan(cfg, {"CPU": 2.0})
    assert plan["num_workers"] == 2 and not plan["use_gpu"]
    assert plan["cpus_per_worker"] * 2 <= 2.0 - cfg.training.data_cpus
    assert scaling_plan(load_config([]), {"CPU": 8.0, "GPU": 1.0})["use_gpu"]


def test_scaling_plan_fits_a_worker_on_one_node() -> None:
    from weldray.training import scaling_plan

    # Two 1-CPU nodes: 1.5 CPUs of room in total, but no node could host a 1.5-CPU worker.
    plan = scaling_plan(load_config(["training.num_workers=1"]), {"CPU": 2.0}, [1.0, 1.0])
    assert plan["cpus_per_worker"] <= 1.0


def _train_worker_pids() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.Process().children(recursive=True)
        if "RayTrainWorker" in " ".join(p.cmdline() or [])
    ]


@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint(procedural_dir: Path, tmp_path: Path, ray_local: None) -> None:
    """Kill the training worker process after its first checkpoint: FailureConfig restarts it
    from the last checkpoint and the run still completes every epoch, with the losses of an uninterrupted
    run; rerunning the same run name resumes again instead of starting over."""
    import os
    import signal

    from weldray.training import train

    cfg = _cfg(
        procedural_dir, tmp_path, "training.run_name=killme", "training.epochs=4", "training.max_failures=2"
    )
    storage = tmp_path / "ray_results" / "killme"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            # The snapshot is written once the controller has registered a checkpoint.
            if (storage / "checkpoint_manager_snapshot.json").is_file():
                for pid in _train_worker_pids():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    run_dir = train(cfg)
    thread.join(timeout=1)
    assert killed, "the training worker was never killed"
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert any(h["resumed_from"] >= 1 for h in history), history
    # Each epoch draws from the seed and the epoch alone: the resumed run is the uninterrupted one.
    twin = train(_cfg(procedural_dir, tmp_path, "training.run_name=twin", "training.epochs=4"))
    twin_history = json.loads((twin / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in twin_history]

    more = train(_cfg(procedural_dir, tmp_path, "training.run_name=killme", "training.epochs=5"))
    history = json.loads((more / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert history[-1]["resumed_from"] == 4


@pytest.mark.slow
def test_cross_validation_holds_out_each_fold_once(procedural_dir: Path, tmp_path: Path, ray_local: None) -> None:
    """`weldray cv`: one run per fold; each run's test rows are exactly its fold, the folds are
    disjoint, and the summary's mean is the mean of the per-fold figures."""
    import pandas as pd

    from weldray.training import cross_validate

    cfg = _cfg(procedural_dir, tmp_path, "training.epochs=1")
    summary = cross_validate(cfg, [0, 1], name="cvtest")
    assert [r["fold"] for r in summary["folds"]] == [0, 1]
    held: list[set[str]] = []
    for row in summary["folds"]:
        m = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        manifest = pd.read_parquet(m["manifest"])
        fold_rows = manifest[manifest["fold"] == row["fold"]]
        assert m["n_test"] == len(fold_rows) > 0
        assert f"test = fold {row['fold']}" in m["data"]
        held.append(set(fold_rows["path"]))
    assert not held[0] & held[1]
    mean = sum(r["balanced_accuracy"] for r in summary["folds"]) / 2
    assert summary["balanced_accuracy_mean"] == pytest.approx(mean)
    assert json.loads(Path(summary["path"]).read_text())["name"] == "cvtest"


@pytest.mark.slow
def test_killed_driver_resumes_on_the_same_command(procedural_dir: Path, tmp_path: Path) -> None:
    """`weldray train DATA training.run_name=chaos` SIGKILLed after its first checkpoint (its process group, then
    whatever of its own Ray outlived it, found by its RAY_TMPDIR), then the same command again: it resumes from the
    checkpoint and ends with the same epochs and a complete history, like an uninterrupted run
    (benchmarks/chaos_pipeline.py)."""
    import chaos_pipeline

    r = chaos_pipeline.train_driver_kill(procedural_dir, tmp_path, ["profile=quick_test", "training.epochs=3"])
    assert r["ray_processes_left"] == [], r  # nothing of the killed driver's Ray survives
    assert r["rc_resumed"] == 0 and r["rc_plain"] == 0, r["log"]
    resumed, plain = r["resumed"], r["plain"]
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2] == [h["epoch"] for h in plain["history"]]
    assert resumed["epochs_run"] == plain["epochs_run"] == 3
    assert resumed["history"][-1]["resumed_from"] >= 1  # started from the killed run's checkpoint, not over
    assert all(h["resumed_from"] == 0 for h in plain["history"])


def test_concurrent_runs_raise_the_runs_own_error(tmp_path: Path, ray_local: None) -> None:
    """Training runs driven by Ray tasks (the sweep's confirmation): a run's error reaches the caller as itself,
    not wrapped, and is not retried."""
    from weldray.training.cv import train_runs

    missing = tmp_path / "missing.parquet"
    cfg = load_config(["profile=quick_test", f"data.root={missing}", f"output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="no manifest at .*missing.parquet"):
        train_runs([cfg, cfg], concurrent=2)
