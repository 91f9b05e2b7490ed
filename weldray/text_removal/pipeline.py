"""The text-removal job on Ray Data: read -> detect + inpaint (actor pool) -> write -> audit.

Layout written under OUTPUT (local folder or s3:// prefix)::

    OUTPUT/<class>/<name>.<ext>                    cleaned images, same relative paths as INPUT
    OUTPUT/_text_removal/masks/<class>/<name>.png  inpaint masks (0/255)
    OUTPUT/_text_removal/records.parquet           one row per input image (ok / skipped / reject)
    OUTPUT/_text_removal/summary.json, audit.md, contact_sheet.png
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from weldray import io as wio
from weldray.config import TextRemovalConfig, WeldrayConfig
from weldray.text_removal.detectors import SEGMENTED

log = logging.getLogger(__name__)

META_DIR = "_text_removal"
RECORD_COLUMNS = [
    "relpath",
    "input",
    "output",
    "mask",
    "sha256",
    "status",
    "reason",
    "width",
    "height",
    "n_candidates",
    "n_text_boxes",
    "n_segmented",
    "texts",
    "detections",
    "mask_fraction",
    "residual_detections",
    "residual",
    "detect_ms",
    "inpaint_ms",
    "audit_ms",
]


@dataclass
class CleanReport:
    output: str
    records_path: str
    summary: dict[str, Any]
    records: pd.DataFrame
    audit_path: str
    contact_sheet_path: str | None


def _encode(image: np.ndarray, relpath: str, jpeg_quality: int) -> bytes:
    from PIL import Image

    ext = PurePosixPath(relpath).suffix.lower()
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".bmp": "BMP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
        ".webp": "WEBP",
    }.get(ext, "PNG")
    buf = io.BytesIO()
    kwargs = {"quality": jpeg_quality} if fmt in ("JPEG", "WEBP") else {}
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def mask_relpath(relpath: str) -> str:
    return str(PurePosixPath(META_DIR, "masks", relpath).with_suffix(".png"))


def _empty_record(relpath: str, input_uri: str, sha: str) -> dict[str, Any]:
    return {
        "relpath": relpath,
        "input": input_uri,
        "output": "",
        "mask": "",
        "sha256": sha,
        "status": "",
        "reason": "",
        "width": 0,
        "height": 0,
        "n_candidates": 0,
        "n_text_boxes": 0,
        "n_segmented": 0,
        "texts": "[]",
        "detections": "[]",
        "mask_fraction": 0.0,
        "residual_detections": -1,
        "residual": "[]",
        "detect_ms": 0.0,
        "inpaint_ms": 0.0,
        "audit_ms": 0.0,
    }


def process_image(
    data: bytes,
    relpath: str,
    input_uri: str,
    output: str,
    cleaner: Any,  # TextCleaner
    cfg: TextRemovalConfig,
    *,
    done: dict[str, str] | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """Clean one image and write its outputs; returns its record. Never raises for bad images."""
    from weldray.preprocessing import ImageError, decode_image

    sha = hashlib.sha256(data).hexdigest()
    rec = _empty_record(relpath, input_uri, sha)
    if done and done.get(relpath) == sha:
        rec["status"] = "skipped"
        return rec
    try:  # an S3 key such as "good/../../x.jpg" would write outside OUTPUT: refused, reported like a bad image
        out_uri, mask_uri = wio.join(output, relpath), wio.join(output, mask_relpath(relpath))
    except ValueError as exc:
        rec.update(status="reject", reason=str(exc))
        return rec
    try:
        image = np.asarray(decode_image(data))
    except ImageError as exc:
        rec.update(status="reject", reason=f"{type(exc).__name__}: {exc.reason}")
        return rec
    res = cleaner.clean(image, FileCodec(relpath, cfg.jpeg_quality))
    # Nothing inpainted: the input bytes are the output (no generation loss, and the audit's search of
    # pass 0 was a search of exactly this file).
    encoded = res.encoded if res.encoded is not None else data
    wio.write_bytes(mask_uri, _encode(res.mask, "m.png", 100), endpoint_url)
    kept = res.kept
    rec.update(
        output=out_uri,
        mask=mask_uri,
        status="ok",
        width=image.shape[1],
        height=image.shape[0],
        n_candidates=len(res.detections),
        n_text_boxes=len(kept),
        n_segmented=sum(d.source == SEGMENTED for d in kept),
        texts=json.dumps([d.text for d in kept if d.source != SEGMENTED]),
        detections=json.dumps([d.to_dict() for d in res.detections]),
        mask_fraction=res.mask_fraction,
        detect_ms=res.timings_ms["detect"],
        inpaint_ms=res.timings_ms["inpaint"],
        audit_ms=res.timings_ms["audit"],
    )
    if res.residual is not None:
        rec.update(
            residual_detections=len(res.residual),
            residual=json.dumps([d.to_dict() for d in res.residual]),
        )
    # The image last: its presence (with the record's hash) is what resume trusts.
    wio.write_bytes(out_uri, encoded, endpoint_url)
    return rec


@dataclass
class FileCodec:
    """Encode as the output file will be written (format from the extension) and decode as training reads it."""

    relpath: str
    jpeg_quality: int

    def encode(self, image: np.ndarray) -> bytes:
        return _encode(image, self.relpath, self.jpeg_quality)

    def decode(self, data: bytes) -> np.ndarray:
        from weldray.preprocessing import decode_image

        return np.asarray(decode_image(data))


class CleanActor:
    """Ray Data actor: one detector + inpainter per actor, reused across batches."""

    def __init__(
        self,
        cfg: TextRemovalConfig,
        input_root: str,
        input_is_s3: bool,
        output: str,
        done: dict[str, str],
        endpoint_url: str | None,
    ) -> None:
        from weldray.text_removal.cleaner import TextCleaner

        self.cfg, self.output, self.done, self.endpoint_url = cfg, output, done, endpoint_url
        self.input_root, self.input_is_s3 = input_root.rstrip("/"), input_is_s3
        self.cleaner = TextCleaner(cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = []
        for data, path in zip(batch["bytes"], batch["path"], strict=True):
            relpath = str(path)[len(self.input_root) + 1 :]
            uri = f"s3://{path}" if self.input_is_s3 else str(path)
            rows.append(
                process_image(
                    bytes(data),
                    relpath,
                    uri,
                    self.output,
                    self.cleaner,
                    self.cfg,
                    done=self.done,
                    endpoint_url=self.endpoint_url,
                )
            )
        return {k: [r[k] for r in rows] for k in RECORD_COLUMNS}


def list_inputs(input_uri: str, output: str, cfg: WeldrayConfig) -> list[str]:
    """The photos under INPUT (class folders only), minus anything under OUTPUT (when OUTPUT sits inside INPUT)."""
    from weldray.data.layout import image_files

    files = image_files(input_uri, cfg.data)
    out_prefix = wio.filesystem(output, cfg.data.s3_endpoint_url)[1].rstrip("/") + "/"
    in_is_s3 = wio.is_s3(input_uri)
    return [f for f in files if not (f[len("s3://") :] if in_is_s3 else f).startswith(out_prefix)]


def load_done(output: str, endpoint_url: str | None) -> tuple[pd.DataFrame | None, dict[str, str]]:
    """Previous records and {relpath: sha256} of images whose cleaned output exists."""
    path = wio.join(output, META_DIR, "records.parquet")
    if not wio.exists(path, endpoint_url):
        return None, {}
    prev = pd.read_parquet(io.BytesIO(wio.read_bytes(path, endpoint_url)))
    missing = [c for c in RECORD_COLUMNS if c not in prev.columns]
    if missing:  # written by an older weldray, whose cleaner differed: nothing there is reused
        log.warning("%s lacks record columns %s (an older weldray): every image is cleaned again", path, missing)
        return None, {}
    ok = prev[prev["status"] == "ok"]
    existing = {
        f for f in (wio.list_files(output, None, endpoint_url) if wio.exists(output, endpoint_url) else [])
    }
    done = {r.relpath: r.sha256 for r in ok.itertuples() if r.output in existing}
    return prev, done


def preflight(cfg: TextRemovalConfig) -> None:
    """Check model files on the driver, so a missing weight fails in a second, not inside an actor."""
    from weldray.text_removal.detectors import check_easyocr_weights
    from weldray.text_removal.inpainters import check_lama_file

    if cfg.detector == "easyocr":
        check_easyocr_weights(cfg)
    if cfg.inpainter == "lama":
        check_lama_file(cfg.lama_model_path)
    if cfg.segmenter == "textseg":
        from weldray.text_removal.segmenter import load_textseg

        load_textseg(cfg.segmenter_model_path)


def clean_dataset(input_uri: str, output: str, cfg: WeldrayConfig, *, progress: bool = True) -> CleanReport:
    """Run the whole job on Ray Data; see the module docstring for what lands where."""
    import ray

    from weldray.ray_utils import PoolActors, collect_rows, init_ray, map_with_actor_pool
    from weldray.text_removal.audit import write_audit

    tr, endpoint = cfg.text_removal, cfg.data.s3_endpoint_url
    preflight(tr)
    files = list_inputs(input_uri, output, cfg)
    if not files:
        raise FileNotFoundError(f"no images with extensions {cfg.data.extensions} under {input_uri}")
    prev, done = load_done(output, endpoint)
    fs, in_root = wio.filesystem(input_uri, endpoint)
    paths = [f[len("s3://") :] if wio.is_s3(f) else f for f in files]
    root = in_root.rstrip("/")

    def dataset(todo: list[str], actors: PoolActors) -> Any:
        # Fractional read CPUs: with the actor pool holding most of a small node, whole-CPU read tasks could
        # never be placed (seen on 1-CPU nodes) and the job would hang.
        ds = ray.data.read_binary_files(todo, filesystem=fs, include_paths=True, num_cpus=0.25)
        return map_with_actor_pool(
            ds,
            CleanActor,
            tr.concurrency,
            actors,
            fn_constructor_kwargs=dict(
                cfg=tr,
                input_root=in_root,
                input_is_s3=wio.is_s3(input_uri),
                output=output,
                done=done,
                endpoint_url=endpoint,
            ),
            batch_size=tr.batch_size,
            num_cpus=tr.num_cpus_per_actor,
            num_gpus=tr.num_gpus_per_actor,
        )

    started = not ray.is_initialized()
    init_ray(cfg.ray, job_name="clean_text")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        rows = collect_rows(
            dataset,
            paths,
            lambda path: path[len(root) + 1 :],
            lambda row: row["relpath"],
            "clean",
            lambda row: f"{row['status']:7s} {row['relpath']}",
            progress=progress,
        )
    finally:
        if started:
            ray.shutdown()
    wio.remove_stray_temps(output, endpoint)  # after a lost actor: nothing writes any more
    records = _merge(pd.DataFrame(rows, columns=RECORD_COLUMNS), prev)
    return write_audit(records, output, cfg, endpoint_url=endpoint, n_inputs=len(paths))


def _merge(new: pd.DataFrame, prev: pd.DataFrame | None) -> pd.DataFrame:
    """Skipped rows take their previous record (status kept as 'ok', flagged resumed)."""
    new = new.copy()
    new["resumed"] = new["status"] == "skipped"
    if prev is not None and new["resumed"].any():
        prev_ok = prev[prev["status"] == "ok"].drop_duplicates("relpath", keep="last").set_index("relpath")
        cols = [c for c in RECORD_COLUMNS if c != "relpath"]
        skipped = new["resumed"]
        filled = prev_ok.loc[new.loc[skipped, "relpath"], cols].reset_index()
        filled["resumed"] = True
        new = pd.concat([new[~skipped], filled], ignore_index=True)
    return new.sort_values("relpath", ignore_index=True)


def clean_loop(files: Iterable[str], input_uri: str, output: str, cfg: WeldrayConfig) -> pd.DataFrame:
    """The same work as the Ray job in one process, no Ray (baseline for the benchmark)."""
    from weldray.text_removal.cleaner import TextCleaner

    tr, endpoint = cfg.text_removal, cfg.data.s3_endpoint_url
    cleaner = TextCleaner(tr)
    root = wio.filesystem(input_uri, endpoint)[1].rstrip("/")
    rows = []
    for f in files:
        path = f[len("s3://") :] if wio.is_s3(f) else f
        rows.append(
            process_image(
                wio.read_bytes(f, endpoint),
                path[len(root) + 1 :],
                f,
                output,
                cleaner,
                tr,
                endpoint_url=endpoint,
            )
        )
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)
