"""The LAINR decoder on a lattice of queries: the same function as
:class:`~cascade.inr.decoder.LocalityAwareDecoder`, computed row by row and column by column.

When the queries form a lattice (rows at ``ys``, columns at ``xs``, one cell for all: every
upscale, and every conditioning of a diffusion stage), almost everything the decoder
computes per query is a sum of a per-row and a per-column term, because

* the window of latent tokens of query (r, c) is (rows ``iy[r]``) x (columns ``ix[c]``), and
  the token centres form a grid, so the query-token offset is ``(dy[r, a], dx[c, b])``;
* the Fourier features are per axis (``gamma(d) = [gamma(dy), gamma(dx)]``), so any linear
  map of them splits: ``W gamma(d) = W_y gamma(dy) + W_x gamma(dx)``; this removes the
  per-(query, token) positional projection, the query projection's and every band's input
  projection;
* the nearest token's offset (squared distance ``dy^2 + dx^2``, a separable mask) is the
  nearest row's and the nearest column's (ties go to the first index either way);
* the local pixel path reads the k x k LR pixels around the query's LR pixel: the gathered
  features, their LayerNorm and their projection depend only on that LR pixel, so they are
  computed once per LR pixel instead of once per query, and the query's offset inside the
  pixel adds a per-row and a per-column term.

What remains per query: the gather of 9 projected tokens, the attention over them, and the
64-wide hidden layers. ``decode_lattice`` is held to the reference decoder by
``tests/test_inr.py`` (1e-5).

This module is also where LAINR is decoded on a lattice for the rest of the code:
``lainr_resample`` (the cascade's LAINR step and its LAINR conditioning, on the output's
lattice, ``lattice_axes``) and ``decode_chunks`` (the per-query reference path,
``LAINR.upscale_reference``, ``DECODE_CHUNK`` queries at a time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.inr.decoder import PIXELS_PER_UNIT, LocalityAwareDecoder, window_indices
from cascade.inr.encoder import Latents
from cascade.progress import nested_bar

__all__ = ["DECODE_CHUNK", "decode_chunks", "decode_lattice", "lainr_resample", "lattice_axes",
           "lattice_coords"]

# Queries decoded at once. Each query's intermediates (its 9 tokens' keys and values) are
# written and read back several times; blocks of a few thousand queries keep them near the
# CPU's caches (docs/lainr.md, "Speed"). Outputs do not depend on it: queries are independent.
DECODE_CHUNK = 4096


def _split_linear(weight: Tensor, dims: list[int]) -> list[Tensor]:
    """Column blocks of a linear layer's weight (out, sum(dims))."""
    return list(weight.split(dims, dim=1))


def _axis(dec: LocalityAwareDecoder, latents: Latents, pos: Tensor, axis: int) -> dict:
    """Everything one axis contributes, for lattice positions ``pos`` (L,) in [-1, 1]."""
    half = latents.size[axis] / 2
    grid = latents.tokens.shape[1 + axis]
    u = (pos + 1) * half  # (L,) in LR pixels
    n = dec.neighbourhood
    idx, ok = window_indices(u, latents.pixels, grid, n)  # (L, n)
    centres = latents.centres[:, 0, 0] if axis == 0 else latents.centres[0, :, 1]  # (grid,)
    off = (pos[:, None] - centres[idx]) * half / PIXELS_PER_UNIT  # (L, n)
    dist = off.square().masked_fill(~ok, float("inf"))
    nearest = off.gather(1, dist.argmin(1, keepdim=True))[:, 0]  # (L,)
    return {"u": u, "idx": idx, "ok": ok, "off": off, "nearest": nearest}


