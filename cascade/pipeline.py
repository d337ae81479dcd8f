"""From an input image and a requested scale or size to the upscaled output.

For now the pipeline has one stage, LAINR (any real scale); the diffusion stages join it
here (DESIGN.md section 2: planner -> stages -> samples).
"""

from __future__ import annotations

import math
import re

from cascade.data.degrade import check_scale
from cascade.errors import ScaleError

__all__ = ["check_scale", "parse_size", "target_size"]


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' (width x height) -> (480, 640) as (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ScaleError(f"--size {text!r} is not WIDTHxHEIGHT with positive integers (e.g. 640x480)")
    return int(m.group(2)), int(m.group(1))


def target_size(in_hw: tuple[int, int], scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Output (H, W) for an input (h, w): round(h*s) x round(w*s), or the exact ``size``.

    With both, they must agree to within one pixel per side; a size smaller than the input
    is refused (this is an upscaler: downscale with ``cascade.data.degrade.imresize``).
    """
    h, w = in_hw
    if scale is None and size is None:
        raise ScaleError("give --scale S or --size WxH")
    if scale is not None:
        s = check_scale(scale)
        by_scale = (max(1, round(h * s)), max(1, round(w * s)))
        if size is None:
            return by_scale
        if abs(size[0] - by_scale[0]) > 1 or abs(size[1] - by_scale[1]) > 1:
            raise ScaleError(f"--size {size[1]}x{size[0]} conflicts with --scale {scale:g} for a "
                             f"{w}x{h} input ({by_scale[1]}x{by_scale[0]}); give only one")
    assert size is not None
    if size[0] < h or size[1] < w:
        raise ScaleError(f"--size {size[1]}x{size[0]} is smaller than the {w}x{h} input; "
                         "cascade only upscales")
    return size
