"""Paths built from input names and S3 keys never leave the output folder."""

from __future__ import annotations

from pathlib import Path

import pytest

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
