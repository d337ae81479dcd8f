"""The perception-distortion plane (Blau & Michaeli 2018): one point per method x settings.

x is distortion (PSNR, axis reversed, or RMSE), y is perception (LPIPS where every point has
it, else SWD); lower-left is better on both axes. The Pareto front, the points no other point
beats on both, is drawn as a line: a setting off the front is never the one to use.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def perception_key(entries: list[dict[str, Any]]) -> str | None:
    """LPIPS when every entry has it, else SWD when every entry has it, else None."""
    for key in ("lpips", "swd"):
        if entries and all(_finite(e.get(key)) for e in entries):
            return key
    return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def distortion(entry: dict[str, Any], x: str) -> float | None:
    """PSNR, or RMSE (on the 0-255 scale) at that PSNR: 255 * 10^(-PSNR/20)."""
    p = entry.get("psnr")
    if not _finite(p):
        return None
    return p if x == "psnr" else 255.0 * 10 ** (-p / 20.0)


def pareto_front(points: list[tuple[float, float]], x_higher_better: bool) -> list[int]:
    """Indices of the points no other point beats on both axes (y lower is better),
    in order along x from best to worst."""
    sign = -1.0 if x_higher_better else 1.0  # turn x into "lower is better"
    order = sorted(range(len(points)), key=lambda i: (sign * points[i][0], points[i][1]))
    front, best_y = [], math.inf
    for i in order:
        if points[i][1] < best_y:
            front.append(i)
            best_y = points[i][1]
    return front


def _short(e: dict[str, Any], entries: list[dict[str, Any]]) -> str:
    """A point's label in the plot: the method alone when it has one point in the panel (its
    full settings are in the tables), else the method and the settings that vary."""
    if sum(o["method"] == e["method"] for o in entries) == 1:
        return e["method"]
    return e["label"] if len(e["label"]) <= 40 else e["label"][:39] + "..."


def pd_plot(secs, dest: Path, x: str = "psnr") -> Path | None:
    """One panel per dataset x scale; None (no file) when no section has a perception axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade.evaluation.figures import save_figure

    if x not in ("psnr", "rmse"):
        raise ValueError(f"x must be 'psnr' or 'rmse', got {x!r}")
    panels = []
    for s in secs:
        entries = [e for e in s.entries
                   if distortion(e, x) is not None and not e.get("incomplete")]
        y = perception_key(entries)
        if y is not None:
            panels.append((s, entries, y))
    if not panels:
        return None
    methods = sorted({e["method"] for _, entries, _ in panels for e in entries})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), dpi=110,
                             squeeze=False)
    for ax, (s, entries, y) in zip(axes.flat, panels):
        pts = [(distortion(e, x), e[y]) for e in entries]
        for (px, py), e in zip(pts, entries):
            ax.scatter(px, py, color=colors[e["method"]], s=28, zorder=3)
            ax.annotate(_short(e, entries), (px, py), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        front = pareto_front(pts, x_higher_better=(x == "psnr"))
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="0.4",
                lw=1, zorder=2, label="Pareto front")
        ax.margins(0.2)  # room for the labels of the extreme points
        if x == "psnr":
            ax.invert_xaxis()  # distortion grows to the right, as in Blau & Michaeli
        ax.set_xlabel("PSNR-Y (dB)" if x == "psnr" else "RMSE at the mean PSNR-Y (0-255)")
        ax.set_ylabel({"lpips": "LPIPS", "swd": "SWD (x1e3)"}[y] + "  (lower is better)")
        why = "" if y == "lpips" or not any("lpips" in e for e in entries) else ", LPIPS n/a"
        ax.set_title(f"{s.title} ({len(entries)} points{why})", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[m], label=m) for m in methods]
    handles.append(plt.Line2D([], [], color="0.4", label="Pareto front"))
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8,
               frameon=False)
    fig.suptitle("Perception-distortion plane (lower-left is better)", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    return save_figure(fig, Path(dest))
