"""Pixel-centre coordinates, the one convention used by the INR everywhere.

An image of size (H, W) covers the square [-1, 1]^2 (``align_corners=False`` in
``torch.nn.functional.grid_sample`` terms). Pixel (i, j) has its centre at
``(y, x) = (-1 + (2i + 1) / H, -1 + (2j + 1) / W)``; a pixel is ``(2/H, 2/W)`` wide (its
"cell"). Coordinates are stored as (y, x) in the last dimension.
"""

from __future__ import annotations

import torch


def make_coord(size: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates of an (H, W) grid -> (H*W, 2) as (y, x), row-major."""
    H, W = size
    ys = -1 + (2 * torch.arange(H, device=device, dtype=dtype) + 1) / H  # (H,)
    xs = -1 + (2 * torch.arange(W, device=device, dtype=dtype) + 1) / W  # (W,)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # (H, W, 2)
    return grid.reshape(H * W, 2)


def make_cell(size: tuple[int, int], n: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """The cell (pixel extent) of an (H, W) grid, repeated for ``n`` queries -> (n, 2)."""
    H, W = size
    return torch.tensor([2.0 / H, 2.0 / W], device=device, dtype=dtype).expand(n, 2).clone()
