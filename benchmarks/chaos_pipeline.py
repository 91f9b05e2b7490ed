"""Faults during the Ray Data jobs: one actor of the map's pool killed mid-job (SIGKILL of its process, or
`ray.kill` of the actor, which Ray never restarts), and corrupt inputs among good ones.

    .venv/bin/python benchmarks/chaos_pipeline.py [--images 200] [--corrupt 0.03] [--labelled DIR]
        [--scenarios clean,clean_sigkill,clean_ray_kill,clean_corrupt,generate,generate_sigkill,generate_ray_kill]

Inputs are tiny procedural welds (64 px, written to a temp folder) so that the figures are about bookkeeping, not
OCR time: the cleaner runs at one detection scale without the segmenter (FAST_CLEAN). The generate scenarios need a
labelled dataset (YOLO boxes; default: the real photos) and run copy_paste without the teacher. A kill strikes once
a quarter of the outputs exist. For each scenario it prints inputs sent / processed (ok) / rejected / duplicates
(records of one input beyond its first, stray temp files) / lost (inputs without a record, ok records without their
output file), whether the output files equal those of the uninterrupted run, the wall time and when the kill
struck. tests/text_removal/test_pipeline_faults.py and tests/synthetic/test_job_faults.py assert on the same
scenarios.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

# One detection scale, no segmenter, one pass, no audit: ~5 ms per 64 px image instead of ~1 s.
FAST_CLEAN = ["text_removal.det_limit_side_len=64", "text_removal.det_extra_side_lens=[]",
              "text_removal.segmenter=none", "text_removal.passes=1", "text_removal.audit=false",
              "text_removal.contact_sheet_size=0", "text_removal.batch_size=2"]
FAST_GENERATE = ["synthetic.generator=copy_paste", "synthetic.min_teacher_confidence=0",
                 "synthetic.contact_sheet_size=0", "synthetic.batch_size=2"]
CORRUPT_KINDS = ("empty", "truncated_jpeg", "random_bytes", "truncated_png")


@dataclass
class Figures:
    scenario: str
    sent: int
    processed: int
    rejected: int
    duplicates: int
    lost: int
    wall_s: float
    same_as_uninterrupted: bool | None = None
    kill: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- inputs -----------------------------------------------------------------------------------------------------
def tiny_photos(root: Path, n: int, *, corrupt: float = 0.0, size: int = 64, seed: int = 3) -> tuple[Path, dict]:
    """``n`` procedural welds (half per class) under ``root``, of which ``round(n * corrupt)`` are replaced by
    broken files cycling through CORRUPT_KINDS; returns (root, {relpath: kind} of the broken ones)."""
    from weldray.data.procedural import ProceduralSpec, generate_dataset

    generate_dataset(root, ProceduralSpec(n_per_class=n // 2, image_size=size, text_fraction=0.5, seed=seed))
    files = sorted(p for p in root.glob("*_welds/*.jpg"))
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(files), size=round(len(files) * corrupt), replace=False)
    broken: dict[str, str] = {}
    for i, idx in enumerate(sorted(picks)):
        path, kind = files[idx], CORRUPT_KINDS[i % len(CORRUPT_KINDS)]
        data = path.read_bytes()
        path.unlink()
        if kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated_jpeg":
            path.write_bytes(data[: len(data) // 3])
        elif kind == "truncated_png":
            from PIL import Image

            path, png = path.with_suffix(".png"), io.BytesIO()
            Image.open(io.BytesIO(data)).save(png, format="PNG")
            path.write_bytes(png.getvalue()[: len(png.getvalue()) // 3])
        else:
            path = path.with_suffix(".png" if i % 2 else ".jpg")
            path.write_bytes(rng.bytes(2048))
        broken[str(path.relative_to(root))] = kind
    return root, broken


# --- killing one actor of a Ray Data pool -----------------------------------------------------------------------
def pool_actors(udf: str) -> list[tuple[str, int]]:
    """(actor id, pid) of the live actors of this driver's Ray whose class is Ray Data's map worker of ``udf``."""
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("state", "=", "ALIVE")],
                        limit=10_000)
    return [(a.actor_id, a.pid) for a in alive if a.class_name == f"MapWorker(MapBatches({udf}))"]


def kill_actor(actor_id: str, pid: int, how: str) -> None:
    """sigkill: the process dies (Ray restarts the actor); ray_kill: ``ray.kill(actor, no_restart=True)`` (Ray Data
    actors have no name to get a handle by, so the call ray.kill makes, by id)."""
    import ray

    if how == "sigkill":
        os.kill(pid, signal.SIGKILL)
    elif how == "ray_kill":
        ray._private.worker.global_worker.core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)
    else:
        raise ValueError(f"unknown kill {how!r}")


class Killer(threading.Thread):
    """Kills one actor of ``udf``'s pool once ``count()`` reaches ``at`` (outputs written so far)."""

    def __init__(self, udf: str, how: str, count: Callable[[], int], at: int, limit_s: float = 300) -> None:
        super().__init__(daemon=True)
        self.udf, self.how, self.count, self.at, self.limit_s = udf, how, count, at, limit_s
        self.info: dict = {}
        self.t0 = time.perf_counter()

    def run(self) -> None:
        actors: list[tuple[str, int]] = []
        while time.perf_counter() - self.t0 < self.limit_s:
            actors = actors or pool_actors(self.udf)
            done = self.count()
            if actors and done >= self.at:
                kill_actor(*actors[0], self.how)
                self.info = {"how": self.how, "at_s": round(time.perf_counter() - self.t0, 2),
                             "outputs_before": done, "pid": actors[0][1]}
                return
            time.sleep(0.02 if actors else 0.2)


