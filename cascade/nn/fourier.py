"""Fourier features of positions (Tancik et al. 2020; the LAINR/Trans-INR ``calc_gamma``).

``gamma_sigma(x) = [sin(pi * w_k * x_d), cos(pi * w_k * x_d)]`` over every input dimension
``d`` and ``n`` frequencies ``w_k`` log-spaced from ``min_freq`` to ``sigma``. A frequency
``w`` has period ``2 / w`` in the units of ``x``; the caller chooses those units.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FourierFeatures", "log_frequencies"]


def log_frequencies(sigma: float, n: int, min_freq: float = 1.0) -> Tensor:
    """``n`` frequencies log-spaced from ``min_freq`` to ``sigma`` (both included) -> (n,)."""
    if n < 1:
        raise ValueError(f"need at least one frequency, got n={n}")
    if not 0 < min_freq <= sigma:
        raise ValueError(f"need 0 < min_freq <= sigma, got min_freq={min_freq}, sigma={sigma}")
    return torch.logspace(math.log10(min_freq), math.log10(sigma), n, dtype=torch.float64).float()


class FourierFeatures(nn.Module):
    """Fixed (not learned) sin/cos features: (..., in_dim) -> (..., 2 * in_dim * n_freq)."""

    def __init__(self, in_dim: int, n_freq: int, sigma: float, min_freq: float = 1.0) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.sigma = float(sigma)
        # A buffer (not a parameter) so it follows .to(device) but is not trained.
        self.register_buffer("freqs", log_frequencies(sigma, n_freq, min_freq), persistent=False)

    @property
    def out_dim(self) -> int:
        return 2 * self.in_dim * self.freqs.numel()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected last dim {self.in_dim}, got shape {tuple(x.shape)}")
        return self.per_axis(x).flatten(-2)  # (..., in_dim * 2n)

    def per_axis(self, x: Tensor) -> Tensor:
        """The features of each coordinate on its own: (...,) -> (..., 2n) as [sin, cos].
        ``forward`` concatenates them over the input dimensions (the lattice decoder uses
        one axis at a time)."""
        arg = math.pi * x.unsqueeze(-1) * self.freqs.to(x.dtype)  # (..., n)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, n_freq={self.freqs.numel()}, sigma={self.sigma:g}"
