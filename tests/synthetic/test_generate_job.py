"""The generate job on Ray Data end to end (resume, a corrupt source), the lineage guard on a CV fold, and the
mix ratio's sample counts as training receives them."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from tests.synthetic.helpers import write_labelled_dataset
from weldray.config import ConfigError, load_config
from weldray.data import ingest, load_manifest
from weldray.synthetic.job import generate, sheet_rows
from weldray.synthetic.lineage import LineageError, mix, synthetic_rows
from weldray.training.data import split_rows

TINY = ["profile=quick_test", "data.n_folds=2", "model.backbone=test_efficientnet", "model.pretrained=false",
        "model.image_size=64", "synthetic.n_per_class=6", "synthetic.concurrency=1", "synthetic.batch_size=4",
        "synthetic.min_teacher_confidence=0.3"]


@pytest.fixture(scope="module")
def fold0(tmp_path_factory: pytest.TempPathFactory, ray_local: None):  # type: ignore[no-untyped-def]
    """A labelled dataset, its manifest, one photo broken after ingest, and a generate run for CV fold 0."""
    tmp = tmp_path_factory.mktemp("gen")
    cfg = load_config([*TINY, f"output_dir={tmp / 'out'}", "training.cv_fold=0"])
    manifest_path = ingest(str(write_labelled_dataset(tmp / "ds", 8)), cfg).manifest_path
    manifest = load_manifest(manifest_path)
    train = split_rows(manifest, 0).train
    broken = sorted(train.loc[train["label"] == "good_weld", "relpath"])[0]
    Path(manifest.set_index("relpath").at[broken, "path"]).write_bytes(b"\x89PNG\r\n\x1a\n broken since ingest")
    out = tmp / "syn"
    report = generate(str(manifest_path), str(out), cfg, progress=False)
    return cfg, manifest_path, manifest, broken, out, report


@pytest.mark.ray
def test_job_writes_gated_images_records_and_sheet(fold0) -> None:  # type: ignore[no-untyped-def]
    cfg, _, manifest, broken, out, report = fold0
    rec, s = report.records, report.summary
    assert len(rec) == 12 and s["n_tasks"] == 12
    # The broken photo: its tasks are recorded with the reason and skipped, the rest carry on.
    bad_rows = rec[rec["status"] == "reject"]
    assert len(bad_rows) >= 1 and set(bad_rows["source"]) == {broken}
    assert all("ImageError" in r for r in bad_rows["reason"]) and s["rejects"][0]["source"] == broken
    ok = rec[rec["status"] == "ok"]
    fold0_ids = set(manifest.loc[manifest["fold"] == 0, "relpath"])
    for r in ok.itertuples():
        assert Path(r.candidate).is_file()
        assert set(json.loads(r.source_ids)).isdisjoint(fold0_ids)  # sources outside the held-out fold
        assert json.loads(r.params)["patches"]
        assert (out / r.label.replace("_weld", "_welds") / f"{r.name}.jpg").is_file() == r.accepted
    on_disk = {p.stem for folder in ("good_welds", "bad_welds") for p in (out / folder).glob("*.jpg")}
    assert on_disk == set(ok.loc[ok["accepted"], "name"])
    assert set(s["acceptance"]) == {"bad_weld", "good_weld"}
    assert sum(a["generated"] for a in s["acceptance"].values()) == len(ok)
    # The teacher learnt from every readable source row, and from no photo of the held-out fold.
    assert set(s["teacher"]["train_ids"]) == set(s["source_rows"]) - {broken}
    assert fold0_ids.isdisjoint(s["source_rows"])
    assert (out / "_synthetic" / "contact_sheet.png").stat().st_size > 1000
    stored = pd.read_parquet(out / "_synthetic" / "records.parquet")
    assert list(stored["name"]) == list(rec["name"])


@pytest.mark.ray
def test_rerun_resumes_by_source_and_seed(fold0) -> None:  # type: ignore[no-untyped-def]
    cfg, manifest_path, _, broken, out, first = fold0
    records = first.records
    again = generate(str(manifest_path), str(out), cfg, progress=False)
    ok = again.records[again.records["status"] == "ok"]
    assert again.summary["n_resumed"] == len(ok) == int((records["status"] == "ok").sum())
    assert again.summary["images_per_s"] is not None  # the broken source's tasks were tried again
    assert set(again.records.loc[again.records["status"] == "reject", "source"]) == {broken}

    victim = ok.iloc[0]
    Path(victim["candidate"]).unlink()
    third = generate(str(manifest_path), str(out), cfg, progress=False)
    regenerated = third.records[(third.records["status"] == "ok") & (third.records["name"] == victim["name"])]
    assert len(regenerated) == 1 and Path(victim["candidate"]).is_file()
    assert third.summary["n_resumed"] == len(ok) - 1


@pytest.mark.ray
def test_lineage_guard_refuses_another_folds_synthetic_images(fold0) -> None:  # type: ignore[no-untyped-def]
    cfg, _, manifest, _, out, _ = fold0
    fold0_cfg = replace(cfg, training=replace(cfg.training, synthetic_data=str(out), mix_real_ratio=0.5))
    rows = synthetic_rows(fold0_cfg, split_rows(manifest, 0).train)
    assert len(rows) > 0 and rows["synthetic"].all() and (rows["split"] == "train").all()

    # Fold 1 trains on fold 0's photos and holds out fold 1's, which are the sources of these images.
    fold1_cfg = replace(fold0_cfg, training=replace(fold0_cfg.training, cv_fold=1))
    with pytest.raises(LineageError, match="come from photos this training does not train on"):
        synthetic_rows(fold1_cfg, split_rows(manifest, 1).train)

    # A teacher that saw a held-out photo is refused too, even when every source is fine.
    tampered = out.parent / "tampered"
    shutil.copytree(out, tampered)
    summary_path = tampered / "_synthetic" / "summary.json"
    summary = json.loads(summary_path.read_text())
    summary["teacher"]["train_ids"].append(manifest.loc[manifest["fold"] == 0, "relpath"].iloc[0])
    summary_path.write_text(json.dumps(summary))
    with pytest.raises(LineageError, match="teacher was fitted on 1 photos"):
        synthetic_rows(replace(fold0_cfg, training=replace(fold0_cfg.training, synthetic_data=str(tampered))),
                       split_rows(manifest, 0).train)


@pytest.mark.ray
def test_training_receives_the_mix_ratios_sample_counts(fold0) -> None:  # type: ignore[no-untyped-def]
    from weldray.training.trainer import _mix_synthetic

    cfg, _, manifest, _, out, _ = fold0
    splits = split_rows(manifest, 0)
    n_real = len(splits.train)
    for ratio, n_syn in ((0.5, n_real), (0.25, 3 * n_real), (1 / 3, 2 * n_real)):
        mixed_cfg = replace(cfg, training=replace(cfg.training, synthetic_data=str(out), mix_real_ratio=ratio))
        mixed = _mix_synthetic(mixed_cfg, splits)
        assert len(mixed.train) == n_real + n_syn and int(mixed.train["synthetic"].sum()) == n_syn
        assert (~mixed.train["synthetic"]).sum() == n_real  # every real row, once
        assert mixed.val.equals(splits.val) and mixed.test.equals(splits.test)  # held-out rows stay real
    with pytest.raises(ConfigError, match="training.synthetic_data"):
        _mix_synthetic(replace(cfg, training=replace(cfg.training, mix_real_ratio=0.5)), splits)


def test_mix_draws_per_class_shares_without_replacement_while_the_pool_lasts() -> None:
    real = pd.DataFrame({"relpath": [f"r{i}" for i in range(20)], "label": ["good_weld", "bad_weld"] * 10})
    pool = pd.DataFrame({"relpath": [f"s{i}" for i in range(100)], "label": ["good_weld"] * 75 + ["bad_weld"] * 25,
                         "synthetic": True})
    mixed = mix(real, pool, 0.25, seed=0)
    syn = mixed[mixed["synthetic"]]
    assert len(mixed) == 80 and len(syn) == 60 and syn["relpath"].is_unique
    assert syn["label"].value_counts().to_dict() == {"good_weld": 45, "bad_weld": 15}
    assert mix(real, pool, 0.25, seed=0).equals(mixed) and not mix(real, pool, 0.25, seed=1).equals(mixed)
    assert len(mix(real, pool, 1.0, seed=0)) == 20
    small = mix(real, pool.head(10), 0.5, seed=0)  # 20 wanted, 10 in the pool: repeats, counts still exact
    assert int(small["synthetic"].sum()) == 20
    with pytest.raises(ValueError, match="accepted none"):
        mix(real, pool.head(0), 0.5, seed=0)


@pytest.mark.slow
@pytest.mark.ray
def test_a_cv_fold_trains_on_the_mix_from_the_pipeline_layout(fold0, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Ray Train end to end: fold 0 finds its set under <synthetic_data>/fold0/, trains on real + synthetic
    rows in the configured ratio and is tested on real photos of its held-out fold only."""
    from weldray.training import train

    cfg, manifest_path, manifest, _, out, _ = fold0
    shutil.copytree(out, tmp_path / "generate" / "fold0")
    run = train(load_config([*TINY, f"output_dir={tmp_path / 'runs'}", "training.cv_fold=0",
                             f"data.root={manifest_path}", "training.mix_real_ratio=0.5",
                             f"training.synthetic_data={tmp_path / 'generate'}"]))
    metrics = json.loads((run / "metrics.json").read_text())
    n_real = len(split_rows(manifest, 0).train)
    assert metrics["n_train"] == 2 * n_real and metrics["n_train_synthetic"] == n_real
    assert metrics["n_test"] == int((manifest["fold"] == 0).sum())


