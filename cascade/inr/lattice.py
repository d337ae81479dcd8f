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

What remains per query is the attention over its window and the 64-wide hidden layers, and
those are computed in blocks: neighbouring queries share their window of tokens, so a block
of them (~16 x 16 at x4) attends to the same 9 tokens with dense matmuls, and no per-query
gather is left (``decode_lattice``; docs/lainr.md, "Speed"). The linear maps that follow
one another are folded into one. ``decode_lattice`` is held to the reference decoder by
``tests/test_inr.py`` (1e-5).

This module is also where LAINR is decoded on a lattice for the rest of the code:
``lainr_resample`` (the cascade's LAINR step and its LAINR conditioning, on the output's
lattice, ``lattice_axes``) and ``decode_chunks`` (the per-query reference path,
``LAINR.upscale_reference``, ``DECODE_CHUNK`` queries at a time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def _local_per_pixel(dec: LocalityAwareDecoder, padded: Tensor, rows: tuple[int, int],
                     cols: tuple[int, int]) -> Tensor:
    """The local path's pre-activation without the offset term, per LR pixel, for the LR
    rows ``rows[0]..rows[1]`` and columns ``cols[0]..cols[1]`` (inclusive) only.

    padded: the per-pixel features (B, C, h, w) padded by k // 2 on each side, replicating
    the borders -> (B, rows, cols, hidden). The path is ``W LayerNorm(x) + b`` over the
    k x k pixels' features x (k*k*C numbers). With LayerNorm's scale folded into W, that is
    ``rstd * (W' x - sum(W') mean) + b'``: ``W' x`` over every pixel's neighbourhood is a
    k x k convolution, and the neighbourhood's mean and mean square are average pools of
    the per-pixel channel means; nothing of size k*k*C per pixel is built."""
    k = dec.local_pixels
    C = padded.shape[1]
    (r0, r1), (c0, c1) = rows, cols
    band = padded[:, :, r0:r1 + k, c0:c1 + k]  # the k x k neighbourhoods of the rectangle
    lin, norm = dec.pixel_in[0], dec.pixel_norm
    w_vals, _ = _split_linear(lin.weight, [k * k * C, 2])  # columns: (pixel, channel)
    w = w_vals * norm.weight  # (hid, k*k*C)
    bias = lin.bias + w_vals @ norm.bias
    conv = w.unflatten(1, (k, k, C)).permute(0, 3, 1, 2)  # (hid, C, k, k)
    wx = F.conv2d(band, conv)  # (B, hid, rows, cols)
    mean = F.avg_pool2d(band.mean(1, keepdim=True), k, stride=1)  # (B, 1, rows, cols)
    var = F.avg_pool2d(band.square().mean(1, keepdim=True), k, stride=1) - mean.square()
    out = (wx - w.sum(1)[:, None, None] * mean) * (var.clamp_min(0) + norm.eps).rsqrt()
    return (out + bias[:, None, None]).permute(0, 2, 3, 1)


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


def _groups(start: Tensor, cap: int) -> tuple[Tensor, Tensor]:
    """Lattice rows (or columns) in groups that share one window of latent tokens.

    start (L,) the first token row (or column) of each position's window. Runs of equal
    ``start`` are split into groups of ``size`` positions or fewer: the longest interior
    run, at most ``cap`` (the border runs are longer when the window is shifted, not
    cropped, there; splitting them at ``size`` keeps the padding small). Returns pos
    (G, size), the positions of each group padded by repeating its last one, and valid
    (G, size).
    """
    counts = torch.unique_consecutive(start, return_counts=True)[1].tolist()
    inner = counts[1:-1] if len(counts) > 2 else counts
    size = max(1, min(max(inner), cap))
    pos, valid, first = [], [], 0
    for c in counts:
        for p0 in range(first, first + c, size):
            n = min(size, first + c - p0)
            pos.append(list(range(p0, p0 + n)) + [p0 + n - 1] * (size - n))
            valid.append([True] * n + [False] * (size - n))
        first += c
    return torch.tensor(pos, device=start.device), torch.tensor(valid, device=start.device)


def _block_diagonal(t: Tensor, heads: int) -> Tensor:
    """Keys (or values) of a window as one matrix, head by head on the diagonal:
    (..., K, D) -> (..., D, K * heads) with entry (h*dh + d, k*heads + h') = t[..., k, h*dh + d]
    if h == h' else 0, so that ``q @`` it gives every head's score for every key at once."""
    *lead, K, D = t.shape
    dh = D // heads
    eye = torch.eye(heads, dtype=t.dtype, device=t.device)
    bd = t.unflatten(-1, (heads, dh))[..., None] * eye[:, None, :]  # (..., K, H, dh, H')
    nl = len(lead)
    return bd.permute(*range(nl), nl + 3, nl + 2, nl, nl + 1).reshape(*lead, D, K * heads)


@dataclass
class LatticeTerms:
    """What every query of a lattice shares with its row or its column: the decoder with
    its linear maps split per axis and folded (module docstring), for ``ys`` (H,), ``xs``
    (W,). Both lattice decoders (the PyTorch one here, the fused one in
    :mod:`cascade.inr.native`) start from these."""

    Y: dict  # per-row window indices, masks, offsets (``_axis``)
    X: dict  # per-column
    q_y: Tensor  # (H, hid) the query input's row term
    q_x: Tensor  # (W, hid) ... column term, with the bias and the cell
    k_y: Tensor  # (H, n, hid) positional keys of each row's n token rows
    v_y: Tensor  # (H, n, hid) ... values
    k_x: Tensor  # (W, n, hid)
    v_x: Tensor  # (W, n, hid)
    b_y: Tensor  # (H, nb*hid) the bands' Fourier terms, per row
    b_x: Tensor  # (W, nb*hid) ... per column, with the bands' biases and W_m b_out
    w_q: Tensor  # (hid, hid) query projection, scaled by 1/sqrt(dh)
    b_q: Tensor  # (hid,)
    w_fold: Tensor  # (nb*hid, hid) every band's modulation after the attention's output
    w_rgb: Tensor  # (3, nb*hid) the summed RGB heads on [relu(P_1), ..., relu(P_nb)]
    b_rgb: Tensor  # (3,)
    local: tuple | None  # (padded features, py (H,), px (W,), o_y (H, hid), o_x (W, hid))


@torch.no_grad()
def lattice_terms(dec: LocalityAwareDecoder, latents: Latents, ys: Tensor, xs: Tensor,
                  cell: Tensor) -> LatticeTerms:
    """The per-row and per-column terms of the decoder on the lattice ys x xs."""
    h, w = latents.size
    half = ys.new_tensor([h / 2, w / 2])
    Y, X = _axis(dec, latents, ys, 0), _axis(dec, latents, xs, 1)
    # (the decoder's activations are ReLUs: LocalityAwareDecoder fixes them)
    hid = dec.to_query[0].out_features
    heads = dec.attn.heads
    nq = 2 * dec.gamma_q.freqs.numel()
    wy, wx = _split_linear(dec.pos_kv.weight, [nq, nq])
    k_y, v_y = (dec.gamma_q.per_axis(Y["off"]) @ wy.T).chunk(2, dim=-1)  # (H, n, hidden)
    k_x, v_x = (dec.gamma_q.per_axis(X["off"]) @ wx.T).chunk(2, dim=-1)  # (W, n, hidden)
    lq = dec.to_query[0]
    qy_w, qx_w, *qc_w = _split_linear(lq.weight, [nq, nq] + ([2] if dec.use_cell else []))
    q_y = dec.gamma_q.per_axis(Y["nearest"]) @ qy_w.T  # (H, hidden)
    q_x = dec.gamma_q.per_axis(X["nearest"]) @ qx_w.T + lq.bias  # (W, hidden)
    if dec.use_cell:
        q_x = q_x + (cell * half) @ qc_w[0].T
    # The bands' pre-activations, all at once: band b adds W_m,b to_out(o) = (W_m,b W_out) o
    # + W_m,b b_out (one folded matrix for all bands), its per-axis Fourier terms and the
    # local path. Its RGB head reads h_b = relu(P_1) + ... + relu(P_b), so the summed heads
    # are one matrix on [relu(P_1), ..., relu(P_nb)]: sum_{b >= j} W_out,b on relu(P_j).
    w_o, b_o = dec.attn.to_out.weight, dec.attn.to_out.bias
    w_fold = torch.cat([w_m.weight @ w_o for w_m in dec.band_mod])  # (nb*hid, hid)
    b_y, b_x = [], []
    for gamma, w_b, w_m in zip(dec.gamma_l, dec.band_in, dec.band_mod):
        nb = 2 * gamma.freqs.numel()
        by_w, bx_w = _split_linear(w_b.weight, [nb, nb])
        b_y.append(gamma.per_axis(Y["nearest"]) @ by_w.T)  # (H, hidden)
        b_x.append(gamma.per_axis(X["nearest"]) @ bx_w.T + w_b.bias + w_m.weight @ b_o)
    heads_w = [head.weight for head in dec.band_out]  # (3, hidden) each
    local = None
    if dec.pixel_in is not None:
        if latents.pixel_features is None:
            raise ValueError("this decoder needs per-pixel features: build the encoder "
                             "with stem_channels > 0")
        k = dec.local_pixels
        padded = F.pad(latents.pixel_features, (k // 2,) * 4, mode="replicate")
        py = Y["u"].floor().clamp(0, h - 1).long()  # (H,) the query's LR pixel row
        px = X["u"].floor().clamp(0, w - 1).long()
        _, wo = _split_linear(dec.pixel_in[0].weight, [dec.pixel_in[0].in_features - 2, 2])
        o_y = (Y["u"] - py - 0.5)[:, None] * wo[:, 0]  # (H, hidden)
        o_x = (X["u"] - px - 0.5)[:, None] * wo[:, 1]  # (W, hidden)
        local = (padded, py, px, o_y, o_x)
    return LatticeTerms(
        Y=Y, X=X, q_y=q_y, q_x=q_x, k_y=k_y, v_y=v_y, k_x=k_x, v_x=v_x,
        b_y=torch.cat(b_y, -1), b_x=torch.cat(b_x, -1),
        # the attention's 1/sqrt(dh) on the query projection: every score is q . key
        w_q=dec.attn.to_q.weight * (hid // heads) ** -0.5,
        b_q=dec.attn.to_q.bias * (hid // heads) ** -0.5,
        w_fold=w_fold, w_rgb=torch.cat([sum(heads_w[j:]) for j in range(len(heads_w))], 1),
        b_rgb=sum(head.bias for head in dec.band_out), local=local)


@torch.no_grad()
def decode_lattice(dec: LocalityAwareDecoder, latents: Latents, ys: Tensor, xs: Tensor,
                   cell: Tensor, chunk: int = DECODE_CHUNK, progress: bool = False,
                   native: bool | None = None) -> Tensor:
    """The decoder's residual RGB at every (ys[r], xs[c]): (B, H, W, 3).

    ys (H,), xs (W,) in [-1, 1]; cell (2,) the HR pixel size in the same units
    (as the reference decoder's ``cell``). Decodes about ``chunk`` queries per image at a
    time (bounded memory, ~2.5 KB each); ``progress`` shows a bar when that takes more than
    a few seconds.

    ``native``: the fused C decoder (:mod:`cascade.inr.native`; None: where it is built
    and applies, else this PyTorch one; True: that one or an error; False: this one).

    The lattice is cut into blocks of queries that share their n x n window of tokens
    (``_groups``): inside a block the attention is two dense matmuls against the window's
    keys and values, which are gathered once per block, not once per query.
    """
    terms = lattice_terms(dec, latents, ys, xs, cell)
    if native is not False:
        from cascade.inr.native import decode_native

        out = decode_native(dec, latents, terms, chunk, progress, required=bool(native))
        if out is not None:
            return out
    return _decode_blocks(dec, latents, terms, chunk, progress)


def _decode_blocks(dec: LocalityAwareDecoder, latents: Latents, t: LatticeTerms, chunk: int,
                   progress: bool) -> Tensor:
    """``decode_lattice`` in PyTorch: blocks of queries that share a window, dense matmuls."""
    tokens = latents.tokens  # (B, gh, gw, D)
    B = tokens.shape[0]
    Y, X = t.Y, t.X
    hid = dec.to_query[0].out_features
    heads, n = dec.attn.heads, dec.neighbourhood
    q_y, q_x, w_q, b_q = t.q_y, t.q_x, t.w_q, t.b_q
    k_tok, v_tok = dec.to_kv(tokens).chunk(2, dim=-1)  # (B, gh, gw, hidden) each
    k_y, v_y, k_x, v_x = t.k_y, t.v_y, t.k_x, t.v_x
    w_fold, b_y, b_x, w_rgb, b_rgb = t.w_fold, t.b_y, t.b_x, t.w_rgb, t.b_rgb
    n_bands = w_rgb.shape[1] // hid
    local = None
    if t.local is not None:
        local = (*t.local, dec.pixel_in[2].weight)

    # Blocks: row groups g x column groups x; r, c index rows/columns inside a group.
    # Three layouts of the queries, each making one term a batch of plain matmuls:
    #   image (g, r, x, c): the row terms (one key set per lattice row, over the row's
    #   queries); columns (x, c, g, r): the column terms; blocks (g, x, r, c): the tokens.
    # A block has at most sqrt(chunk) rows and columns; a step decodes about ``chunk``
    # queries: several row groups of every column, or one row group of some columns.
    side = max(1, math.isqrt(chunk))
    gy_pos, gy_ok = _groups(Y["idx"][:, 0], side)  # (Gy, Ly)
    gx_pos, gx_ok = _groups(X["idx"][:, 0], side)  # (Gx, Lx)
    (Gy, Ly), (Gx, Lx) = gy_pos.shape, gx_pos.shape
    per_row = max(1, chunk // (Ly * Gx * Lx))  # row groups per step
    per_col = Gx if per_row > 1 else max(1, chunk // (Ly * Lx))  # column groups per step
    kx_all = _block_diagonal(k_x[gx_pos], heads)  # (Gx, Lx, hid, n*H)
    vx_all = _block_diagonal(v_x[gx_pos], heads).transpose(-1, -2)  # (Gx, Lx, n*H, hid)
    steps = [(g0, x0) for g0 in range(0, Gy, per_row) for x0 in range(0, Gx, per_col)]

    rows_out, cols_out = [], []
    for g0, x0 in nested_bar(steps, desc="lainr", unit="blocks", delay=3,
                             disable=not progress or len(steps) < 2):
        pos, ok = gy_pos[g0:g0 + per_row], gy_ok[g0:g0 + per_row]  # (g, Ly)
        cpos, cok = gx_pos[x0:x0 + per_col], gx_ok[x0:x0 + per_col]  # (gx, Lx)
        g, gx = pos.shape[0], cpos.shape[0]
        iy = Y["idx"][pos[:, 0]]  # (g, n) the window's token rows
        ix = X["idx"][cpos[:, 0]]  # (gx, n) the window's token columns
        # 1. the query's input and projection (image layout)
        q = torch.relu_(q_y[pos][:, :, None, None] + q_x[cpos])  # (g, Ly, gx, Lx, hid)
        q = F.linear(q, w_q, b_q)  # scaled by 1/sqrt(dh) already
        q_blk = q.permute(0, 2, 1, 3, 4).reshape(g * gx, Ly * Lx, hid)
        q_col = q.permute(2, 3, 0, 1, 4).reshape(gx * Lx, g * Ly, hid)
        # 2. scores = q . (token + row + column term), per head, over the n x n window
        win = (slice(None), iy[:, None, :, None], ix[None, :, None, :])
        kt = _block_diagonal(k_tok[win].flatten(3, 4), heads)  # (B, g, gx, hid, n*n*H)
        s = (q_blk @ kt.flatten(1, 2)).view(B, g, gx, Ly, Lx, n, n, heads)
        ky_bd = _block_diagonal(k_y[pos], heads).flatten(0, 1)  # (g*Ly, hid, n*H)
        s_y = (q.view(g * Ly, gx * Lx, hid) @ ky_bd).view(g, Ly, gx, Lx, n, 1, heads)
        s_x = (q_col @ kx_all[x0:x0 + gx].flatten(0, 1)).view(gx, Lx, g, Ly, 1, n, heads)
        s += s_y.permute(0, 2, 1, 3, 4, 5, 6)
        s += s_x.permute(2, 0, 3, 1, 4, 5, 6)
        mask = Y["ok"][pos[:, 0]][:, None, :, None] & X["ok"][cpos[:, 0]][None, :, None, :]
        if not bool(mask.all()):  # only when the latent grid is smaller than the window
            s = s.masked_fill(~mask[:, :, None, None, :, :, None], float("-inf"))
        attn = s.flatten(5, 6).softmax(5)  # (B, g, gx, Ly, Lx, n*n, H)
        # 3. values: the tokens' through the block matrix; the row and column terms'
        #    through the attention's marginals over the window's columns and rows
        vt = _block_diagonal(v_tok[win].flatten(3, 4), heads).transpose(-1, -2)
        o = attn.reshape(B, g * gx, Ly * Lx, -1) @ vt.flatten(1, 2)  # (B, g*gx, Ly*Lx, hid)
        o = o.view(B, g, gx, Ly, Lx, hid)
        a = attn.unflatten(5, (n, n))  # (B, g, gx, Ly, Lx, n, n, H)
        vy_bd = _block_diagonal(v_y[pos], heads).flatten(0, 1).transpose(1, 2)  # (gLy, nH, hid)
        a_y = a.sum(6).permute(0, 1, 3, 2, 4, 5, 6).reshape(B, g * Ly, gx * Lx, n * heads)
        o += (a_y @ vy_bd).view(B, g, Ly, gx, Lx, hid).permute(0, 1, 3, 2, 4, 5)
        a_x = a.sum(5).permute(0, 2, 4, 1, 3, 5, 6).reshape(B, gx * Lx, g * Ly, n * heads)
        o += (a_x @ vx_all[x0:x0 + gx].flatten(0, 1)).view(B, gx, Lx, g, Ly, hid) \
            .permute(0, 3, 1, 4, 2, 5)
        # 4. bands (folded) plus the local pixel path, and the summed RGB heads (image layout)
        o = o.permute(0, 1, 3, 2, 4, 5).reshape(-1, hid)
        pre = (o @ w_fold.T).view(B, g, Ly, gx, Lx, n_bands, hid)
        pre += b_y[pos][:, :, None, None].unflatten(-1, (n_bands, hid))
        pre += b_x[cpos].unflatten(-1, (n_bands, hid))
        if local is not None:
            padded, py, px, o_y, o_x, w_p = local
            ry, rx = py[pos], px[cpos]  # the LR pixels of this step's queries
            r0, c0 = int(ry.min()), int(rx.min())
            per_pixel = _local_per_pixel(dec, padded, (r0, int(ry.max())), (c0, int(rx.max())))
            lp = per_pixel[:, (ry - r0)[:, :, None, None], rx - c0]  # (B, g, Ly, gx, Lx, hid)
            lp += o_y[pos][:, :, None, None]
            lp += o_x[cpos]
            pre += (torch.relu_(lp).view(-1, hid) @ w_p.T).view(B, g, Ly, gx, Lx, 1, hid)
        rgb = torch.addmm(b_rgb, torch.relu_(pre).view(-1, n_bands * hid), w_rgb.T)
        rgb = rgb.view(B, g * Ly, gx * Lx, 3)
        # drop the padding: the valid positions of the groups, in order, are the lattice's
        cols_out.append(rgb[:, ok.flatten()][:, :, cok.flatten()])
        if x0 + per_col >= Gx:  # the row step is complete
            rows_out.append(torch.cat(cols_out, dim=2))
            cols_out = []
    return torch.cat(rows_out, dim=1)  # (B, H, W, 3)

