"""init_ray: a private local instance whose workers are not niced below the driver; Serve's environment."""

from __future__ import annotations

import os

import pytest

from tests.ray_checks import held_after

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
    # HAProxy runs through the launcher that holds uploads whole, and retries a request whose replica died once.
    assert os.path.basename(haproxy["RAY_SERVE_HAPROXY_BINARY_PATH"]) == "weldray-haproxy"
    assert haproxy["RAY_SERVE_HAPROXY_RETRY_ON"] == "conn-failure empty-response"
    assert haproxy["RAY_SERVE_HAPROXY_RETRIES"] == "1" and haproxy["WELDRAY_HAPROXY_BODY_TIMEOUT_S"] == "60.0"
    assert int(haproxy["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"]) > int(haproxy["WELDRAY_HAPROXY_RETRY_BODY_BYTES"])
    assert serve_environment(ServeConfig(retries=0))["RAY_SERVE_HAPROXY_RETRY_ON"] == "none"
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


class _Udf:
    """Doubles ``i``; appends each batch's items to ``log``. ``exit_once``: the first call ends its actor for good
    (as ``ray.kill`` does: Ray never restarts it); ``raise_on``: a Python exception whenever that item comes."""

    def __init__(self, log: str, exit_once: str | None = None, raise_on: int | None = None) -> None:
        self.log, self.exit_once, self.raise_on = log, exit_once, raise_on

    def __call__(self, batch: dict) -> dict:
        import ray

        with open(self.log, "a") as f:
            f.write("".join(f"{int(i)}\n" for i in batch["i"]))
        if self.exit_once and not os.path.exists(self.exit_once):
            open(self.exit_once, "w").close()
            ray.actor.exit_actor()
        if self.raise_on is not None and self.raise_on in batch["i"]:
            raise ValueError(f"item {self.raise_on} is bad")
        return {"i": batch["i"], "twice": batch["i"] * 2}


def _collect(items: list[int], size: int = 1, **udf_kwargs) -> list[dict]:  # type: ignore[no-untyped-def]
    import ray

    from weldray.ray_utils import PoolActors, collect_rows, map_with_actor_pool

    def dataset(todo: list[int], actors: PoolActors):  # type: ignore[no-untyped-def]
        ds = ray.data.from_items([{"i": i} for i in todo], override_num_blocks=4)
        return map_with_actor_pool(ds, _Udf, size, actors, fn_constructor_kwargs=udf_kwargs, batch_size=2,
                                   num_cpus=0.25)

    return collect_rows(dataset, items, lambda i: i, lambda row: int(row["i"]), "test", str, progress=False)


def test_an_actor_lost_for_good_has_its_unfinished_items_run_again_once(ray_local: None, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "calls"
    with caplog.at_level("WARNING", logger="weldray.ray_utils"):
        rows = _collect(list(range(12)), log=str(log), exit_once=str(tmp_path / "exited"))
    assert "an actor of the pool was lost (ActorDiedError)" in caplog.text  # Ray Data gave up; collect_rows reran
    assert sorted(int(r["i"]) for r in rows) == list(range(12))  # each item exactly once
    assert all(r["twice"] == 2 * r["i"] for r in rows)
    assert (tmp_path / "exited").exists() and len(log.read_text().split()) > 12  # the lost batch ran again


def test_an_aborted_execution_leaves_no_actor_holding_cpus(ray_local: None, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    """After a lost actor aborted the execution, the pool's other actor is gone too, and every CPU is free again for
    what comes next (the pipeline's training would otherwise wait for it forever), even while a log handler keeps
    the records of the abort (caplog here)."""
    with caplog.at_level("WARNING"):
        rows = _collect(list(range(24)), size=2, log=str(tmp_path / "calls"), exit_once=str(tmp_path / "exited"))
    assert sorted(int(r["i"]) for r in rows) == list(range(24)) and (tmp_path / "exited").exists()
    assert held_after("_Udf") == ([], 0.0)


def test_a_python_exception_in_the_udf_fails_at_once_without_a_rerun(ray_local: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import ray

    log = tmp_path / "calls"
    with pytest.raises(ray.exceptions.RayTaskError, match="item 5 is bad"):
        _collect(list(range(12)), log=str(log), raise_on=5)
    assert log.read_text().split().count("5") == 1  # neither Ray nor collect_rows tried it again
