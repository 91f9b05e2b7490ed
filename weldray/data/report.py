"""Human-readable ingest summaries: the console table and ``split_report.md``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from weldray.data.manifest import IngestResult

_SHOW = 10


def render_summary(result: IngestResult, console: Console) -> None:
    table = Table(title=f"weldray ingest: {result.root}")
    table.add_column("split")
    labels = list(result.per_label)
    for label in labels:
        table.add_column(label, justify="right")
    for split, counts in result.split_counts.items():
        if counts:
            table.add_row(split, *(str(counts.get(label, 0)) for label in labels))
    table.add_row("[bold]total", *(f"[bold]{result.per_label[label]}" for label in labels))
    console.print(table)
    console.print(f"near-duplicate groups: {len(result.near_duplicate_groups)} "
                  f"({sum(len(g) for g in result.near_duplicate_groups)} images)")
    for group in result.near_duplicate_groups[:_SHOW]:
        console.print(f"  - {', '.join(group)}")
    if result.label_conflicts:
        console.print(f"[red]label conflicts (identical files under two labels, excluded): "
                      f"{len(result.label_conflicts)}")
        for conflict in result.label_conflicts[:_SHOW]:
            console.print(f"  - {', '.join(conflict['files'])}")
    if result.mixed_label_groups:
        console.print(f"[yellow]near-duplicates with different labels: {len(result.mixed_label_groups)}")
    if result.rejects:
        console.print(f"[red]rejected files: {len(result.rejects)}")
        for r in result.rejects[:_SHOW]:
            console.print(f"  - {r.path}: {r.reason}")
    if result.ignored_folders:
        console.print(f"[yellow]folders not mapped by data.classes (ignored): {', '.join(result.ignored_folders)}")
    console.print(f"manifest: {result.manifest_path}")
    console.print(f"split report: {result.manifest_dir / 'split_report.md'}")


def split_report_markdown(result: IngestResult, df: pd.DataFrame) -> str:
    labels = list(result.per_label)
    lines = [
        f"# Split report: `{result.root}`",
        "",
        f"{result.n_images} usable images in {df['group'].nunique()} independent groups; "
        f"{len(result.rejects)} files rejected.",
        "",
        "| split | " + " | ".join(labels) + " | total | groups |",
        "|---|" + "---|" * (len(labels) + 2),
    ]
    for split in ("train", "val", "test", "excluded"):
        part = df[df["split"] == split]
        if len(part):
            counts = [str(int((part["label"] == label).sum())) for label in labels]
            lines.append(f"| {split} | " + " | ".join(counts) + f" | {len(part)} | {part['group'].nunique()} |")
    lines += ["", "## Cross-validation folds", "", "| fold | " + " | ".join(labels) + " | groups |",
              "|---|" + "---|" * (len(labels) + 1)]
    for fold in sorted(f for f in df["fold"].unique() if f >= 0):
        part = df[df["fold"] == fold]
        counts = [str(int((part["label"] == label).sum())) for label in labels]
        lines.append(f"| {fold} | " + " | ".join(counts) + f" | {part['group'].nunique()} |")
    leaks = df[df["split"] != "excluded"].groupby("group")["split"].nunique()
    lines += ["", f"Groups spanning more than one split: {int((leaks > 1).sum())} (must be 0)."]
    lines += ["", f"## Near-duplicate groups ({len(result.near_duplicate_groups)})", ""]
    lines += [f"- {', '.join(g)}" for g in result.near_duplicate_groups] or ["none"]
    lines += ["", f"## Label conflicts ({len(result.label_conflicts)})", ""]
    lines += [f"- {', '.join(c['files'])} ({', '.join(c['labels'])})" for c in result.label_conflicts] or ["none"]
    lines += ["", f"## Rejected files ({len(result.rejects)})", ""]
    lines += [f"- `{r.path}`: {r.reason}" for r in result.rejects] or ["none"]
    return "\n".join(lines) + "\n"
