"""The cascade's cost and its tiling: seconds and peak memory of one large upscale, and seams.

1. **bench**: an input of ``--size`` px square (default 1024) upscaled x4 through LAINR and
   two x2 diffusion stages, tiled, ``--steps`` (10) DPM-Solver++ steps, ``--samples`` (1)
   samples: wall seconds per stage and the peak resident memory (RSS) of the process.
   Without ``sr3_x2_b/`` the first stage runs twice, and the output says so (timing and
   memory do not depend on the weights).
2. **seam** (``--seam-size``, default 256): tiled vs untiled on the same input and seed.
   LAINR only: the largest difference between chunked and one-chunk decoding. With the
   diffusion stage (x``--seam-scale``): mean and largest differences, and the mean gradient
   magnitude across the tile borders over the mean everywhere else (``seam_ratio``, bands
   of 1 and 4 px) for the tiled output, next to the same ratio of the untiled one.

    python scripts/bench_pipeline.py                    # the full benchmark (slow on a CPU)
    python scripts/bench_pipeline.py --size 256         # a quick check (x4 to 1024^2)
    python scripts/bench_pipeline.py --part seam
    python scripts/bench_pipeline.py --part bench --zero-network   # peak memory, fast

The bench part runs first, so the peak RSS it reports is its own. Results:
``--out``/bench_SIZE.json and seam_SIZE.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def photo(side: int) -> torch.Tensor:
    """A side x side RGB input from a held-out photo (resized: speed does not depend on it)."""
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import imresize

    img = resolve_dataset("builtin")[0]["image"]  # chelsea, 451x300
    crop = img[:, :300, 75:375]
    return imresize(crop, size=(side, side)).clamp(0, 1) if side != 300 else crop


def two_stage_pipeline(folder: str):
    """The pipeline with two x2 stages: sr3_x2_b when there is one, else sr3_x2 again."""
    from cascade.pipeline import CascadePipeline

    pipe = CascadePipeline.from_pretrained(folder)
    if not pipe.diffusion:
        raise SystemExit(f"{folder} has no diffusion stage (sr3_x2/); nothing to benchmark")
    note = None
    if len(pipe.diffusion) == 1:
        first = pipe.diffusion[0]
        pipe = CascadePipeline(pipe.lainr, [(first.name, first.stage),
                                            (f"{first.name}(again)", first.stage)],
                               pipe.config)
        note = f"no sr3_x2_b in {folder}: {first.name} runs as both x2 stages"
    return pipe, note


def _zeros(x_t, cond, t, aug_level):
    """A stand-in network: the sampler, tiling, projection and conditioning run for real."""
    return torch.zeros_like(x_t)


def bench(args) -> dict:
    pipe, note = two_stage_pipeline(args.pipeline)
    if note:
        print(f"note: {note}")
    if args.zero_network:
        for d in pipe.diffusion:
            d.stage.unet.forward = _zeros
        print("note: --zero-network: the UNet returns zeros (memory and non-network time only)")
    lr = photo(args.size)
    print(f"bench: {args.size}x{args.size} -> x4, {args.samples} sample(s), dpm {args.steps} "
          f"steps, tiling {args.tile or 'auto'}", flush=True)
    t0 = time.perf_counter()
    out = pipe(lr, scale=4, num_samples=args.samples, steps=args.steps, sampler="dpm",
               seed=0, keep_samples=False, progress=True,
               tiling={"tile": args.tile} if args.tile else None)
    seconds = time.perf_counter() - t0
    result = {"input": [args.size, args.size], "output": list(out.plan.out_size),
              "samples": args.samples, "steps": args.steps, "plan": out.plan.describe(),
              "seconds": round(seconds, 1),
              "timings": {k: round(v, 1) for k, v in out.timings.items()},
              "peak_rss_gb": round(peak_rss_gb(), 3), "note": note,
              "zero_network": args.zero_network,
              "threads": torch.get_num_threads()}
    print(f"plan: {result['plan']}")
    print(f"seconds: {seconds:.1f} ({', '.join(f'{k} {v:.1f}' for k, v in out.timings.items())})")
    print(f"peak RSS: {result['peak_rss_gb']:.2f} GiB", flush=True)
    return result


def seam(args) -> dict:
    from cascade.diffusion.tiling import TiledDenoiser, auto_tiling, border_lines, seam_ratio
    from cascade.pipeline import CascadePipeline

    pipe = CascadePipeline.from_pretrained(args.pipeline, max_diffusion=1)
    lr = photo(args.seam_size)
    s = args.seam_scale
    print(f"seam: {args.seam_size}x{args.seam_size} input", flush=True)
    whole = pipe(lr, scale=4, stages="inr", lainr_chunk=10**9).mean
    chunked = pipe(lr, scale=4, stages="inr", lainr_chunk=4096).mean
    res = {"lainr_x4_max_abs_diff": float((whole - chunked).abs().max())}
    print(f"  LAINR x4, 4096-query chunks vs one chunk: max |diff| "
          f"{res['lainr_x4_max_abs_diff']:.2e}", flush=True)
    if not pipe.diffusion:
        return res
    kw = dict(scale=s, stages="inr+1", steps=args.steps, sampler="dpm", seed=0, progress=True)
    forced = {"tile": args.tile, "untiled": -1}  # tile even where a whole call would fit
    tiled = pipe(lr, tiling=forced, **kw)
    untiled = pipe(lr, tiling={"tile": -1}, **kw)
    stage = pipe.diffusion[0].stage
    tile, overlap, _ = auto_tiling(type(pipe.config.tiling)(**forced), pipe.device,
                                   stage.unet.downsample_factor)
    H, W = tiled.plan.out_size
    tiles = TiledDenoiser(stage.unet, tile, overlap).tiles_for(H, W)
    rows, cols = border_lines(tiles, H, W)
    tile = tiles[0].h  # the side fit_tile chose
    diff = (tiled.mean - untiled.mean).abs()
    res.update({"diffusion_scale": s, "tile": tile, "overlap": overlap,
                "tiles": tiled.plan.diffusion[0].tiles, "plan": tiled.plan.describe(),
                "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max())})
    for band in (1, 4):
        res[f"seam_ratio_band{band}_tiled"] = seam_ratio(tiled.mean, rows, cols, band)
        res[f"seam_ratio_band{band}_untiled"] = seam_ratio(untiled.mean, rows, cols, band)
    res["border_rows"], res["border_cols"] = rows, cols
    print(f"  x{s:g} ({res['tiles']} tiles of {tile} px, overlap {overlap}): tiled vs untiled "
          f"mean |diff| {res['mean_abs_diff']:.4f}, max {res['max_abs_diff']:.4f}")
    for band in (1, 4):
        print(f"  seam ratio (band {band} px): tiled {res[f'seam_ratio_band{band}_tiled']:.3f}, "
              f"untiled {res[f'seam_ratio_band{band}_untiled']:.3f} (1 = borders like elsewhere)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="checkpoints")
    ap.add_argument("--size", type=int, default=1024, help="input side of the bench part")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--tile", type=int, default=0, help="diffusion tile side (0 = auto)")
    ap.add_argument("--seam-size", dest="seam_size", type=int, default=256)
    ap.add_argument("--seam-scale", dest="seam_scale", type=float, default=2.0)
    ap.add_argument("--part", choices=["all", "bench", "seam"], default="all")
    ap.add_argument("--zero-network", dest="zero_network", action="store_true",
                    help="bench with the UNet replaced by zeros: the peak memory of a large "
                         "run (everything else is real) in a fraction of its time")
    ap.add_argument("--out", default="outputs/bench_pipeline")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "bench"):
        dest = out / f"bench_{args.size}{'_zero' if args.zero_network else ''}.json"
        dest.write_text(json.dumps(bench(args), indent=2) + "\n")
        print(f"results: {dest}")
    if args.part in ("all", "seam"):
        dest = out / f"seam_{args.seam_size}.json"
        dest.write_text(json.dumps(seam(args), indent=2) + "\n")
        print(f"results: {dest}")


if __name__ == "__main__":
    main()
