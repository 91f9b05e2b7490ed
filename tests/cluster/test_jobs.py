"""Submission without a cluster: what ships in the working_dir, the entrypoint, metadata, the token,
and the local cluster's port plan."""

from __future__ import annotations

import shlex
import socket
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from weldray.cli import app
from weldray.cluster import jobs
from weldray.cluster.auth import TokenNotFoundError, auth_headers, load_token, write_new_token
from weldray.cluster.local import PORT_BLOCK, LocalCluster, LocalClusterConfig, find_free_port_base
from weldray.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


# ----- working_dir ---------------------------------------------------------------------------------
def test_working_dir_ships_code_and_config_but_not_venv_outputs_or_data() -> None:
    shipped = jobs.shipped_files(REPO)
    assert "jobs/pipeline.py" in shipped and "conf/config.yaml" in shipped
    # Package folders that share a name with excluded top-level folders (data/, models/) must ship.
    assert {"weldray/data/__init__.py", "weldray/models/__init__.py", "conf/data/default.yaml"} <= shipped
    assert not [f for f in shipped if f.split("/")[0] in (".venv", ".git", "outputs", "data")]
    assert not [f for f in shipped if "__pycache__" in f or f.endswith(".onnx")]
    assert jobs.missing_from_upload(REPO) == []


def test_plain_ray_job_submit_working_dir_ships_the_whole_package() -> None:
    """`ray job submit --working-dir .` also applies .gitignore: unanchored patterns there (``data/``,
    ``models/``) would drop weldray/data and weldray/models and the job would fail on the cluster."""
    missing = jobs.missing_from_upload(REPO, excludes=(), include_gitignore=True)
    assert missing == [], f".gitignore hides these from `ray job submit --working-dir .`: {missing}"


def test_runtime_env_names_the_repo_and_excludes() -> None:
    env = jobs.runtime_env(env_vars={"WELDRAY_RUN_ID": "r1"})
    assert Path(env["working_dir"]) == REPO
    assert "/.venv" in env["excludes"] and "/data" in env["excludes"]
    assert env["env_vars"] == {"WELDRAY_RUN_ID": "r1"}


def test_everything_the_package_ships_travels_with_a_job() -> None:
    """The regression of issue 12: the text segmenter's weights (a ``.pt`` inside the package) were
    dropped by the ``*.pt`` artefact pattern and every pipeline job failed at its first stage."""
    needed = jobs.job_files(REPO)
    assert "weldray/text_removal/weights/textseg.pt" in needed
    assert {"jobs/pipeline.py", "conf/config.yaml", "serve/config.yaml", "weldray/py.typed"} <= needed
    assert not [f for f in needed if "__pycache__" in f or f.endswith(".pyc")]
    assert needed <= jobs.shipped_files(REPO)