def test_contact_sheet_shows_every_source_before_a_second_image_of_any() -> None:
    # 3 source photos x 4 accepted images per class, 2 dropped ones (and a failed task, never shown).
    rows = [
        {"status": "ok", "accepted": True, "label": label, "source": f"good_welds/{src}.jpg",
         "name": f"{label}-{src}-{i}"}
        for label in ("bad_weld", "good_weld") for src in ("a", "b", "c") for i in range(4)
    ] + [{"status": "ok", "accepted": False, "label": "bad_weld", "source": "good_welds/a.jpg", "name": f"x{i}"}
         for i in range(2)] + [{"status": "reject", "accepted": False, "label": "bad_weld", "source": "y", "name": "r"}]
    picks = sheet_rows(pd.DataFrame(rows), 10)
    kept = [r for r in picks if r.accepted]
    assert len(picks) == 10 and len(kept) == 8  # 2 dropped of status ok, so kept images fill the rest
    assert [r.label for r in kept] == ["bad_weld", "good_weld"] * 4
    assert [r.source[-5:] for r in kept] == ["a.jpg", "a.jpg", "b.jpg", "b.jpg", "c.jpg", "c.jpg", "a.jpg", "a.jpg"]
    assert [r.name for r in picks if not r.accepted] == ["x0", "x1"]
    assert len(sheet_rows(pd.DataFrame(rows), 4)) == 4 and not sheet_rows(pd.DataFrame(rows), 0)
