"""Shared fixtures: real photos (skipped when absent), a small procedural dataset, a local Ray,
and an S3-speaking server on 127.0.0.1 (moto's server mode)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# serve.body_timeout_s of the tests' Serve apps, short so that a trickled body is cut off well inside a client's
# 10 s patience (tests/serve/test_hostile.py). HAProxy enforces it for the bodies it holds (weldray-haproxy), and
# reads it when Ray starts: the session's Ray gets it too, as `weldray serve` gives its Ray its own.
SERVE_BODY_TIMEOUT_S = 3.0
# No test reaches the network: MLflow 3 otherwise sends usage data from the training worker that logs a run.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
REAL_WELDS = Path(os.environ.get("WELDRAY_REAL_DATA", REPO_ROOT.parent / "shared" / "data" / "welds"))


@pytest.fixture(scope="session")
def real_welds_dir() -> Path:
    """The 263 real weld photos (read in place, never copied into the repo)."""
    if not (REAL_WELDS / "good_welds").is_dir() or not (REAL_WELDS / "bad_welds").is_dir():
        pytest.skip(f"real weld photos not found at {REAL_WELDS} (set WELDRAY_REAL_DATA to their folder)")
    return REAL_WELDS


@pytest.fixture(scope="session")
def procedural_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 good + 16 bad procedural welds at 160 px, half with text and exact text masks."""
    from weldray.data.procedural import ProceduralSpec, generate_dataset

    out = tmp_path_factory.mktemp("procedural")
    return generate_dataset(out, ProceduralSpec(n_per_class=16, image_size=160, text_fraction=0.5, seed=7))


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """One private local Ray instance (2 CPUs) for the whole session. With its dashboard, as in
    production: Ray Train's placement-group cleaner asks the state API whether the controller lives,
    and without a dashboard of its own that query reaches any other instance on 127.0.0.1:8265,
    which answers "not alive", and the cleaner removes the running training's placement group."""
    import ray

    from weldray.config import RayConfig, ServeConfig
    from weldray.ray_utils import init_ray

    init_ray(RayConfig(num_cpus=2), serve=ServeConfig(body_timeout_s=SERVE_BODY_TIMEOUT_S))
    _session_ray.append(ray.get_runtime_context().gcs_address)
    yield
    ray.shutdown()


_session_ray: list[str] = []  # the GCS address of ray_local's instance, once started


@pytest.fixture(autouse=True, scope="module")
def _module_frees_the_session_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fails a test module that leaves CPUs of the session's Ray held (a leaked actor or placement group): the
    tests after it that train would otherwise wait for those CPUs until their timeout, one after another. The
    Serve tests hold their app's replicas across their package, on purpose."""
    yield
    import ray

    if not _session_ray or request.module.__name__.startswith("tests.serve."):
        return
    if not ray.is_initialized() or ray.get_runtime_context().gcs_address != _session_ray[0]:
        return
    from tests.ray_checks import held_after, holders

    _, held = held_after(timeout_s=15.0)
    if held:
        pytest.fail(f"{request.module.__name__} left {held:g} CPUs of the session's Ray held; {holders()}")


@pytest.fixture()
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 HTTP server on 127.0.0.1 (moto server mode); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }.items():
        monkeypatch.setenv(key, value)
    try:
        yield endpoint
    finally:
        server.stop()
