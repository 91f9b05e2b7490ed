"""One real Serve app on 127.0.0.1 with small limits, shared by the HTTP tests of this package."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import SERVE_BODY_TIMEOUT_S as BODY_TIMEOUT_S
from tests.export.models import export_small

MAX_BODY = 300_000
MAX_PIXELS = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def model_path(tmp_path_factory: pytest.TempPathFactory, procedural_dir: Path) -> Path:
    return export_small(tmp_path_factory.mktemp("serve_model"), procedural_dir, n=4).path


@pytest.fixture(scope="package")
def server(ray_local: None, model_path: Path) -> Iterator[str]:
    from ray import serve

    from weldray.config import load_config
    from weldray.inference.serving import build_application

    port = _free_port()
    cfg = load_config(
        [
            f"serve.max_body_bytes={MAX_BODY}",
            f"serve.max_image_pixels={MAX_PIXELS}",
            "serve.max_batch_items=4",
            # Small limits so the overload test can saturate one replica.
            "serve.min_replicas=1",
            "serve.max_replicas=1",
            "serve.max_pending_images=4",
            "serve.max_batch_size=2",
            "serve.num_cpus_per_replica=0.5",
            "serve.intra_op_threads=1",
            f"serve.body_timeout_s={BODY_TIMEOUT_S}",
        ]
    ).serve
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(model_path, cfg), name="weldray-test", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="package")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30.0) as c:
        yield c
