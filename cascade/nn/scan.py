"""Selective scan (the S6 layer of Mamba) in pure PyTorch.

Recurrence (Gu & Dao 2023, zero-order hold with the Euler simplification for B):

    dA_t = exp(delta_t * A)                 # (D, N) per step
    h_t  = dA_t * h_{t-1} + delta_t * B_t * u_t
    y_t  = C_t . h_t + D * u_t,    y_t *= silu(z_t)

Layout follows ``mamba_ssm.ops.selective_scan_interface.selective_scan_ref``:
u, delta, z: (B, D, L); A: (D, N); B, C: (B, N, L); D, delta_bias: (D,).

``selective_scan_ref`` is the recurrence as a Python loop over L (the reference);
``selective_scan`` computes the same values with :func:`scan_` (a blocked parallel scan)
inside an autograd Function with a hand-written backward (see ``_SelectiveScan``).

Why this design (measured on a 2-core CPU, scripts/bench_mamba.py): the cost is memory
traffic, page faults on fresh (B, L, D, N) buffers and per-op dispatch, not arithmetic.
mambapy's Blelloch pscan materialises (B, L, D, N) tensors several times and walks them
with strided views. Here time is cut into chunks whose (Tc, B, D, N) scratch stays in
cache and is reused, nothing of size N*L is saved for backward (states are recomputed
per chunk), and each scan step is one fused ``addcmul_`` on a contiguous slice. When a
step is already wide (B*D*N >= 8192) the blocked scan uses a single block, i.e. a
sequential stream over L, which measured fastest there; narrower steps use ~sqrt(L)
blocks. Forward+backward is 3-9x faster than mambapy for B=2..8, D=128..256, N=16,
L=256..1024.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan", "selective_scan_ref", "scan_"]


def _check(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (B, D, L), got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (D, N) with D={d}, got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (b, n, length):
            raise ValueError(f"{name} must be (B, N, L) = {(b, n, length)}, got {tuple(t.shape)}")


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half inputs are scanned in float32 (as mamba-ssm does); float64 stays float64 so the
    # reference can serve as a high-precision check.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _prepare_delta(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool,
                   dtype: torch.dtype) -> Tensor:
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, dtype_in: torch.dtype,
            ) -> Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype_in)


def selective_scan_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                       D: Tensor | None = None, z: Tensor | None = None,
                       delta_bias: Tensor | None = None, delta_softplus: bool = False,
                       return_last_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Sequential selective scan, one step per position (slow; the reference).

    Returns y (B, D, L), and the final state h_L (B, D, N) if ``return_last_state``.
    """
    _check(u, delta, A, B, C)
    dtype_in, dtype = u.dtype, _compute_dtype(u)
    u = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    A, B, C = A.to(dtype), B.to(dtype), C.to(dtype)
    batch, dim, length = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])  # (B, D, N)
    ys = []
    for t in range(length):
        dA = torch.exp(delta[:, :, t, None] * A)  # (B, D, N)
        dBu = (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]  # (B, D, N)
        h = dA * h + dBu
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2) if ys else u.new_zeros(batch, dim, 0)  # (B, D, L)
    out = _finish(y, u, D, z, dtype_in)
    return (out, h) if return_last_state else out


# --------------------------------------------------------------------------------------
# Blocked parallel scan

# Below this many elements per time step (B*D*N), per-op dispatch (~2 us) costs more than
# the extra memory passes of the blocked scan, so scan_ parallelises over blocks of L.
# Measured forward+backward on the 2-core CPU this was written on: blocked wins 2x at
# 256 elements, the two tie at 4096-8192, the stream wins above.
_WIDE_STEP = 8192
# Elements in one time chunk of the fused selective scan: three scratch tensors of this
# size (dA, H, G) stay in the L3 cache and are reused from chunk to chunk.
_CHUNK_ELEMS = 1 << 20


def _chunk_len(length: int, width: int) -> int:
    """Rows per block for scan_: 1 block (a plain stream) when steps are wide, ~sqrt(L)."""
    if width >= _WIDE_STEP:
        return length
    return max(2, math.isqrt(length))


