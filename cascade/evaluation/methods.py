"""Upscaling methods that ``cascade evaluate`` compares, registered by name.

A method is built from its settings and called as ``method(lr, size) -> sr`` with
``lr`` (B, 3, h, w) in [0, 1] and ``size`` the exact (H, W) of the ground truth; it returns
(B, 3, H, W). ``settings`` (a plain dict) is recorded in every result row, so two settings
of one method are two rows of the leaderboard.
"""

from __future__ import annotations

from typing import Any

import torch

from cascade.registry import Registry

METHODS: Registry = Registry("method")


class Method:
    """Base class: ``name``, ``settings`` and the parameter count for the leaderboard."""

    name: str = ""

    def __init__(self, **settings: Any) -> None:
        self.settings = dict(settings)

    @property
    def num_params(self) -> int:
        return 0

    def to(self, device: torch.device | str) -> Method:
        return self

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError


@METHODS.register("bicubic")
class Bicubic(Method):
    """MATLAB-style bicubic interpolation: the baseline every table starts from."""

    name = "bicubic"

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        from cascade.data.degrade import upscale_bicubic

        return upscale_bicubic(lr, size).clamp(0, 1)


@METHODS.register("lainr")
class LAINRMethod(Method):
    """The LAINR stage alone: any-scale resampling by the implicit representation."""

    name = "lainr"

    def __init__(self, checkpoint: str = "checkpoints/lainr", chunk: int = 65536) -> None:
        super().__init__(checkpoint=str(checkpoint))
        from cascade.inr.pretrained import load_lainr

        self.model = load_lainr(checkpoint)
        self.chunk = chunk

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def to(self, device: torch.device | str) -> Method:
        self.model.to(device)
        return self

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.model.upscale(lr, size=size, chunk=self.chunk).clamp(0, 1)


def make_method(name: str, settings: dict[str, Any] | None = None) -> Method:
    """Build a registered method from its settings."""
    return METHODS.get(name)(**(settings or {}))
