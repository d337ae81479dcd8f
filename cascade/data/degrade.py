"""The degradation operator D: MATLAB-compatible bicubic resize with anti-aliasing.

One operator makes the LR data, the diffusion stages' consistency loss and the
``lr_psnr`` metric (docs/data.md, docs/evaluation.md), so it is written once, here, on torch tensors:
any leading batch dimensions, differentiable, any real scale or an exact output size.

It follows MATLAB's ``imresize(..., 'bicubic')`` (Keys cubic with a = -0.5; when shrinking
the kernel is stretched by 1/scale, which is the anti-aliasing; weights renormalized;
symmetric boundary). Each axis is a dense (out, in) weight matrix with the boundary folded
in, so resizing is two matrix products: exact, batched and autograd-friendly.
``resize-right`` implements the same maths; the tests use it as the independent reference
(on numpy with symmetric padding), and Set5 bicubic PSNR matches the published MATLAB
figures. Why not call it here: its torch path has no symmetric padding, and the matrix
form is faster for the small images this project resizes in training loops.

Non-integer scales: ``crop_to_scale`` crops HR to the largest size whose LR size is an
integer, i.e. LR side ``h`` is the largest integer <= H / s with ``h * s`` an integer
(s = 2.5: h even); HR is then ``h * s`` pixels, taken from the top-left corner.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch

from cascade.errors import ScaleError

_TOL = 1e-6


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic kernel with a = -0.5 (MATLAB's)."""
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=256)
def _weights(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Dense (out_len, in_len) float64 resampling matrix of MATLAB's ``contributions``."""
    kernel_width = 4.0
    shrink = antialias and scale < 1
    if shrink:
        kernel_width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)  # 1-based output positions
    u = x / scale + 0.5 * (1 - 1 / scale)  # their centres in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]  # (out, taps), 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if shrink else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # Symmetric boundary (MATLAB): mirror indices with period 2 * in_len, edge repeated.
    j = (idx.long() - 1) % (2 * in_len)
    j = torch.where(j >= in_len, 2 * in_len - 1 - j, j)
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    m.scatter_add_(1, j, w)
    return m


def _out_len(in_len: int, scale: float) -> int:
    return int(math.ceil(in_len * scale - _TOL))


def imresize(x: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             *, antialias: bool = True) -> torch.Tensor:
    """MATLAB ``imresize(x, scale | size, 'bicubic')`` on (..., H, W) tensors.

    Give ``scale`` (output side ``ceil(side * scale)``, kernel from ``scale``) or ``size``
    (H, W) (kernel from ``size / side`` per axis). Values are not clipped or rounded.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize: give exactly one of scale= or size=")
    if x.ndim < 2:
        raise ValueError(f"imresize: expected (..., H, W), got shape {tuple(x.shape)}")
    H, W = x.shape[-2:]
    if size is not None:
        oh, ow = int(size[0]), int(size[1])
        if oh < 1 or ow < 1:
            raise ScaleError(f"imresize: output size must be positive, got {size}")
        sh, sw = oh / H, ow / W
    else:
        if not scale > 0:
            raise ScaleError(f"imresize: scale must be > 0, got {scale}")
        sh = sw = float(scale)
        oh, ow = _out_len(H, sh), _out_len(W, sw)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    out = x.to(dtype)
    if (oh, ow) != (H, W) or sh != 1 or sw != 1:
        mh = _weights(H, oh, sh, antialias).to(device=x.device, dtype=dtype)
        mw = _weights(W, ow, sw, antialias).to(device=x.device, dtype=dtype)
        out = torch.matmul(torch.matmul(mh, out), mw.T)  # (..., oh, ow)
    return out


def upscale_bicubic(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The bicubic baseline D^-1: MATLAB bicubic up to exactly ``size`` (H, W)."""
    return imresize(lr, size=size)


def _lr_side(hr_side: int, scale: float) -> int:
    """Largest integer h <= hr_side / scale such that h * scale is (numerically) an integer."""
    frac = Fraction(scale).limit_denominator(1000)
    if abs(float(frac) - scale) > _TOL:
        raise ScaleError(f"scale {scale} is not a ratio of small integers; use e.g. 2.5 or 10/3")
    h = hr_side * frac.denominator // frac.numerator
    h -= h % frac.denominator  # h * p / q integer <=> q | h (p, q coprime)
    return h


def lr_size_for(hr_size: tuple[int, int], scale: float) -> tuple[int, int]:
    """LR (h, w) for an HR size at ``scale`` under the crop rule of this module."""
    check_scale(scale)
    h, w = (_lr_side(int(s), float(scale)) for s in hr_size)
    if h < 1 or w < 1:
        raise ScaleError(f"an image of {hr_size[0]}x{hr_size[1]} pixels is too small for "
                         f"scale {scale:g}; use a smaller scale or a larger image")
    return h, w


def check_scale(scale) -> float:
    """A scale as float, or a ScaleError that says what a valid scale is."""
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise ScaleError(f"scale {scale!r} is not a number; use a real number >= 1 "
                         "(e.g. 4 or 2.5)") from None
    if not math.isfinite(s) or s < 1:
        raise ScaleError(f"scale {scale!r} is impossible; use a finite real number >= 1 "
                         "(e.g. 4 or 2.5)")
    return s


def crop_to_scale(hr: torch.Tensor, scale: float) -> torch.Tensor:
    """Crop (..., H, W) from the top-left so that H / scale and W / scale are integers."""
    h, w = lr_size_for(tuple(hr.shape[-2:]), scale)
    return hr[..., : round(h * scale), : round(w * scale)]


def degrade(hr: torch.Tensor, scale: float, *, quantize: bool = True
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """HR (..., 3, H, W) -> (cropped HR, LR = D(HR)), LR rounded to uint8 values by default."""
    hr_c = crop_to_scale(hr, scale)
    h, w = round(hr_c.shape[-2] / scale), round(hr_c.shape[-1] / scale)
    lr = imresize(hr_c, size=(h, w))
    if quantize:
        lr = (lr.clamp(0, 1) * 255).round() / 255
    return hr_c, lr