def _checkout(root: Path) -> Path:
    for rel in ("weldray/__init__.py", "weldray/weights/net.pt", "jobs/pipeline.py", "conf/config.yaml", "run.pt"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    return root


def test_package_data_travels_but_stray_artefacts_do_not(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    shipped = jobs.shipped_files(root)
    assert "weldray/weights/net.pt" in shipped and "run.pt" not in shipped
    assert jobs.missing_from_upload(root) == []
    assert jobs.missing_from_upload(root, excludes=("*.pt",)) == ["weldray/weights/net.pt"]


def test_submit_refuses_naming_the_package_file_that_would_not_ship(tmp_path: Path) -> None:
    root = _checkout(tmp_path)
    with pytest.raises(FileNotFoundError, match="weldray/weights/net.pt"):
        jobs.submit(object(), "python jobs/pipeline.py", working_dir=root, excludes=("*.pt",))


def test_submit_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path) -> None:
    (tmp_path / "weldray").mkdir()
    (tmp_path / "weldray" / "__init__.py").write_text("")
    with pytest.raises(FileNotFoundError, match="jobs/pipeline.py"):
        jobs.submit(object(), "python jobs/pipeline.py", working_dir=tmp_path, required=[jobs.PIPELINE_SCRIPT])


def test_package_data_is_declared_for_wheels() -> None:
    """Non-editable installs (wheels, images built with ``pip install .``) carry only declared package
    data: every non-Python file of the package must match a ``[tool.setuptools.package-data]`` glob."""
    import fnmatch

    import tomllib

    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["weldray"]
    data = [
        f.removeprefix("weldray/") for f in jobs.job_files(REPO) if f.startswith("weldray/") and not f.endswith(".py")
    ]
    assert data, "the package ships data files (the segmenter weights at least)"
    undeclared = [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not undeclared, f"add these to [tool.setuptools.package-data] in pyproject.toml: {undeclared}"


# ----- entrypoint and metadata ---------------------------------------------------------------------
def test_pipeline_entrypoint_round_trips_through_the_shell() -> None:
    overrides = ["profile=quick_test", "pipeline.stages=[train,evaluate]", "data.root=/tmp/a b"]
    command = jobs.pipeline_entrypoint("/data/welds x", overrides)
    assert shlex.split(command) == ["python", "jobs/pipeline.py", "/data/welds x", *overrides]
    assert shlex.split(jobs.pipeline_entrypoint(None, ["profile=quick_test"]))[2:] == ["profile=quick_test"]


def test_job_metadata_carries_run_id_and_config_hash() -> None:
    meta = jobs.job_metadata(["profile=quick_test"], "run-1")
    assert meta["run_id"] == "run-1" and meta["profile"] == "quick_test"
    assert meta["config_hash"] == load_config(["profile=quick_test"]).fingerprint()
    assert all(isinstance(v, str) for v in meta.values())  # the Jobs API accepts str -> str only


def test_job_metadata_rejects_a_bad_override_before_submitting() -> None:
    with pytest.raises(ConfigError, match="training"):
        jobs.job_metadata(["training.no_such_key=1"], "run-1")


def test_run_ids_are_unique_and_sortable() -> None:
    first, second = jobs.new_run_id(), jobs.new_run_id()
    assert first != second and first.startswith("pipeline-20")


def test_a_resubmitted_run_gets_the_next_free_submission_id() -> None:
    """Resuming a failed pipeline job = submitting its run again; Ray refuses a used submission id."""
    from types import SimpleNamespace

    class Client:
        def __init__(self, ids: list[str]) -> None:
            self.ids = ids

        def list_jobs(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(submission_id=i) for i in self.ids]

    assert jobs.free_submission_id(Client(["weldray-other"]), "weldray-run") == "weldray-run"
    assert jobs.free_submission_id(Client(["weldray-run", "weldray-run-2"]), "weldray-run") == "weldray-run-3"


# ----- token ---------------------------------------------------------------------------------------
@pytest.fixture()
def no_token_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_token_lookup_follows_rays_order(no_token_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home_token = write_new_token(no_token_env / ".ray" / "auth_token")
    assert load_token() == home_token.read_text()
    path_token = write_new_token(no_token_env / "elsewhere")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path_token))
    assert load_token() == path_token.read_text()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert load_token() == "from-env"
    assert load_token(home_token) == home_token.read_text()  # an explicit file wins


def test_missing_token_says_how_to_get_one(no_token_env: Path) -> None:
    with pytest.raises(TokenNotFoundError, match="ray get-auth-token"):
        load_token()
    (no_token_env / "empty").write_text("\n")
    with pytest.raises(TokenNotFoundError, match="empty"):
        load_token(no_token_env / "empty")


def test_new_token_is_private_and_long(tmp_path: Path) -> None:
    path = write_new_token(tmp_path / "t" / "auth_token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 64
    assert auth_headers("abc") == {"Authorization": "Bearer abc"}


# ----- local cluster plan --------------------------------------------------------------------------
def test_local_cluster_ports_are_distinct_and_inside_the_block() -> None:
    cfg = LocalClusterConfig(port_base=30000)
    ports = [p for i in range(2) for p in cfg.node_ports(i).values()]
    singles = [p for i in range(2) for k, p in cfg.node_ports(i).items() if "worker-port" not in k]
    singles.append(cfg.dashboard_metrics_port)
    assert len(singles) == len(set(singles))
    ranges = [
        range(cfg.node_ports(i)["min-worker-port"], cfg.node_ports(i)["max-worker-port"] + 1)
        for i in range(2)
    ]
    assert not set(ranges[0]) & set(ranges[1])
    assert not any(p in r for p in singles for r in ranges)
    assert all(30000 <= p < 30000 + PORT_BLOCK for p in [*ports, cfg.dashboard_metrics_port])
    env = LocalCluster(cfg).env()  # what `ray start` gets: the head's dashboard reads its metrics port there
    assert env["DASHBOARD_METRIC_PORT"] == str(cfg.dashboard_metrics_port)
    assert int(env["RAY_DASHBOARD_STARTUP_TIMEOUT_S"]) == int(cfg.start_timeout_s)


def test_free_port_base_skips_a_taken_port() -> None:
    base = find_free_port_base(41000)
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", base + 7))
        sock.listen()
        assert find_free_port_base(base) >= base + PORT_BLOCK


def test_local_cluster_config_rejects_a_temp_dir_too_long_for_unix_sockets() -> None:
    with pytest.raises(ValueError, match="too long"):
        LocalClusterConfig(temp_dir=Path("/tmp") / ("x" * 60))


# ----- CLI -----------------------------------------------------------------------------------------
def test_submit_without_an_address_explains_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WELDRAY_CLUSTER_DIR", str(tmp_path))
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    result = CliRunner().invoke(app, ["submit", "profile=quick_test"])
    assert result.exit_code == 2
    assert "--address" in result.output and "weldray cluster up" in result.output


def test_cluster_down_without_a_cluster_is_a_no_op(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["cluster", "down", "--temp-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert "nothing to stop" in result.output


def test_submit_to_an_unreachable_cluster_is_one_clear_error(tmp_path: Path) -> None:
    token = write_new_token(tmp_path / "token")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(
        app,
        ["submit", "--address", f"http://127.0.0.1:{port}", "--token-file", str(token), "profile=quick_test"],
    )
    assert result.exit_code == 1
    assert "cannot reach the Jobs API" in result.output
    assert token.read_text() not in result.output


def test_last_line_is_the_drivers_not_a_forwarded_worker_line() -> None:
    logs = "\n".join(
        [
            "Running entrypoint for job x: python jobs/pipeline.py",
            "\x1b[36m(RayTrainWorker pid=31027)\x1b[0m Execution plan of Dataset val_1",
            "/out/pipelines/run-1",
            "\x1b[36m(RayTrainWorker pid=31027, ip=10.0.0.2)\x1b[0m done \x1b[32m [repeated 3x]",
            "(MapBatches(Augment) pid=31297)   [tf(img) for img in images]",
            "2026-11-24 04:49:43,120\tINFO worker.py:2000 -- shutting down",
            "[2026-11-24 04:45:40,071 E 28409 28409] core_worker.cc:2465: Actor ...",
            "",
        ]
    )
    result = jobs.JobResult("s", "SUCCEEDED", logs, "02000000", None)
    assert result.last_line == "/out/pipelines/run-1"
