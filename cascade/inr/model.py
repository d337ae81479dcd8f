"""LAINR: Mamba encoder + locality-aware decoder, predicting a residual over bicubic.

``rgb(x) = bicubic(lr)(x) + decoder(latents, x, cell)``: the decoder's RGB heads start at
zero, so an untrained model is exactly bicubic and training can only add to it (a CPU
training budget buys few steps, docs/lainr.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from cascade.data.coords import make_cell, make_coord
from cascade.errors import ConfigError, ScaleError
from cascade.inr.decoder import LocalityAwareDecoder
from cascade.inr.encoder import Latents, MambaEncoder
from cascade.inr.lattice import DECODE_CHUNK, decode_chunks, decode_lattice
from cascade.registry import MODELS

__all__ = ["DECODE_CHUNK", "LAINRConfig", "LAINR", "bicubic_at"]



@dataclass
class LAINRConfig:
    """LAINR hyper-parameters, sized for a 2-core CPU (defaults: 0.1 M parameters, ~0.4 s
    per training step of 8 x 48x48 LR crops and 1024 queries each on 2 CPU cores)."""

    patch_size: int = 2  # LR pixels per patch token side
    dim: int = 64  # token width
    depth: int = 2  # BiMamba layers
    d_state: int = 8  # SSM state size N (mamba-ssm's 16 doubles the CPU scan time)
    expand: int = 1  # Mamba inner width = expand * dim (2 in mamba-ssm; 1 for the CPU)
    latent_stride: int = 2  # one latent token per latent_stride x latent_stride patches
    sigma_q: float = 16.0  # highest query frequency (units: decoder.PIXELS_PER_UNIT)
    n_freq_q: int = 8
    sigma_l: tuple[float, ...] = (128.0, 32.0)  # one band per entry, chained in this order
    n_freq_l: int = 16
    hidden: int = 64  # decoder width
    heads: int = 4
    neighbourhood: int = 3  # latent tokens attended per query: neighbourhood x neighbourhood
    use_cell: bool = True  # LIIF cell decoding: the HR pixel size is a decoder input
    stem_channels: int = 32  # per-LR-pixel conv features for the decoder's local path; 0 = off
    stem_depth: int = 3  # 3x3 conv layers of that stem
    stem_blocks: int = 0  # residual blocks after them (identities when new: grow a trained stem)
    local_pixels: int = 3  # k: the decoder reads the stem features of k x k LR pixels; 0 = off
    # RGB heads' init: 0 makes an untrained model exactly bicubic, but under the L1 loss it
    # stayed there (see docs/lainr.md); a small random init lets training start.
    head_init_std: float = 0.01


def bicubic_at(lr: Tensor, coord: Tensor) -> Tensor:
    """Bicubic interpolation of lr (B, C, h, w) at coord (B, Q, 2) (y, x) -> (B, Q, C)."""
    grid = coord.flip(-1).unsqueeze(1)  # (B, 1, Q, 2) as (x, y), grid_sample's order
    out = F.grid_sample(lr, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)  # (B, Q, C)


def _check(c: LAINRConfig) -> None:
    """Fail at construction, with the option's name, rather than deep inside a forward."""
    positive = ("patch_size", "dim", "depth", "d_state", "expand", "latent_stride", "n_freq_q",
                "n_freq_l", "hidden", "heads", "neighbourhood")
    for name in positive:
        if getattr(c, name) < 1:
            raise ConfigError(f"LAINR option {name} must be >= 1, got {getattr(c, name)}")
    if c.stem_channels < 0 or c.stem_depth < 1 or c.stem_blocks < 0:
        raise ConfigError(f"LAINR stem_channels and stem_blocks must be >= 0 and stem_depth "
                          f">= 1, got {c.stem_channels}, {c.stem_blocks}, {c.stem_depth}")
    if c.stem_blocks and not c.stem_channels:
        raise ConfigError(f"LAINR stem_blocks={c.stem_blocks} needs the pixel stem: set "
                          f"stem_channels > 0 (e.g. 32) or stem_blocks=0")
    if c.local_pixels < 0 or (c.local_pixels and c.local_pixels % 2 == 0):
        raise ConfigError(f"LAINR local_pixels must be 0 (off) or odd, got {c.local_pixels}")
    if c.hidden % c.heads:
        raise ConfigError(f"LAINR hidden={c.hidden} must be divisible by heads={c.heads}")
    if not c.sigma_l or min(c.sigma_l) < 1 or c.sigma_q < 1:
        raise ConfigError(f"LAINR sigmas must be >= 1 (sigma_q={c.sigma_q}, sigma_l={c.sigma_l})")


