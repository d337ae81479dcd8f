"""Offline realism measures: no pretrained network, so they run anywhere.

* ``swd``: sliced Wasserstein distance between Laplacian-pyramid patch distributions
  (Karras et al. 2018, "Progressive Growing of GANs", appendix D; their
  ``metrics/sliced_wasserstein.py``), reported x1e3 as in the paper.
* ``hf_ratio``: luma energy above the LR Nyquist frequency relative to ground truth.

Like the fidelity metrics, images are first rounded to the uint8 grid, so a score is the
score of the saved PNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from cascade.metrics import METRICS
from cascade.metrics.fidelity import check_pair, uint8_values
from cascade.metrics.spectrum import hf_energy

PATCH = 7  # neighbourhood size of ProGAN's SWD descriptors
MIN_LEVEL_SIZE = 16  # ProGAN's coarsest pyramid resolution

# 5-tap binomial filter of cv2.pyrDown / ProGAN's `gaussian_filter`.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=torch.float64) / 16.0


def _blur(x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """5x5 binomial filter per channel with mirror borders (scipy 'mirror' = torch 'reflect')."""
    C = x.shape[1]
    k = (torch.outer(_BINOMIAL, _BINOMIAL) * gain).to(x)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(C, 1, 5, 5), groups=C)


def _pyr_down(x: torch.Tensor) -> torch.Tensor:
    return _blur(x)[..., ::2, ::2]


def _pyr_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Zero insertion keeps one sample in four, hence the gain of 4 to preserve the mean.
    B, C, h, w = x.shape
    up = x.new_zeros(B, C, 2 * h, 2 * w)
    up[..., ::2, ::2] = x
    return _blur(up, gain=4.0)[..., : size[0], : size[1]]


def num_levels(height: int, width: int, min_size: int = MIN_LEVEL_SIZE) -> int:
    """Pyramid levels down to the coarsest whose short side is still >= ``min_size``."""
    n, s = 1, min(height, width)
    while (s + 1) // 2 >= min_size:
        n, s = n + 1, (s + 1) // 2
    return n


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """(B, C, H, W) -> ``levels`` band-pass images, fine to coarse; the last is the low-pass."""
    pyramid = [x]
    for _ in range(1, levels):
        low = _pyr_down(pyramid[-1])
        pyramid[-1] = pyramid[-1] - _pyr_up(low, tuple(pyramid[-1].shape[-2:]))
        pyramid.append(low)
    return pyramid


def _patch_positions(height: int, width: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 2) top-left corners of PATCH x PATCH neighbourhoods inside an image."""
    ys = torch.randint(0, height - PATCH + 1, (n,), generator=gen)
    xs = torch.randint(0, width - PATCH + 1, (n,), generator=gen)
    return torch.stack([ys, xs], dim=1)


def _patches(level: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) at positions (N, 2) -> descriptors (B, N, C, 7, 7)."""
    off = torch.arange(PATCH, device=level.device)
    pos = pos.to(level.device)
    ys = (pos[:, 0, None] + off)[:, :, None]  # (N, 7, 1)
    xs = (pos[:, 1, None] + off)[:, None, :]  # (N, 1, 7)
    return level[:, :, ys, xs].permute(0, 2, 1, 3, 4)  # (B, C, N, 7, 7) -> (B, N, C, 7, 7)


def _descriptors(images: torch.Tensor, levels: int, n_patches: int,
                 seed: int) -> list[torch.Tensor]:
    """Per level, (B, N, C, 7, 7) patches of the Laplacian pyramid of one image set.

    Positions come from ``seed`` and the image size only, so two images of the same size
    (sr and hr) are sampled at the same places: identical inputs give identical descriptors.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for level in laplacian_pyramid(images, levels):
        out.append(_patches(level, _patch_positions(*level.shape[-2:], n_patches, gen)))
    return out


