"""init_ray: a private local instance whose workers are not niced below the driver; Serve's environment."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.ray


def test_local_workers_run_at_the_drivers_priority(ray_local: None) -> None:
    import ray

    @ray.remote(num_cpus=0)
    def niceness() -> int:
        return os.nice(0)

    expected = int(os.environ.get("RAY_worker_niceness", os.nice(0)))  # noqa: SIM112 (Ray's own name)
    assert ray.get(niceness.remote()) == expected


def test_serve_environment_per_ingress() -> None:
    from weldray.config import ServeConfig
    from weldray.ray_utils import serve_environment

    haproxy = serve_environment(ServeConfig(drain_period_s=1.5))
    assert haproxy["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert haproxy["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1.5"
    ports = [haproxy[k] for k in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
                                  "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT")]
    assert len(set(ports)) == 3 and "8404" not in ports  # free ports, not Ray's fixed defaults
    proxy = serve_environment(ServeConfig(ingress="proxy"))
    assert proxy["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and not any("HAPROXY" in k for k in proxy)


def test_haproxy_ingress_without_a_binary_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from weldray.config import ServeConfig
    from weldray.ray_utils import IngressUnavailableError, serve_environment

    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    with pytest.raises(IngressUnavailableError, match="serve.ingress=proxy"):
        serve_environment(ServeConfig())
    assert serve_environment(ServeConfig(ingress="proxy"))["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


def test_private_instance_names_itself_to_everything_it_starts(ray_local: None) -> None:
    """Ray's helpers that find "the" cluster by auto-detection (the state API, Ray Train's placement-group
    cleaner) must reach this private instance even while another one runs on the machine."""
    import ray

    @ray.remote(num_cpus=0)
    def address_seen() -> str | None:
        return os.environ.get("RAY_ADDRESS")

    assert ray.get(address_seen.remote()) == ray.get_runtime_context().gcs_address
    assert "RAY_GCS_SERVER_PORT" not in os.environ  # set for the instance's own start only


def test_state_api_in_a_worker_finds_its_own_instance_beside_another(ray_local: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    import ray

    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys, time; ray.init(address='local', num_cpus=1, "
         "include_dashboard=False); print('up', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    try:
        assert other.stdout is not None and other.stdout.readline().strip() == "up"

        @ray.remote(num_cpus=0)
        class Probe:
            def alive(self, actor_id: str) -> str:
                from ray.util.state import get_actor

                return get_actor(actor_id, timeout=30).state  # what the cleaner asks

        probe = Probe.remote()
        actor_id = ray.get(probe.__ray_call__.remote(lambda self: ray.get_runtime_context().get_actor_id()))
        assert ray.get(probe.alive.remote(actor_id)) == "ALIVE"
        ray.kill(probe)
    finally:
        other.kill()
        other.wait()