@MODELS.register("lainr")
class LAINR(nn.Module):
    """Arbitrary-scale SR: colour at any (y, x) in [-1, 1] of an LR image of any size."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        names = {f.name for f in dataclasses.fields(LAINRConfig)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ConfigError(f"unknown LAINR option(s) {unknown}; valid: {sorted(names)}")
        if "sigma_l" in kwargs:
            kwargs["sigma_l"] = tuple(float(s) for s in kwargs["sigma_l"])
        self.config = c = LAINRConfig(**kwargs)
        _check(c)
        self.encoder = MambaEncoder(c.dim, c.depth, c.patch_size, c.latent_stride, c.d_state,
                                    c.expand, stem_channels=c.stem_channels,
                                    stem_depth=c.stem_depth, stem_blocks=c.stem_blocks)
        self.decoder = LocalityAwareDecoder(c.dim, c.hidden, c.heads, c.sigma_q, c.n_freq_q,
                                            c.sigma_l, c.n_freq_l, c.neighbourhood, c.use_cell,
                                            c.local_pixels, c.stem_channels,
                                            c.head_init_std)

    @classmethod
    def from_config(cls, cfg: LAINRConfig | DictConfig | Mapping[str, Any]) -> LAINR:
        if isinstance(cfg, LAINRConfig):
            cfg = dataclasses.asdict(cfg)
        elif isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        return cls(**dict(cfg))

    def encode(self, lr: Tensor) -> Latents:
        """lr (B, 3, h, w) in [0, 1], any h, w >= 1 -> latents (encode once, decode often)."""
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"lr must be (B, 3, h, w), got {tuple(lr.shape)}")
        return self.encoder(lr)

    def decode(self, latents: Latents, coord: Tensor, cell: Tensor | None = None) -> Tensor:
        """coord, cell (B, Q, 2) in the [-1, 1] convention -> rgb (B, Q, 3), not clamped."""
        return bicubic_at(latents.lr, coord) + self.decoder(latents, coord, cell)

    def forward(self, lr: Tensor, coord: Tensor, cell: Tensor | None = None) -> Tensor:
        """Training path: lr (B, 3, h, w), coord/cell (B, Q, 2) -> rgb (B, Q, 3)."""
        return self.decode(self.encode(lr), coord, cell)

    @torch.no_grad()
    def decode_grid(self, latents: Latents, ys: Tensor, xs: Tensor, cell: Tensor,
                    chunk: int = DECODE_CHUNK, progress: bool = False,
                    native: bool | None = None) -> Tensor:
        """Colour at every (ys[r], xs[c]) of a lattice: (B, 3, H, W), not clamped.

        ys (H,), xs (W,) in the [-1, 1] convention; cell (2,) the HR pixel size there. The
        separable lattice decoder (:mod:`cascade.inr.lattice`): the same values as
        :meth:`decode` at those queries (to 1e-5), several times faster; about ``chunk``
        queries at a time. ``native``: the fused C decoder (:mod:`cascade.inr.native`) or
        not (None: where it is built and applies)."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (H, W, 2) (y, x)
        B = latents.lr.shape[0]
        base = F.grid_sample(latents.lr, grid.flip(-1)[None].expand(B, -1, -1, -1),
                             mode="bicubic", padding_mode="border", align_corners=False)
        res = decode_lattice(self.decoder, latents, ys, xs, cell, chunk, progress,
                             native)  # (B, H, W, 3)
        return base + res.permute(0, 3, 1, 2)

    @torch.no_grad()
    def upscale(self, lr: Tensor, size: tuple[int, int], chunk: int = DECODE_CHUNK) -> Tensor:
        """Resample lr (B, 3, h, w) to exactly ``size`` = (H, W) -> (B, 3, H, W), not clamped.

        Encodes once and decodes the pixel-centre lattice about ``chunk`` queries at a time
        (:meth:`decode_grid`), so memory is bounded whatever the output size: about 2.5 KB
        per query of a step, per image."""
        H, W = (int(v) for v in size)
        if H < 1 or W < 1:
            raise ScaleError(f"output size must be positive, got {tuple(size)}")
        # the pixel centres exactly as make_coord computes them (upscale_reference's queries)
        ys = make_coord((H, 1), device=lr.device, dtype=lr.dtype)[:, 0]  # (H,)
        xs = make_coord((1, W), device=lr.device, dtype=lr.dtype)[:, 1]  # (W,)
        cell = make_cell((H, W), 1, device=lr.device, dtype=lr.dtype)[0]  # (2,)
        return self.decode_grid(self.encode(lr), ys, xs, cell, chunk)

    @torch.no_grad()
    def upscale_reference(self, lr: Tensor, size: tuple[int, int],
                          chunk: int = DECODE_CHUNK) -> Tensor:
        """:meth:`upscale` through the per-query decoder (:meth:`decode`), ``chunk`` queries
        at a time: the reference the lattice decoder is tested against. About 14 KB of
        intermediates per query."""
        H, W = (int(v) for v in size)
        if H < 1 or W < 1:
            raise ScaleError(f"output size must be positive, got {tuple(size)}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        coord = make_coord((H, W), device=lr.device, dtype=lr.dtype)
        cell = make_cell((H, W), H * W, device=lr.device, dtype=lr.dtype)
        return decode_chunks(self, self.encode(lr), coord, cell, lr.shape[0], (H, W), chunk)
