"""``weldray submit`` (the pipeline as a Ray job) and ``weldray cluster up|down|status`` (a local
two-node cluster for trying it). The auth token is read from a file or the environment, never printed."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from weldray.cli_utils import exit_on_user_error, print_result
from weldray.cluster.local import DEFAULT_PORT_BASE, DEFAULT_TEMP_DIR

cluster_app = typer.Typer(
    help="A local two-node Ray cluster (head + worker, token auth) on this machine.", no_args_is_help=True
)

_DIR_HELP = "Cluster folder: per-node --temp-dir, logs, auth token, state (also $WELDRAY_CLUSTER_DIR)."


def _cluster_dir(temp_dir: Path | None) -> Path:
    return temp_dir or Path(os.environ.get("WELDRAY_CLUSTER_DIR", DEFAULT_TEMP_DIR))


@cluster_app.command("up")
def cluster_up(
    temp_dir: Path | None = typer.Option(None, help=_DIR_HELP),
    port_base: int = typer.Option(
        DEFAULT_PORT_BASE, help="First of 100 ports (GCS = base, dashboard = base+1)."
    ),
    head_cpus: int = typer.Option(2, help="CPUs of the head node (logical; 2 leave room for reads)."),
    worker_cpus: int = typer.Option(1, help="CPUs of the worker node."),
    object_store_mb: int = typer.Option(256, help="Object store per node (MiB)."),
) -> None:
    """Start a head and a worker node with `ray start` (token auth on); print the dashboard address."""
    from rich.console import Console

    from weldray.cluster.local import ClusterError, LocalCluster, LocalClusterConfig, NodeSpec

    nodes = (
        NodeSpec("head", head_cpus, {"head_node": 1}, {"weldray/role": "head"}),
        NodeSpec("worker", worker_cpus, {"worker_node": 1}, {"weldray/role": "worker"}),
    )
    cluster = LocalCluster(
        LocalClusterConfig(
            temp_dir=_cluster_dir(temp_dir), port_base=port_base, nodes=nodes, object_store_mb=object_store_mb
        )
    )
    console = Console(stderr=True)
    try:
        with console.status("starting head and worker nodes (20-40 s)..."):
            cluster.start()
    except ClusterError as exc:
        typer.secho(f"cluster up failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    console.print(
        f"[green]cluster up[/green]: dashboard {cluster.dashboard_url}  GCS {cluster.gcs_address}\n"
        f"auth token file (keep it private): {cluster.token_path}\n"
        f"  ray CLI : export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={cluster.token_path}\n"
        f"  submit  : weldray submit --address {cluster.dashboard_url} [DATA] [key=value ...]\n"
        f"  browser : {cluster.dashboard_url} asks for the token once (paste the file's content)\n"
        f"  stop    : weldray cluster down"
    )
    print_result(cluster.dashboard_url)


@cluster_app.command("down")
def cluster_down(temp_dir: Path | None = typer.Option(None, help=_DIR_HELP)) -> None:
    """Stop the nodes `weldray cluster up` started (by their PIDs; other Ray instances are untouched)."""
    from weldray.cluster.local import LocalCluster, LocalClusterConfig, load_state

    folder = _cluster_dir(temp_dir)
    if load_state(folder) is None:
        typer.secho(f"no weldray cluster state in {folder}; nothing to stop", err=True)
        return
    LocalCluster(LocalClusterConfig(temp_dir=folder)).stop()
    typer.secho(f"stopped the cluster in {folder}", err=True)


@cluster_app.command("status")
def cluster_status(temp_dir: Path | None = typer.Option(None, help=_DIR_HELP)) -> None:
    """List the cluster's nodes (id, state, labels, CPUs)."""
    from rich.console import Console
    from rich.table import Table

    from weldray.cluster.local import LocalCluster, LocalClusterConfig, load_state

    folder = _cluster_dir(temp_dir)
    state = load_state(folder)
    if state is None:
        typer.secho(f"no weldray cluster state in {folder}; start one with `weldray cluster up`", err=True)
        raise typer.Exit(1)
    port = int(state.gcs_address.rsplit(":", 1)[1])
    cluster = LocalCluster(LocalClusterConfig(temp_dir=folder, port_base=port))
    table = Table(title=f"Ray cluster {state.dashboard_url}")
    for col in ("node id", "state", "role", "CPU", "head"):
        table.add_column(col)
    for node in cluster.list_nodes():
        table.add_row(
            node["node_id"][:12],
            node["state"],
            node.get("labels", {}).get("weldray/role", ""),
            str(node.get("resources_total", {}).get("CPU", "")),
            str(node.get("is_head_node", "")),
        )
    Console(stderr=True).print(table)
    print_result(state.dashboard_url)


def submit(
    args: list[str] | None = typer.Argument(
        None,
        help="[DATA] [key=value ...] exactly as for `weldray pipeline`: a folder, s3:// URI or manifest "
        "(default: the procedural sample), then Hydra overrides such as profile=quick_test.",
    ),
    address: str | None = typer.Option(
        None,
        help="Dashboard address http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, else the "
        "`weldray cluster up` cluster).",
    ),
    token_file: Path | None = typer.Option(
        None,
        help="File holding the cluster's auth token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, "
        "~/.ray/auth_token, else the `weldray cluster up` token).",
    ),
    output_dir: str | None = typer.Option(
        None, help="Results root as the CLUSTER sees it (a shared folder); a relative path is made absolute."
    ),
    wait: bool = typer.Option(True, help="Wait for the job, print its logs, exit non-zero if it fails."),
    timeout_s: float = typer.Option(6 * 3600, help="With --wait: stop the job after this many seconds."),
) -> None:
    """Submit the pipeline (jobs/pipeline.py) as a Ray job with this repository as working_dir.

    Prints the job's logs (with --wait) and the submission id as the last line.
    """
    from ray.exceptions import AuthenticationError
    from rich.console import Console

    from weldray.cluster import jobs
    from weldray.cluster.auth import TokenNotFoundError
    from weldray.cluster.local import load_state

    console = Console(stderr=True)
    local = load_state(_cluster_dir(None))
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or (local.dashboard_url if local else None)
    if not address:
        typer.secho(
            "no cluster address: pass --address http://HEAD:8265 or start one with `weldray cluster up`",
            fg="red",
            err=True,
        )
        raise typer.Exit(2)
    if token_file is None and local is not None and address == local.dashboard_url:
        token_file = Path(local.token_path)
    items = list(args or [])
    data = items.pop(0) if items and "=" not in items[0] and not items[0].startswith("~") else None
    extra = items
    if output_dir:
        extra.append(f"output_dir={output_dir if '://' in output_dir else Path(output_dir).resolve()}")
    try:
        client = jobs.connect(address, token_file=token_file)
    except TokenNotFoundError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None
    except (
        ConnectionError,
        RuntimeError,
        AuthenticationError,
    ) as exc:  # unreachable, or 401/403: wrong token
        typer.secho(f"cannot reach the Jobs API at {address}: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    with exit_on_user_error():
        submission_id = jobs.submit_pipeline(client, data, extra)
    console.print(f"submitted [bold]{submission_id}[/bold]; Jobs page: {address}/#/jobs")
    if wait:
        result = jobs.wait(
            client,
            submission_id,
            timeout_s=timeout_s,
            on_status=lambda s: console.print(f"job {submission_id}: {s}"),
        )
        jobs.print_logs(result)
        if result.status != "SUCCEEDED":
            typer.secho(f"job {submission_id} {result.status}", fg="red", err=True)
            print_result(submission_id)
            raise typer.Exit(1)
    print_result(submission_id)
