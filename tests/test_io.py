"""Paths built from input names and S3 keys never leave the output folder; writes cut short leave nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from weldray import io
from weldray.io import join


@pytest.mark.parametrize("root", ["/out", "s3://bucket/out"])
@pytest.mark.parametrize("part", ["../x.jpg", "good/../../x.jpg", "/etc/passwd", "a/..", "..\\\\x.jpg"])
def test_join_refuses_a_part_that_leaves_the_folder(root: str, part: str) -> None:
    with pytest.raises(ValueError, match="unsafe path"):
        join(root, part)


def test_join_keeps_ordinary_names() -> None:
    assert join("/out", "good_welds/a..b.jpg") == "/out/good_welds/a..b.jpg"
    assert join("s3://bucket/out/", "bad_welds", "x.jpg") == "s3://bucket/out/bad_welds/x.jpg"


def test_clean_rejects_an_input_whose_name_would_write_outside_the_output(tmp_path: Path) -> None:
    from weldray.config import load_config
    from weldray.text_removal.pipeline import process_image

    cfg = load_config().text_removal
    rec = process_image(b"not even decoded", "good/../../escape.jpg", "s3://b/in/x", str(tmp_path / "out"), None, cfg)
    assert rec["status"] == "reject" and "unsafe path" in rec["reason"]
    assert not any(tmp_path.rglob("escape*"))


def test_stray_temp_files_of_killed_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """What a writer killed between its temp file and the rename leaves (a lost Ray actor), and only that."""
    io.write_bytes(str(tmp_path / "good" / "a.png"), b"done")
    stray = tmp_path / "good" / ".b.png.tmp4242"
    stray.write_bytes(b"half")
    keep = [tmp_path / ".hidden", tmp_path / "good" / "c.tmp12", tmp_path / "good" / ".d.png.tmpx"]
    for p in keep:
        p.write_bytes(b"user's")
    assert io.remove_stray_temps(str(tmp_path)) == [str(stray)]
    assert not stray.exists() and (tmp_path / "good" / "a.png").read_bytes() == b"done"
    assert all(p.exists() for p in keep)
    assert io.remove_stray_temps(str(tmp_path / "missing")) == []
