"""``cascade leaderboard DIR``: results.jsonl -> leaderboard.md / .csv / .html and pd_plot.png.

Rows are method x settings (the variants of a sweep), ranked per dataset x scale by one
column (PSNR by default); the best value of every column is marked. A value that could not
be measured (a pretrained backbone missing) is null in the results and "n/a" here.
"""

from __future__ import annotations

import csv
import io
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cascade.atomic import atomic_write_text
from cascade.errors import CascadeError
from cascade.evaluation.run import format_value, summarize
from cascade.evaluation.store import ResultsStore
from cascade.evaluation.sweep import variant_labels
from cascade.scales import format_scale

# Why pd_plot.png may be missing (printed in one line when it is).
NO_PD_PLOT = ("no dataset x scale has a perception metric (LPIPS or SWD) for every "
              "complete row; evaluate with metrics lpips or swd to draw it")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    better: int | None  # +1 higher, -1 lower, 0 closest to 1, None: not ranked


COLUMNS = [
    Column("psnr", "PSNR", +1), Column("ssim", "SSIM", +1), Column("lpips", "LPIPS", -1),
    Column("fid", "FID", -1), Column("kid", "KID", -1), Column("lr_psnr", "LR-PSNR", +1),
    Column("swd", "SWD", -1), Column("hf_ratio", "HF ratio", 0),
    Column("seconds", "s/img", -1), Column("params", "params", None),
]
ARROWS = {+1: " ↑", -1: " ↓", 0: " →1", None: ""}


@dataclass
class Section:
    """One dataset x scale: its entries (summary rows with a ``label``), ranked."""

    dataset: str
    scale: float
    entries: list[dict[str, Any]]
    best: dict[str, set[int]]  # column key -> indices of the best entries

    @property
    def title(self) -> str:
        return f"{self.dataset} x{format_scale(self.scale)}"


def _score(col: Column, v: Any) -> float | None:
    """Larger is better; None for n/a."""
    if not isinstance(v, (int, float)) or not math.isfinite(v) or col.better is None:
        return None
    if col.better == 0:
        return -abs(math.log(v)) if v > 0 else None
    return col.better * v


def _labels(entries: list[dict[str, Any]]) -> None:
    """``label``: the method and the settings that vary between its variants (its
    ``label_keys`` when it has one variant)."""
    for e, text in zip(entries, variant_labels(entries)):
        e["label"] = text


def columns_of(entries: list[dict[str, Any]]) -> list[Column]:
    """The columns some entry has (a metric never asked for is left out; asked-for but not
    measurable ones stay, as n/a)."""
    return [c for c in COLUMNS if any(c.key in e for e in entries)]


def sections(rows: list[dict[str, Any]], sort: str = "psnr") -> list[Section]:
    """Summaries grouped per dataset x scale, ranked by ``sort`` (n/a last), best marked."""
    col = next((c for c in COLUMNS if c.key == sort), None)
    if col is None or col.better is None:
        ranked = [c.key for c in COLUMNS if c.better is not None]
        raise CascadeError(f"cannot rank by {sort!r}; use one of {', '.join(ranked)}")
    summary = summarize(rows)
    _labels(summary)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in summary:
        groups[(e["dataset"], float(e["scale"]))].append(e)
    out = []
    # Datasets in the order they were evaluated (set5, set14, bsd68 as the config lists them).
    first = {}
    for r in rows:
        first.setdefault(r["dataset"], len(first))
    for (dataset, scale), entries in sorted(groups.items(),
                                            key=lambda g: (first[g[0][0]], g[0][1])):
        # A row over fewer images than the others (an interrupted run) is not comparable:
        # it says so in its label, ranks last and is never marked best.
        n = max(e["images"] for e in entries)
        for e in entries:
            e["incomplete"] = e["images"] < n
            if e["incomplete"]:
                e["label"] += f" [incomplete: {e['images']}/{n} images]"
        entries.sort(key=lambda e: (e["incomplete"], _score(col, e.get(sort)) is None,
                                    -(_score(col, e.get(sort)) or 0.0), e["label"]))
        best = {}
        for c in COLUMNS:
            scores = [None if e["incomplete"] else _score(c, e.get(c.key)) for e in entries]
            valid = [s for s in scores if s is not None]
            top = max(valid) if len(valid) > 1 else None  # a lone value is not "best"
            best[c.key] = {i for i, s in enumerate(scores) if top is not None and s == top}
        out.append(Section(dataset, scale, entries, best))
    return out


