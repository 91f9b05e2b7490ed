"""The Ray Serve HTTP application: a FastAPI ingress that validates and decodes uploads, and an
autoscaled model deployment that batches them through ONNX Runtime.

Two deployments so that overload is answered by us: the ingress calls the model through a
DeploymentHandle, whose ``max_queued_requests`` limit raises BackPressureError, which becomes a
JSON 503. Every bad upload becomes a 4xx JSON body from :mod:`weldray.preprocessing`'s checks,
run before any pixel is decoded.

Entry points: :func:`build_application` (Python / ``weldray serve``) and :func:`build_app`
(``serve run|deploy serve/config.yaml``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from weldray.config import ServeConfig
from weldray.preprocessing import (
    ALLOWED_FORMATS,
    ImageError,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode_image,
    resize_for_model,
)

log = logging.getLogger(__name__)

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]
_IMAGE_BODY = {
    "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
    "required": True,
}
_BATCH_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        }
    },
    "required": True,
}


def error_response(
    status: int, code: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status, headers=headers)


@serve.deployment(name="WeldModel")
class WeldModel:
    """One ONNX Runtime session; requests are grouped by ``@serve.batch`` into one forward pass."""

    def __init__(self, model_path: str, options: dict[str, Any]) -> None:
        import ray
        from ray.serve.metrics import Histogram

        from weldray.inference import WeldClassifierInference

        provider = options["provider"]
        if provider == "auto" and not ray.get_gpu_ids():
            provider = "cpu"  # a replica without a GPU never probes CUDA
        self.infer = WeldClassifierInference(
            model_path,
            providers=provider,
            tta=options["tta"],
            review_threshold=options["review_threshold"],
            intra_op_threads=options["intra_op_threads"],
        )
        self.classify.set_max_batch_size(options["max_batch_size"])
        self.classify.set_batch_wait_timeout_s(options["batch_wait_timeout_s"])
        self._batch_size = Histogram(
            "weldray_batch_size", description="Images per model forward pass.", boundaries=BATCH_BOUNDARIES
        )
        log.info("WeldModel ready on %s", self.infer.provider)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def classify(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        """uint8 HxWx3 images at the model size -> result dicts."""
        self._batch_size.observe(len(images))
        probs = await asyncio.to_thread(self.infer.probabilities, np.stack(images))
        return [self.infer.result(row) for row in probs]

    def metadata(self) -> dict[str, Any]:
        return self.infer.metadata


api = FastAPI(
    title="weldray",
    description="Weld photo classification (good_weld / bad_weld). Send one image as the raw request body "
    'or as multipart/form-data. Errors are JSON: {"error": code, "reason": text}.',
    version="1",
)


@serve.deployment(name="WeldIngress")
@serve.ingress(api)
class WeldIngress:
    """HTTP: validation, decoding and the shared resize policy, then the model deployment."""

    def __init__(self, model: DeploymentHandle, options: dict[str, Any]) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.model = model
        self.options = options
        self.input_size: int = options["input_size"]
        self._requests = Counter(
            "weldray_requests_total",
            description="HTTP requests by route and outcome.",
            tag_keys=("route", "outcome"),
        )
        self._latency = Histogram(
            "weldray_request_latency_ms",
            description="HTTP request latency (ms).",
            boundaries=LATENCY_BOUNDARIES_MS,
            tag_keys=("route",),
        )
        self._metadata: dict[str, Any] | None = None

    # --- helpers -----------------------------------------------------------------------------
    def _record(self, route: str, outcome: str, started: float) -> None:
        self._requests.inc(tags={"route": route, "outcome": outcome})
        self._latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it exceeds the limit (before it is all read)."""
        limit = self.options["max_body_bytes"]
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ImageError(f"invalid Content-Length header {declared!r}")
            if int(declared) > limit:
                raise ImageTooLargeError(
                    f"request body of {int(declared)} bytes exceeds the {limit}-byte limit"
                )
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise ImageTooLargeError(f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _uploads(self, request: Request, body: bytes) -> list[bytes]:
        """Image payloads: the raw body, or every file part of a multipart form."""
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return [body]
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=self.options["max_batch_items"] + 1)
        except Exception as exc:  # starlette raises MultiPartException / HTTPException for bad forms
            raise ImageError(f"malformed multipart body: {getattr(exc, 'detail', None) or exc}") from None
        files = [v for _, v in form.multi_items() if hasattr(v, "read")]
        if not files:
            raise ImageError("multipart body has no file part; send the image as a file field (e.g. 'file')")
        return [await f.read() for f in files]

    def _prepare(self, data: bytes) -> np.ndarray:
        img = decode_image(data, max_pixels=self.options["max_image_pixels"])
        return resize_for_model(img, self.input_size)

    async def _classify(self, data: bytes) -> dict[str, Any]:
        arr = await asyncio.to_thread(self._prepare, data)
        return await self.model.classify.remote(arr)

    async def _guard(self, route: str, started: float, work) -> JSONResponse:
        """Run ``work`` and map every failure to a JSON response (never a 500 for bad input)."""
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            payload = await work()
        except ImageError as exc:
            self._record(route, exc.code, started)
            return error_response(exc.status, exc.code, exc.reason)
        except (BackPressureError, DeploymentUnavailableError) as exc:
            self._record(route, "overloaded", started)
            return error_response(
                503,
                "overloaded",
                f"the model is at capacity, retry shortly ({type(exc).__name__})",
                {"Retry-After": "1"},
            )
        except Exception as exc:  # a server fault, not the client's: still JSON, and logged
            log.exception("request failed")
            self._record(route, "error", started)
            return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
        self._record(route, "ok", started)
        return JSONResponse(payload)

    # --- routes ------------------------------------------------------------------------------
    @api.post(
        "/predict",
        openapi_extra={"requestBody": _IMAGE_BODY},
        summary="Classify one image (raw body or multipart 'file').",
    )
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()

        async def work() -> dict[str, Any]:
            uploads = await self._uploads(request, await self._read_body(request))
            if len(uploads) != 1:
                raise ImageError(f"/predict takes one image, got {len(uploads)}; use /predict/batch")
            return await self._classify(uploads[0])

        return await self._guard("predict", started, work)

    @api.post(
        "/predict/batch",
        openapi_extra={"requestBody": _BATCH_BODY},
        summary="Classify several images (multipart, one file part each); errors are reported per image.",
    )
    async def predict_batch(self, request: Request) -> JSONResponse:
        started = time.perf_counter()

        async def one(data: bytes) -> dict[str, Any]:
            try:
                return await self._classify(data)
            except ImageError as exc:
                return {"error": exc.code, "reason": exc.reason, "status": exc.status}

        async def work() -> dict[str, Any]:
            if not request.headers.get("content-type", "").startswith("multipart/form-data"):
                raise UnsupportedFormatError(
                    "/predict/batch takes multipart/form-data with one file part per image"
                )
            uploads = await self._uploads(request, await self._read_body(request))
            if len(uploads) > self.options["max_batch_items"]:
                raise ImageTooLargeError(
                    f"{len(uploads)} images in one batch; the limit is {self.options['max_batch_items']}"
                )
            results = await asyncio.gather(*(one(u) for u in uploads))
            return {"results": results, "n_ok": sum("error" not in r for r in results)}

        return await self._guard("predict_batch", started, work)

    @api.get("/healthz", summary="Liveness of the HTTP ingress.")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: a model replica answers.")
    async def readyz(self) -> JSONResponse:
        try:
            meta = await asyncio.wait_for(self.model.metadata.remote(), timeout=5.0)
        except Exception as exc:
            return error_response(503, "not_ready", f"no model replica answered: {type(exc).__name__}")
        return JSONResponse({"status": "ready", "provider": meta["provider"]})

    @api.get("/metadata", summary="Model version, classes, input size, provider and limits.")
    async def metadata(self) -> JSONResponse:
        if self._metadata is None:
            self._metadata = await self.model.metadata.remote()
        limits = {k: self.options[k] for k in ("max_body_bytes", "max_image_pixels", "max_batch_items")}
        return JSONResponse({**self._metadata, "limits": limits, "allowed_formats": sorted(ALLOWED_FORMATS)})


