"""The command line is the user's map: every stage shows up in --help."""

from __future__ import annotations

from typer.testing import CliRunner

from weldray.cli import app


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "clean", "train", "cv", "evaluate", "export", "predict", "serve", "pipeline"):
        assert f" {command} " in result.output, command


def test_config_error_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "data.n_folds=1"])
    assert result.exit_code == 2
    assert "data.n_folds" in result.output