def cell(entry: dict[str, Any], key: str) -> str:
    """A column's text: the value, with the number of patches behind FID and KID."""
    v = entry.get(key)
    if key == "params":
        return "n/a" if v is None else _count(v)
    text = format_value(key, v)
    if v is not None and key == "fid":
        text += f" (n={entry.get('patches')})"
    if v is not None and key == "kid":
        std = entry.get("kid_std")
        text += (f" ±{std:.4f}" if std is not None else "") + \
            f" (n={entry.get('patches')}, k={entry.get('kid_subset')})"
    return text


def _count(n: float) -> str:
    n = int(round(n))
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _note(secs: list[Section]) -> str:
    patch = next((e.get("patch") for s in secs for e in s.entries if e.get("patch")), None)
    lines = ["Best value of each column in bold (HF ratio: closest to 1). n/a: not measured "
             "(a pretrained backbone's weights are missing; see docs/evaluation.md)."]
    if patch:
        lines.append(f"FID and KID on {patch}x{patch} patches of every image: n = patches, "
                     "k = KID subset size.")
    return " ".join(lines)


def markdown(secs: list[Section], source: str, sort: str) -> str:
    head = next(c.header for c in COLUMNS if c.key == sort)
    parts = [f"# Leaderboard\n\nFrom `{source}`, ranked by {head} per dataset and scale. "
             f"{_note(secs)}"]
    for s in secs:
        cols = columns_of(s.entries)
        n = max(e["images"] for e in s.entries)
        parts.append(f"\n## {s.title} ({n} images)\n")
        parts.append("| # | method | " + " | ".join(c.header + ARROWS[c.better] for c in cols)
                     + " |")
        parts.append("|---|---|" + "---|" * len(cols))
        for i, e in enumerate(s.entries):
            cells = [f"**{cell(e, c.key)}**" if i in s.best[c.key] else cell(e, c.key)
                     for c in cols]
            parts.append(f"| {i + 1} | {e['label']} | " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


CSV_EXTRA = ["kid_std", "patches", "kid_subset", "patch"]


def csv_text(secs: list[Section]) -> str:
    fields = ["dataset", "scale", "rank", "label", "method", "settings", "images",
              *[c.key for c in COLUMNS], *CSV_EXTRA]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for s in secs:
        for i, e in enumerate(s.entries):
            w.writerow({**e, "rank": i + 1})
    return buf.getvalue()


def write_leaderboard(results_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
                      sort: str = "psnr", pd_x: str = "psnr",
                      image: str | None = None) -> list[Path]:
    """Write leaderboard.md, leaderboard.csv, pd_plot.png and leaderboard.html; return them."""
    from cascade.evaluation.leaderboard_html import html_page
    from cascade.evaluation.pdplot import pd_plot

    src = Path(results_dir)
    store = ResultsStore(src / "results.jsonl")
    if not store.path.is_file():
        raise CascadeError(f"{store.path} not found; run cascade evaluate --out {src} first")
    rows = store.merged()
    if not rows:
        raise CascadeError(f"{store.path} holds no results; run cascade evaluate --out {src}")
    secs = sections(rows, sort)
    dest = Path(out) if out is not None else src
    md, csv_path = dest / "leaderboard.md", dest / "leaderboard.csv"
    atomic_write_text(md, markdown(secs, str(store.path), sort))
    atomic_write_text(csv_path, csv_text(secs))
    written = [md, csv_path]
    plot = pd_plot(secs, dest / "pd_plot.png", x=pd_x)
    if plot is not None:
        written.append(plot)
    else:  # say why, in one line, rather than leave the plot out silently
        print(f"leaderboard: no pd_plot.png: {NO_PD_PLOT}", file=sys.stderr)
    page = dest / "leaderboard.html"
    atomic_write_text(page, html_page(secs, src, plot, sort=sort, note=_note(secs), image=image))
    return [*written, page]