def _local_per_pixel(dec: LocalityAwareDecoder, feats: Tensor) -> Tensor:
    """The local path's pre-activation without the offset term, per LR pixel:
    (B, C, h, w) -> (B, h, w, hidden)."""
    k = dec.local_pixels
    B, C, h, w = feats.shape
    padded = F.pad(feats, (k // 2,) * 4, mode="replicate")  # borders replicate
    patches = F.unfold(padded, k)  # (B, C*k*k, h*w), channel-major
    # gather_local orders the values pixel-major: (k*k pixels) x C
    vals = patches.view(B, C, k * k, h * w).permute(0, 3, 2, 1).reshape(B, h, w, k * k * C)
    lin = dec.pixel_in[0]
    w_vals, _ = _split_linear(lin.weight, [k * k * C, 2])
    return F.linear(dec.pixel_norm(vals), w_vals, lin.bias)


def lattice_axes(count: tuple[int, int], virtual: tuple[float, float], device=None,
                 dtype=torch.float32) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel centres of the first ``count`` rows and columns of a grid of ``virtual`` pixels
    over the input's [-1, 1]^2 (``cascade.data.coords``), and its cell -> ys (ch,), xs (cw,),
    cell (2,). With count == virtual: the pixel centres of an image of that size."""
    (ch, cw), (vh, vw) = count, virtual
    ys = -1 + (2 * torch.arange(ch, device=device, dtype=torch.float64) + 1) / vh
    xs = -1 + (2 * torch.arange(cw, device=device, dtype=torch.float64) + 1) / vw
    cell = torch.tensor([2.0 / vh, 2.0 / vw], device=device, dtype=dtype)
    return ys.to(dtype), xs.to(dtype), cell


def lattice_coords(count: tuple[int, int], virtual: tuple[float, float], device=None,
                   dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """``lattice_axes`` as one query per pixel (the per-query decoder's input): coord, cell
    (count_h * count_w, 2) as (y, x); equal to ``make_coord`` / ``make_cell`` when
    count == virtual."""
    ys, xs, cell = lattice_axes(count, virtual, device, dtype)
    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    return coord, cell.expand(coord.shape[0], 2)


def decode_chunks(model, latents: Latents, coord: Tensor, cell: Tensor, batch: int,
                  size: tuple[int, int], chunk: int = DECODE_CHUNK) -> Tensor:
    """The per-query decoder (``model.decode``) at ``coord``, ``cell`` (Q, 2), the same for
    each of the ``batch`` images, ``chunk`` queries at a time -> (batch, 3, *size) with
    Q = size[0] * size[1]."""
    parts = [model.decode(latents, coord[i:i + chunk].expand(batch, -1, -1),
                          cell[i:i + chunk].expand(batch, -1, -1))
             for i in range(0, coord.shape[0], chunk)]
    return torch.cat(parts, dim=1).transpose(1, 2).reshape(batch, 3, *size)


@torch.no_grad()
def lainr_resample(model, lr: Tensor, count: tuple[int, int], virtual: tuple[float, float],
                   chunk: int = DECODE_CHUNK, progress: bool = False) -> Tensor:
    """LAINR (a ``cascade.inr.model.LAINR``) at the pixel centres of the first ``count``
    pixels of a grid of ``virtual`` pixels over ``lr`` (``lattice_axes``): (B, 3, *count).
    Encodes once and decodes about ``chunk`` queries at a time (bounded memory) with the
    lattice decoder (``LAINR.decode_grid``)."""
    ys, xs, cell = lattice_axes(count, virtual, lr.device, lr.dtype)
    return model.decode_grid(model.encode(lr), ys, xs, cell, chunk, progress)


def _window_attention(att, q: Tensor, k_tok: Tensor, v_tok: Tensor, iy: Tensor, ix: Tensor,
                      k_y: Tensor, k_x: Tensor, v_y: Tensor, v_x: Tensor, mask: Tensor) -> Tensor:
    """``LocalCrossAttention`` of every lattice query over its n x n window of tokens, with
    keys ``k_tok[iy[r, a], ix[c, b]] + k_y[r, a] + k_x[c, b]`` (values alike).

    q (R, W, D) projected queries; k_tok, v_tok (B, gh, gw, D); iy (R, n), ix (W, n);
    k_y, v_y (R, n, D); k_x, v_x (W, n, D); mask (R, W, n, n). Returns (B, R, W, D_out).
    The row and column terms enter through (query . k_y) and the attention's marginals,
    so only the token terms are gathered per query.
    """
    heads = att.heads
    dh = q.shape[-1] // heads

    def split(t: Tensor) -> Tensor:  # (..., D) -> (..., H, dh)
        return t.unflatten(-1, (heads, dh))

    qh = split(q)  # (R, W, H, dh)
    kt = split(k_tok[:, iy[:, None, :, None], ix[None, :, None, :]])  # (B, R, W, n, n, H, dh)
    scores = (qh[:, :, None, None] * kt).sum(-1)  # (B, R, W, n, n, H)
    scores = scores + torch.einsum("rwhd,rahd->rwah", qh, split(k_y))[:, :, :, None]
    scores = scores + torch.einsum("rwhd,wbhd->rwbh", qh, split(k_x))[:, :, None]
    scores = (scores * dh ** -0.5).masked_fill(~mask[..., None], float("-inf"))
    n = scores.shape[3]
    attn = scores.flatten(3, 4).softmax(dim=3).unflatten(3, (n, n))  # (B, R, W, n, n, H)
    vt = split(v_tok[:, iy[:, None, :, None], ix[None, :, None, :]])
    out = (attn[..., None] * vt).sum((3, 4))  # (B, R, W, H, dh)
    out = out + torch.einsum("zrwah,rahd->zrwhd", attn.sum(4), split(v_y))
    out = out + torch.einsum("zrwbh,wbhd->zrwhd", attn.sum(3), split(v_x))
    return att.to_out(out.flatten(-2))


@torch.no_grad()
def decode_lattice(dec: LocalityAwareDecoder, latents: Latents, ys: Tensor, xs: Tensor,
                   cell: Tensor, rows: int = 64, progress: bool = False) -> Tensor:
    """The decoder's residual RGB at every (ys[r], xs[c]): (B, H, W, 3).

    ys (H,), xs (W,) in [-1, 1]; cell (2,) the HR pixel size in the same units (as the
    reference decoder's ``cell``). Decodes ``rows`` lattice rows at a time (bounded memory);
    ``progress`` shows a bar when that takes more than a few seconds.
    """
    tokens = latents.tokens  # (B, gh, gw, D)
    B, gh, gw, _ = tokens.shape
    h, w = latents.size
    half = ys.new_tensor([h / 2, w / 2])
    Y, X = _axis(dec, latents, ys, 0), _axis(dec, latents, xs, 1)
    hid = dec.to_query[0].out_features
    nq = 2 * dec.gamma_q.freqs.numel()

    # per-axis pieces of every linear map of Fourier features
    k_tok, v_tok = dec.to_kv(tokens).chunk(2, dim=-1)  # (B, gh, gw, hidden) each
    wy, wx = _split_linear(dec.pos_kv.weight, [nq, nq])
    k_y, v_y = (dec.gamma_q.per_axis(Y["off"]) @ wy.T).chunk(2, dim=-1)  # (H, n, hidden)
    k_x, v_x = (dec.gamma_q.per_axis(X["off"]) @ wx.T).chunk(2, dim=-1)  # (W, n, hidden)
    lq = dec.to_query[0]
    qy_w, qx_w, *qc_w = _split_linear(lq.weight, [nq, nq] + ([2] if dec.use_cell else []))
    q_y = dec.gamma_q.per_axis(Y["nearest"]) @ qy_w.T  # (H, hidden)
    q_x = dec.gamma_q.per_axis(X["nearest"]) @ qx_w.T + lq.bias  # (W, hidden)
    if dec.use_cell:
        q_x = q_x + (cell * half) @ qc_w[0].T
    bands = []
    for gamma, w_b in zip(dec.gamma_l, dec.band_in):
        nb = 2 * gamma.freqs.numel()
        by_w, bx_w = _split_linear(w_b.weight, [nb, nb])
        bands.append((gamma.per_axis(Y["nearest"]) @ by_w.T,  # (H, hidden)
                      gamma.per_axis(X["nearest"]) @ bx_w.T + w_b.bias))  # (W, hidden)
    local = None
    if dec.pixel_in is not None:
        if latents.pixel_features is None:
            raise ValueError("this decoder needs per-pixel features: build the encoder "
                             "with stem_channels > 0")
        per_pixel = _local_per_pixel(dec, latents.pixel_features)  # (B, h, w, hidden)
        py = Y["u"].floor().clamp(0, h - 1).long()  # (H,) the query's LR pixel row
        px = X["u"].floor().clamp(0, w - 1).long()
        _, wo = _split_linear(dec.pixel_in[0].weight, [dec.pixel_in[0].in_features - 2, 2])
        o_y = (Y["u"] - py - 0.5)[:, None] * wo[:, 0]  # (H, hidden)
        o_x = (X["u"] - px - 0.5)[:, None] * wo[:, 1]  # (W, hidden)
        local = (per_pixel, py, px, o_y, o_x)

    out = []
    starts = range(0, ys.shape[0], rows)
    for r0 in nested_bar(starts, desc="lainr", unit="rows", delay=3,
                         disable=not progress or len(starts) < 2):
        sl = slice(r0, min(r0 + rows, ys.shape[0]))
        # 1.-2. attention over the n x n window, keys and values = token + row + column
        # terms, the latter two applied after the products (no (n x n)-wide sums built)
        q = dec.act(q_y[sl][:, None] + q_x[None])  # (R, W, hidden) the query's input
        mask = Y["ok"][sl][:, None, :, None] & X["ok"][None, :, None, :]  # (R, W, n, n)
        m = _window_attention(dec.attn, dec.attn.to_q(q), k_tok, v_tok, Y["idx"][sl], X["idx"],
                              k_y[sl], k_x, v_y[sl], v_x, mask)  # (B, R, W, hidden)
        # 3. bands, chained with residuals, plus the local pixel path
        loc: Tensor | float = 0.0
        if local is not None:
            per_pixel, py, px, o_y, o_x = local
            pre = per_pixel[:, py[sl][:, None], px[None, :]]  # (B, R, W, hidden)
            pre = pre + o_y[sl][:, None] + o_x[None]
            loc = dec.pixel_in[2](dec.pixel_in[1](pre))
        rgb = 0.0
        h_prev: Tensor | None = None
        for (b_y, b_x), w_m, head in zip(bands, dec.band_mod, dec.band_out):
            h_b = dec.act(b_y[sl][:, None] + b_x[None] + w_m(m) + loc)
            if h_prev is not None:
                h_b = h_b + h_prev
            rgb = rgb + head(h_b)
            h_prev = h_b
        out.append(rgb)
    return torch.cat(out, dim=1)  # (B, H, W, 3)
