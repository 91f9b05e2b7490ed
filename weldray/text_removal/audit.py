"""Records, summary, residual-text report and before/after contact sheet of a clean run."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from weldray import io as wio
from weldray.config import WeldrayConfig
from weldray.text_removal.detectors import SEGMENTED

if TYPE_CHECKING:
    from weldray.text_removal.pipeline import CleanReport

THUMB = 256


def summarize(records: pd.DataFrame, cfg: WeldrayConfig, n_inputs: int) -> dict[str, Any]:
    ok = records[records["status"] == "ok"]
    audited = ok[ok["residual_detections"] >= 0]
    rejected_candidates = int((ok["n_candidates"] - ok["n_text_boxes"]).sum())
    flips = reencode_flips(ok)
    return {
        "detector": cfg.text_removal.detector,
        "segmenter": cfg.text_removal.segmenter,
        "inpainter": cfg.text_removal.inpainter,
        "dilation_px": cfg.text_removal.dilation_px,
        "n_inputs": n_inputs,
        "n_cleaned": int(len(ok)),
        "n_resumed": int(ok["resumed"].sum()) if "resumed" in ok else 0,
        "n_rejects": int((records["status"] == "reject").sum()),
        "n_with_text": int((ok["n_text_boxes"] > 0).sum()),
        "n_text_boxes": int(ok["n_text_boxes"].sum()),
        "n_segmented_regions": int(ok["n_segmented"].sum()),
        "n_with_segmented_text_only": int(((ok["n_text_boxes"] > 0) & (ok["n_segmented"] == ok["n_text_boxes"])).sum()),
        "n_candidates_filtered_out": rejected_candidates,
        "mask_fraction_mean": float(ok["mask_fraction"].mean()) if len(ok) else 0.0,
        "mask_fraction_max": float(ok["mask_fraction"].max()) if len(ok) else 0.0,
        "audited": int(len(audited)),
        "n_with_residual_text": int((audited["residual_detections"] > 0).sum()),
        "n_residual_detections": int(audited["residual_detections"].sum()),
        "n_reencode_flips": len(flips),
        "n_images_with_reencode_flips": len({f["relpath"] for f in flips}),
        "detect_ms_median": float(ok.loc[~ok["resumed"], "detect_ms"].median())
        if (~ok["resumed"]).any()
        else None,
        "inpaint_ms_median": float(ok.loc[ok["n_text_boxes"] > 0, "inpaint_ms"].median())
        if (ok["n_text_boxes"] > 0).any()
        else None,
    }


def reencode_flips(records: pd.DataFrame) -> list[dict[str, Any]]:
    """Candidates that read as text on a later pass outside the inpainted area but were not inpainted (a region
    pass 0 rejected, or a lone letter: pixels pass 0 already judged).

    They are not inpainted (see ``cleaner._keep_first_judgement``) and not counted as residual text, but
    they are borderline calls, listed with their text and score so that a person can look at them."""
    from weldray.text_removal.cleaner import ALREADY_JUDGED

    out = []
    for r in records.itertuples():
        for d in json.loads(r.detections):
            if d["reason"].startswith(ALREADY_JUDGED):
                out.append({"relpath": r.relpath, "text": d["text"], "text_score": d["text_score"], "pass": d["pass"]})
    return out


def write_audit(
    records: pd.DataFrame, output: str, cfg: WeldrayConfig, *, endpoint_url: str | None, n_inputs: int
) -> CleanReport:
    from weldray.text_removal.pipeline import META_DIR, CleanReport

    meta = wio.join(output, META_DIR)
    buf = io.BytesIO()
    records.to_parquet(buf, index=False)
    records_path = wio.join(meta, "records.parquet")
    wio.write_bytes(records_path, buf.getvalue(), endpoint_url)
    summary = summarize(records, cfg, n_inputs)
    sheet_path = None
    sheet = contact_sheet(records, cfg.text_removal.contact_sheet_size, endpoint_url)
    if sheet is not None:
        sheet_path = wio.join(meta, "contact_sheet.png")
        wio.write_bytes(sheet_path, sheet, endpoint_url)
    summary["contact_sheet"] = sheet_path
    wio.write_bytes(wio.join(meta, "summary.json"), json.dumps(summary, indent=2).encode(), endpoint_url)
    audit_path = wio.join(meta, "audit.md")
    wio.write_bytes(audit_path, audit_markdown(records, summary).encode(), endpoint_url)
    return CleanReport(
        output=output,
        records_path=records_path,
        summary=summary,
        records=records,
        audit_path=audit_path,
        contact_sheet_path=sheet_path,
    )


def audit_markdown(records: pd.DataFrame, summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        "# Text removal audit",
        "",
        f"- detector `{s['detector']}`, segmenter `{s['segmenter']}`, inpainter `{s['inpainter']}`, "
        f"mask dilation {s['dilation_px']} px",
        f"- inputs {s['n_inputs']}: cleaned {s['n_cleaned']} (resumed from a previous run: {s['n_resumed']}), "
        f"rejected {s['n_rejects']}",
        f"- images with text found: {s['n_with_text']} ({s['n_text_boxes']} boxes; "
        f"{s['n_candidates_filtered_out']} candidate boxes filtered out as non-text; {s['n_segmented_regions']} "
        f"of the boxes are segmented regions without recognised text, the only text found in "
        f"{s['n_with_segmented_text_only']} images)",
        f"- mask area: mean {s['mask_fraction_mean']:.2%}, max {s['mask_fraction_max']:.2%}",
        f"- residual audit (the last search of each written file, same detector and filters as cleaning): "
        f"{s['n_with_residual_text']} of {s['audited']} images still have text, "
        f"{s['n_residual_detections']} detections in total",
        f"- borderline regions: {s['n_reencode_flips']} candidates in {s['n_images_with_reencode_flips']} images "
        "read as text on a re-encoded pass outside the inpainted area, in a region pass 0 rejected or as a lone "
        "letter (not inpainted, not counted as residual; listed below)",
        "",
    ]
    residual = records[(records["status"] == "ok") & (records["residual_detections"] > 0)]
    if len(residual):
        lines += ["## Images with residual text", "", "| image | residual | texts |", "|---|---|---|"]
        for r in residual.itertuples():
            texts = [d["text"] if d.get("source") != SEGMENTED else f"[{SEGMENTED}]" for d in json.loads(r.residual)]
            lines.append(f"| {r.relpath} | {r.residual_detections} | {', '.join(map(repr, texts))} |")
        lines.append("")
    flips = reencode_flips(records[records["status"] == "ok"])
    if flips:
        lines += ["## Borderline regions (not inpainted)", "", "| image | pass | text | score |", "|---|---|---|---|"]
        lines += [f"| {f['relpath']} | {f['pass']} | {f['text']!r} | {f['text_score']} |" for f in flips]
        lines.append("")
    rejects = records[records["status"] == "reject"]
    if len(rejects):
        lines += ["## Rejected inputs", "", "| image | reason |", "|---|---|"]
        lines += [f"| {r.relpath} | {r.reason} |" for r in rejects.itertuples()]
        lines.append("")
    if s.get("contact_sheet"):
        lines += ["## Largest masks", "", "![before/after](contact_sheet.png)", ""]
    return "\n".join(lines)


def contact_sheet(records: pd.DataFrame, n: int, endpoint_url: str | None = None) -> bytes | None:
    """PNG: rows of (before with the mask outlined in red | after) for the ``n`` largest masks."""
    import cv2
    from PIL import Image, ImageDraw

    from weldray.preprocessing import decode_image

    top = records[(records["status"] == "ok") & (records["mask_fraction"] > 0)]
    top = top.sort_values("mask_fraction", ascending=False).head(n)
    if n == 0 or top.empty:
        return None
    cap = 28
    tiles = []
    for r in top.itertuples():
        before = np.asarray(decode_image(wio.read_bytes(r.input, endpoint_url)))
        after = np.asarray(decode_image(wio.read_bytes(r.output, endpoint_url)))
        mask = np.asarray(decode_image(wio.read_bytes(r.mask, endpoint_url)))[..., 0]
        contours, _ = cv2.findContours(
            (mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
        )
        outlined = cv2.drawContours(before.copy(), contours, -1, (255, 0, 0), max(2, before.shape[1] // 200))
        pair = Image.new("RGB", (2 * THUMB + 4, THUMB + cap), "white")
        for i, arr in enumerate((outlined, after)):
            im = Image.fromarray(arr)
            im.thumbnail((THUMB, THUMB))
            pair.paste(im, (i * (THUMB + 4), cap))
        draw = ImageDraw.Draw(pair)
        draw.text((4, 2), f"{r.relpath}  mask {r.mask_fraction:.1%}", fill="black")
        texts = ", ".join(json.loads(r.texts))[:60]
        seg = f" ({r.n_segmented} segmented)" if r.n_segmented else ""
        draw.text((4, 14), f"boxes {r.n_text_boxes}{seg}  residual {r.residual_detections}  {texts}", fill="black")
        tiles.append(pair)
    cols = 2
    rows = (len(tiles) + cols - 1) // cols
    tw, th = tiles[0].size
    sheet = Image.new("RGB", (cols * (tw + 12), rows * (th + 12)), (230, 230, 230))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * (tw + 12) + 6, (i // cols) * (th + 12) + 6))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
