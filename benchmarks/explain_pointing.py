"""Pointing game for the heatmaps: how often the peak of a bad weld's heatmap falls inside a box that the
dataset's authors drew around the bad bead or a defect, against a centred Gaussian and a random map.

    .venv/bin/python benchmarks/explain_pointing.py MODEL.onnx ../shared/data/welds \
        [--rows RUN_DIR/report/predictions.parquet] [--tolerance 15] [--sheet outputs/explain/sheet.png]

``--rows`` restricts the photos to a run's held-out rows (a CV fold's report), so the model never trained on
them. The heatmap is the evidence for ``bad_weld`` (whatever the prediction). A hit: the peak lies within
``--tolerance`` pixels of a Bad Weld or Defect box (the original pointing game's 15 px). A centred Gaussian
points at the photo's centre; a random map at a uniformly random pixel, so its hit rate is the share of
the photo the boxes (grown by the tolerance) cover, computed exactly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

BOX_CLASSES = {0: "Bad Weld", 2: "Defect"}


def boxes_for(photo: Path, root: Path, size: tuple[int, int]) -> dict[int, list[tuple[float, float, float, float]]]:
    """YOLO boxes of ``photo`` in pixels, by class: ``labels/<class folder>/<stem>.txt``."""
    path = root / "labels" / photo.parent.name / f"{photo.stem}.txt"
    out: dict[int, list[tuple[float, float, float, float]]] = {}
    if not path.is_file():
        return out
    w, h = size
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        c, x, y, bw, bh = int(parts[0]), *map(float, parts[1:])
        out.setdefault(c, []).append(((x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h))
    return out


def inside(point: tuple[float, float], boxes, tol: float) -> bool:
    x, y = point
    return any(x0 - tol <= x <= x1 + tol and y0 - tol <= y <= y1 + tol for x0, y0, x1, y1 in boxes)


def covered(boxes, size: tuple[int, int], tol: float) -> float:
    w, h = size
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(0, int(y0 - tol)) : int(np.ceil(y1 + tol)), max(0, int(x0 - tol)) : int(np.ceil(x1 + tol))] = True
    return float(mask.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--rows", help="predictions.parquet of a run's held-out rows (default: every bad photo)")
    ap.add_argument("--tolerance", type=float, default=15.0)
    ap.add_argument("--sheet", help="write a contact sheet of overlays with the boxes drawn (PNG)")
    args = ap.parse_args()

    from weldray.inference import WeldClassifierInference

    root = Path(args.data)
    photos = sorted((root / "bad_welds").glob("*.jpg"))
    if args.rows:
        import pandas as pd

        keep = {Path(p).name for p in pd.read_parquet(args.rows)["path"]}
        photos = [p for p in photos if p.name in keep]
    clf = WeldClassifierInference(args.model, providers="cpu")
    kinds = {"Bad Weld or Defect": (0, 2), "Defect": (2,), "Bad Weld": (0,)}
    hits = {k: {"heatmap": [], "centre": [], "random": []} for k in kinds}
    sheet = []
    for photo in photos:
        result, heat, picture = clf.explain(photo, class_name="bad_weld")
        by_class = boxes_for(photo, root, picture.size)
        peak = tuple(result["peak_xy"])
        centre = (picture.width / 2, picture.height / 2)
        for kind, classes in kinds.items():
            boxes = [b for c in classes for b in by_class.get(c, [])]
            if not boxes:
                continue
            hits[kind]["heatmap"].append(inside(peak, boxes, args.tolerance))
            hits[kind]["centre"].append(inside(centre, boxes, args.tolerance))
            hits[kind]["random"].append(covered(boxes, picture.size, args.tolerance))
        if args.sheet and len(sheet) < 12:
            sheet.append((picture, heat, by_class, peak, result))
    print(f"pointing game on {len(photos)} bad photos ({args.model}; tolerance {args.tolerance:g} px)")
    print("| boxes | photos | heatmap peak | centred Gaussian | random map |\n|---|---|---|---|---|")
    for kind, h in hits.items():
        n = len(h["heatmap"])
        if n:
            rates = " | ".join(f"{np.mean(h[k]):.3f}" for k in ("heatmap", "centre", "random"))
            print(f"| {kind} | {n} | {rates} |")
    if args.sheet:
        write_sheet(sheet, Path(args.sheet))
        print(f"contact sheet: {args.sheet}")


def write_sheet(items, path: Path, tile: int = 320) -> None:
    from PIL import Image, ImageDraw

    from weldray.inference.explain import overlay

    cols = 4
    rows = (len(items) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * tile, rows * (tile + 18)), "white")
    for i, (picture, heat, by_class, peak, result) in enumerate(items):
        img = overlay(picture, heat)
        draw = ImageDraw.Draw(img)
        for c, colour in ((0, (255, 255, 255)), (2, (0, 255, 0))):
            for box in by_class.get(c, []):
                draw.rectangle(box, outline=colour, width=3)
        x, y = peak
        draw.ellipse((x - 8, y - 8, x + 8, y + 8), outline=(255, 0, 255), width=4)
        img = img.resize((tile, tile))
        cx, cy = (i % cols) * tile, (i // cols) * (tile + 18)
        canvas.paste(img, (cx, cy))
        ImageDraw.Draw(canvas).text(
            (cx + 4, cy + tile + 3), f"{result['class']} {result['confidence']:.2f}", fill=(0, 0, 0)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


if __name__ == "__main__":
    main()
