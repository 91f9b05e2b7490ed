"""Cluster configs a user deploys as written: the launcher YAML against the schema inside the installed
ray package, the KubeRay manifests structurally, one Ray version everywhere, token auth on."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from weldray.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RAY_VERSION = ray.__version__
PY_TAG = "py311"
KUBERAY_FILES = sorted((CLUSTER / "kuberay").glob("*.yaml"))
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
RAY_IMAGE = re.compile(r"^rayproject/ray:(?P<ray>[\d.]+)-(?P<py>py\d+)(?P<gpu>-gpu)?$")
WELDRAY_IMAGE = re.compile(
    r"^ghcr\.io/weldray/weldray:(?P<weldray>[\w.]+)-ray(?P<ray>[\d.]+)-(?P<py>py\d+)(?P<gpu>-gpu)?$"
)


def _ray_schema() -> dict[str, Any]:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _launcher() -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / "aws.yaml").read_text())


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _ray_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}:{d['kind']}", d)
        for p in KUBERAY_FILES
        for d in _docs(p)
        if d.get("apiVersion") == "ray.io/v1"
    ]


RAY_DOCS = _ray_docs()


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]]


def _groups(cluster_spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [("head", cluster_spec["headGroupSpec"])] + [
        (g["groupName"], g) for g in cluster_spec["workerGroupSpecs"]
    ]


def _image_version(image: str) -> tuple[str, str, bool]:
    match = RAY_IMAGE.match(image) or WELDRAY_IMAGE.match(image)
    assert match, f"image {image!r} is neither rayproject/ray:<ray>-<py>[-gpu] nor the weldray image"
    return match["ray"], match["py"], bool(match["gpu"])


# ----- cluster launcher ----------------------------------------------------------------------------
def test_launcher_yaml_validates_against_rays_schema() -> None:
    jsonschema.validate(_launcher(), _ray_schema())


def test_schema_check_rejects_a_broken_launcher_yaml() -> None:
    broken = copy.deepcopy(_launcher())
    del broken["available_node_types"]["gpu_worker"]["node_config"]
    with pytest.raises(jsonschema.ValidationError, match="node_config"):
        jsonschema.validate(broken, _ray_schema())


def test_launcher_has_cpu_head_and_autoscaled_gpu_workers() -> None:
    cfg = _launcher()
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["node_config"]["InstanceType"].startswith(("m", "c", "r"))
    gpu = types["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p")), "GPU group must use a GPU instance type"
    for name, node_type in types.items():
        if name != cfg["head_node_type"]:
            assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= cfg["max_workers"], name


def test_launcher_images_pin_the_project_ray_version() -> None:
    docker = _launcher()["docker"]
    head, worker = _image_version(docker["head_image"]), _image_version(docker["worker_image"])
    assert head == (RAY_VERSION, PY_TAG, False)
    assert worker == (RAY_VERSION, PY_TAG, True)


def test_launcher_starts_every_node_in_token_mode_with_the_shipped_token() -> None:
    cfg = _launcher()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "/home/ray/.ray/auth_token" in cfg["file_mounts"]
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


# The HAProxy settings that make Serve retry a request whose replica died (docs/export_and_serving.md#faults).
RETRY_KEYS = ("RAY_SERVE_HAPROXY_RETRY_ON", "RAY_SERVE_HAPROXY_RETRIES", "RAY_SERVE_HAPROXY_TUNE_BUFSIZE")


def _assignments(text: str) -> dict[str, str]:
    """KEY=value pairs of a shell command or Dockerfile ENV (values bare, quoted or a $(...) substitution)."""
    return {k: v.strip("'\"") for k, v in re.findall(r"(\w+)=('[^']*'|\"[^\"]*\"|\$\([^)]*\)|[^\s\\]+)", text)}


def test_cluster_nodes_retry_like_weldray_serve() -> None:
    """Every node starts Serve's HAProxy through weldray-haproxy with the retry settings `weldray serve` uses."""
    from weldray.config import ServeConfig
    from weldray.ray_utils import serve_environment

    local = serve_environment(ServeConfig())
    wanted = {k: local[k] for k in RETRY_KEYS}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = next(c for c in _launcher()[key] if "ray start" in c)
        env = _assignments(start.split("ray start")[0])
        assert {k: env.get(k) for k in RETRY_KEYS} == wanted, key
        assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "$(command -v weldray-haproxy)", key
    docker = (CLUSTER / "docker" / "Dockerfile").read_text()
    block = re.search(r"^ENV RAY_SERVE_HAPROXY_BINARY_PATH=(?:.*\\\n)*.*$", docker, re.M)
    assert block, "cluster/docker/Dockerfile: no ENV block for Serve's HAProxy"
    env = _assignments(block[0])
    assert {k: env.get(k) for k in RETRY_KEYS} == wanted
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"].endswith("/bin/weldray-haproxy")


