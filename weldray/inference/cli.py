"""``weldray predict`` and ``weldray serve``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from weldray.cli_utils import exit_on_user_error, print_result
from weldray.inference.classifier import DEFAULT_BATCH_SIZE


def predict(
    model: str = typer.Argument(..., help="Exported .onnx model (its .json sidecar beside it)."),
    images: list[str] = typer.Argument(
        ..., help="Image files, folders of images or s3:// URIs; key=value items are overrides."
    ),
    provider: str | None = typer.Option(
        None, "--provider", help="auto | cpu | cuda | tensorrt (default serve.provider)."
    ),
    tta: bool | None = typer.Option(None, "--tta/--no-tta", help="Average with the mirrored image."),
    batch_size: int = typer.Option(
        DEFAULT_BATCH_SIZE, "--batch-size", min=1, help="Images per forward pass (memory stays flat)."
    ),
    explain: Path | None = typer.Option(
        None, "--explain", help="Write a heatmap overlay PNG per image into this folder (and its path in the line)."
    ),
) -> None:
    """Classify images; one JSON line per image on stdout (unreadable images get an "error" line)."""
    from rich.console import Console
    from rich.progress import track

    from weldray.data.layout import image_files
    from weldray.inference import ProviderError, WeldClassifierInference
    from weldray.io import is_s3

    overrides = [i for i in images if re.fullmatch(r"[A-Za-z_][\w.]*=.*", i) and not Path(i).exists()]
    with exit_on_user_error():
        from weldray.config import load_config

        config = load_config(overrides)
        cfg = config.serve
    paths = [
        f
        for item in images
        if item not in overrides
        for f in (image_files(item, config.data) if not is_s3(item) and Path(item).is_dir() else [item])
    ]
    if not paths:
        typer.secho(f"predict failed: no images in {[i for i in images if i not in overrides]}", fg="red", err=True)
        raise typer.Exit(1)
    try:
        clf = WeldClassifierInference(
            model,
            providers=provider or cfg.provider,
            precision=cfg.precision,
            tta=cfg.tta if tta is None else tta,
            review_threshold=cfg.review_threshold,
            intra_op_threads=cfg.intra_op_threads,
            max_pixels=cfg.max_image_pixels,
        )
    except (FileNotFoundError, ProviderError, ValueError) as exc:
        typer.secho(f"predict failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if explain and not clf.sidecar.maps_output:
        typer.secho(f"predict failed: {model} has no class-map output (an ensemble): no heatmaps", fg="red", err=True)
        raise typer.Exit(1)
    failed = 0
    results = _explained(clf, paths, explain) if explain else clf.iter_predict(paths, batch_size, skip_errors=True)
    # Progress on stderr (stdout stays JSON lines); only for more images than one forward pass.
    if len(paths) > batch_size:
        results = track(results, total=len(paths), description="predicting", console=Console(stderr=True))
    for path, result in zip(paths, results, strict=True):
        failed += "error" in result
        print(json.dumps({"image": path, **result}), flush=True)
    if failed == len(paths):
        raise typer.Exit(1)


def _explained(clf, paths: list[str], out_dir: Path):
    """Results with their heatmap overlays written to ``out_dir`` (one image at a time)."""
    from weldray.inference.explain import overlay
    from weldray.preprocessing import ImageError

    out_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        try:
            result, heat, photo = clf.explain(path)
        except (ImageError, OSError) as exc:
            yield {"error": getattr(exc, "code", "unreadable"), "reason": str(exc)}
            continue
        target = out_dir / f"{i:05d}_{Path(path).stem}.{result['class']}.png"
        overlay(photo, heat).save(target)
        yield {**result, "explanation": str(target)}


def _check_port_free(host: str, port: int) -> None:
    """OSError naming the port when another process listens there: said before Ray starts, not as a traceback from
    the ingress that cannot bind it."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free to use
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another process holds it; "
                "choose another with --port or serve.port=..."
            ) from None


def serve(
    model: str = typer.Argument(..., help="Exported .onnx model (its .json sidecar beside it)."),
    overrides: list[str] | None = typer.Argument(None, help="Hydra overrides, e.g. serve.max_replicas=4."),
    host: str | None = typer.Option(None, "--host", help="Bind address (default serve.host = 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Port (default serve.port = 8000)."),
) -> None:
    """Serve MODEL over HTTP with Ray Serve until SIGINT/SIGTERM, then stop Serve and Ray and exit 0."""
    import contextlib
    import signal
    import time

    import ray
    from ray import serve as ray_serve

    from weldray.inference.serving import api_key_digest, build_application
    from weldray.ray_utils import IngressUnavailableError, init_ray

    extra = [*([f"serve.host={host}"] if host else []), *([f"serve.port={port}"] if port else [])]
    with exit_on_user_error():
        from weldray.config import load_config

        cfg = load_config([*(overrides or []), *extra])
    try:
        from weldray.inference.sidecar import choose_precision

        choose_precision(model, cfg.serve.precision, cpu=cfg.serve.num_gpus_per_replica == 0)
        _check_port_free(cfg.serve.host, cfg.serve.port)
        api_key_digest(cfg.serve)  # a missing or empty key file: said now, not by a replica
    except (FileNotFoundError, OSError, ValueError) as exc:
        typer.secho(f"serve failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    stopping: list[int] = []
    try:
        init_ray(cfg.ray, serve=cfg.serve)
    except IngressUnavailableError as exc:
        typer.secho(f"serve failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    # After ray.init, which installs its own SIGTERM handler (sys.exit(15)): ours stops Serve and
    # Ray in order and exits 0. The handler only records the signal; the main loop does the work.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stopping.append(signum))
    try:
        ray_serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
        ray_serve.run(build_application(model, cfg.serve), name="weldray", route_prefix="/")
        url = f"http://{cfg.serve.host}:{cfg.serve.port}"
        typer.secho(f"serving {model} at {url} (docs: {url}/docs); Ctrl-C or SIGTERM stops", err=True)
        print_result(url)
        while not stopping:
            time.sleep(0.2)
        typer.secho(f"received {signal.Signals(stopping[0]).name}", err=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not abort the shutdown half-way
        typer.secho("shutting down Serve and Ray", err=True)
        # The app first: its replicas stop taking requests (HAProxy stops routing to them) and finish the ones they
        # hold; only then does Serve stop the ingress. Serve's own shutdown stops both at once and cut requests off.
        with contextlib.suppress(Exception):
            ray_serve.delete("weldray")
        ray_serve.shutdown()
        ray.shutdown()
