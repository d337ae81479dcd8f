"""Timing helper shared by the ``scripts/bench_*.py`` benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int = 3) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of ``fn()`` as ``torch.utils.flop_counter`` counts them (matmuls, convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def matmul_peak(repeats: int = 3) -> float:
    """float32 GFLOP/s of one 2048^3 matmul on this machine, now: the peak the benchmarks
    compare against, measured in the same run."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / median_time(lambda: a @ b, repeats) / 1e9


def lainr_upscale(model, lr, size: tuple[int, int], native: bool | None = None,
                  encode: bool = True) -> tuple[Callable[[], object], float]:
    """``model.upscale(lr, size)`` (a LAINR) with the fused C lattice decoder or the PyTorch
    one (``native``), or its decoding alone (``encode=False``), as a callable, and the FLOPs
    it executes: ``count_flops`` plus what the C kernel does, which the counter cannot see."""
    import torch

    from cascade.inr.lattice import lattice_axes
    from cascade.inr.native import kernel_flops

    ys, xs, cell = lattice_axes(size, size, lr.device, lr.dtype)
    with torch.no_grad():
        latents = None if encode else model.encode(lr)

    def fn():
        with torch.no_grad():
            lat = model.encode(lr) if encode else latents
            return model.decode_grid(lat, ys, xs, cell, native=native)

    extra = kernel_flops(model.decoder, size[0] * size[1] * lr.shape[0]) if native else 0.0
    return fn, count_flops(fn) + extra