def scan_(a: Tensor, x: Tensor, reverse: bool = False, chunk: int | None = None) -> Tensor:
    """First-order linear recurrence along dim 0, in place on ``x``.

    Forward: ``x[t] <- a[t] * x[t-1] + x[t]``; reverse: ``x[t] <- a[t] * x[t+1] + x[t]``.
    a, x: (L, M), contiguous. ``chunk`` overrides the block length T. Returns ``x``.

    Blocked scan: the L rows are cut into K blocks of T rows; all blocks are scanned at
    once (T steps over (K, M) slices), the block carries are chained (K steps over (M,)
    rows), then each block adds its carry times the running product of ``a`` (itself a
    recurrence), so only products of ``a`` appear: no division, no exp. With K = 1 this
    is the plain sequential stream, which is fastest when M is already wide.
    """
    length = x.shape[0]
    T = chunk or _chunk_len(length, x[0].numel() if length else 0)
    K = length // T
    if K < 2 or T < 2:
        _stream_(a, x, reverse)
        return x
    n = K * T
    lo = length - n if reverse else 0  # blocks cover [lo, lo + n); the rest is a tail
    xs = x[lo:lo + n].view(K, T, -1).unbind(1)  # T views of (K, M)
    as_ = a[lo:lo + n].view(K, T, -1).unbind(1)
    order = range(T - 2, -1, -1) if reverse else range(1, T)
    step = 1 if reverse else -1
    # 1) local scans, all blocks at once
    for t in order:
        xs[t].addcmul_(as_[t], xs[t + step])
    # 2) carries: the state entering block k is the final state of the block before it
    first, last = (T - 1, 0) if reverse else (0, T - 1)
    prod = as_[first].clone()  # (K, M) product of a over each block
    for t in order:
        prod.mul_(as_[t])
    carry = torch.zeros_like(prod)  # (K, M)
    ks = range(K - 2, -1, -1) if reverse else range(1, K)
    for k in ks:
        torch.addcmul(xs[last][k + step], prod[k + step], carry[k + step], out=carry[k])
    # 3) push each carry through its block: e_t = a_t * e_{t-1}; x_t += e_t
    for t in (first, *order):
        carry.mul_(as_[t])
        xs[t].add_(carry)
    # 4) rows outside the blocks
    if reverse:
        _stream_(a[:lo + 1], x[:lo + 1], reverse=True)
    else:
        _stream_(a[n - 1:], x[n - 1:])
    return x


def _stream_(a: Tensor, x: Tensor, reverse: bool = False) -> None:
    """The recurrence one row at a time (in place)."""
    xs, as_ = x.unbind(0), a.unbind(0)
    if reverse:
        for t in range(len(xs) - 2, -1, -1):
            xs[t].addcmul_(as_[t], xs[t + 1])
    else:
        for t in range(1, len(xs)):
            xs[t].addcmul_(as_[t], xs[t - 1])


