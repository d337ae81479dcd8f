"""LAINR decoded on a pixel lattice: the one place queries are laid out and decoded in chunks.

``LAINR.upscale`` (an exact (H, W) grid over the input) and the cascade's LAINR step (the
first ``count`` pixels of a grid of ``virtual`` pixels, which may be fractional: the
output's lattice when the output size is not divisible by the x2 steps) both encode once
and decode ``chunk`` queries at a time through ``decode_chunks``: memory stays bounded
whatever the output size, and outputs do not depend on the chunk (queries are independent).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cascade.progress import nested_bar

__all__ = ["DECODE_CHUNK", "decode_chunks", "lainr_resample", "lattice_coords"]

# Queries decoded at once. Each query's intermediates (its 9 tokens' keys and values, about
# 14 KB) are written and read back several times; a chunk of 4096 keeps them near the CPU's
# caches, where much larger chunks stream them through memory at a fraction of the speed
# (docs/lainr.md, scripts/bench_lainr.py). Outputs do not depend on it.
DECODE_CHUNK = 4096


def lattice_coords(count: tuple[int, int], virtual: tuple[float, float], device=None,
                   dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel centres and cells of the first ``count`` pixels of a grid of ``virtual`` pixels
    over the input's [-1, 1]^2 (``cascade.data.coords``; equal to ``make_coord`` /
    ``make_cell`` when count == virtual) -> coord, cell (count_h * count_w, 2) as (y, x)."""
    (ch, cw), (vh, vw) = count, virtual
    ys = -1 + (2 * torch.arange(ch, device=device, dtype=torch.float64) + 1) / vh
    xs = -1 + (2 * torch.arange(cw, device=device, dtype=torch.float64) + 1) / vw
    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2).to(dtype)
    cell = torch.tensor([2.0 / vh, 2.0 / vw], device=device, dtype=dtype).expand(ch * cw, 2)
    return coord, cell


def decode_chunks(model, latents, coord: Tensor, cell: Tensor, batch: int, size: tuple[int, int],
                  chunk: int = DECODE_CHUNK, progress: bool = False) -> Tensor:
    """Decode the queries ``coord``, ``cell`` (Q, 2), the same for each of the ``batch``
    images, ``chunk`` at a time -> (batch, 3, *size) with Q = size[0] * size[1].
    ``progress``: a bar, shown only when decoding takes more than a few seconds (delay)."""
    q = coord.shape[0]
    starts = range(0, q, chunk)
    if progress:
        starts = nested_bar(starts, desc="lainr", unit="chunk", delay=3, disable=q <= chunk)
    parts = [model.decode(latents, coord[i:i + chunk].expand(batch, -1, -1),
                          cell[i:i + chunk].expand(batch, -1, -1)) for i in starts]
    return torch.cat(parts, dim=1).transpose(1, 2).reshape(batch, 3, *size)


@torch.no_grad()
def lainr_resample(model, lr: Tensor, count: tuple[int, int], virtual: tuple[float, float],
                   chunk: int = DECODE_CHUNK, progress: bool = False) -> Tensor:
    """LAINR at the pixel centres of ``lattice_coords(count, virtual)``: (B, 3, *count).
    Encodes once and decodes ``chunk`` queries at a time (bounded memory)."""
    latents = model.encode(lr)
    coord, cell = lattice_coords(count, virtual, lr.device, lr.dtype)
    return decode_chunks(model, latents, coord, cell, lr.shape[0], count, chunk, progress)
