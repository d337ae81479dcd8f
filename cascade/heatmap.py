"""Uncertainty heatmaps: a per-pixel map in a perceptually uniform colormap with a colour bar.

The map is drawn at the image's own pixel size (block-averaged down to ``max_side`` for very
large outputs, enlarged by whole pixels for tiny ones so the colour bar's labels fit), so it
lies over the output it describes. ``cascade upscale``, ``cascade app`` and the evaluation
draw their maps here; ``save_figure`` writes any matplotlib figure atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cascade.atomic import atomic_write


def save_figure(fig, dest: Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_write(dest) as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return dest


def display_map(value: torch.Tensor, max_side: int = 2048, min_side: int = 256
                ) -> tuple[torch.Tensor, int]:
    """(H, W) -> (map to draw, the factor it was reduced by: 1 = full resolution)."""
    H, W = value.shape
    f = max(1, -(-max(H, W) // max_side))  # ceil
    if f > 1:
        value = F.avg_pool2d(value[None, None], f, ceil_mode=True)[0, 0]
    grow = max(1, min_side // max(1, min(value.shape)))
    if grow > 1:
        value = value.repeat_interleave(grow, 0).repeat_interleave(grow, 1)
    return value, f


def map_vmax(value: torch.Tensor, q: float = 0.995) -> float:
    """The top of a map's colour scale: its ``q`` quantile (default the 99.5th percentile, so
    a few extreme pixels do not wash the rest out); 1.0 for an empty or all-zero map."""
    flat = value.detach().float().reshape(-1)
    if not flat.numel():
        return 1.0
    top = float(flat.kthvalue(max(1, int(q * flat.numel()))).values)
    return top if top > 0 else 1.0


def save_heatmap(value: torch.Tensor, dest: str | Path, label: str, title: str | None = None,
                 cmap: str = "magma", vmax: float | None = None, dpi: int = 100) -> Path:
    """Write ``value`` (H, W) as a PNG heatmap with a colour bar labelled ``label``.

    The colour scale runs from 0 to ``vmax`` (default: ``map_vmax``, the 99.5th percentile
    of the map; values above it are drawn at the top).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown, reduced = display_map(value.detach().float().cpu())
    vmax = map_vmax(shown) if vmax is None else (vmax if vmax > 0 else 1.0)
    h, w = shown.shape
    bar_px, top_px = 110, 28 if title else 4
    fig = plt.figure(figsize=((w + bar_px) / dpi, (h + top_px) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, w / (w + bar_px), h / (h + top_px)))
    im = ax.imshow(shown.numpy(), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.axis("off")
    cax = fig.add_axes((w / (w + bar_px) + 8 / (w + bar_px), 0.05 * h / (h + top_px),
                        14 / (w + bar_px), 0.9 * h / (h + top_px)))
    bar = fig.colorbar(im, cax=cax)
    bar.set_label(label, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        note = f" (shown at 1/{reduced})" if reduced > 1 else ""
        fig.text(0.01, 1 - 2 / (h + top_px), title + note, fontsize=8, va="top", ha="left")
    return save_figure(fig, Path(dest))
