"""Submitting weldray to a Ray cluster through the Jobs API (what ``ray job submit`` does), with the token.

The job's working directory is this repository (minus the venv, outputs, data and git history), so
``python jobs/pipeline.py`` runs the same code on the cluster as locally; Hydra overrides pass through
unchanged. Every submission carries metadata (run id, config hash, profile) that the dashboard's Jobs
page shows, and ``WELDRAY_RUN_ID`` in the job's environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from weldray.cluster.auth import auth_headers, load_token

#: What a job runs from: the package (its modules and its package data, such as the text segmenter's
#: weights), the job entrypoints, the Hydra configs, the Serve config and the sweep spaces. Every file of
#: these trees travels with a job, whatever the artefact patterns below match.
JOB_TREES: tuple[str, ...] = ("weldray", "jobs", "conf", "serve", "tune_spaces")
# Caches that never travel, even inside JOB_TREES.
_CACHES: tuple[str, ...] = ("**/__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache")
# Never shipped to the cluster: environments, results, data sets, git history, caches, and model artefacts
# lying around the checkout (exports, checkpoints). Top-level folders are anchored with "/" (gitignore
# syntax): a bare "data" would also drop the weldray/data package. The "!" lines put JOB_TREES back
# (gitignore's last match wins), then the caches are dropped again.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "/.venv",
    "/.git",
    "/outputs",
    "/data",
    "/runs",
    "/models",
    "/build",
    "/dist",
    "/.whl",
    "/.gl",
    "*.onnx",
    "*.onnx.data",
    "*.pt",
    "*.ckpt",
    *(f"!/{tree}/**" for tree in JOB_TREES),
    *_CACHES,
)
PACKAGE_MARKER = "weldray/__init__.py"
PIPELINE_SCRIPT = "jobs/pipeline.py"
_IGNORE_GITIGNORE_ENV = "RAY_RUNTIME_ENV_IGNORE_GITIGNORE"
RUN_ID_ENV = "WELDRAY_RUN_ID"
# Lines in job logs that are not the driver's own stdout: forwarded worker output (optionally coloured,
# "(Name pid=N)" / "(Name pid=N, ip=...)"), Ray log records ("2026-01-01 00:00:00,000\tINFO ...") and
# C++ core-worker records ("[2026-01-01 00:00:00,000 E 1 1] ...").
_FOREIGN_LINE = re.compile(
    r"^\s*(?:\x1b\[[0-9;]*m)?\(.*?\bpid=\d+(?:, ip=[^)]*)?\)"
    r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\b"
    r"|^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z] \d+ \d+\]"
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def repo_root() -> Path:
    """The repository this package was imported from (the job's working directory)."""
    return Path(__file__).resolve().parents[2]


def runtime_env(
    working_dir: str | Path | None = None,
    *,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    env_vars: dict[str, str] | None = None,
) -> dict[str, Any]:
    """``runtime_env`` equivalent to ``ray job submit --working-dir .`` with weldray's excludes."""
    env: dict[str, Any] = {"working_dir": str(working_dir or repo_root()), "excludes": list(excludes)}
    if env_vars:
        env["env_vars"] = dict(env_vars)
    return env


def shipped_files(
    working_dir: str | Path | None = None,
    *,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    include_gitignore: bool = False,
) -> set[str]:
    """Relative paths of the files Ray would upload for this working_dir (Ray's own packaging walk).

    ``include_gitignore=True`` is what plain ``ray job submit --working-dir .`` does: Ray also drops
    everything the repository's .gitignore files match.
    """
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(working_dir or repo_root()).absolute()
    files: set[str] = set()

    def collect(path: Path) -> None:
        if path.is_file():
            files.add(path.relative_to(root).as_posix())

    _dir_travel(root, [_get_excludes(root, list(excludes))], collect, include_gitignore=include_gitignore)
    return files


def job_files(working_dir: str | Path | None = None) -> set[str]:
    """Relative paths of every file a job may import or open: all of JOB_TREES but caches.

    Derived from the checkout itself, so a new module, config or package-data file (weights, templates,
    web assets) is covered the day it is added.
    """
    root = Path(working_dir or repo_root())
    return {
        p.relative_to(root).as_posix()
        for tree in JOB_TREES
        for p in (root / tree).rglob("*")
        if p.is_file() and not _is_cache(p.relative_to(root))
    }


def _is_cache(rel: Path) -> bool:
    """What the _CACHES patterns exclude."""
    return rel.suffix == ".pyc" or any(
        part in ("__pycache__", ".pytest_cache", ".ruff_cache") or part.endswith(".egg-info") for part in rel.parts
    )


def missing_from_upload(
    working_dir: str | Path | None = None,
    *,
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
    include_gitignore: bool = False,
) -> list[str]:
    """The files of :func:`job_files` that would NOT reach the cluster with these excludes."""
    root = Path(working_dir or repo_root())
    return sorted(job_files(root) - shipped_files(root, excludes=excludes, include_gitignore=include_gitignore))


@contextlib.contextmanager
def _explicit_excludes_only() -> Iterator[None]:
    """Make Ray's uploader apply only our excludes, not .gitignore (unanchored ignore patterns such as
    ``data/`` would silently drop package folders like weldray/data)."""
    old = os.environ.get(_IGNORE_GITIGNORE_ENV)
    os.environ[_IGNORE_GITIGNORE_ENV] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(_IGNORE_GITIGNORE_ENV, None)
        else:
            os.environ[_IGNORE_GITIGNORE_ENV] = old


def submit(
    client: Any,
    entrypoint: str,
    *,
    working_dir: str | Path | None = None,
    metadata: dict[str, str] | None = None,
    env_vars: dict[str, str] | None = None,
    submission_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
    required: Sequence[str] = (),
    excludes: Sequence[str] = DEFAULT_EXCLUDES,
) -> str:
    """Submit ``entrypoint`` with this repository as working_dir; refuse, naming the paths, if ``required``
    files are absent or any file of the package, jobs or configs would not ship."""
    root = Path(working_dir or repo_root())
    absent = [f for f in (PACKAGE_MARKER, *required) if not (root / f).is_file()]
    if absent:
        raise FileNotFoundError(f"{root} is not a weldray checkout: no {', '.join(absent)}")
    missing = missing_from_upload(root, excludes=excludes)
    if missing:
        raise FileNotFoundError(
            f"these files would not reach the cluster from {root}: {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    with _explicit_excludes_only():
        return client.submit_job(
            entrypoint=entrypoint,
            runtime_env=runtime_env(root, excludes=excludes, env_vars=env_vars),
            metadata=metadata,
            submission_id=submission_id,
            entrypoint_num_cpus=entrypoint_num_cpus,
        )


def new_run_id(prefix: str = "pipeline") -> str:
    """Sortable, unique: ``pipeline-20261124-043100-1a2b3c``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{uuid.uuid4().hex[:6]}"


def pipeline_entrypoint(data: str | None, overrides: Sequence[str]) -> str:
    """The shell command the job runs: ``python jobs/pipeline.py [DATA] [key=value ...]``."""
    return shlex.join(["python", PIPELINE_SCRIPT, *([data] if data else []), *overrides])


def job_metadata(overrides: Sequence[str], run_id: str) -> dict[str, str]:
    """Run id, config hash and profile for the Jobs page (validates the overrides before submitting)."""
    from weldray.config import load_config

    cfg = load_config(list(overrides))
    return {"run_id": run_id, "config_hash": cfg.fingerprint(), "profile": cfg.profile, "weldray": "pipeline"}


def connect(address: str, *, token: str | None = None, token_file: str | Path | None = None) -> Any:
    """A ``JobSubmissionClient`` for ``address`` (``http://HEAD:8265``) that sends the cluster's token.

    The token comes from ``token``, else ``token_file``, else where Ray looks (see ``load_token``).
    """
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers(token or load_token(token_file)))


@dataclass
class JobResult:
    submission_id: str
    status: str
    logs: str
    job_id: str | None
    driver_node_id: str | None

    @property
    def last_line(self) -> str:
        """The driver's last own output line (weldray commands print their main result there).

        Job logs interleave the driver's stdout with lines Ray forwards from tasks/actors
        (``(RayTrainWorker pid=123) ...``, possibly after the driver's last print) and Ray's own
        log records; those are skipped.
        """
        lines = [ln.strip() for ln in self.logs.splitlines() if ln.strip() and not _FOREIGN_LINE.match(ln)]
        return lines[-1] if lines else ""


def wait(
    client: Any,
    submission_id: str,
    *,
    timeout_s: float = 3600.0,
    poll_s: float = 2.0,
    on_status: Callable[[str], None] | None = None,
) -> JobResult:
    """Poll until the job ends (or stop it after ``timeout_s``); return status and full logs."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status = str(client.get_job_status(submission_id).value)
        if status != last and on_status is not None:
            on_status(status)
        last = status
        if status in TERMINAL:
            break
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            raise TimeoutError(f"job {submission_id} still {status} after {timeout_s:.0f} s; stopped it")
        time.sleep(poll_s)
    info = client.get_job_info(submission_id)
    return JobResult(
        submission_id, status, client.get_job_logs(submission_id), info.job_id, info.driver_node_id
    )


def submit_pipeline(
    client: Any,
    data: str | None,
    overrides: Sequence[str],
    *,
    working_dir: str | Path | None = None,
    run_id: str | None = None,
    entrypoint_num_cpus: float | None = None,
) -> str:
    """Submit ``jobs/pipeline.py``; returns the submission id ``weldray-<run_id>`` (``-2``, ``-3``, ... when
    that run was submitted before: re-submitting with its ``pipeline.run_name`` resumes it).

    A local DATA path is made absolute (the job runs in a copy of the repository, not in the caller's
    directory); ``pipeline.run_name`` is set to the run id unless given.
    """
    if data and "://" not in data and Path(data).exists():
        data = str(Path(data).resolve())
    overrides = list(overrides)
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("pipeline.run_name=")]
    run_id = given[-1] if given else (run_id or new_run_id())
    if not given:
        # The run folder (output_dir/pipelines/<run_id>) carries the same name as the job's metadata.
        overrides.append(f"pipeline.run_name={run_id}")
    return submit(
        client,
        pipeline_entrypoint(data, overrides),
        working_dir=working_dir,
        metadata=job_metadata(overrides, run_id),
        env_vars={RUN_ID_ENV: run_id},
        submission_id=free_submission_id(client, f"weldray-{run_id}"),
        entrypoint_num_cpus=entrypoint_num_cpus,
        required=(PIPELINE_SCRIPT, "conf/config.yaml"),
    )


def free_submission_id(client: Any, base: str) -> str:
    """``base``, else ``base-2``, ``base-3``, ...: Ray refuses a second job with a used submission id, and the
    way to resume a failed pipeline job is to submit its run again (same ``pipeline.run_name``)."""
    taken = {job.submission_id for job in client.list_jobs()}
    n, candidate = 1, base
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def print_logs(result: JobResult) -> None:
    sys.stdout.write(result.logs if result.logs.endswith("\n") else result.logs + "\n")
    sys.stdout.flush()
