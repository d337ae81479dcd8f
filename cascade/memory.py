"""The memory budget of one output image: refuse an impossible size before allocating it.

The LAINR stage decodes in chunks, but the whole output (float32 RGB), its query
coordinates and cells, and the 8-bit copy written to PNG are held at once: about
``BYTES_PER_PIXEL`` bytes per output pixel, plus ``WORKING_BYTES`` for the model and one
decode chunk. A dense resize (the bicubic stage) adds its two (out, in) float64 matrices.
A plan with diffusion stages holds more per output pixel: the last stage's LAINR
conditioning, its noisy residual, the sampler's state, the tile-blending accumulators and
the running mean and std (``DIFFUSION_BYTES_PER_PIXEL``). Measured with
``scripts/bench_pipeline.py``: 1024x1024 -> 4096x4096 through two stages peaked at 6.20 GiB
RSS, 333 B per output pixel beyond ``WORKING_BYTES``; 384 leaves a margin, which also holds
the 8-bit sample copies ``cascade upscale`` keeps for its quantile map (3 N bytes per pixel,
at most 384 MB in all: ``cascade.upscale.QUANTILE_PIXELS``) for N <= 16.
"""

from __future__ import annotations

import math

from cascade.errors import ScaleError

BYTES_PER_PIXEL = 64
DIFFUSION_BYTES_PER_PIXEL = 384
WORKING_BYTES = 1 << 30
USABLE_FRACTION = 0.8  # of the memory available now, when no explicit budget is given


def available_bytes() -> int:
    """Memory the OS can give this process now (psutil; /proc/meminfo as a fallback)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return 1 << 62  # pragma: no cover - unknown: no limit


def bytes_per_pixel(diffusion: bool = False) -> int:
    return DIFFUSION_BYTES_PER_PIXEL if diffusion else BYTES_PER_PIXEL


def budget_megapixels(max_megapixels: float | None = None, diffusion: bool = False) -> float:
    """The largest output (megapixels) allowed: ``max_megapixels``, or what fits in memory
    (for a plan with diffusion stages when ``diffusion``)."""
    if max_megapixels is not None:
        m = float(max_megapixels)
        if not math.isfinite(m) or m <= 0:
            raise ScaleError(f"--max-megapixels {max_megapixels!r} must be a positive number")
        return m
    usable = USABLE_FRACTION * available_bytes() - WORKING_BYTES
    return max(usable, 0) / bytes_per_pixel(diffusion) / 1e6


def estimate_bytes(in_hw: tuple[int, int], out_hw: tuple[int, int], dense: bool = False,
                   diffusion: bool = False) -> int:
    """Bytes to produce one ``out_hw`` image from an ``in_hw`` one (``dense``: matrix resize;
    ``diffusion``: the plan runs diffusion stages)."""
    (h, w), (H, W) = in_hw, out_hw
    total = bytes_per_pixel(diffusion) * H * W
    if dense:
        total += 12 * (H * h + W * w)  # float64 weights + their float32 copy, per axis
    return total


def check_output_size(in_hw: tuple[int, int], out_hw: tuple[int, int],
                      max_megapixels: float | None = None, dense: bool = False,
                      diffusion: bool = False) -> None:
    """Raise a one-line ScaleError if making ``out_hw`` from ``in_hw`` exceeds the budget."""
    H, W = out_hw
    need = estimate_bytes(in_hw, out_hw, dense, diffusion)
    budget = budget_megapixels(max_megapixels, diffusion)
    if need / bytes_per_pixel(diffusion) / 1e6 > budget:
        why, more = ((f"--max-megapixels {max_megapixels:g}", ", or raise --max-megapixels")
                     if max_megapixels is not None else
                     (f"{available_bytes() / 2**30:.1f} GiB of memory available", ""))
        raise ScaleError(f"output {W}x{H} ({_num(H * W / 1e6)} megapixels, ~{_num(need / 1e9)} GB) "
                         f"exceeds the memory budget of {_num(budget)} megapixels ({why}); "
                         f"use a smaller --scale or --size{more}")


def _num(x: float) -> str:
    """3 significant digits, thousands separated: 40,000 / 274 / 0.0123."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