def _time_chunks(length: int, width: int) -> list[tuple[int, int]]:
    size = max(1, min(length, _CHUNK_ELEMS // max(width, 1)))
    return [(s, min(s + size, length)) for s in range(0, length, size)]


def _states(dT: Tensor, duT: Tensor, A: Tensor, BT: Tensor, h0: Tensor, bufA: Tensor,
            bufH: Tensor) -> tuple[Tensor, Tensor]:
    """dA and the states h of one time chunk, written into the scratch buffers.

    dT, duT: (n, B, D); BT: (n, B, N); h0: (B, D, N) state before the chunk.
    Returns dA = exp(delta A) and H, both (n, B, D, N).
    """
    n = dT.shape[0]
    dA = torch.mul(dT[..., None], A, out=bufA[:n]).exp_()
    H = torch.mul(duT[..., None], BT[:, :, None, :], out=bufH[:n])  # delta B u
    H[0].addcmul_(dA[0], h0)
    scan_(dA.view(n, -1), H.view(n, -1))
    return dA, H


class _SelectiveScan(torch.autograd.Function):
    """Core S6 map (u, delta, A, B, C) -> (y = C . h, h_L) with a hand-written backward.

    Internally everything is (L, B, D[, N]), L outermost, so a time step is one
    contiguous block. L is processed in chunks whose (Tc, B, D, N) scratch stays in
    cache; only the state entering each chunk is saved, and backward recomputes the
    chunk's states from it (as mamba-ssm's kernel does), so memory is O(B*D*L), not
    O(B*D*N*L).
    """

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor):
        uT = u.permute(2, 0, 1).contiguous()  # (L, B, D)
        dT = delta.permute(2, 0, 1).contiguous()  # (L, B, D)
        BT = B.permute(2, 0, 1).contiguous()  # (L, B, N)
        CT = C.permute(2, 0, 1).contiguous()  # (L, B, N)
        length, batch, dim = uT.shape
        n_state = A.shape[1]
        duT = dT * uT  # (L, B, D)
        chunks = _time_chunks(length, batch * dim * n_state)
        size = chunks[0][1] - chunks[0][0] if chunks else 0
        bufA = uT.new_empty(size, batch, dim, n_state)
        bufH = torch.empty_like(bufA)
        y = uT.new_empty(length, batch, dim)  # (L, B, D)
        h = uT.new_zeros(batch, dim, n_state)  # (B, D, N)
        starts = uT.new_empty(len(chunks), batch, dim, n_state)  # state entering each chunk
        for c, (s, e) in enumerate(chunks):
            starts[c] = h
            dA, H = _states(dT[s:e], duT[s:e], A, BT[s:e], h, bufA, bufH)
            # y_t = C_t . h_t as (1, N) @ (N, D) per (t, b)
            torch.bmm(CT[s:e].view(-1, 1, n_state), H.view(-1, dim, n_state).transpose(1, 2),
                      out=y[s:e].view(-1, 1, dim))
            h = H[-1].clone()
        ctx.save_for_backward(uT, dT, duT, A, BT, CT, starts)
        ctx.chunks = chunks
        ctx.set_materialize_grads(False)
        return y.permute(1, 2, 0), h  # (B, D, L), (B, D, N)

    @staticmethod
    def backward(ctx, gy: Tensor | None, g_last: Tensor | None):
        uT, dT, duT, A, BT, CT, starts = ctx.saved_tensors
        length, batch, dim = dT.shape
        n_state = A.shape[1]
        gyT = (dT.new_zeros(length, batch, dim) if gy is None
               else gy.permute(2, 0, 1).contiguous())  # (L, B, D)
        g_du = torch.empty_like(dT)  # dL/d(delta*u), (L, B, D)
        g_dA = torch.empty_like(dT)  # dL/d(delta) through dA, (L, B, D)
        gB = torch.empty_like(BT)  # (L, B, N)
        gC = torch.empty_like(CT)  # (L, B, N)
        gA = torch.zeros_like(A)  # (D, N)
        size = ctx.chunks[0][1] - ctx.chunks[0][0] if ctx.chunks else 0
        bufA = dT.new_empty(size, batch, dim, n_state)
        bufH, bufG = torch.empty_like(bufA), torch.empty_like(bufA)
        # dL/dh at the end of the current chunk coming from later steps: g_last + dA G
        g_next = g_last
        for c in range(len(ctx.chunks) - 1, -1, -1):
            s, e = ctx.chunks[c]
            n = e - s
            h0 = starts[c]
            dA, H = _states(dT[s:e], duT[s:e], A, BT[s:e], h0, bufA, bufH)
            Hf = H.view(-1, dim, n_state)  # (n*B, D, N)
            torch.bmm(gyT[s:e].view(-1, 1, dim), Hf, out=gC[s:e].view(-1, 1, n_state))
            # G_t = dL/dh_t = gy_t C_t + dA_{t+1} G_{t+1}: a reverse scan, a shifted by one
            G = torch.mul(gyT[s:e, :, :, None], CT[s:e, :, None, :], out=bufG[:n])
            if g_next is not None:
                G[-1].add_(g_next)
            if n > 1:
                # fold the last step in by hand so the scan runs on aligned views of dA[1:]
                G[-2].addcmul_(dA[-1], G[-1])
                scan_(dA[1:].view(n - 1, -1), G[:-1].view(n - 1, -1), reverse=True)
            g_next = dA[0] * G[0]
            Gf = G.view(-1, dim, n_state)  # (n*B, D, N)
            torch.bmm(Gf, BT[s:e].view(-1, n_state, 1), out=g_du[s:e].view(-1, dim, 1))
            torch.bmm(duT[s:e].view(-1, 1, dim), Gf, out=gB[s:e].view(-1, 1, n_state))
            # dL/d(delta A)_t = G_t * h_{t-1} * dA_t, with h_{s-1} = h0
            G[1:].mul_(H[:-1])
            G[0].mul_(h0)
            G.mul_(dA)
            torch.sum(G * A, dim=-1, out=g_dA[s:e])
            gA += G.mul_(dT[s:e, :, :, None]).view(-1, dim, n_state).sum(0)
        gu = g_du * dT
        gdelta = g_du.mul_(uT).add_(g_dA)
        return (gu.permute(1, 2, 0), gdelta.permute(1, 2, 0), gA,
                gB.permute(1, 2, 0), gC.permute(1, 2, 0))


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
                   D: Tensor | None = None, z: Tensor | None = None,
                   delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Parallel selective scan; same signature and values as :func:`selective_scan_ref`."""
    _check(u, delta, A, B, C)
    dtype_in, dtype = u.dtype, _compute_dtype(u)
    u = u.to(dtype)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    y, last = _SelectiveScan.apply(u, delta, A.to(dtype), B.to(dtype), C.to(dtype))
    out = _finish(y, u, D, z, dtype_in)
    return (out, last) if return_last_state else out