def test_pyproject_pins_the_same_ray() -> None:
    assert f'"ray[data,train,tune,serve]=={RAY_VERSION}"' in (REPO / "pyproject.toml").read_text()


def test_dockerfile_builds_on_the_project_ray_image() -> None:
    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    base = re.search(r"^ARG RAY_IMAGE=(\S+)$", text, re.M)
    assert base and _image_version(base[1]) == (RAY_VERSION, PY_TAG, False)
    assert f"ray.__version__ == '{RAY_VERSION}'" in text


def test_image_holds_every_tree_a_job_runs_from() -> None:
    """RayJob and RayService run from the image, not from an uploaded working_dir: the image must carry
    what ``weldray submit`` would upload (the package with its data, jobs, configs, Serve config)."""
    from weldray.cluster.jobs import JOB_TREES

    text = (CLUSTER / "docker" / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY --chown=\S+ (\S+) \./\1$", text, re.M))
    present = {t for t in JOB_TREES if (REPO / t).is_dir()}
    assert present <= copied, f"add COPY lines to cluster/docker/Dockerfile for {sorted(present - copied)}"
    # Editable install: package data (the segmenter weights) stays where the COPY put it.
    assert "pip install --no-cache-dir -e ." in text


# ----- KubeRay -------------------------------------------------------------------------------------
def test_kuberay_manifests_cover_cluster_job_and_service() -> None:
    assert {d["kind"] for _, d in RAY_DOCS} == RAY_KINDS


@pytest.mark.parametrize(("name", "doc"), RAY_DOCS, ids=[n for n, _ in RAY_DOCS])
def test_kuberay_cluster_spec(name: str, doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in RAY_KINDS
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = _cluster_spec(doc)
    assert spec is not None, f"{name}: no Ray cluster spec"
    assert spec["rayVersion"] == RAY_VERSION
    assert spec["authOptions"]["mode"] == "token", "clusters keep Ray's token auth"
    group_names = [g for g, _ in _groups(spec)]
    assert len(group_names) == len(set(group_names)), "worker group names must be unique"
    for group, gspec in _groups(spec):
        assert isinstance(gspec["rayStartParams"], dict)
        containers = gspec["template"]["spec"]["containers"]
        assert containers, f"{name}/{group}: no containers"
        for container in containers:
            ray_version, py, gpu = _image_version(container["image"])
            assert (ray_version, py) == (RAY_VERSION, PY_TAG), f"{name}/{group}: {container['image']}"
            res = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res[kind]), f"{name}/{group}: {kind} needs cpu and memory"
            assert res["requests"] == res["limits"], (
                f"{name}/{group}: Ray sizes itself from limits; keep equal"
            )
            wants_gpu = "nvidia.com/gpu" in res["limits"]
            assert wants_gpu == gpu, f"{name}/{group}: GPU resources need the -gpu image and vice versa"
        if group != "head":
            assert 0 <= gspec["minReplicas"] <= gspec["replicas"] <= gspec["maxReplicas"], f"{name}/{group}"
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["gcs-server"] == 6379 and ports["dashboard"] == 8265 and ports["client"] == 10001


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for _, d in RAY_DOCS if d["kind"] == kind]
    return doc


def test_rayjob_runs_the_pipeline_with_valid_overrides() -> None:
    spec = _one("RayJob")["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "python" and argv[1].endswith("jobs/pipeline.py")
    assert (REPO / "jobs" / "pipeline.py").is_file()
    assert argv[1].startswith("/home/ray/weldray/"), "the image installs weldray at /home/ray/weldray"
    overrides = [a for a in argv[2:] if "=" in a]
    cfg = load_config(overrides)  # raises ConfigError naming any unknown/bad key
    assert cfg.profile == "production"
    assert spec["shutdownAfterJobFinishes"] is True
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_rayservice_serves_an_importable_app_with_autoscaling() -> None:
    doc = _one("RayService")
    serve_cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (app,) = serve_cfg["applications"]
    module_name, attr = app["import_path"].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr))
    deployment_names = {
        getattr(v, "name", None) for v in vars(module).values() if type(v).__name__ == "Deployment"
    }
    for dep in app["deployments"]:
        assert dep["name"] in deployment_names, f"no Serve deployment named {dep['name']} in {module_name}"
        scaling = dep.get("autoscaling_config")
        if scaling:
            assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    assert any("autoscaling_config" in d for d in app["deployments"])
    load_config(app["args"]["overrides"])
    assert app["args"]["model"].endswith(".onnx")
    assert serve_cfg["http_options"]["port"] == 8000
    spec = _cluster_spec(doc)
    assert spec["enableInTreeAutoscaling"] is True
    head_ports = {
        p["containerPort"] for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert 8000 in head_ports
    # serve.ingress=haproxy (the default) on every pod: Serve reads it from the node's environment.
    from weldray.config import ServeConfig
    from weldray.ray_utils import serve_environment

    wanted = serve_environment(ServeConfig())["RAY_SERVE_ENABLE_HA_PROXY"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == wanted, container["name"]
