"""Colour augmentation for training crops: channel permutations, hue rotations, saturation.

Each transform is one 3x3 matrix ``M`` applied to every pixel, ``x' = M x``, followed by
clipping to [0, 1]. A linear colour map commutes with the degradation operator D (a linear
filter per channel), so applying the same ``M`` to an aligned (HR, LR, conditioning) triple
keeps ``LR = D(HR)`` exact wherever the clipping does not bite.

* **channel permutation**: one of the 6 orders of (R, G, B), a permutation matrix;
* **hue rotation** by ``theta``: the rotation about the gray axis (1, 1, 1) / sqrt(3)
  (Rodrigues' formula); gray stays gray and the channel mean is kept;
* **saturation** by ``s``: ``x' = g + s (x - g)`` with ``g`` the channel mean (the projection
  onto the gray axis), so ``s > 1`` pushes colours out towards the gamut's edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations

import torch

PERMUTATIONS = list(permutations(range(3)))


@dataclass
class ColourAugConfig:
    perm_prob: float = 0.0  # probability of a random channel permutation (not the identity)
    hue_prob: float = 0.0  # probability of a hue rotation by theta ~ U(0, 360) degrees
    sat_prob: float = 0.0  # probability of a saturation change by s ~ U(sat_min, sat_max)
    sat_min: float = 0.7
    sat_max: float = 1.6


def colour_active(cfg: ColourAugConfig) -> bool:
    """Whether ``cfg`` changes any crop (a typed omegaconf node or the dataclass)."""
    return cfg.perm_prob > 0 or cfg.hue_prob > 0 or cfg.sat_prob > 0


def hue_rotation_matrix(degrees: float) -> torch.Tensor:
    """(3, 3) rotation by ``degrees`` about the gray axis."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    k = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    R = torch.eye(3, dtype=torch.float64) + s * K + (1 - c) * (K @ K)
    return R.float()


def saturation_matrix(s: float) -> torch.Tensor:
    """(3, 3) map ``x -> g + s (x - g)``, g the channel mean."""
    gray = torch.full((3, 3), 1 / 3)
    return gray + s * (torch.eye(3) - gray)


def permutation_matrix(perm: tuple[int, int, int]) -> torch.Tensor:
    """(3, 3) matrix whose output channel i is input channel ``perm[i]``."""
    return torch.eye(3)[list(perm)]


def draw_colour_matrix(cfg: ColourAugConfig, g: torch.Generator) -> torch.Tensor:
    """One random (3, 3) colour map for a training crop (identity when nothing is drawn).
    Always consumes the same number of draws from ``g``, so batches stay reproducible."""
    u = torch.rand(6, generator=g)
    M = torch.eye(3)
    if u[0] < cfg.perm_prob:
        M = permutation_matrix(PERMUTATIONS[1 + int(u[1] * 5) % 5]) @ M
    if u[2] < cfg.hue_prob:
        M = hue_rotation_matrix(float(u[3]) * 360) @ M
    if u[4] < cfg.sat_prob:
        M = saturation_matrix(cfg.sat_min + (cfg.sat_max - cfg.sat_min) * float(u[5])) @ M
    return M


def apply_colour(x: torch.Tensor, M: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """``M`` applied to every pixel of (..., 3, H, W), clipped to [0, 1] unless ``clip`` is
    False (an upsampler's output, which may overshoot the gamut as it would for a real
    input of these colours)."""
    y = torch.einsum("ij,...jhw->...ihw", M.to(x), x)
    return y.clamp(0, 1) if clip else y
