"""The locality-aware LAINR decoder: colour at any coordinate from nearby latent tokens.

For each query coordinate x (docs/lainr.md; Lee et al. 2023, "Locality-Aware
Generalizable Implicit Neural Representation"):

1. gather the ``n x n`` latent tokens nearest to x (a window of the latent grid);
2. cross-attention from the query to those tokens gives a modulation vector ``m``; the
   keys and values carry Fourier features ``gamma_{sigma_q}`` of the query position
   *relative* to each token, so the attention selects tokens by content and by offset;
3. multi-band modulation over ``sigma_l``, chained in the given order with residuals:
   ``h_b = relu(W_b gamma_{sigma_b}(d) + W_m,b m) + h_{b-1}``; each band emits RGB via a
   zero-initialised head and the RGB outputs are summed.

The result is a residual; :class:`cascade.inr.model.LAINR` adds the bicubic base.

Units. Offsets are measured in LR pixels and divided by :data:`PIXELS_PER_UNIT` (16) before
the Fourier features, so nothing depends on the image size, and a frequency ``w`` has a
period of ``32 / w`` LR pixels: ``sigma_q = 16`` reaches the LR Nyquist period (2 px),
``sigma_l = 32`` the x2 HR Nyquist (1 px), ``128`` the x8 HR Nyquist (0.25 px); the lowest
frequency (1) has a 32 px period, longer than any window, so offsets are never ambiguous.
The 16 is the half-width of the 32x32 images these sigmas were first tuned on.
Cells (``cell``, the HR pixel size) are converted to LR pixels too: ``1/scale`` per axis.

Cost. Each query reads ``n * n`` tokens whatever the image size: the per-query cost and
memory do not grow with the image, and queries are independent (decode in any chunks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cascade.inr.encoder import Latents
from cascade.nn.attention import LocalCrossAttention
from cascade.nn.fourier import FourierFeatures

__all__ = ["PIXELS_PER_UNIT", "LocalityAwareDecoder", "gather_local", "window_indices"]

PIXELS_PER_UNIT = 16.0


def window_indices(u: Tensor, pixels: int, grid: int, n: int) -> tuple[Tensor, Tensor]:
    """Indices of the ``n`` latent rows (or columns) nearest to positions ``u`` on one axis.

    u: (...,) positions in LR pixels (0 = image edge, pixel centres at k + 0.5); latent
    ``i`` is centred at ``(i + 0.5) * pixels``. The window is shifted, not cropped, at the
    borders so it always holds ``min(n, grid)`` distinct tokens. Returns indices (..., n)
    clamped into the grid, and a mask (..., n) that is False for repeats when grid < n.
    """
    start = torch.floor(u / pixels - n / 2 + 0.5).long()  # first of the n nearest centres
    start = start.clamp(min=0, max=max(grid - n, 0))
    idx = start.unsqueeze(-1) + torch.arange(n, device=u.device)  # (..., n)
    return idx.clamp(max=grid - 1), idx < grid


def gather_local(x: Tensor, u: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-pixel features of the k x k LR pixels around each query's pixel.

    x: (B, C, h, w) features on the LR pixel grid; u: (B, Q, 2) query positions in LR
    pixels from the top-left corner (pixel centres at i + 0.5). Borders replicate.
    Returns (values (B, Q, C*k*k), offset (B, Q, 2)): the offset of the query from its
    pixel's centre in LR pixels, in [-0.5, 0.5]. This is LIIF's feature unfolding: it tells
    the decoder exactly where the query sits among the pixels, which the latent tokens (one
    per ``pixels`` x ``pixels`` block) locate only coarsely.
    """
    B, C, h, w = x.shape
    iy = u[..., 0].floor().clamp(0, h - 1).long()  # (B, Q)
    ix = u[..., 1].floor().clamp(0, w - 1).long()
    r = torch.arange(k, device=u.device) - k // 2  # (k,)
    yy = (iy.unsqueeze(-1) + r).clamp(0, h - 1)  # (B, Q, k)
    xx = (ix.unsqueeze(-1) + r).clamp(0, w - 1)
    flat = (yy.unsqueeze(-1) * w + xx.unsqueeze(-2)).flatten(-2)  # (B, Q, k*k)
    pix = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
    batch = torch.arange(B, device=u.device)[:, None, None]
    vals = pix[batch, flat].flatten(-2)  # (B, Q, k*k*C)
    offset = u - torch.stack([iy, ix], dim=-1).to(u.dtype) - 0.5  # (B, Q, 2)
    return vals, offset


