from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from weldray.config import load_config
from weldray.text_removal import clean_dataset

pytestmark = pytest.mark.ray


@pytest.fixture()
def small_input(procedural_dir: Path, tmp_path: Path) -> Path:
    """3 procedural images per class plus a truncated JPEG, a non-image and a side folder of masks."""
    root = tmp_path / "in"
    for cls in ("good_welds", "bad_welds"):
        (root / cls).mkdir(parents=True)
        for f in sorted((procedural_dir / cls).glob("*.jpg"))[:3]:
            shutil.copy(f, root / cls / f.name)
    good = sorted((root / "good_welds").glob("*.jpg"))[0]
    (root / "bad_welds" / "truncated.jpg").write_bytes(good.read_bytes()[:700])
    (root / "bad_welds" / "notes.png").write_bytes(b"this is not a png")
    # Side folders (the procedural text masks) are not class folders and must not be cleaned.
    (root / "text_masks" / "good_welds").mkdir(parents=True)
    mask = sorted((procedural_dir / "text_masks" / "good_welds").glob("*.png"))[0]
    shutil.copy(mask, root / "text_masks" / "good_welds" / mask.name)
    return root


def _run(inp: Path, out: Path, *overrides: str):
    cfg = load_config(["text_removal.contact_sheet_size=4", *overrides])
    return clean_dataset(str(inp), str(out), cfg, progress=False)


def test_clean_job_end_to_end_and_resume(ray_local, small_input: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = _run(small_input, out)
    rec = pd.read_parquet(out / "_text_removal" / "records.parquet")
    assert len(rec) == 8
    rejects = rec[rec.status == "reject"].set_index("relpath")
    assert set(rejects.index) == {"bad_welds/truncated.jpg", "bad_welds/notes.png"}
    assert "Corrupt" in rejects.loc["bad_welds/truncated.jpg", "reason"]
    ok = rec[rec.status == "ok"]
    assert len(ok) == 6 and (ok.residual_detections >= 0).all()
    for r in ok.itertuples():  # class layout kept, mask beside the records
        assert (out / r.relpath).is_file() and Path(r.mask).is_file() and len(r.sha256) == 64
    assert not (out / "bad_welds" / "truncated.jpg").exists()
    summary = json.loads((out / "_text_removal" / "summary.json").read_text())
    assert summary["n_cleaned"] == 6 and summary["n_rejects"] == 2
    assert "Rejected inputs" in Path(report.audit_path).read_text()

    # Re-run: nothing is recomputed, the records survive.
    before = {r.relpath: (out / r.relpath).stat().st_mtime_ns for r in ok.itertuples()}
    again = _run(small_input, out)
    assert again.summary["n_resumed"] == 6 and again.summary["n_cleaned"] == 6
    assert {k: (out / k).stat().st_mtime_ns for k in before} == before
    pd.testing.assert_series_equal(
        again.records.set_index("relpath").loc[ok.relpath, "sha256"], ok.set_index("relpath")["sha256"]
    )

    # A changed input (new hash) is cleaned again; the others are still skipped.
    changed = sorted((small_input / "good_welds").glob("*.jpg"))[0]
    other = sorted((small_input / "bad_welds").glob("bad_*.jpg"))[0]
    changed.write_bytes(other.read_bytes())
    third = _run(small_input, out)
    assert third.summary["n_resumed"] == 5
    row = third.records.set_index("relpath").loc[f"good_welds/{changed.name}"]
    assert not row.resumed and row.sha256 == ok.set_index("relpath").loc[f"bad_welds/{other.name}", "sha256"]


def test_cli_prints_output_last(ray_local, small_input: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from weldray.cli import app

    out = tmp_path / "cli_out"
    result = CliRunner().invoke(app, ["clean", str(small_input), str(out), "text_removal.audit=false"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    rec = pd.read_parquet(out / "_text_removal" / "records.parquet")
    assert (rec[rec.status == "ok"].residual_detections == -1).all()  # audit off


def test_cli_missing_lama_weights_is_a_clear_error(small_input: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from weldray.cli import app

    result = CliRunner().invoke(
        app, ["clean", str(small_input), str(tmp_path / "o"), "text_removal.inpainter=lama"]
    )
    assert result.exit_code == 1
    assert "big-lama.pt" in result.output and "text_removal.lama_model_path" in result.output
    assert not (tmp_path / "o").exists()  # failed before any work


@pytest.mark.slow
def test_real_photos_text_found_and_removed(ray_local, real_welds_dir: Path, tmp_path: Path):
    """Four real photos: two with overlaid text (watermark/handles, a caption), two without."""
    inp = tmp_path / "real"
    picks = {"good_welds": ["good_0066.jpg", "good_0016.jpg"], "bad_welds": ["bad_0011.jpg", "bad_0021.jpg"]}
    for cls, names in picks.items():
        (inp / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(real_welds_dir / cls / n, inp / cls / n)
    report = _run(inp, tmp_path / "real_out")
    rec = report.records.set_index("relpath")
    assert rec.loc["good_welds/good_0066.jpg", "n_text_boxes"] >= 3
    assert "Cracking" in json.loads(rec.loc["bad_welds/bad_0011.jpg", "texts"])
    assert rec.loc["bad_welds/bad_0021.jpg", "mask_fraction"] == 0
    assert (rec.residual_detections == 0).all()
    assert report.contact_sheet_path and Path(report.contact_sheet_path).stat().st_size > 10_000


@pytest.mark.parametrize("dropped", [None, "n_segmented"])
def test_records_of_an_older_cleaner_are_not_resumed(tmp_path: Path, dropped: str | None):
    """Resume trusts records with today's columns only: one written before a column existed (an older
    cleaner, e.g. before the text segmenter) re-cleans everything instead of failing or mixing versions."""
    from weldray.text_removal.pipeline import META_DIR, RECORD_COLUMNS, _empty_record, load_done

    out = tmp_path / "out"
    (out / META_DIR).mkdir(parents=True)
    (out / "good_welds").mkdir()
    (out / "good_welds" / "a.jpg").write_bytes(b"x")
    rec = _empty_record("good_welds/a.jpg", "in/good_welds/a.jpg", "abc")
    rec.update(status="ok", output=str(out / "good_welds" / "a.jpg"))
    frame = pd.DataFrame([rec])[RECORD_COLUMNS]
    frame.drop(columns=[dropped] if dropped else []).to_parquet(out / META_DIR / "records.parquet")
    prev, done = load_done(str(out), None)
    assert done == ({} if dropped else {"good_welds/a.jpg": "abc"})
    assert (prev is None) == bool(dropped)
