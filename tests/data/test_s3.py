"""Ingest from s3:// against a real S3 HTTP server on 127.0.0.1 (moto server mode)."""

from __future__ import annotations

from pathlib import Path

import boto3
from typer.testing import CliRunner

from tests.data.helpers import write_dataset
from weldray.cli import app
from weldray.config import load_config
from weldray.data import ingest, load_manifest
from weldray.preprocessing import load_image


def _upload(root: Path, endpoint: str, bucket: str, prefix: str) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket=bucket)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(root).as_posix()}")


def test_ingest_from_s3_matches_local(tmp_path: Path, s3_server: str) -> None:
    root = write_dataset(tmp_path / "ds", 10)
    (root / "bad_welds" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    _upload(root, s3_server, "welds", "raw/site-a")
    cfg = load_config([f"output_dir={tmp_path / 'out'}", "data.n_folds=3"])

    remote = ingest("s3://welds/raw/site-a", cfg)
    local = ingest(str(root), cfg)
    r, loc = load_manifest(remote.manifest_path), load_manifest(local.manifest_path)
    assert r["path"].str.startswith("s3://welds/raw/site-a/").all()
    assert sorted(r["relpath"]) == sorted(loc["relpath"])
    assert dict(zip(r["relpath"], r["sha256"], strict=True)) == dict(
        zip(loc["relpath"], loc["sha256"], strict=True))
    assert [x.path for x in remote.rejects] == ["bad_welds/broken.jpg"]
    # Manifest rows are readable straight from S3.
    assert load_image(r["path"].iloc[0]).size == (128, 128)


def test_cli_ingest_s3_prints_manifest_dir_last(tmp_path: Path, s3_server: str) -> None:
    root = write_dataset(tmp_path / "ds", 8)
    _upload(root, s3_server, "bucket2", "welds")
    result = CliRunner().invoke(app, ["ingest", "s3://bucket2/welds", f"output_dir={tmp_path / 'out'}",
                                      "data.n_folds=2"])
    assert result.exit_code == 0, result.output
    manifest_dir = Path(result.stdout.strip().splitlines()[-1])
    assert (manifest_dir / "manifest.parquet").is_file()
    assert "good_weld" in result.output and "bad_weld" in result.output