def _normalize(desc: torch.Tensor, ref: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Standardize per channel by the reference's mean/std over ``dims``, then flatten."""
    mean = ref.mean(dim=dims, keepdim=True)
    std = ref.std(dim=dims, keepdim=True, unbiased=False).clamp_min(1e-8)
    return ((desc - mean) / std).flatten(-3)  # (..., N, C*49)


def _directions(dim: int, n_dirs: int, repeats: int, gen: torch.Generator) -> torch.Tensor:
    """(dim, n_dirs * repeats) random unit vectors; all repeats in one matrix, as their
    mean is what ProGAN averages over."""
    d = torch.randn(dim, n_dirs * repeats, generator=gen, dtype=torch.float64)
    return d / d.norm(dim=0, keepdim=True)


def _sliced_w1(a: torch.Tensor, b: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Mean over directions of the 1-D Wasserstein-1 distance: (..., N, D) x2 -> (...)."""
    pa = torch.sort(a @ dirs, dim=-2).values  # (..., N, K)
    pb = torch.sort(b @ dirs, dim=-2).values
    return (pa - pb).abs().mean(dim=(-2, -1))


def _check_swd_args(n_patches: int, normalize: str) -> None:
    if n_patches < 1:
        raise ValueError(f"n_patches must be >= 1, got {n_patches}")
    if normalize not in ("reference", "each"):
        raise ValueError(f"normalize must be 'reference' or 'each', got {normalize!r}")


@METRICS.register("swd")
def swd(sr: torch.Tensor, hr: torch.Tensor, *, lr: torch.Tensor | None = None,
        scale: float = 1.0, crop_border: int | None = None, y_channel: bool = True,
        n_patches: int = 128, n_dirs: int = 128, repeats: int = 4, seed: int = 0,
        normalize: str = "reference") -> torch.Tensor:
    """Sliced Wasserstein distance x1e3 between the patch distributions of each sr/hr pair: (B,).

    Per pyramid level: ``n_patches`` random 7x7xC patches, standardized per channel, projected
    on ``n_dirs * repeats`` random unit directions; the sorted projections give the 1-D
    Wasserstein-1 distances, averaged over directions and then over levels. RGB always
    (``y_channel``, ``crop_border`` and ``lr`` are ignored). Deterministic for a given ``seed``.

    ``normalize="reference"`` standardizes both sets by hr's statistics, so a loss of contrast
    in the band-pass levels, which is what blur is, counts; ``"each"`` standardizes each set by
    its own statistics as ProGAN did, which compares only the shapes of the distributions.
    """
    check_pair(sr, hr, "swd")
    _check_swd_args(n_patches, normalize)
    H, W = sr.shape[-2:]
    if min(H, W) < PATCH:
        raise ValueError(f"swd needs images of at least {PATCH}x{PATCH} pixels, got {H}x{W}")
    levels = num_levels(H, W)
    B = sr.shape[0]
    # One pyramid for both sets: same positions, half the calls.
    desc = _descriptors(uint8_values(torch.cat([sr, hr])), levels, n_patches, seed)
    gen = torch.Generator().manual_seed(seed)
    dist = []
    for a, b in (d.split(B) for d in desc):  # (B, N, C, 7, 7) each
        dims = (1, 3, 4)  # per image and channel: over patches and pixels
        a_n = _normalize(a, b if normalize == "reference" else a, dims)
        b_n = _normalize(b, b, dims)
        dirs = _directions(a_n.shape[-1], n_dirs, repeats, gen).to(a_n.device)
        dist.append(_sliced_w1(a_n, b_n, dirs))
    return torch.stack(dist).mean(0) * 1e3


def swd_sets(images_a: Sequence[torch.Tensor], images_b: Sequence[torch.Tensor], *,
             n_patches: int = 128, n_dirs: int = 128, repeats: int = 4, seed: int = 0,
             normalize: str = "reference") -> torch.Tensor:
    """Set-level SWD x1e3 (a 0-d float64 tensor): all patches of ``images_a`` vs ``images_b``.

    Items are (C, H, W) or (B, C, H, W) RGB in [0, 1] and may differ in size; ``images_b`` is
    the reference (ground truth). Both sets must hold the same number of images. The pyramid
    depth is that of the smallest image. The i-th image of each set uses the patch positions of
    seed ``seed + i``, so ``swd_sets([x], [y])`` equals ``swd(x[None], y[None])``.
    """
    _check_swd_args(n_patches, normalize)
    flat_a = [im for x in images_a for im in (x[None] if x.ndim == 3 else x)]
    flat_b = [im for x in images_b for im in (x[None] if x.ndim == 3 else x)]
    if not flat_a or len(flat_a) != len(flat_b):
        raise ValueError(f"swd_sets needs two non-empty sets of equal size, got "
                         f"{len(flat_a)} and {len(flat_b)} images")
    sizes = [tuple(im.shape[-2:]) for im in flat_a + flat_b]
    short = min(min(s) for s in sizes)
    if short < PATCH:
        raise ValueError(f"swd needs images of at least {PATCH}x{PATCH} pixels, got {short}")
    levels = min(num_levels(*s) for s in sizes)

    def collect(images: list[torch.Tensor]) -> list[torch.Tensor]:
        per_image = [_descriptors(uint8_values(im[None]), levels, n_patches, seed + i)
                     for i, im in enumerate(images)]
        return [torch.cat([d[lv][0] for d in per_image]) for lv in range(levels)]  # (N, C, 7, 7)

    desc_a, desc_b = collect(flat_a), collect(flat_b)
    gen = torch.Generator().manual_seed(seed)
    dist = []
    for a, b in zip(desc_a, desc_b):
        dims = (0, 2, 3)
        a_n = _normalize(a, b if normalize == "reference" else a, dims)
        b_n = _normalize(b, b, dims)
        dirs = _directions(a_n.shape[-1], n_dirs, repeats, gen).to(a_n.device)
        dist.append(_sliced_w1(a_n, b_n, dirs))
    return torch.stack(dist).mean() * 1e3


@METRICS.register("hf_ratio")
def hf_ratio(sr: torch.Tensor, hr: torch.Tensor, *, lr: torch.Tensor | None = None,
             scale: float = 1.0, crop_border: int | None = None,
             y_channel: bool = True) -> torch.Tensor:
    """Luma energy of sr above the LR Nyquist frequency 1/(2 scale) cycles/pixel, over hr's: (B,).

    1.0 means as much high-frequency energy as the ground truth; resampling gives well below 1,
    invented noise above 1; inf or nan when hr has no energy there. Luma always (``y_channel``,
    ``crop_border`` and ``lr`` are ignored; the Hann window already discounts the borders).
    """
    check_pair(sr, hr, "hf_ratio")
    if not scale > 0:
        raise ValueError(f"hf_ratio: scale must be > 0, got {scale}")
    cutoff = 1.0 / (2.0 * scale)
    return hf_energy(uint8_values(sr), cutoff) / hf_energy(uint8_values(hr), cutoff)
