"""Forward+backward time of the full selective scan on this CPU: one table.

Rows: the sequential reference, mambapy's Blelloch ``pscan`` and cascade's
``selective_scan``, at L = 256 and 1024 (B=4, D=256 inner channels, N=16, float32).
Every row computes the same thing (softplus(delta + bias), exp(delta A), delta B u, the
scan, C . h, + D u, * silu(z)) and is timed as one forward and one backward of a scalar.

    python scripts/bench_mamba.py
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from mambapy.pscan import pscan

import cascade.nn.scan as scan_mod
from cascade.nn.scan import selective_scan, selective_scan_ref

BATCH, DIM, N_STATE = 4, 256, 16
LENGTHS = (256, 1024)


def mambapy_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                           delta_softplus=False):
    """The selective scan with mambapy's pscan, in mamba-ssm's (B, D, L) layout."""
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    dT = delta.transpose(1, 2)  # (B, L, D)
    dA = torch.exp(dT[..., None] * A)  # (B, L, D, N)
    dBu = (dT * u.transpose(1, 2))[..., None] * B.transpose(1, 2)[:, :, None, :]  # (B, L, D, N)
    h = pscan(dA, dBu)  # (B, L, D, N)
    y = (h @ C.transpose(1, 2)[..., None]).squeeze(-1).transpose(1, 2)  # (B, D, L)
    if D is not None:
        y = y + u * D[:, None]
    if z is not None:
        y = y * F.silu(z)
    return y


def make_inputs(length: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(BATCH, DIM, length), (BATCH, DIM, length), None, (BATCH, N_STATE, length),
              (BATCH, N_STATE, length), (DIM,), (BATCH, DIM, length), (DIM,)]
    xs = [torch.randn(s, generator=g) if s else None for s in shapes]
    # S4D-real A (as Mamba initialises it) and a dt bias around softplus^-1(0.01)
    xs[2] = -torch.arange(1.0, N_STATE + 1).repeat(DIM, 1)
    xs[7] = xs[7] * 0.5 - 4.6
    return [x.requires_grad_() for x in xs]


def time_fwd_bwd(fn, xs: list[torch.Tensor], repeats: int) -> float:
    """Median seconds of forward+backward after one warm-up run."""
    u, delta, A, B, C, D, z, bias = xs
    times = []
    for i in range(repeats + 1):
        for x in xs:
            x.grad = None
        t0 = time.perf_counter()
        y = fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
        y.sum().backward()
        if i:  # the first run is the warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    methods = [("sequential ref", selective_scan_ref, {256: 3, 1024: 2}),
               ("mambapy pscan", mambapy_selective_scan, {256: 7, 1024: 5}),
               ("cascade parallel scan", selective_scan, {256: 7, 1024: 5})]
    width = BATCH * DIM * N_STATE
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"B={BATCH} D={DIM} N={N_STATE} float32 CPU, forward+backward, median")
    print("cascade schedule: time chunks of "
          f"{scan_mod._time_chunks(max(LENGTHS), width)[0][1]} steps, "
          + ("sequential stream inside a chunk" if width >= scan_mod._WIDE_STEP
             else "blocked scan inside a chunk")
          + f" (B*D*N = {width})")
    print(f"{'method':<24}{'L':>6}{'ms':>12}{'tokens/s':>14}")
    for length in LENGTHS:
        xs = make_inputs(length)
        for name, fn, repeats in methods:
            seconds = time_fwd_bwd(fn, xs, repeats[length])
            print(f"{name:<24}{length:>6}{seconds * 1e3:>12.1f}"
                  f"{BATCH * length / seconds:>14,.0f}", flush=True)


if __name__ == "__main__":
    main()
