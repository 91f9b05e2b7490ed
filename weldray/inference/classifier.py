"""``WeldClassifierInference``: an exported weld classifier behind one small typed API."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from weldray.inference.providers import create_session, resolve_provider
from weldray.inference.sidecar import ModelSidecar, choose_precision, read_sidecar
from weldray.preprocessing import DEFAULT_MAX_PIXELS, ImageError, ImageSource, load_image, resize_for_model

log = logging.getLogger(__name__)

DEFAULT_REVIEW_THRESHOLD = 0.75
#: Images per forward pass in :meth:`WeldClassifierInference.iter_predict`. Larger batches buy little on CPU
#: and cost memory linearly: efficientnet_lite0 at 224 px, ONNX Runtime with 2 threads, CPU ms per image at
#: batch 1 / 16 / 64 (2026-12-02): fp32 23.5 / 22.6 / 18.4, INT8 12.4 / 13.6 / 11.9.
DEFAULT_BATCH_SIZE = 16


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class WeldClassifierInference:
    """Classify weld photos with an ONNX model exported by ``weldray export``.

    Input goes through :mod:`weldray.preprocessing` (the one decode + resize policy); the
    sidecar next to the model supplies class names, input size and temperature.

    Args:
        model_path: ``.onnx`` file (local path or s3:// URI) with its ``.json`` sidecar.
        providers: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"tensorrt"``, a full ONNX Runtime provider
            name, or a list whose first entry is used. The session fails rather than fall back.
        precision: None loads ``model_path`` as given; ``"auto"``, ``"fp32"`` or ``"int8"`` pick between the
            fp32 and INT8 models of one export (see :func:`weldray.inference.sidecar.choose_precision`).
        tta: average the probabilities of the image and its horizontal mirror.
        review_threshold: results with confidence below this get ``needs_review=True``.
        intra_op_threads: ONNX Runtime threads (0 = one per physical core).
        allow_spinning: let idle ONNX Runtime threads spin (lowest latency on otherwise idle cores;
            turn off where the cores are shared, as in a server that also decodes uploads).
        max_pixels: decompression-bomb limit for encoded inputs.
    """

    def __init__(
        self,
        model_path: str | Path,
        providers: str | Sequence[str] | None = "auto",
        tta: bool = False,
        *,
        precision: str | None = None,
        review_threshold: float = DEFAULT_REVIEW_THRESHOLD,
        intra_op_threads: int = 0,
        allow_spinning: bool = True,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        from weldray.io import read_bytes

        if str(model_path).endswith((".engine", ".plan")):
            raise ValueError(
                f"{model_path}: serve TensorRT through the ONNX model with providers='tensorrt' "
                "(the engine cache written by `weldray export --format tensorrt` is reused)"
            )
        self.provider = resolve_provider(providers)
        if precision is None:
            self.model_path, self.precision_choice = str(model_path), "as given"
        else:
            self.model_path, self.precision_choice = choose_precision(
                str(model_path), precision, cpu=self.provider == "CPUExecutionProvider"
            )
        log.info("model %s (%s)", self.model_path, self.precision_choice)
        self.sidecar: ModelSidecar = read_sidecar(self.model_path)
        self.classes = list(self.sidecar.classes)
        self.input_size = int(self.sidecar.input_size)
        self.temperature = float(self.sidecar.temperature)
        self.tta = tta
        self.review_threshold = review_threshold
        self.max_pixels = max_pixels
        options = self._provider_options()
        blob = read_bytes(self.model_path)
        self.model_sha256 = hashlib.sha256(blob).hexdigest()
        self._session = create_session(
            blob,
            self.provider,
            provider_options=options,
            intra_op_threads=intra_op_threads,
            allow_spinning=allow_spinning,
        )
        self._input = self._session.get_inputs()[0].name
        self._outputs = [self._session.get_outputs()[0].name]  # the logits: never the class maps, unasked

    def model_card(self) -> str | None:
        """The export's ``MODEL_CARD.md`` (beside the model file), or None when the export has none."""
        from weldray.export.model_card import MODEL_CARD_NAME
        from weldray.io import exists, join, read_bytes

        base = self.model_path.rsplit("/", 1)[0] if "/" in self.model_path else "."
        path = join(base, MODEL_CARD_NAME)
        return read_bytes(path).decode() if exists(path) else None

    def _provider_options(self) -> dict[str, Any]:
        if self.provider != "TensorrtExecutionProvider":
            return {}
        options = dict(self.sidecar.provider_options.get("tensorrt", {}))
        cache = options.get("trt_engine_cache_path")
        if cache and not Path(cache).is_absolute() and "://" not in self.model_path:
            options["trt_engine_cache_path"] = str(Path(self.model_path).parent / cache)
        return options

    @property
    def metadata(self) -> dict[str, Any]:
        """What /metadata reports: classes, input size, provider, provenance."""
        return {
            "model_path": self.model_path,
            "model_version": self.model_sha256[:12],
            "model_sha256": self.model_sha256,
            "classes": self.classes,
            "input_size": self.input_size,
            "temperature": self.temperature,
            "precision": self.sidecar.precision,
            "precision_choice": self.precision_choice,
            "backbone": self.sidecar.backbone,
            "ensemble_members": len(self.sidecar.members),
            "run_id": self.sidecar.run_id,
            "manifest_sha256": self.sidecar.manifest_sha256,
            "created": self.sidecar.created,
            "provider": self.provider,
            "active_providers": self._session.get_providers(),
            "tta": self.tta,
            "review_threshold": self.review_threshold,
        }

    def prepare(self, image: ImageSource) -> np.ndarray:
        """uint8 HxWx3 at the model size (decode + the shared resize policy)."""
        return resize_for_model(load_image(image, max_pixels=self.max_pixels), self.input_size)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities [B, C] for uint8 NHWC or float32 NCHW raw-RGB input at the model size."""
        if batch.ndim != 4:
            raise ValueError(f"expected a 4-D batch, got shape {batch.shape}")
        if batch.shape[-1] == 3 and batch.shape[1] != 3:
            batch = batch.transpose(0, 3, 1, 2)
        x = np.ascontiguousarray(batch, dtype=np.float32)
        logits = self._session.run(self._outputs, {self._input: x})[0]
        probs = softmax(logits, self.temperature)
        if self.tta:
            flipped = np.ascontiguousarray(x[..., ::-1])
            probs = (
                probs + softmax(self._session.run(self._outputs, {self._input: flipped})[0], self.temperature)
            ) / 2
        return probs

    def result(self, probs: np.ndarray) -> dict[str, Any]:
        """One result dict from one row of probabilities."""
        index = int(np.argmax(probs))
        confidence = float(probs[index])
        return {
            "class": self.classes[index],
            "class_index": index,
            "confidence": confidence,
            "probabilities": {name: float(p) for name, p in zip(self.classes, probs, strict=True)},
            "needs_review": confidence < self.review_threshold,
        }

    def explain(
        self, image: ImageSource, class_name: str | None = None
    ) -> tuple[dict[str, Any], np.ndarray, Image.Image]:
        """Classify one image and say where the evidence lies: ``(result, heatmap, photo)``, the heatmap
        ``[H, W]`` in [0, 1] at the photo's own size (:mod:`weldray.inference.explain`) for the predicted
        class (or ``class_name``), ``result`` with ``peak_xy`` (the heatmap's maximum, in photo pixels)."""
        from weldray.inference.explain import evidence_map, peak_xy, upsample

        if not self.sidecar.maps_output:
            raise ValueError(
                f"{self.model_path} has no class-map output (an ensemble, or exported before heatmaps existed): "
                "explanations need a single model exported by `weldray export`"
            )
        photo = load_image(image, max_pixels=self.max_pixels)
        x = resize_for_model(photo, self.input_size)[None]
        result = self.result(self.probabilities(x)[0])
        nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
        maps = self._session.run([self.sidecar.maps_output], {self._input: nchw})[0][0]
        index = result["class_index"] if class_name is None else self.classes.index(class_name)
        heat = upsample(evidence_map(maps, index), photo.size)
        return {**result, "peak_xy": list(peak_xy(heat))}, heat, photo

    def predict(self, image: ImageSource) -> dict[str, Any]:
        """Classify one image (path, s3:// URI, encoded bytes, PIL image or numpy array)."""
        return self.predict_batch([image])[0]

    def iter_predict(
        self, images: Iterable[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE, *, skip_errors: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Results in input order, decoding and running ``batch_size`` images at a time: memory stays flat
        for any number of images (a lazy iterable is read as it goes). A bad image raises ImageError, or
        with ``skip_errors`` yields ``{"error": code, "reason": ...}`` in its place."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunk: list[np.ndarray | dict[str, Any]] = []
        for image in images:
            try:
                chunk.append(self.prepare(image))
            except (ImageError, OSError) as exc:
                if not skip_errors:
                    raise
                chunk.append({"error": getattr(exc, "code", "unreadable"), "reason": str(exc)})
            if len(chunk) == batch_size:
                yield from self._run_chunk(chunk)
                chunk = []
        yield from self._run_chunk(chunk)

    def _run_chunk(self, chunk: list[np.ndarray | dict[str, Any]]) -> Iterator[dict[str, Any]]:
        arrays = [c for c in chunk if isinstance(c, np.ndarray)]
        rows = iter(self.probabilities(np.stack(arrays)) if arrays else ())
        for item in chunk:
            yield self.result(next(rows)) if isinstance(item, np.ndarray) else item

    def predict_batch(
        self, images: Sequence[ImageSource], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[dict[str, Any]]:
        """Classify several images, ``batch_size`` per forward pass (see :meth:`iter_predict`)."""
        return list(self.iter_predict(images, batch_size))
