"""The Ray Serve HTTP application: one deployment whose replicas validate, decode and classify.

Each replica is a FastAPI ingress holding its own ONNX Runtime session, so a request costs one hop
(proxy -> replica) and no extra actor call. Uploads are grouped by ``@serve.batch``; a batch is
validated (every check before any pixel is decoded: 4xx JSON from :mod:`weldray.preprocessing`),
decoded in parallel and classified in one forward pass, in one worker-thread call. With
``batch_wait_timeout_s = 0`` a lone request runs at once, and requests that arrive during a
forward pass form the next batch.
A replica admits at most ``serve.max_pending_images`` images; beyond that a request gets a JSON 503
with ``Retry-After`` at once, instead of waiting in an unbounded queue. A ``/predict`` answer carries a
``Server-Timing`` header with the time of each stage inside the replica (``serve.server_timing``).

Entry points: :func:`build_application` (Python / ``weldray serve``) and :func:`build_app`
(``serve run|deploy serve/config.yaml``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from ray import serve

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

#: The web inspector's files (package data) and the only names /static serves.
WEB_DIR = Path(__file__).with_name("web")
WEB_ASSETS = {"inspector.js": "text/javascript", "inspector.css": "text/css"}
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


#: Stages of a /predict request inside the replica, in order (ms): reading the body, decoding and resizing the
#: upload, waiting for the batch and the worker thread, the forward pass of its batch, rendering the JSON
#: answer, and the whole handler. What a client measures beyond ``app`` is the HTTP server and the ingress.
TIMING_STAGES = ("read", "decode", "resize", "wait", "infer", "encode", "app")
Timing = dict[str, float]


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def server_timing_header(timing: Timing, batch: int | None = None) -> str:
    """A ``Server-Timing`` value (``stage;dur=ms``, W3C Server Timing) with the batch size as a description."""
    parts = [f"{k};dur={timing[k]:.2f}" for k in TIMING_STAGES if k in timing]
    if batch is not None:
        parts.append(f'batch;desc="{batch}"')
    return ", ".join(parts)


def error_response(
    status: int, code: str, reason: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "reason": reason}, status_code=status, headers=headers)


def api_key_digest(cfg: ServeConfig) -> str | None:
    """SHA-256 (hex) of the key in ``serve.api_key_file``, read on the driver so a missing or empty file is an error
    before any replica starts; None without a key file."""
    if not cfg.api_key_file:
        return None
    from weldray.io import read_bytes

    try:
        key = read_bytes(cfg.api_key_file).decode().strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"serve.api_key_file={cfg.api_key_file}: no such file") from None
    if not key:
        raise ValueError(f"serve.api_key_file={cfg.api_key_file} is empty: put the API key on its first line")
    return hashlib.sha256(key.encode()).hexdigest()


class BodyTimeoutError(ImageError):
    """The request body did not arrive within ``serve.body_timeout_s``."""

    status = 408
    code = "body_timeout"


class OverloadedError(RuntimeError):
    """The replica already holds ``serve.max_pending_images`` images."""


class ExplainUnavailableError(ImageError):
    """``explain=true`` for a model without class maps (an ensemble)."""

    status = 422
    code = "explain_unavailable"


#: Long side of the overlay PNG an explanation returns (the heatmap itself is coarser than that).
OVERLAY_MAX_SIDE = 512
_EXPLAIN_PARAM = {
    "name": "explain",
    "in": "query",
    "required": False,
    "schema": {"type": "boolean", "default": False},
    "description": "Also return a heatmap overlay (base64 PNG, long side <= 512 px) of where the evidence "
    "for the predicted class lies, and its peak in photo pixels.",
}


def _flag(request: Request, name: str) -> bool:
    value = request.query_params.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ImageError(f"query parameter {name}={value!r}: use true or false")
    return value in ("true", "1")


api = FastAPI(
    title="weldray",
    description="Weld photo classification (good_weld / bad_weld). Send one image as the raw request body "
    'or as multipart/form-data. Errors are JSON: {"error": code, "reason": text}.',
    version="1",
)


@serve.deployment(name="WeldService")
@serve.ingress(api)
class WeldService:
    """HTTP validation, decoding and the shared resize policy, then batched ONNX Runtime inference."""

    def __init__(self, model_path: str, options: dict[str, Any]) -> None:
        import ray
        from ray.serve.metrics import Counter, Histogram

        from weldray.inference import WeldClassifierInference

        provider = options["provider"]
        if provider == "auto" and not ray.get_gpu_ids():
            provider = "cpu"  # a replica without a GPU never probes CUDA
        self.infer = WeldClassifierInference(
            model_path,
            providers=provider,
            precision=options["precision"],
            tta=options["tta"],
            review_threshold=options["review_threshold"],
            intra_op_threads=options["intra_op_threads"],
            allow_spinning=options["ort_spinning"],
            max_pixels=options["max_image_pixels"],
        )
        self.options = options
        self._key_digest: str | None = options.get("api_key_sha256")
        self.input_size = self.infer.input_size
        self._model_card = self.infer.model_card()
        # One batch at a time runs in the worker thread (ONNX Runtime parallelises inside); the
        # images of a batch are decoded in parallel on the decode pool.
        self._decode_pool = ThreadPoolExecutor(options["decode_threads"], thread_name_prefix="decode")
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
        self._pending = 0
        self.classify.set_max_batch_size(options["max_batch_size"])
        self.classify.set_batch_wait_timeout_s(options["batch_wait_timeout_s"])
        size = self.input_size
        self.infer.probabilities(np.zeros((1, size, size, 3), np.uint8))  # first run allocates: not on a request
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
        self._batch_size = Histogram(
            "weldray_batch_size", description="Images per model forward pass.", boundaries=BATCH_BOUNDARIES
        )
        log.info("WeldService ready on %s", self.infer.provider)

    def __del__(self) -> None:
        for pool in (getattr(self, "_decode_pool", None), getattr(self, "_infer_pool", None)):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def classify(
        self, uploads: list[bytes | np.ndarray]
    ) -> list[tuple[dict[str, Any] | ImageError, Timing]]:
        """Uploads (encoded bytes, or images already decoded and resized) -> (result dict, or the
        ImageError of an upload that does not decode; its decode/resize/infer times, batch size).

        Encoded uploads are decoded inside the same worker-thread call as the forward pass (in
        parallel on the decode pool when there are several): a lone request costs one thread
        handoff, which is what it waits on when the cores are busy.
        """
        return await self._run(uploads)

    async def _run(self, uploads: list[bytes | np.ndarray]) -> list[tuple[dict[str, Any] | ImageError, Timing]]:
        self._batch_size.observe(len(uploads))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._infer_pool, self._decode_and_classify, uploads)

    def _decode_and_classify(
        self, uploads: list[bytes | np.ndarray]
    ) -> list[tuple[dict[str, Any] | ImageError, Timing]]:
        encoded = [i for i, u in enumerate(uploads) if isinstance(u, bytes)]
        decoded: list[np.ndarray | ImageError] = list(uploads)
        timings: list[Timing] = [{"batch": len(uploads)} for _ in uploads]
        decode = map if len(encoded) == 1 else self._decode_pool.map  # one image: no second thread handoff
        prepared = decode(self._prepare_or_error, [uploads[i] for i in encoded])
        for i, (image, timing) in zip(encoded, prepared, strict=True):
            decoded[i] = image
            timings[i].update(timing)
        ok = [i for i, d in enumerate(decoded) if not isinstance(d, ImageError)]
        results: list[dict[str, Any] | ImageError] = list(decoded)  # errors stay in place
        if ok:
            started = time.perf_counter()
            probs = self.infer.probabilities(np.stack([decoded[i] for i in ok]))
            infer_ms = _ms(started)
            for i, row in zip(ok, probs, strict=True):
                results[i] = self.infer.result(row)
                timings[i]["infer"] = infer_ms
        return list(zip(results, timings, strict=True))

    # --- helpers -----------------------------------------------------------------------------
    def _unauthorized(self, request: Request) -> JSONResponse | None:
        """401 JSON unless the request carries the API key (when there is one); compared in constant time."""
        if self._key_digest is None:
            return None
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
        if key and hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), self._key_digest):
            return None
        return error_response(
            401, "unauthorized", "this API needs its key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
            {"WWW-Authenticate": 'Bearer realm="weldray"'},
        )

    def _record(self, route: str, outcome: str, started: float) -> None:
        self._requests.inc(tags={"route": route, "outcome": outcome})
        self._latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused with 413 as soon as it exceeds the limit (before it is all read), and with 408 when it
        has not all arrived within ``serve.body_timeout_s``."""
        limit, seconds = self.options["max_body_bytes"], self.options["body_timeout_s"]
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise ImageError(f"invalid Content-Length header {declared!r}")
            if int(declared) > limit:
                raise ImageTooLargeError(
                    f"request body of {int(declared)} bytes exceeds the {limit}-byte limit"
                )
        chunks, total = [], 0
        try:
            async with asyncio.timeout(seconds):
                async for chunk in request.stream():
                    total += len(chunk)
                    if total > limit:
                        raise ImageTooLargeError(f"request body exceeds the {limit}-byte limit")
                    chunks.append(chunk)
        except TimeoutError:
            raise BodyTimeoutError(
                f"request body not received within {seconds:g} s ({total} bytes arrived); send it at once"
            ) from None
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

    def _explain(self, data: bytes) -> dict[str, Any]:
        """One upload's result and heatmap (unbatched: explanations are for people, not for throughput)."""
        from weldray.inference.explain import overlay, png_base64

        if not self.infer.sidecar.maps_output:
            raise ExplainUnavailableError("this model has no class-map output (an ensemble): no heatmaps")
        result, heat, photo = self.infer.explain(decode_image(data, max_pixels=self.options["max_image_pixels"]))
        picture = overlay(photo, heat)
        picture.thumbnail((OVERLAY_MAX_SIDE, OVERLAY_MAX_SIDE))
        return {
            **result,
            "explanation": {
                "method": "class activation map (exact per-location decomposition of the logits)",
                "overlay_png_base64": png_base64(picture),
                "overlay_size": list(picture.size),
                "photo_size": list(photo.size),
            },
        }

    def _prepare_or_error(self, data: bytes) -> tuple[np.ndarray | ImageError, Timing]:
        """The decoded, resized upload (or its ImageError) and the time each step took."""
        started = time.perf_counter()
        try:
            image = decode_image(data, max_pixels=self.options["max_image_pixels"])
        except ImageError as exc:
            return exc, {"decode": _ms(started)}
        decoded = time.perf_counter()
        return resize_for_model(image, self.input_size), {"decode": (decoded - started) * 1000, "resize": _ms(decoded)}

    @contextmanager
    def _admit(self, n: int) -> Iterator[None]:
        """Hold ``n`` image slots for the duration of the block, or refuse with OverloadedError."""
        limit = self.options["max_pending_images"]
        if self._pending + n > limit:
            raise OverloadedError(f"{self._pending} images in progress on this replica (limit {limit})")
        self._pending += n
        try:
            yield
        finally:
            self._pending -= n

    async def _classify(self, data: bytes, timing: Timing) -> dict[str, Any]:
        """One upload's result; its stage times go into ``timing``. While other images are in progress on
        this replica, the upload is decoded on the decode pool before it joins a batch, so decoding overlaps
        the forward pass running meanwhile (+20-25 % throughput at concurrency 16 on 2 cores). Alone on the
        replica it has no batch to join, and skips Serve's batch queue."""
        upload: bytes | np.ndarray | ImageError = data
        alone = self._pending == 1
        if not alone:
            upload, steps = await asyncio.get_running_loop().run_in_executor(
                self._decode_pool, self._prepare_or_error, data
            )
            timing.update(steps)
        if isinstance(upload, ImageError):
            raise upload
        started = time.perf_counter()
        result, steps = (await self._run([upload]))[0] if alone else await self.classify(upload)
        timing.update(steps)
        timing["wait"] = _ms(started) - sum(steps.get(k, 0.0) for k in ("decode", "resize", "infer"))
        if isinstance(result, ImageError):
            raise result
        return result

    async def _guard(self, route: str, started: float, work, timing: Timing | None = None) -> JSONResponse:
        """Run ``work`` and map every failure to a JSON response (never a 500 for bad input); a success
        carries the request's stage times (``timing``, filled by ``work``) as ``Server-Timing``."""
        try:
            payload = await work()
        except ImageError as exc:
            self._record(route, exc.code, started)
            return error_response(exc.status, exc.code, exc.reason)
        except OverloadedError as exc:
            self._record(route, "overloaded", started)
            return error_response(503, "overloaded", f"the model is at capacity, retry shortly: {exc}",
                                  {"Retry-After": "1"})
        except Exception as exc:  # a server fault, not the client's: still JSON, and logged
            log.exception("request failed")
            self._record(route, "error", started)
            return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}")
        self._record(route, "ok", started)
        rendering = time.perf_counter()
        response = JSONResponse(payload)
        if timing is not None and self.options["server_timing"]:
            timing["encode"] = _ms(rendering)
            timing["app"] = _ms(started)
            batch = timing.pop("batch", None)
            response.headers["Server-Timing"] = server_timing_header(timing, None if batch is None else int(batch))
        return response

    # --- routes ------------------------------------------------------------------------------
    @api.post(
        "/predict",
        openapi_extra={"requestBody": _IMAGE_BODY, "parameters": [_EXPLAIN_PARAM]},
        summary="Classify one image (raw body or multipart 'file'); ?explain=true adds a heatmap.",
    )
    async def predict(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        if (denied := self._unauthorized(request)) is not None:  # before a byte of the body is read
            return denied
        timing: Timing = {}

        async def work() -> dict[str, Any]:
            explain = _flag(request, "explain")
            uploads = await self._uploads(request, await self._read_body(request))
            timing["read"] = _ms(started)
            if len(uploads) != 1:
                raise ImageError(f"/predict takes one image, got {len(uploads)}; use /predict/batch")
            with self._admit(1):
                if explain:
                    return await asyncio.get_running_loop().run_in_executor(
                        self._infer_pool, self._explain, uploads[0]
                    )
                return await self._classify(uploads[0], timing)

        return await self._guard("predict", started, work, timing)

    @api.post(
        "/predict/batch",
        openapi_extra={"requestBody": _BATCH_BODY},
        summary="Classify several images (multipart, one file part each); errors are reported per image.",
    )
    async def predict_batch(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        if (denied := self._unauthorized(request)) is not None:
            return denied

        async def one(data: bytes) -> dict[str, Any]:
            try:
                return await self._classify(data, {})
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
            with self._admit(len(uploads)):
                results = await asyncio.gather(*(one(u) for u in uploads))
            return {"results": results, "n_ok": sum("error" not in r for r in results)}

        return await self._guard("predict_batch", started, work)

    @api.get("/", include_in_schema=False)
    async def inspector(self) -> HTMLResponse:
        """The web inspector (plain HTML/JS shipped in the package: no CDN, works offline)."""
        return HTMLResponse((WEB_DIR / "index.html").read_text())

    @api.get("/static/{name}", include_in_schema=False)
    async def static(self, name: str) -> Response:
        if name not in WEB_ASSETS:
            return error_response(404, "not_found", f"no static file {name!r}")
        return FileResponse(WEB_DIR / name, media_type=WEB_ASSETS[name])

    @api.get("/healthz", summary="Liveness of the HTTP ingress.")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: this replica's model session is loaded and has run.")
    async def readyz(self) -> JSONResponse:
        return JSONResponse({"status": "ready", "provider": self.infer.provider})

    @api.get("/metadata", summary="Model version, classes, input size, provider, limits and its model card's URL.")
    async def metadata(self, request: Request) -> JSONResponse:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        limits = {k: self.options[k] for k in ("max_body_bytes", "max_image_pixels", "max_batch_items",
                                               "max_pending_images")}
        return JSONResponse(
            {**self.infer.metadata, "limits": limits, "allowed_formats": sorted(ALLOWED_FORMATS),
             "model_card": "/model-card" if self._model_card is not None else None,
             "api_key_required": self._key_digest is not None}
        )

    @api.get("/model-card", summary="The model card (Markdown) written by `weldray export`.")
    async def model_card(self, request: Request) -> Response:
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if self._model_card is None:
            return error_response(404, "not_found", "this export has no MODEL_CARD.md beside its model file")
        return Response(self._model_card, media_type="text/markdown; charset=utf-8")


def _autoscaling(cfg: ServeConfig) -> dict[str, Any]:
    return {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
    }


def build_application(model_path: str | Path, cfg: ServeConfig):
    """The Serve application for ``model_path`` (.onnx with its sidecar; local or s3://)."""
    from weldray.inference.sidecar import choose_precision
    from weldray.io import is_s3

    path = str(model_path) if is_s3(model_path) else str(Path(model_path).resolve())
    # Fail here, not in a replica, when a sidecar or the requested precision's model is missing.
    chosen, why = choose_precision(path, cfg.precision, cpu=cfg.num_gpus_per_replica == 0)
    log.info("replicas serve %s (%s)", chosen, why)
    options = {**asdict(cfg), "api_key_sha256": api_key_digest(cfg)}
    return WeldService.options(
        autoscaling_config=_autoscaling(cfg),
        max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.num_cpus_per_replica, "num_gpus": cfg.num_gpus_per_replica},
    ).bind(path, options)


def build_app(args: dict[str, Any]):
    """Application builder for ``serve run``/``serve deploy``.

    ``args: {model: PATH, overrides: [key=value, ...]}`` (overrides of the serve.* config group).
    """
    from weldray.config import load_config

    if "model" not in args:
        raise ValueError("serve config needs args.model: the exported .onnx file")
    cfg = load_config(list(args.get("overrides", [])))
    return build_application(args["model"], cfg.serve)
