"""Where the cascade stands against this machine's limit: FLOPs, seconds, GFLOP/s, share of peak.

One table, one run: the float32 matmul peak (a 2048^3 matmul, measured before and after the
rows; the larger is the peak), then for each stage and a few sizes the FLOPs its networks
execute (counted by ``torch.utils.flop_counter``: matmuls and convolutions as executed,
including the PyTorch lattice decoder's block-diagonal zeros and group padding, plus
``cascade.inr.native.kernel_flops`` for the fused C decoder, which the counter cannot see;
elementwise work is not counted), the median seconds, GFLOP/s and their share of the peak:

* LAINR ``upscale`` (encode once + lattice decoder) and its decoding alone at x2 and x4,
  with the fused C lattice decoder (the default where it builds) and the PyTorch one;
* one sr3 UNet evaluation (``stage.unet``, batch 1) at 128^2 and 256^2 output pixels;
* a whole x4 cascade call (``--stages auto``: the x2 stages the pipeline has, LAINR where
  the plan resamples; one sample, ``--steps`` DPM-Solver++ steps) of a ``--cascade-side``
  input: its wall time next to the seconds spent inside the networks during that call
  (every LAINR encode and decode, the pipeline's and each stage's conditioning LAINR, and
  every UNet evaluation, timed by wrapping them), and their ratio: what the pipeline costs
  beyond network arithmetic (tiling, copies, planning, checkpoint reads).

Weights do not change the speed; the shipped checkpoints are used.

    python scripts/bench_roofline.py [--pipeline checkpoints] [--repeats 3] [--steps 10]
    OMP_NUM_THREADS=1 taskset -c 1 python scripts/bench_roofline.py   # one core
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from cascade.benchmark import count_flops, lainr_upscale, matmul_peak, median_time


def photo(side: int) -> torch.Tensor:
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import imresize

    img = resolve_dataset("builtin")[0]["image"]  # chelsea, held out
    return imresize(img[:, :300, 75:375], size=(side, side)).clamp(0, 1)[None]


class NetworkTimer:
    """Wraps methods of modules so that the seconds spent inside them add up in ``seconds``."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.depth = 0

    def wrap(self, obj, name: str) -> None:
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def timed(*a, **kw):
            self.depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.depth -= 1
                if self.depth == 0:  # nested wrapped calls count once
                    self.seconds += time.perf_counter() - t0

        setattr(obj, name, timed)


def main() -> None:
    from cascade.inr.native import load_kernel
    from cascade.pipeline import CascadePipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="checkpoints")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cascade-side", dest="cascade_side", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)

    pipe = CascadePipeline.from_pretrained(args.pipeline)
    if not pipe.diffusion:
        raise SystemExit(f"{args.pipeline} has no diffusion stage; nothing to benchmark")
    lainr, stage = pipe.lainr, pipe.diffusion[0].stage
    print(f"{torch.get_num_threads()} threads, cpu, float32; pipeline {args.pipeline} "
          f"({len(pipe.diffusion)} diffusion stages)\n", flush=True)

    peak0 = matmul_peak(args.repeats)
    rows = []  # (work, GFLOP, seconds, output MP)
    with torch.no_grad():
        decoders = {"fused C": True, "PyTorch": False} if load_kernel() else {"PyTorch": False}
        for side, s in ((64, 2), (64, 4), (128, 4)):
            lr = photo(side)
            size = (side * s, side * s)
            for label, native in decoders.items():
                for what, encode in (("LAINR", True), ("decode", False)):
                    fn, flops = lainr_upscale(lainr, lr, size, native, encode)
                    rows.append((f"{what} {side}^2 -> {size[0]}^2 (x{s}, {label})",
                                 flops / 1e9, median_time(fn, args.repeats),
                                 size[0] * size[1] / 1e6))
        for side in (128, 256):
            x = torch.randn(1, 3, side, side)
            t = torch.tensor([500])
            aug = torch.zeros(1)
            fn = functools.partial(stage.unet, x, x, t, aug)
            rows.append((f"sr3 UNet step {side}^2", count_flops(fn) / 1e9,
                         median_time(fn, args.repeats), side * side / 1e6))

        # the whole call, with the time inside the networks measured during it
        lr = photo(args.cascade_side)
        timer = NetworkTimer()
        models = [lainr] + [getattr(d.stage.upsampler, "model", None) for d in pipe.diffusion]
        for m in {id(m): m for m in models if m is not None}.values():  # each LAINR once
            timer.wrap(m, "encode")
            timer.wrap(m, "decode_grid")
        for d in pipe.diffusion:
            timer.wrap(d.stage.unet, "forward")
        call = functools.partial(pipe, lr, scale=4, stages="auto", num_samples=1,
                                 steps=args.steps, sampler="dpm", seed=0)
        gflop = count_flops(call) / 1e9  # (LAINR's fused decoding, under 1%, not counted)
        call()  # warm-up
        walls, nets = [], []
        for _ in range(max(1, args.repeats)):
            timer.seconds = 0.0
            t0 = time.perf_counter()
            call()
            walls.append(time.perf_counter() - t0)
            nets.append(timer.seconds)
        i = sorted(range(len(walls)), key=walls.__getitem__)[len(walls) // 2]  # the median
        wall, net = walls[i], nets[i]
        out = args.cascade_side * 4
        plan = pipe.plan((args.cascade_side,) * 2, (out, out), "auto").describe()
        rows.append((f"cascade x4 {args.cascade_side}^2 -> {out}^2, {args.steps} steps",
                     gflop, wall, out * out / 1e6))
    peak1 = matmul_peak(args.repeats)
    peak = max(peak0, peak1)

    print(f"float32 matmul peak (2048^3): {peak:.0f} GFLOP/s "
          f"(before the rows {peak0:.0f}, after {peak1:.0f})\n")
    print(f"{'work':<44} {'GFLOP':>8} {'seconds':>8} {'GFLOP/s':>8} {'of peak':>8} {'MP/s':>7}")
    for work, g, sec, mp in rows:
        print(f"{work:<44} {g:>8.2f} {sec:>8.3f} {g / sec:>8.1f} {g / sec / peak:>8.0%} "
              f"{mp / sec:>7.3f}")
    print(f"\ncascade call [{plan}]: {wall:.2f} s wall, {net:.2f} s inside the networks "
          f"(LAINR encode/decode, UNet): wall / network = {wall / net:.2f}")


if __name__ == "__main__":
    main()
