"""The command line is the user's map: every stage shows up in --help."""

from __future__ import annotations

from typer.testing import CliRunner

from weldray.cli import app


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    stages = ("ingest", "clean", "train-segmenter", "train-lora", "generate", "pretrain", "train", "cv", "evaluate",
              "export", "predict", "serve", "pipeline")
    for command in stages:
        assert f" {command} " in result.output, command


def test_config_error_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["ingest", str(tmp_path), "data.n_folds=1"])
    assert result.exit_code == 2
    assert "data.n_folds" in result.output


def test_clean_names_missing_segmenter_weights_before_starting_ray(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "in" / "good_welds").mkdir(parents=True)
    missing = tmp_path / "textseg_missing.pt"
    result = CliRunner().invoke(
        app, ["clean", str(tmp_path / "in"), str(tmp_path / "out"), f"text_removal.segmenter_model_path={missing}"]
    )
    assert result.exit_code == 1
    assert "textseg_missing.pt" in result.output and "weldray train-segmenter" in result.output


def test_train_segmenter_rejects_a_bad_option_with_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(app, ["train-segmenter", str(tmp_path / "w.pt"), "--holdout", "1.5"])
    assert result.exit_code == 2 and "background_holdout" in result.output
