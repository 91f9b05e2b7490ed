"""The generate job (copy_paste) with one GenerateActor killed mid-job (benchmarks/chaos_pipeline.py): every
(source, seed) task ends with exactly one record and its candidate file, the same files as an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import chaos_pipeline
import pytest

from tests.ray_checks import held_after
from tests.synthetic.helpers import write_labelled_dataset

pytestmark = pytest.mark.ray

PER_CLASS = 100  # 200 tasks, ~3 s of work: long enough for the killer to find the pool and strike mid-job
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.image_size=64", "data.n_folds=2",
        "synthetic.concurrency=2"]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labelled_dataset(tmp_path_factory.mktemp("chaos_gen") / "ds", 8, 96)


@pytest.fixture(scope="module")
def uninterrupted(ray_local: None, labelled: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("chaos_gen_ref") / "syn"
    figures, _ = chaos_pipeline.generate_scenario(labelled, out, None, PER_CLASS, TINY)
    n = 2 * PER_CLASS
    assert (figures.sent, figures.processed, figures.duplicates, figures.lost) == (n, n, 0, 0), figures
    return chaos_pipeline._digest(out, "_synthetic/candidates/*/*.jpg")


@pytest.mark.parametrize("how", ["sigkill", "ray_kill"])
def test_an_actor_killed_mid_job_leaves_every_task_generated_once(
    labelled: Path, uninterrupted: dict[str, str], tmp_path: Path, how: str
) -> None:
    figures, rec = chaos_pipeline.generate_scenario(labelled, tmp_path / "syn", how, PER_CLASS, TINY,
                                                    baseline=uninterrupted)
    print(figures)
    assert figures.kill and figures.kill["outputs_before"] < 2 * PER_CLASS, figures  # struck mid-job
    assert (figures.sent, figures.processed, figures.rejected) == (2 * PER_CLASS, 2 * PER_CLASS, 0)
    assert figures.duplicates == 0 and figures.lost == 0, figures
    assert len(rec) == 2 * PER_CLASS and not rec.duplicated(["source", "seed"]).any()
    assert figures.same_as_uninterrupted
    # The pool's surviving actor went with the aborted execution: the next stage gets every CPU.
    assert held_after("GenerateActor") == ([], 0.0)
