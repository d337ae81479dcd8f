"""Which stage runs at which size: pure functions of the sizes and the stage names.

The diffusion stages take x2 steps at the end, as many as the scale allows
(``m = min(k, floor(log2 s))`` for k stages, per axis for an exact size); the LAINR stage
takes the rest, ``s / 2^m``, at the start. With no diffusion stage (or ``s < 2``) LAINR does
everything. When the output size (H, W) is not divisible by 2^m, LAINR renders
``ceil(H / 2^m) x ceil(W / 2^m)`` pixels *on the output's lattice* (pixel pitch 2^m output
pixels, so up to 2^m - 1 output pixels past the bottom/right edge) and the stages' output is
cropped to (H, W): every output pixel sits exactly where a direct resample to (H, W) puts
it, and no stage resamples by a non-integer factor near 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cascade.data.degrade import check_scale
from cascade.errors import ScaleError

__all__ = ["Plan", "PlanStep", "check_scale", "lattice_size", "make_plan", "parse_size",
           "target_size"]


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


@dataclass
class PlanStep:
    stage: str  # lainr | bicubic | a diffusion stage's folder name
    kind: str  # resample | diffusion
    in_size: tuple[int, int]  # (h, w)
    out_size: tuple[int, int]  # (H, W) this step produces (before the final crop)
    scale: tuple[float, float]  # (y, x): input pixel pitch / output pixel pitch
    tiles: int = 1  # diffusion: network tiles per sampler step (after the stage's padding)

    def describe(self) -> str:
        sy, sx = self.scale
        s = f"x{sy:.4g}" if abs(sy - sx) < 1e-9 else f"x{sy:.4g}/x{sx:.4g}"
        tiles = f", {self.tiles} tiles" if self.tiles > 1 else ""
        return f"{self.stage} {s}{tiles} -> {_wxh(self.out_size)}"


@dataclass
class Plan:
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    steps: list[PlanStep]  # the plan's steps (not the sampler's steps)
    stages: str  # the resolved --stages: inr, inr+1, inr+2 or bicubic
    notes: list[str] = field(default_factory=list)

    @property
    def stochastic(self) -> bool:
        return any(s.kind == "diffusion" for s in self.steps)

    @property
    def diffusion(self) -> list[PlanStep]:
        return [s for s in self.steps if s.kind == "diffusion"]

    def describe(self) -> str:
        """'120x80 -> lainr x1.5 -> 180x120 -> sr3_x2 x2 -> 360x240' plus its notes."""
        text = " -> ".join([_wxh(self.in_size)] + [s.describe() for s in self.steps])
        final = self.steps[-1].out_size if self.steps else self.in_size
        if tuple(final) != tuple(self.out_size):
            text += f" -> crop {_wxh(self.out_size)}"
        return "; ".join([text] + self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"in_size": list(self.in_size), "out_size": list(self.out_size),
                "stages": self.stages, "steps": [asdict(s) for s in self.steps],
                "notes": list(self.notes), "summary": self.describe()}


def _wxh(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def lattice_size(plan: Plan) -> tuple[float, float]:
    """The LAINR step's pixel lattice: the output size divided by 2^m (may be fractional)."""
    f = 2 ** len(plan.diffusion)
    return plan.out_size[0] / f, plan.out_size[1] / f


def make_plan(in_hw: tuple[int, int], out_hw: tuple[int, int], diffusion: Sequence[str],
              stages: str = "inr", lainr: str = "lainr") -> Plan:
    """Which stage runs at which size (the rules are in the module docstring).

    ``diffusion``: the names of the x2 stages the run may use, in cascade order; the first
    ``m`` of them run, ``m = min(len(diffusion), max j with H >= 2^j h and W >= 2^j w)``.
    """
    (h, w), (H, W) = (int(v) for v in in_hw), (int(v) for v in out_hw)
    if stages == "bicubic":
        return Plan((h, w), (H, W), [PlanStep("bicubic", "resample", (h, w), (H, W),
                                              (H / h, W / w))], "bicubic")
    k = len(diffusion)
    m = 0
    while m < k and H >= 2 ** (m + 1) * h and W >= 2 ** (m + 1) * w:
        m += 1
    f = 2**m
    h1, w1 = math.ceil(H / f), math.ceil(W / f)
    notes = []
    steps: list[PlanStep] = []
    if m == 0 or (h1, w1) != (h, w) or (H, W) != (f * h, f * w):
        steps.append(PlanStep(lainr, "resample", (h, w), (h1, w1), (H / f / h, W / f / w)))
    size = (h1, w1)
    for name in diffusion[:m]:
        nxt = (size[0] * 2, size[1] * 2)
        steps.append(PlanStep(name, "diffusion", size, nxt, (2.0, 2.0)))
        size = nxt
    if m < k:
        why = ("the scale is below 2" if m == 0 else f"x{min(H / h, W / w):.4g} needs only {m} "
               "x2 step" + ("s" if m > 1 else ""))
        notes.append(f"{k - m} of {k} diffusion stage(s) unused: {why}")
    if size != (H, W):
        notes.append(f"LAINR renders {_wxh((h1, w1))} on the output's lattice "
                     f"({size[1] - W}x{size[0] - H} px past the right/bottom edge), "
                     f"the diffusion output is cropped to {_wxh((H, W))}")
    return Plan((h, w), (H, W), steps, stages, notes)
