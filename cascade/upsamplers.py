"""Conditioning upsamplers ``U(lr, size) -> (B, 3, H, W)``, registered by name.

A diffusion stage is conditioned on its LR input brought to the output size by one of
these: the trained LAINR stage (frozen) or MATLAB bicubic (the ablation and the fallback
before a LAINR checkpoint exists). This module is where the stages meet (the stages never
import each other, docs/architecture.md); the diffusion network and process never import it.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from cascade.inr.lattice import DECODE_CHUNK, lainr_resample
from cascade.registry import Registry

UPSAMPLERS: Registry = Registry("conditioning upsampler")


class Upsampler(Protocol):
    spec: dict[str, Any]

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor: ...

    def condition(self, lr: torch.Tensor, size: tuple[int, int],
                  progress: bool = False) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> Upsampler: ...


@UPSAMPLERS.register("bicubic")
class BicubicUpsampler:
    """MATLAB bicubic D^-1 (``cascade.data.degrade.upscale_bicubic``)."""

    def __init__(self) -> None:
        self.spec = {"name": "bicubic"}

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        from cascade.data.degrade import upscale_bicubic

        return upscale_bicubic(lr, size)

    def condition(self, lr: torch.Tensor, size: tuple[int, int],
                  progress: bool = False) -> torch.Tensor:
        """The cascade's conditioning: the same as calling it."""
        return self(lr, size)

    def to(self, device: torch.device | str) -> BicubicUpsampler:
        return self


@UPSAMPLERS.register("lainr")
class LAINRUpsampler:
    """A trained LAINR stage, frozen (eval mode, no gradients), queried in chunks."""

    def __init__(self, checkpoint: str = "checkpoints/lainr", chunk: int = DECODE_CHUNK) -> None:
        from cascade.inr.pretrained import load_lainr

        self.spec = {"name": "lainr", "args": {"checkpoint": str(checkpoint)}}
        self.model = load_lainr(checkpoint).requires_grad_(False)
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.model.upscale(lr, size=size, chunk=self.chunk)

    def condition(self, lr: torch.Tensor, size: tuple[int, int],
                  progress: bool = False) -> torch.Tensor:
        """The cascade's conditioning: the pixel centres of ``size`` through the lattice
        decoder (``cascade.inr.lattice``), with a progress bar when ``progress``."""
        return lainr_resample(self.model, lr, size, size, self.chunk, progress)

    def to(self, device: torch.device | str) -> LAINRUpsampler:
        self.model.to(device)
        return self


def make_upsampler(spec: str | dict) -> Upsampler:
    return UPSAMPLERS.make(spec)
