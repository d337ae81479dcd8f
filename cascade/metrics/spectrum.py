"""Power spectra of image luma: how much high-frequency detail an output has
(the ``hf_ratio`` metric, docs/evaluation.md).

The spectrum is a Hann-windowed periodogram of the mean-removed luma, normalized so that
its mean over all frequency bins is the (windowed) variance of the image (Parseval). Energy
in a band is then the share of that variance the band carries, independent of image size.
Frequencies are in cycles per pixel; the radius sqrt(fx^2 + fy^2) reaches 0.5 on the axes
and 0.707 in the corners.
"""

from __future__ import annotations

import torch

# BT.601 luma weights; the offset of limited-range Y is irrelevant once the mean is removed.
_LUMA = (0.299, 0.587, 0.114)


def luma(img: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB or (..., 1, H, W) gray -> (..., H, W) float64 luma."""
    x = img.to(torch.float64)
    if x.shape[-3] == 1:
        return x[..., 0, :, :]
    if x.shape[-3] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(img.shape)}")
    w = torch.tensor(_LUMA, dtype=torch.float64, device=x.device)
    return torch.einsum("...chw,c->...hw", x, w)


def power_spectrum(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D periodogram of the luma: (..., C, H, W) -> (power (..., H, W), radius (H, W)).

    Unshifted FFT layout; ``radius`` is the frequency magnitude of each bin in cycles/pixel.
    """
    y = luma(img)  # (..., H, W)
    H, W = y.shape[-2:]
    if min(H, W) < 4:
        raise ValueError(f"power spectrum needs at least 4x4 pixels, got {H}x{W}")
    y = y - y.mean(dim=(-2, -1), keepdim=True)
    # Symmetric Hann window: without it the image border acts as an edge and leaks energy
    # into every high-frequency bin.
    win = torch.outer(torch.hann_window(H, periodic=False, dtype=torch.float64, device=y.device),
                      torch.hann_window(W, periodic=False, dtype=torch.float64, device=y.device))
    spec = torch.fft.fft2(y * win)
    power = spec.abs().pow(2) / win.pow(2).sum()  # mean over bins = windowed variance
    fy = torch.fft.fftfreq(H, dtype=torch.float64, device=y.device)
    fx = torch.fft.fftfreq(W, dtype=torch.float64, device=y.device)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return power, radius


def radial_power_spectrum(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of the luma.

    img: (3, H, W) or (B, 3, H, W) RGB (or 1 channel); a batch gives the mean spectrum of
    its images. Returns ``(freqs, power)``, both (N // 2 + 1,) float64 with N = min(H, W):
    bin k holds the frequencies whose radius rounds to k / N, so ``freqs`` runs 0 .. 0.5
    cycles/pixel; corner frequencies beyond 0.5 are left out.
    """
    power, radius = power_spectrum(img)
    if power.ndim > 2:
        power = power.reshape(-1, *power.shape[-2:]).mean(0)  # (H, W)
    n = min(radius.shape)
    nbins = n // 2 + 1
    idx = torch.round(radius * n).long().flatten()
    keep = idx < nbins
    idx, p = idx[keep], power.flatten()[keep]
    total = torch.zeros(nbins, dtype=torch.float64, device=p.device).index_add_(0, idx, p)
    count = torch.zeros(nbins, dtype=torch.float64, device=p.device).index_add_(
        0, idx, torch.ones_like(p))
    freqs = torch.arange(nbins, dtype=torch.float64, device=p.device) / n
    return freqs, total / count.clamp_min(1)


def hf_energy(img: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Luma power above ``cutoff`` cycles/pixel (radius > cutoff), per image: (B,) float64.

    img: (B, 3, H, W) or (3, H, W) (then shape (1,)). The value is the share of the image's
    windowed variance above the cutoff, in squared intensity units of the input.
    """
    if img.ndim == 3:
        img = img[None]
    power, radius = power_spectrum(img)  # (B, H, W), (H, W)
    mask = (radius > cutoff).to(power.dtype)
    return (power * mask).flatten(1).sum(1) / mask.numel()
