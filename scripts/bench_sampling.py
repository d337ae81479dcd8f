"""Sampling speed and quality of the shipped x2 diffusion stage, sampler x steps, one table.

On held-out images (centre crops of the built-in test photos, LR by D, conditioning by the
stage's own upsampler computed once and not timed), each row draws one sample per image with
projection ``--projection`` and reports seconds per image (the diffusion stage alone), LR-PSNR
and PSNR-Y (dB), and the two offline realism measures: the sliced Wasserstein distance of
Laplacian-pyramid patches to the ground truth (x1e3, lower is better) and the high-frequency
energy ratio (1 = as much detail above the LR Nyquist frequency as the ground truth). The last
columns compare each row with the 1000-step DDPM row: speed-up, and the relative change of
SWD and of |1 - HF ratio|. The conditioning itself and bicubic are listed as references.

Then the UNet's training step (forward + backward, the shipped config's batch and crop size)
in achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter``) next to a plain float32
matmul's on the same machine in the same run.

    python scripts/bench_sampling.py [--checkpoint checkpoints/sr3_x2] [--crop 128]
        [--rows ddpm:1000,ddim:50,ddim:20,dpm:20,dpm:10] [--out outputs/bench_sampling]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cascade.benchmark import median_time


def _pairs(crop: int, stage, images: str):
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import degrade

    ds = resolve_dataset(images)
    hr, lr = [], []
    for i in range(len(ds)):
        img = ds[i]["image"]
        H, W = img.shape[-2:]
        top, left = (H - crop) // 2, (W - crop) // 2
        h, low = degrade(img[None, :, top:top + crop, left:left + crop], stage.scale)
        hr.append(h[0])
        lr.append(low[0])
    hr, lr = torch.stack(hr), torch.stack(lr)
    t0 = time.perf_counter()
    cond = stage.upsampler(lr, tuple(hr.shape[-2:])).clamp(0, 1)
    return hr, lr, cond, (time.perf_counter() - t0) / len(hr), list(ds.names)


def _quality(x, hr, lr, scale):
    from cascade.metrics import hf_ratio, lr_psnr, psnr, swd_sets

    return {"lr_psnr": float(lr_psnr(x, lr=lr, scale=scale).mean()),
            "psnr": float(psnr(x, hr, scale=scale).mean()),
            "swd": float(swd_sets(list(x), list(hr))),
            "hf_ratio": float(hf_ratio(x, hr, scale=scale).mean())}


def _gflops(stage, batch: int, crop: int, repeats: int) -> tuple[float, float]:
    """(UNet training step GFLOP/s, float32 matmul GFLOP/s)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = stage.unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-6)
    x = torch.randn(batch, 3, crop, crop)
    c = torch.rand(batch, 3, crop, crop)
    t = torch.randint(0, 1000, (batch,))
    a = torch.rand(batch) * 0.05

    def step():
        loss = unet(x, c, t, a).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as fc:
        loss = unet(x, c, t, a).square().mean()
        loss.backward()
    flops = fc.get_total_flops()
    opt.zero_grad(set_to_none=True)
    sec = median_time(step, repeats)
    unet.eval()
    n = 2048
    m1, m2 = torch.randn(n, n), torch.randn(n, n)
    mm = median_time(lambda: m1 @ m2, repeats)
    return flops / sec / 1e9, 2 * n**3 / mm / 1e9


def print_table(rows: list[dict]) -> None:
    """The sampler table; the last columns compare each diffusion row with DDPM 1000."""
    ref = next((r for r in rows if r["method"] == "ddpm 1000"), None)

    def fmt(v, f):
        return "-" if v is None else format(v, f)

    print("| sampler | s/image | LR-PSNR | PSNR | SWD | HF ratio | speed-up vs DDPM 1000 "
          "| SWD vs DDPM 1000 | HF ratio vs DDPM 1000 |")
    print("|---" * 9 + "|")
    for r in rows:
        sp = dswd = dhf = None
        if ref is not None and r["seconds"] and r is not ref and r["method"][0] == "d":
            sp = ref["seconds"] / r["seconds"]
            dswd = 100 * (r["swd"] - ref["swd"]) / ref["swd"]
            dhf = 100 * (r["hf_ratio"] - ref["hf_ratio"]) / ref["hf_ratio"]
        print(f"| {r['method']} | {fmt(r['seconds'], '.2f')} | {r['lr_psnr']:.2f} | "
              f"{r['psnr']:.2f} | {r['swd']:.1f} | {r['hf_ratio']:.3f} | "
              f"{fmt(sp, '.1f') + 'x' if sp else '-'} | {fmt(dswd, '+.1f') + '%' if sp else '-'} "
              f"| {fmt(dhf, '+.1f') + '%' if sp else '-'} |")