class LocalityAwareDecoder(nn.Module):
    """Residual RGB at query coordinates from a latent grid: (B, Q, 2) -> (B, Q, 3)."""

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        heads: int = 4,
        sigma_q: float = 16.0,
        n_freq_q: int = 8,
        sigma_l: Sequence[float] = (128.0, 32.0),
        n_freq_l: int = 16,
        neighbourhood: int = 3,
        use_cell: bool = True,
        local_pixels: int = 3,
        pixel_dim: int = 0,
        head_init_std: float = 0.0,
    ) -> None:
        super().__init__()
        if neighbourhood < 1:
            raise ValueError(f"neighbourhood must be >= 1, got {neighbourhood}")
        if not sigma_l:
            raise ValueError("sigma_l needs at least one band")
        self.neighbourhood = neighbourhood
        self.use_cell = use_cell
        self.gamma_q = FourierFeatures(2, n_freq_q, sigma_q)
        # Linear maps commute with gathering: project the token grid once, then gather.
        self.to_kv = nn.Linear(dim, 2 * hidden)  # token content -> (K, V)
        self.pos_kv = nn.Linear(self.gamma_q.out_dim, 2 * hidden, bias=False)  # offset -> (K, V)
        q_in = self.gamma_q.out_dim + (2 if use_cell else 0)
        self.to_query = nn.Sequential(nn.Linear(q_in, hidden), nn.ReLU())
        self.attn = LocalCrossAttention(hidden, hidden, hidden, heads)
        self.gamma_l = nn.ModuleList(FourierFeatures(2, n_freq_l, s) for s in sigma_l)
        self.band_in = nn.ModuleList(nn.Linear(g.out_dim, hidden) for g in self.gamma_l)
        self.band_mod = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in sigma_l)
        self.band_out = nn.ModuleList(nn.Linear(hidden, 3) for _ in sigma_l)
        # Local pixel path: the encoder's per-pixel features of the k x k LR pixels around
        # the query's pixel and the query's offset inside that pixel, into every band.
        self.local_pixels = local_pixels
        self.pixel_in = self.pixel_norm = None
        if local_pixels and pixel_dim:
            # Normalised: at initialisation the stem's outputs are ~10x smaller than the
            # Fourier and attention terms they are summed with, and were drowned by them.
            self.pixel_norm = nn.LayerNorm(pixel_dim * local_pixels**2)
            self.pixel_in = nn.Sequential(nn.Linear(pixel_dim * local_pixels**2 + 2, hidden),
                                          nn.ReLU(), nn.Linear(hidden, hidden, bias=False))
        for head in self.band_out:  # an untrained decoder adds (almost) nothing to the base
            nn.init.normal_(head.weight, std=head_init_std) if head_init_std \
                else nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.act = nn.ReLU()

    def forward(self, latents: Latents, coord: Tensor, cell: Tensor | None = None) -> Tensor:
        """coord: (B, Q, 2) (y, x) in [-1, 1]; cell: (B, Q, 2) HR pixel size in the same
        units (required if ``use_cell``). Returns the residual RGB (B, Q, 3)."""
        tokens = latents.tokens  # (B, gh, gw, D)
        B, gh, gw, _ = tokens.shape
        if coord.dim() != 3 or coord.shape[0] != B or coord.shape[-1] != 2:
            raise ValueError(f"coord must be (B={B}, Q, 2), got {tuple(coord.shape)}")
        if self.use_cell and (cell is None or cell.shape != coord.shape):
            got = None if cell is None else tuple(cell.shape)
            raise ValueError(
                f"this decoder uses cells: pass cell of shape {tuple(coord.shape)}, got {got}"
            )
        h, w = latents.size
        half = coord.new_tensor([h / 2, w / 2])  # normalised units -> LR pixels

        # 1. the n x n window of latent tokens around each query
        u = (coord + 1) * half  # (B, Q, 2) in LR pixels from the top-left corner
        n = self.neighbourhood
        iy, my = window_indices(u[..., 0], latents.pixels, gh, n)  # (B, Q, n)
        ix, mx = window_indices(u[..., 1], latents.pixels, gw, n)
        flat = (iy.unsqueeze(-1) * gw + ix.unsqueeze(-2)).flatten(-2)  # (B, Q, K), K = n*n
        mask = (my.unsqueeze(-1) & mx.unsqueeze(-2)).flatten(-2)  # (B, Q, K)
        batch = torch.arange(B, device=coord.device)[:, None, None]
        kv = self.to_kv(tokens.reshape(B, gh * gw, -1))[batch, flat]  # (B, Q, K, 2*hidden)
        centres = latents.centres.reshape(gh * gw, 2)[flat]  # (B, Q, K, 2)
        offset = (coord.unsqueeze(-2) - centres) * half / PIXELS_PER_UNIT  # (B, Q, K, 2)

        # 2. cross-attention with relative positions in keys and values -> modulation m
        kv = kv + self.pos_kv(self.gamma_q(offset))
        k, v = kv.chunk(2, dim=-1)  # (B, Q, K, hidden) each
        dist = offset.square().sum(-1).masked_fill(~mask, float("inf"))  # (B, Q, K)
        nearest = dist.argmin(-1, keepdim=True).unsqueeze(-1).expand(-1, -1, 1, 2)
        d = offset.gather(-2, nearest).squeeze(-2)  # (B, Q, 2) offset to the nearest token
        q_in = self.gamma_q(d)
        if self.use_cell:
            q_in = torch.cat([q_in, cell * half], dim=-1)  # cell in LR pixels (1/scale)
        m = self.attn(self.to_query(q_in), k, v, mask)  # (B, Q, hidden)

        # 3. multi-band modulation, chained with residuals; each band adds its RGB
        rgb = coord.new_zeros(B, coord.shape[1], 3)
        h_prev: Tensor | None = None
        local: Tensor | float = 0.0
        if self.pixel_in is not None:
            if latents.pixel_features is None:
                raise ValueError("this decoder needs per-pixel features: build the encoder "
                                 "with stem_channels > 0")
            vals, off = gather_local(latents.pixel_features, u, self.local_pixels)
            local = self.pixel_in(torch.cat([self.pixel_norm(vals), off], dim=-1))  # (B, Q, hidden)
        for gamma, w_b, w_m, out in zip(self.gamma_l, self.band_in, self.band_mod, self.band_out):
            h_b = self.act(w_b(gamma(d)) + w_m(m) + local)  # (B, Q, hidden)
            if h_prev is not None:
                h_b = h_b + h_prev
            rgb = rgb + out(h_b)
            h_prev = h_b
        return rgb
