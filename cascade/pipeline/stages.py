"""The cascade's stages behind one small protocol.

A stage of a run is either a *resample* stage (LAINR, bicubic), which brings the input to a
size once, or a *diffusion* stage (an x2 ``SR3Stage`` and its checkpoint folder), which
draws samples. A diffusion stage answers three questions the run loop asks:

* ``condition(x, size, progress)``: its conditioning ``U(x)`` at the output size;
* ``draw(x, cond, generators, knobs, ...)``: one sample per row (on tiles, ``denoiser``);
* ``tiles_for(in_size, tiling, device, rows)``: how many network tiles a step takes.

The pipeline never looks inside a stage beyond these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade.data.degrade import upscale_bicubic
from cascade.diffusion.tiling import TileConfig, TiledDenoiser, auto_tiling
from cascade.errors import ConfigError
from cascade.inr.lattice import lainr_resample
from cascade.pipeline.plan import Plan, PlanStep, lattice_size

__all__ = ["DiffusionStage", "resample"]


def resample(step: PlanStep, lainr, lr: Tensor, plan: Plan, chunk: int,
             progress: bool) -> Tensor:
    """The plan's first step when it is a resample (``lainr`` or ``bicubic``), in [0, 1]:
    LAINR renders ``step.out_size`` pixels on the output's lattice (``plan`` module)."""
    if step.stage == "bicubic":
        return upscale_bicubic(lr, plan.out_size).clamp(0, 1)
    return lainr_resample(lainr, lr, step.out_size, lattice_size(plan), chunk,
                          progress).clamp(0, 1)


@dataclass
class DiffusionStage:
    """An x2 diffusion stage of the cascade: its name (the checkpoint folder's: sr3_x2,
    sr3_x2_b), the ``SR3Stage``, and the folder it was loaded from (None: in memory)."""

    name: str
    stage: Any  # cascade.diffusion.stage.SR3Stage
    source: Path | None = None

    @property
    def device(self) -> torch.device:
        return self.stage.device

    @property
    def num_params(self) -> int:
        return self.stage.num_params

    def knobs(self, **overrides: Any) -> Any:
        """The stage's default sampler knobs with ``overrides`` (None = keep)."""
        return self.stage.knobs(**overrides)

    def condition(self, x: Tensor, size: tuple[int, int], progress: bool = False) -> Tensor:
        """The conditioning ``U(x)`` at ``size`` (the stage's upsampler)."""
        up = self.stage.upsampler
        if up is None:
            raise ConfigError("this diffusion stage has no conditioning upsampler")
        return up.condition(x.to(self.device), size, progress)

    def draw(self, x: Tensor, cond: Tensor, generators: list[torch.Generator], knobs: Any,
             denoise_fn: TiledDenoiser, progress: bool = False) -> Tensor:
        """One sample per row of ``x`` (R, 3, h, w), conditioned on ``cond`` (R, 3, 2h, 2w),
        each row with its own generator -> (R, 3, 2h, 2w) on the stage's device."""
        return self.stage.draw(x.to(self.device), cond.to(self.device), generators, knobs,
                               progress=progress, denoise_fn=denoise_fn,
                               desc=f"{self.name} {knobs.sampler} {knobs.steps} steps")

    def denoiser(self, tiling: TileConfig, device: torch.device, progress: bool = False,
                 rows: int = 1) -> TiledDenoiser:
        """The stage's network on tiles. ``rows``: the run's samples per batch; the tiling
        decision is made for that many, so a smaller last batch is tiled like the others
        (sample i does not depend on N)."""
        unet = self.stage.unet
        tile, overlap, untiled = auto_tiling(tiling, device, unet.downsample_factor)
        return TiledDenoiser(unet, tile, overlap, tiling.batch, progress=progress,
                             global_norm=tiling.global_norm, untiled_pixels=untiled,
                             norm_tiles=tiling.norm_tiles, min_rows=rows)

    def tiles_for(self, in_size: tuple[int, int], tiling: TileConfig, device: torch.device,
                  rows: int) -> int:
        """Network tiles per sampler step for an input of ``in_size`` (after the padding
        that makes the network's sides divide)."""
        m, s = self.stage.pad_multiple(), round(self.stage.scale)
        h, w = in_size
        padded = (h + (-h) % m) * s, (w + (-w) % m) * s
        return len(self.denoiser(tiling, device).tiles_for(*padded, rows))
