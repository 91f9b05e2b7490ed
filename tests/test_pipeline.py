"""Pipeline orchestration: run records, skipping up-to-date stages, re-running, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.data.helpers import write_dataset
from weldray.config.pipeline import STAGES
from weldray.pipeline import PIPELINE, StageError, run_pipeline, split_args


def test_stage_order_is_the_documented_one() -> None:
    assert tuple(s.name for s in PIPELINE) == STAGES == (
        "clean", "ingest", "generate", "pretrain", "train", "evaluate", "export"
    )


def test_split_args_turns_data_into_an_override() -> None:
    assert split_args(["../welds", "training.epochs=3"]) == ["training.epochs=3", "data.root=../welds"]
    assert split_args(["profile=quick_test"]) == ["profile=quick_test"]
    assert split_args([]) == []


def _overrides(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [f"data.root={data}", f"output_dir={tmp_path / 'out'}", "data.n_folds=2", "text_removal.enabled=false",
            "pipeline.stages=[clean,ingest]", *extra]


def test_records_stages_and_skips_what_is_up_to_date(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", 10)
    run_dir = run_pipeline(_overrides(tmp_path, data))
    assert run_dir == (tmp_path / "out" / "pipelines" / "ds-cpu").resolve()
    doc = json.loads((run_dir / "pipeline.json").read_text())
    assert doc["stages"]["clean"]["status"] == "skipped"
    assert "text_removal.enabled=false" in doc["stages"]["clean"]["note"]
    assert doc["stages"]["pretrain"]["status"] == "skipped"  # the DINO warm-up is off by default
    assert doc["stages"]["pretrain"]["note"] == "pipeline.pretrain=false"
    ingest = doc["stages"]["ingest"]
    assert ingest["status"] == "done" and ingest["metrics"]["n_images"] == 20
    assert Path(ingest["outputs"]["manifest"]).is_file()

    # Same command again: nothing re-runs.
    run_pipeline(_overrides(tmp_path, data))
    again = json.loads((run_dir / "pipeline.json").read_text())["stages"]["ingest"]
    assert again["started"] == ingest["started"] and again["key"] == ingest["key"]

    # A config change that affects the stage re-runs it.
    run_pipeline(_overrides(tmp_path, data, "data.near_duplicate_distance=4"))
    changed = json.loads((run_dir / "pipeline.json").read_text())["stages"]["ingest"]
    assert changed["key"] != ingest["key"]

    # Deleted outputs re-run too.
    Path(changed["outputs"]["manifest"]).unlink()
    run_pipeline(_overrides(tmp_path, data, "data.near_duplicate_distance=4"))
    assert Path(changed["outputs"]["manifest"]).is_file()


def test_pretrain_stage_feeds_its_weights_to_train_and_takes_the_synthetic_images(tmp_path: Path) -> None:
    from weldray.config import load_config
    from weldray.pipeline import PipelineRun, StageRecord, _pretrain_config, _stage_key, _train_config

    def run_for(*overrides: str) -> PipelineRun:
        return PipelineRun(list(overrides), load_config(list(overrides)), tmp_path)

    stage = next(s for s in PIPELINE if s.name == "pretrain")
    # Off: its keys do not change what train depends on; on: they do.
    assert _stage_key(stage, run_for("pretrain.epochs=3"), []) == _stage_key(stage, run_for(), [])
    assert _stage_key(stage, run_for("pipeline.pretrain=true", "pretrain.epochs=3"), []) != _stage_key(
        stage, run_for("pipeline.pretrain=true"), [])

    run = run_for("pipeline.pretrain=true", "profile=quick_test")
    run.records["ingest"] = StageRecord("ingest", "done", outputs={"manifest": str(tmp_path / "manifest.parquet")})
    run.records["generate"] = StageRecord("generate", "done", outputs={"synthetic_data": str(tmp_path / "generate")})
    assert _pretrain_config(run).pretrain.synthetic_data == str(tmp_path / "generate")
    assert _train_config(run).model.weights is None
    run.records["pretrain"] = StageRecord("pretrain", "done", outputs={"backbone": str(tmp_path / "b.safetensors")})
    train = _train_config(run)
    assert train.model.weights == str(tmp_path / "b.safetensors") and train.model.pretrained  # quick_test: false


def test_a_stage_cannot_run_before_its_inputs_exist(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "ds", 10)
    with pytest.raises(StageError, match="ingest"):
        run_pipeline(_overrides(tmp_path, data, "pipeline.stages=[train]"))


def test_failed_stage_is_recorded_with_how_to_rerun(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "good_welds").mkdir(parents=True)
    (empty / "bad_welds").mkdir()
    with pytest.raises(StageError, match=r"pipeline.stages=\[ingest,generate,pretrain,train,evaluate,export\]"):
        run_pipeline(_overrides(tmp_path, empty))
    doc = json.loads((tmp_path / "out" / "pipelines" / "empty-cpu" / "pipeline.json").read_text())
    assert doc["stages"]["ingest"]["status"] == "failed"
    assert "no files" in doc["stages"]["ingest"]["note"]


@pytest.mark.ray
def test_generate_stage_makes_one_set_per_training_and_is_cached(tmp_path: Path) -> None:
    from tests.synthetic.helpers import write_labelled_dataset

    data = write_labelled_dataset(tmp_path / "ds", 8)
    tiny = ["profile=quick_test", "model.backbone=test_efficientnet", "model.pretrained=false",
            "model.image_size=64", "synthetic.n_per_class=3", "synthetic.concurrency=1",
            "synthetic.min_teacher_confidence=0", "pipeline.cv_folds=[1]"]
    overrides = _overrides(tmp_path, data, "pipeline.stages=[clean,ingest,generate]", *tiny)

    run_dir = run_pipeline([*overrides, "training.mix_real_ratio=1.0"])
    stage = json.loads((run_dir / "pipeline.json").read_text())["stages"]["generate"]
    assert stage["status"] == "skipped" and "mix_real_ratio=1.0" in stage["note"]

    run_pipeline([*overrides, "training.mix_real_ratio=0.5"])
    stage = json.loads((run_dir / "pipeline.json").read_text())["stages"]["generate"]
    assert stage["status"] == "done"
    out = Path(stage["outputs"]["synthetic_data"])
    fold1 = json.loads((out / "fold1" / "_synthetic" / "summary.json").read_text())
    final = json.loads((out / "all" / "_synthetic" / "summary.json").read_text())
    manifest = pd.read_parquet(run_dir / "dataset" / "manifest.parquet")
    assert set(fold1["source_rows"]) == set(manifest.loc[manifest["fold"] != 1, "relpath"])
    assert set(final["source_rows"]) == set(manifest["relpath"])
    assert {"fold1.bad_weld.acceptance_rate", "all.good_weld.acceptance_rate"} <= set(stage["metrics"])

    run_pipeline([*overrides, "training.mix_real_ratio=0.5"])  # unchanged inputs: not generated again
    again = json.loads((run_dir / "pipeline.json").read_text())["stages"]["generate"]
    assert again["started"] == stage["started"]
    none = run_pipeline([*overrides, "training.mix_real_ratio=0.5", "synthetic.generator=none",
                         "training.synthetic_data=elsewhere"])
    stage = json.loads((none / "pipeline.json").read_text())["stages"]["generate"]
    assert stage["status"] == "skipped" and stage["note"] == "synthetic.generator=none"
