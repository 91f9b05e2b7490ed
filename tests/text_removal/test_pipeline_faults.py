"""The clean job under faults (benchmarks/chaos_pipeline.py): one CleanActor killed mid-job (SIGKILL: Ray restarts it;
``ray.kill``: gone for good), and corrupt inputs among good ones. Every image ends with exactly one record, every
cleaned image with its output file, and the outputs equal those of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import chaos_pipeline
import pytest

pytestmark = pytest.mark.ray

N = 60


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return chaos_pipeline.tiny_photos(tmp_path_factory.mktemp("chaos_clean") / "in", N)[0]


@pytest.fixture(scope="module")
def uninterrupted(ray_local: None, photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("chaos_clean_ref") / "out"
    figures, _ = chaos_pipeline.clean_scenario(photos, out, None)
    assert (figures.sent, figures.processed, figures.duplicates, figures.lost) == (N, N, 0, 0), figures
    return chaos_pipeline._digest(out, "*_welds/*")


@pytest.mark.parametrize("how", ["sigkill", "ray_kill"])
def test_an_actor_killed_mid_job_leaves_every_image_cleaned_once(
    photos: Path, uninterrupted: dict[str, str], tmp_path: Path, how: str
) -> None:
    figures, rec = chaos_pipeline.clean_scenario(photos, tmp_path / "out", how, baseline=uninterrupted)
    print(figures)
    assert figures.kill, "the kill never struck"
    assert figures.kill["outputs_before"] < N  # mid-job, not after it
    assert (figures.sent, figures.processed, figures.rejected) == (N, N, 0)
    assert figures.duplicates == 0 and figures.lost == 0, figures
    assert len(rec) == N and rec["relpath"].is_unique
    assert figures.same_as_uninterrupted  # the same files, byte for byte


def _corrupt_run(tmp_path: Path, n: int) -> None:
    inp, broken = chaos_pipeline.tiny_photos(tmp_path / "in", n, corrupt=0.03)
    assert len(broken) == round(0.03 * n) and set(broken.values()) <= set(chaos_pipeline.CORRUPT_KINDS)
    figures, rec = chaos_pipeline.clean_scenario(inp, tmp_path / "out", None)
    assert (figures.sent, figures.duplicates, figures.lost) == (n, 0, 0), figures
    rejects = rec[rec["status"] == "reject"].set_index("relpath")
    assert set(rejects.index) == set(broken)  # every corrupt file, and nothing else
    expected = {"empty": "EmptyImageError: ", "truncated_jpeg": "CorruptImageError: ",
                "random_bytes": "UnsupportedFormatError: ", "truncated_png": "CorruptImageError: "}
    for relpath, kind in broken.items():  # the decoder's reason, named by its kind
        assert rejects.at[relpath, "reason"].startswith(expected[kind]), (kind, rejects.at[relpath, "reason"])
    ok = rec[rec["status"] == "ok"]
    assert len(ok) == n - len(broken) and ok["relpath"].is_unique
    assert all((tmp_path / "out" / r).is_file() for r in ok["relpath"])
    assert not any((tmp_path / "out" / r).exists() for r in broken)


def test_corrupt_files_are_each_one_reject_with_a_reason(ray_local: None, tmp_path: Path) -> None:
    _corrupt_run(tmp_path, 100)


@pytest.mark.slow
def test_a_thousand_images_with_three_percent_corrupt(ray_local: None, tmp_path: Path) -> None:
    _corrupt_run(tmp_path, 1000)
