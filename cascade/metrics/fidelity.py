"""Fidelity metrics: PSNR, SSIM and LR-consistency, exactly as BasicSR computes them.

Protocol (docs/evaluation.md): images are rounded to the uint8 grid, ``crop_border``
pixels are cut from each side (``ceil(scale)`` by default), and the score is taken on the
Y channel of BT.601 limited-range YCbCr (``y_channel=False`` scores RGB). All arithmetic is
float64; every function returns one value per image, shape (B,).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cascade.metrics import METRICS

# BT.601 limited range, rows of the RGB -> Y matrix for RGB in [0, 1] (BasicSR `rgb2ycbcr`).
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0


def check_pair(sr: torch.Tensor, hr: torch.Tensor, name: str = "metric") -> None:
    """Both (B, C, H, W) with identical shapes, else a ValueError naming the shapes."""
    if sr.ndim != 4 or hr.ndim != 4:
        raise ValueError(f"{name}: expected (B, C, H, W) tensors, got shapes "
                         f"{tuple(sr.shape)} and {tuple(hr.shape)}")
    if sr.shape != hr.shape:
        raise ValueError(f"{name}: sr and hr shapes differ: {tuple(sr.shape)} vs "
                         f"{tuple(hr.shape)}; resize or crop them to the same size first")


def uint8_values(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> float64 values on the uint8 grid {0, ..., 255}, as a saved PNG holds
    (``cascade.data.io.quantize`` rounds to the same grid but stays in [0, 1])."""
    return (x.to(torch.float64).clamp(0, 1) * 255).round()


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 limited-range luma: (..., 3, H, W) RGB in [0, 1] -> (..., 1, H, W) Y in [16, 235].

    Float64 and not rounded, as BasicSR's ``to_y_channel``.
    """
    if x.shape[-3] != 3:
        raise ValueError(f"rgb_to_y: expected 3 channels (RGB), got shape {tuple(x.shape)}")
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=x.device)
    y = torch.einsum("...chw,c->...hw", x.to(torch.float64), w) + _Y_OFFSET
    return y.unsqueeze(-3)


def _border(crop_border: int | None, scale: float) -> int:
    b = math.ceil(scale) if crop_border is None else int(crop_border)
    if b < 0:
        raise ValueError(f"crop_border must be >= 0, got {b}")
    return b


def _prepare(x: torch.Tensor, border: int, y_channel: bool) -> torch.Tensor:
    """Round to uint8, crop, convert: (B, 3, H, W) -> (B, 1 or 3, H-2b, W-2b) in [0, 255]."""
    q = uint8_values(x)
    if border:
        if 2 * border >= min(q.shape[-2:]):
            raise ValueError(f"crop_border {border} leaves nothing of a "
                             f"{q.shape[-2]}x{q.shape[-1]} image; use a smaller crop_border")
        q = q[..., border:-border, border:-border]
    return rgb_to_y(q / 255.0) if y_channel else q


def _psnr_prepared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # One MSE over all channels and pixels (BasicSR), not a mean of per-channel PSNRs.
    mse = (a - b).pow(2).flatten(1).mean(1)  # (B,)
    return 10.0 * torch.log10(255.0**2 / mse)  # mse == 0 -> inf


@METRICS.register("psnr")
def psnr(sr: torch.Tensor, hr: torch.Tensor, *, lr: torch.Tensor | None = None,
         scale: float = 1.0, crop_border: int | None = None,
         y_channel: bool = True) -> torch.Tensor:
    """PSNR in dB per image (B,), BasicSR ``calculate_psnr``; identical images give inf."""
    check_pair(sr, hr, "psnr")
    border = _border(crop_border, scale)
    return _psnr_prepared(_prepare(sr, border, y_channel), _prepare(hr, border, y_channel))


def _gaussian_window(size: int = 11, sigma: float = 1.5, *, device=None) -> torch.Tensor:
    """Outer product of the normalized 1-D Gaussian (cv2.getGaussianKernel): (size, size)."""
    t = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _ssim_prepared(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean of the valid-region SSIM map, averaged over channels: (B, C, H, W) -> (B,)."""
    B, C, H, W = a.shape
    if min(H, W) < 11:
        raise ValueError(f"ssim needs at least 11x11 pixels after cropping, got {H}x{W}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = _gaussian_window(device=a.device)[None, None]  # (1, 1, 11, 11)
    # Channels go into the batch so one single-channel conv serves Y and RGB alike.
    x = torch.stack([a, b, a * a, b * b, a * b], dim=1).reshape(B * 5 * C, 1, H, W)
    mu_a, mu_b, e_aa, e_bb, e_ab = F.conv2d(x, win).reshape(B, 5, C, H - 10, W - 10).unbind(1)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))  # (B, C, H-10, W-10)
    return ssim_map.flatten(2).mean(2).mean(1)


@METRICS.register("ssim")
def ssim(sr: torch.Tensor, hr: torch.Tensor, *, lr: torch.Tensor | None = None,
         scale: float = 1.0, crop_border: int | None = None,
         y_channel: bool = True) -> torch.Tensor:
    """SSIM per image (B,), BasicSR ``calculate_ssim`` (11x11 Gaussian, sigma 1.5, valid region)."""
    check_pair(sr, hr, "ssim")
    border = _border(crop_border, scale)
    return _ssim_prepared(_prepare(sr, border, y_channel), _prepare(hr, border, y_channel))


@METRICS.register("lr_psnr")
def lr_psnr(sr: torch.Tensor, hr: torch.Tensor | None = None, *,
            lr: torch.Tensor | None = None, scale: float = 1.0,
            crop_border: int | None = None, y_channel: bool = True) -> torch.Tensor:
    """LR-consistency (SR3): PSNR between D(sr) and lr, D the MATLAB bicubic of ``cascade.data``.

    ``hr`` is not used; ``crop_border`` defaults to 0 (the LR grid has no border artefacts
    from upsampling to exclude).
    """
    if lr is None:
        raise ValueError("lr_psnr needs the low-resolution input: pass lr=<(B, 3, h, w) tensor>")
    from cascade.data.degrade import imresize

    if sr.ndim != 4 or lr.ndim != 4 or sr.shape[:2] != lr.shape[:2]:
        raise ValueError(f"lr_psnr: sr and lr must be (B, C, H, W) with the same B and C, got "
                         f"{tuple(sr.shape)} and {tuple(lr.shape)}")
    down = imresize(sr, size=tuple(lr.shape[-2:]))
    border = 0 if crop_border is None else _border(crop_border, scale)
    return _psnr_prepared(_prepare(down, border, y_channel), _prepare(lr, border, y_channel))