def _files(root: Path, pattern: str) -> int:
    return len(list(root.glob(pattern))) if root.exists() else 0


def _digest(root: Path, pattern: str) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.glob(pattern)}


def _stray(root: Path) -> list[str]:
    """Temp files of writes cut short (weldray.io writes through ``.<name>.tmp<pid>``)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp*"))


# --- the clean job ----------------------------------------------------------------------------------------------
def clean_scenario(inp: Path, out: Path, how: str | None, overrides: list[str] = (),  # type: ignore[assignment]
                   baseline: dict[str, str] | None = None) -> tuple[Figures, pd.DataFrame]:
    """``weldray clean INP OUT`` in process (Ray already started or started here), killing one CleanActor when a
    quarter of the outputs exist (``how`` None: no kill)."""
    from weldray.config import load_config
    from weldray.text_removal import clean_dataset
    from weldray.text_removal.pipeline import list_inputs

    cfg = load_config([*FAST_CLEAN, *overrides])
    sent = [f[len(str(inp)) + 1:] for f in list_inputs(str(inp), str(out), cfg)]
    killer = Killer("CleanActor", how, lambda: _files(out, "*_welds/*"), max(1, len(sent) // 4)) if how else None
    t0 = time.perf_counter()
    if killer:
        killer.start()
    clean_dataset(str(inp), str(out), cfg, progress=False)
    wall = time.perf_counter() - t0
    rec = pd.read_parquet(out / "_text_removal" / "records.parquet")
    ok = rec[rec["status"] == "ok"]
    missing_files = sum(not Path(o).is_file() for o in ok["output"])
    stray = _stray(out)
    outputs = _digest(out, "*_welds/*")
    fig = Figures(
        f"clean, {how or 'no fault'}", len(sent), len(ok), int((rec["status"] == "reject").sum()),
        int(rec["relpath"].duplicated().sum()) + len(stray),
        len(set(sent) - set(rec["relpath"])) + missing_files, round(wall, 1),
        None if baseline is None else outputs == baseline, killer.info if killer else {},
    )
    if killer and not killer.info:
        fig.notes.append("the kill did not happen (job over first)")
    fig.notes += [f"stray temp file {s}" for s in stray]
    return fig, rec


# --- the generate job -------------------------------------------------------------------------------------------
def generate_scenario(labelled: Path, out: Path, how: str | None, n_per_class: int, overrides: list[str] = (),  # type: ignore[assignment]
                      baseline: dict[str, str] | None = None) -> tuple[Figures, pd.DataFrame]:
    """``weldray generate LABELLED OUT`` (copy_paste, no teacher) in process, killing one GenerateActor when a
    quarter of the candidates exist."""
    from weldray.config import load_config
    from weldray.synthetic.job import generate

    cfg = load_config([*FAST_GENERATE, f"synthetic.n_per_class={n_per_class}", f"output_dir={out.parent}",
                       *overrides])
    candidates = "_synthetic/candidates/*/*.jpg"
    n = 2 * n_per_class
    killer = Killer("GenerateActor", how, lambda: _files(out, candidates), max(1, n // 4)) if how else None
    t0 = time.perf_counter()
    if killer:
        killer.start()
    report = generate(str(labelled), str(out), cfg, progress=False)
    wall = time.perf_counter() - t0
    rec = pd.read_parquet(out / "_synthetic" / "records.parquet")
    ok = rec[rec["status"] == "ok"]
    keys = list(zip(rec["source"], rec["seed"], strict=True))
    stray = _stray(out)
    fig = Figures(
        f"generate, {how or 'no fault'}", report.summary["n_tasks"], len(ok), int((rec["status"] == "reject").sum()),
        len(keys) - len(set(keys)) + len(stray),
        report.summary["n_tasks"] - len(set(keys)) + sum(not Path(c).is_file() for c in ok["candidate"]),
        round(wall, 1), None if baseline is None else _digest(out, candidates) == baseline,
        killer.info if killer else {},
    )
    if killer and not killer.info:
        fig.notes.append("the kill did not happen (job over first)")
    fig.notes += [f"stray temp file {s}" for s in stray]
    return fig, rec


# --- the training driver ---------------------------------------------------------------------------------------
def _train(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`weldray train ARGS` in its own session (process group), output to ``log``."""
    weldray = str(Path(sys.executable).with_name("weldray"))
    with log.open("ab") as out:
        return subprocess.Popen([weldray, "train", *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def own_ray_processes(ray_tmpdir: Path) -> list[psutil.Process]:
    """Processes of the Ray instance started with ``RAY_TMPDIR=ray_tmpdir`` (its session folder is in each command
    line): that instance only, never another one on the machine."""
    procs = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(ray_tmpdir) in " ".join(p.info["cmdline"] or []):
                procs.append(p)
    return procs


def train_driver_kill(data: Path, work: Path, overrides: list[str], *, limit_s: float = 1200) -> dict:
    """`weldray train DATA training.run_name=chaos` SIGKILLed (its whole process group, then any process of its
    private Ray) once its first checkpoint is registered, then the same command again, then an uninterrupted run
    of another name: their metrics.json figures."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = Path(tempfile.mkdtemp(prefix="wrc", dir="/tmp"))  # short: Ray's socket paths live below it
    env.update(RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    common = [str(data), f"output_dir={work}", f"ray.storage_path={work / 'ray_results'}", *overrides]
    snapshot = work / "ray_results" / "chaos" / "checkpoint_manager_snapshot.json"
    log = work / "train.log"
    t0 = time.perf_counter()
    driver = _train([*common, "training.run_name=chaos"], env, log)
    try:
        while not snapshot.is_file():
            if driver.poll() is not None:
                raise RuntimeError(f"weldray train ended (rc {driver.returncode}) before its first checkpoint: {log}")
            if time.perf_counter() - t0 > limit_s:
                raise TimeoutError(f"no checkpoint within {limit_s} s: {log}")
            time.sleep(0.5)
        killed_at = time.perf_counter() - t0
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    survivors = own_ray_processes(ray_tmp)
    for p in survivors:  # what outlived its driver (Ray's daemons die with it; workers may linger)
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(survivors, timeout=30)
    left = [p.pid for p in own_ray_processes(ray_tmp)]
    epochs_before = len(json.loads(snapshot.read_text()).get("checkpoint_results", []) or [1])
    t1 = time.perf_counter()
    resumed = _train([*common, "training.run_name=chaos"], env, log)
    rc_resumed = resumed.wait(timeout=limit_s)
    resumed_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    plain = _train([*common, "training.run_name=plain"], env, log)
    rc_plain = plain.wait(timeout=limit_s)
    plain_s = time.perf_counter() - t2
    shutil.rmtree(ray_tmp, ignore_errors=True)

    def metrics(name: str) -> dict:
        path = work / "runs" / name / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    return {"killed_at_s": round(killed_at, 1), "checkpoints_before_kill": epochs_before,
            "ray_processes_after_kill": len(survivors), "ray_processes_left": left,
            "rc_resumed": rc_resumed, "resumed_s": round(resumed_s, 1), "rc_plain": rc_plain,
            "plain_s": round(plain_s, 1), "resumed": metrics("chaos"), "plain": metrics("plain"), "log": str(log)}


def table(figures: list[Figures], title: str) -> object:
    from rich.table import Table

    t = Table(title=title)
    for col in ("scenario", "sent", "processed", "rejected", "duplicates", "lost", "same files", "wall s", "kill",
                "notes"):
        t.add_column(col)
    for f in figures:
        kill = f"{f.kill['how']} at {f.kill['at_s']} s ({f.kill['outputs_before']} done)" if f.kill else "-"
        same = "-" if f.same_as_uninterrupted is None else ("yes" if f.same_as_uninterrupted else "NO")
        t.add_row(f.scenario, str(f.sent), str(f.processed), str(f.rejected), str(f.duplicates), str(f.lost), same,
                  f"{f.wall_s:.1f}", kill, "; ".join(f.notes))
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--corrupt", type=float, default=0.03)
    ap.add_argument("--generate-per-class", type=int, default=40)
    ap.add_argument("--labelled", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "welds"))
    ap.add_argument("--scenarios", default="clean,clean_sigkill,clean_ray_kill,clean_corrupt")
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")

    import ray
    from rich.console import Console

    from weldray.config import RayConfig
    from weldray.ray_utils import init_ray

    work = Path(tempfile.mkdtemp(prefix="weldray-chaos-pipeline-"))
    init_ray(RayConfig(num_cpus=2))
    figures: list[Figures] = []
    try:
        inp, _ = tiny_photos(work / "in", args.images)
        baseline = None
        for s in [s for s in scenarios if s.startswith("clean") and s != "clean_corrupt"]:
            how = None if s == "clean" else s.removeprefix("clean_")
            fig, _ = clean_scenario(inp, work / s, how, baseline=baseline)
            if how is None:
                baseline = _digest(work / s, "*_welds/*")
            figures.append(fig)
        if "clean_corrupt" in scenarios:
            bad_in, broken = tiny_photos(work / "in_corrupt", args.images, corrupt=args.corrupt)
            fig, rec = clean_scenario(bad_in, work / "clean_corrupt", None)
            rejects = set(rec.loc[rec["status"] == "reject", "relpath"])
            fig.scenario = f"clean, {len(broken)} corrupt of {args.images}"
            fig.notes.append("rejects == corrupt files" if rejects == set(broken) else
                             f"REJECTS DIFFER: {sorted(rejects ^ set(broken))}")
            figures.append(fig)
        baseline = None
        for s in [s for s in scenarios if s.startswith("generate")]:
            how = None if s == "generate" else s.removeprefix("generate_")
            fig, _ = generate_scenario(Path(args.labelled), work / s, how, args.generate_per_class,
                                       baseline=baseline)
            if how is None:
                baseline = _digest(work / s, "_synthetic/candidates/*/*.jpg")
            figures.append(fig)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    Console(width=200).print(table(figures, f"pipeline faults ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"))
    sys.exit(0 if all(f.duplicates == 0 and f.lost == 0 for f in figures) else 1)


if __name__ == "__main__":
    main()
