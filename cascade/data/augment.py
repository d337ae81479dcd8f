"""Augmentation for training crops: colour maps (channel permutations, hue rotations,
saturation) and defocus (a disc blur, as an out-of-focus lens draws bokeh).

Each colour transform is one 3x3 matrix ``M`` applied to every pixel, ``x' = M x``, followed by
clipping to [0, 1]. A linear colour map commutes with the degradation operator D (a linear
filter per channel), so applying the same ``M`` to an aligned (HR, LR, conditioning) triple
keeps ``LR = D(HR)`` exact wherever the clipping does not bite.

* **channel permutation**: one of the 6 orders of (R, G, B), a permutation matrix;
* **hue rotation** by ``theta``: the rotation about the gray axis (1, 1, 1) / sqrt(3)
  (Rodrigues' formula); gray stays gray and the channel mean is kept;
* **saturation** by ``s``: ``x' = g + s (x - g)`` with ``g`` the channel mean (the projection
  onto the gray axis), so ``s > 1`` pushes colours out towards the gamut's edge.

**Defocus** blurs a crop with a disc of ``radius`` pixels (the point-spread function of an
out-of-focus lens, its edge pixels weighted by their area inside the disc), computed with
the crop's surroundings in the image, so its edges are blurred as the inside is. The photo
corpus has little bokeh, and a diffusion stage that rarely met a smooth, defocused
background draws grain on it; a defocused crop has little detail left for a stage to add.
The blur is linear and shift-invariant, so applying it to the HR crop and to its
conditioning makes their residual the blurred residual of the sharp crop (small for large
radii); the LR crop is degraded again from the blurred HR crop (``cascade.diffusion.task``).
The blurred conditioning stands in for the conditioning upsampler run again on the new LR
crop: an approximation (LAINR is not linear), and a cheap one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations

import torch

from cascade.errors import ConfigError

PERMUTATIONS = list(permutations(range(3)))


@dataclass
class ColourAugConfig:
    perm_prob: float = 0.0  # probability of a random channel permutation (not the identity)
    hue_prob: float = 0.0  # probability of a hue rotation by theta ~ U(0, 360) degrees
    sat_prob: float = 0.0  # probability of a saturation change by s ~ U(sat_min, sat_max)
    sat_min: float = 0.7
    sat_max: float = 1.6


@dataclass
class DefocusAugConfig:
    prob: float = 0.0  # probability that a crop is defocused
    radius_min: float = 1.0  # disc radius ~ U(radius_min, radius_max), in HR pixels
    radius_max: float = 8.0


MAX_DEFOCUS_RADIUS = 64.0  # pixels: a wider disc leaves a 64-pixel crop flat anyway


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


def defocus_active(cfg: DefocusAugConfig) -> bool:
    """Whether ``cfg`` defocuses any crop (a typed omegaconf node or the dataclass)."""
    return cfg.prob > 0


def check_defocus(cfg: DefocusAugConfig, where: str = "data.defocus") -> None:
    """A ConfigError for settings no crop can be drawn with (checked before training starts):
    ``prob`` in [0, 1], 0.5 <= ``radius_min`` <= ``radius_max`` <= 64 pixels (a disc under
    half a pixel is no blur)."""
    if not 0.0 <= cfg.prob <= 1.0:
        raise ConfigError(f"{where}.prob={cfg.prob}: use a probability in [0, 1]")
    if not 0.5 <= cfg.radius_min <= cfg.radius_max <= MAX_DEFOCUS_RADIUS:
        raise ConfigError(f"{where} radii {cfg.radius_min}..{cfg.radius_max}: use "
                          f"0.5 <= radius_min <= radius_max <= {MAX_DEFOCUS_RADIUS:g} pixels")


def draw_defocus_radius(cfg: DefocusAugConfig, g: torch.Generator) -> float | None:
    """The disc radius for one crop, or None (no defocus); always two draws from ``g``."""
    u = torch.rand(2, generator=g)
    if u[0] >= cfg.prob:
        return None
    return cfg.radius_min + (cfg.radius_max - cfg.radius_min) * float(u[1])


def disc_kernel(radius: float, supersample: int = 16) -> torch.Tensor:
    """(K, K) disc of ``radius`` pixels summing to 1, K = 2 ceil(radius) + 1; each pixel is
    weighted by the share of its area inside the disc (``supersample``^2 points per pixel)."""
    R = math.ceil(radius)
    n = supersample
    sub = (torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5  # sub-pixel offsets
    c = torch.arange(-R, R + 1, dtype=torch.float64)
    pos = (c[:, None] + sub[None]).reshape(-1)  # (K * n,)
    inside = (pos[:, None] ** 2 + pos[None] ** 2 <= radius**2).double()  # (K n, K n)
    K = 2 * R + 1
    w = inside.reshape(K, n, K, n).mean(dim=(1, 3))
    return (w / w.sum()).float()


def defocus_crop(img: torch.Tensor, top: int, left: int, size: int,
                 kernel: torch.Tensor) -> torch.Tensor:
    """The (C, size, size) crop at (top, left) of ``img`` (C, H, W), blurred by ``kernel``
    (``disc_kernel``) with its surroundings: the image's pixels around the crop take part,
    and borders are replicated only where the image itself ends."""
    R = kernel.shape[-1] // 2
    H, W = img.shape[-2:]
    t0, l0 = max(0, top - R), max(0, left - R)
    t1, l1 = min(H, top + size + R), min(W, left + size + R)
    pad = (R - (left - l0), R - (l1 - left - size), R - (top - t0), R - (t1 - top - size))
    win = torch.nn.functional.pad(img[None, :, t0:t1, l0:l1], pad, mode="replicate")
    return _convolve(win, kernel)[0]  # (C, size, size)


def _convolve(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """(B, C, H + 2R, W + 2R) padded -> (B, C, H, W): each channel convolved with ``kernel``."""
    k = kernel.to(x)
    return torch.nn.functional.conv2d(x, k.expand(x.shape[1], 1, *k.shape), groups=x.shape[1])