def main() -> None:
    from cascade.data.degrade import upscale_bicubic
    from cascade.diffusion.pretrained import load_sr3

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/sr3_x2")
    ap.add_argument("--images", default="builtin", help="dataset of held-out photos")
    ap.add_argument("--crop", type=int, default=128, help="HR centre-crop side")
    ap.add_argument("--rows", default="ddpm:1000,ddim:50,ddim:20,dpm:20,dpm:10")
    ap.add_argument("--projection", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for GFLOP/s")
    ap.add_argument("--out", default="outputs/bench_sampling")
    ap.add_argument("--table", metavar="JSON", help="only print the table of an earlier run's "
                    "bench_sampling.json")
    args = ap.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text())["rows"])
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    stage = load_sr3(args.checkpoint)
    hr, lr, cond, cond_sec, names = _pairs(args.crop, stage, args.images)
    s = stage.scale
    out = Path(args.out)
    rows = [{"method": "bicubic", "seconds": None,
             **_quality(upscale_bicubic(lr, tuple(hr.shape[-2:])).clamp(0, 1), hr, lr, s)},
            {"method": "conditioning (LAINR)" if stage.upsampler.spec["name"] == "lainr"
             else "conditioning", "seconds": cond_sec, **_quality(cond, hr, lr, s)}]
    samples = {}
    for spec in args.rows.split(","):
        name, steps = spec.split(":")
        t0 = time.perf_counter()
        x = stage(lr, cond=cond, num_samples=1, seed=args.seed, sampler=name, steps=int(steps),
                  projection=args.projection, progress=True)[:, 0]
        sec = (time.perf_counter() - t0) / len(hr)
        samples[spec] = x
        rows.append({"method": f"{name} {steps}", "seconds": sec, **_quality(x, hr, lr, s)})
        print(f"  {spec}: {sec:.2f} s/image", flush=True)
    print(f"\nx{s:g} diffusion stage {args.checkpoint}, {len(hr)} held-out {args.crop}x{args.crop} "
          f"crops ({', '.join(names)}), projection w={args.projection:g}, seed {args.seed}, "
          f"{torch.get_num_threads()} CPU threads")
    print_table(rows)
    cfg = stage_train_shape(args.checkpoint)
    unet_gf, mm_gf = _gflops(stage, cfg[0], cfg[1], args.repeats)
    print(f"\nUNet training step (batch {cfg[0]}, {cfg[1]}x{cfg[1]}, fwd+bwd+AdamW): "
          f"{unet_gf:.1f} GFLOP/s achieved; float32 matmul 2048^3: {mm_gf:.1f} GFLOP/s "
          f"({100 * unet_gf / mm_gf:.0f}% of it)")
    out.mkdir(parents=True, exist_ok=True)
    from cascade.atomic import atomic_write_text
    from cascade.data.io import save_image

    atomic_write_text(out / "bench_sampling.json", json.dumps(
        {"rows": rows, "unet_gflops": unet_gf, "matmul_gflops": mm_gf, "args": vars(args)},
        indent=2) + "\n")
    grid = torch.cat([torch.cat(list(t), -1) for t in [cond, *samples.values(), hr]], -2)
    save_image(grid, out / "samples.png")
    print(f"\nrows: conditioning, {', '.join(samples)}, ground truth -> {out / 'samples.png'}")


def stage_train_shape(checkpoint: str) -> tuple[int, int]:
    from omegaconf import OmegaConf

    from cascade.paths import resolve_repo_path

    cfg = OmegaConf.load(resolve_repo_path(checkpoint) / "config.yaml")
    return int(cfg.train.batch_size), int(cfg.data.hr_patch)


if __name__ == "__main__":
    main()