def _autoscaling(cfg: ServeConfig) -> dict[str, Any]:
    return {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
    }


def build_application(model_path: str | Path, cfg: ServeConfig):
    """The Serve application for ``model_path`` (.onnx with its sidecar; local or s3://)."""
    from weldray.inference.sidecar import read_sidecar
    from weldray.io import is_s3

    path = str(model_path) if is_s3(model_path) else str(Path(model_path).resolve())
    sidecar = read_sidecar(path)  # fail here, not in a replica, when the sidecar is missing
    options = asdict(cfg)
    options["input_size"] = sidecar.input_size
    model = WeldModel.options(
        autoscaling_config=_autoscaling(cfg),
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus_per_replica, "num_gpus": cfg.num_gpus_per_replica},
    ).bind(path, options)
    return WeldIngress.options(
        num_replicas=cfg.ingress_replicas,
        max_ongoing_requests=cfg.ingress_max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    ).bind(model, options)


def build_app(args: dict[str, Any]):
    """Application builder for ``serve run``/``serve deploy``.

    ``args: {model: PATH, overrides: [key=value, ...]}`` (overrides of the serve.* config group).
    """
    from weldray.config import load_config

    if "model" not in args:
        raise ValueError("serve config needs args.model: the exported .onnx file")
    cfg = load_config(list(args.get("overrides", [])))
    return build_application(args["model"], cfg.serve)
