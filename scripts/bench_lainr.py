"""LAINR speed on this machine: training samples/s and inference megapixels/s, one table each.

Training: one optimizer step (forward, L1 loss, backward, AdamW) on a batch of random-scale
48x48 LR crops from the built-in photos, default config. Inference: ``LAINR.upscale`` of an
LR crop of chelsea to x2 / x4 with the fused C lattice decoder (``cascade.inr.native``; also
its decoding alone) and with the PyTorch lattice decoder, next to the per-query reference
path (``LAINR.upscale_reference``, at the default chunk and at the old 65536) and the
bicubic baseline (``imresize``) on the same input. Each row gives the FLOPs the path
executes (``torch.utils.flop_counter``, plus ``native.kernel_flops`` for the C kernel), its
GFLOP/s and their share of the machine's float32 matmul peak, measured in the same run (a
2048^3 matmul). Weights do not change the speed, so the
shipped checkpoint is used when present and a freshly built model otherwise.

    python scripts/bench_lainr.py [--checkpoint checkpoints/lainr] [--repeats 3] [--no-train]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cascade.benchmark import count_flops, lainr_upscale, matmul_peak, median_time


def main() -> None:
    from cascade.inr.model import LAINR, LAINRConfig
    from cascade.paths import resolve_repo_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/lainr")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--no-train", dest="train", action="store_false",
                    help="only the inference table")
    ap.add_argument("--sides", type=lambda v: [int(x) for x in v.split(",")], default=[64, 128],
                    help="LR crop sides (default 64,128)")
    args = ap.parse_args()
    torch.manual_seed(0)

    ckpt = resolve_repo_path(args.checkpoint)
    if (ckpt / "model.safetensors").is_file():
        from cascade.inr.pretrained import load_lainr

        model, source = load_lainr(ckpt), str(ckpt)
    else:
        model, source = LAINR(**vars(LAINRConfig())), "fresh default config"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"LAINR ({source}): {n_params:,} parameters, {torch.get_num_threads()} threads, "
          f"device cpu, float32\n")

    if args.train:
        train_table(model, args)
    inference_table(model, args)


def train_table(model, args) -> None:
    from cascade.data.datasets import RandomScalePatches, resolve_dataset

    images = [d["image"] for d in (resolve_dataset("builtin", split="train")[i] for i in range(4))]
    sampler = RandomScalePatches(images, queries=args.queries)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rows = []
    for s in (2.0, 4.0):
        sampler.scale_min = sampler.scale_max = s
        batch = sampler.sample_batch(args.batch, torch.Generator().manual_seed(0))

        def step(batch=batch):
            loss = F.l1_loss(model(batch["lr"], batch["coord"], batch["cell"]), batch["rgb"])
            opt.zero_grad()
            loss.backward()
            opt.step()

        sec = median_time(step, args.repeats)
        rows.append((f"x{s:g}", args.batch, args.queries, sec, args.batch / sec))
    print("training step (48x48 LR crops)")
    print(f"{'scale':>6} {'batch':>6} {'queries':>8} {'s/step':>8} {'samples/s':>10}")
    for r in rows:
        print(f"{r[0]:>6} {r[1]:>6} {r[2]:>8} {r[3]:>8.3f} {r[4]:>10.1f}")


def inference_table(model, args) -> None:
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import imresize
    from cascade.inr.model import DECODE_CHUNK
    from cascade.inr.native import load_kernel

    native = load_kernel() is not None
    if not native:
        print("\n(the fused C decoder is not built here: its rows are left out)")
    img = resolve_dataset("builtin")[0]["image"]  # chelsea, held out
    peak = matmul_peak(args.repeats)
    print(f"\ninference (LR crop of chelsea; MP/s = output megapixels per second; "
          f"float32 matmul peak now: {peak:.0f} GFLOP/s)")
    print(f"{'input':>8} {'scale':>6} {'output':>10} {'method':>17} {'seconds':>8} {'MP/s':>8} "
          f"{'GFLOP':>7} {'GFLOP/s':>8} {'of peak':>8} {'vs ref':>7}")
    model.eval()
    for side in args.sides:
        lr = img[None, :, :side, :side].contiguous()
        for s in (2, 4):
            size = (side * s, side * s)
            mp = size[0] * size[1] / 1e6
            paths = {"bicubic": (lambda: imresize(lr, size=size), None)}
            if native:
                paths["lainr (fused C)"] = lainr_upscale(model, lr, size, True)
                paths["decode (fused C)"] = lainr_upscale(model, lr, size, True, encode=False)
            paths["lainr (PyTorch)"] = lainr_upscale(model, lr, size, False)
            paths["decode (PyTorch)"] = lainr_upscale(model, lr, size, False, encode=False)
            for chunk in (DECODE_CHUNK, 65536):
                paths[f"lainr (ref {chunk})"] = \
                    (lambda c=chunk: model.upscale_reference(lr, size, c), None)
            rows = {}
            with torch.no_grad():
                for name, (fn, flops) in paths.items():
                    flops = count_flops(fn) if flops is None else flops
                    rows[name] = (median_time(fn, args.repeats), flops / 1e9)
            t_ref = rows["lainr (ref 4096)"][0]
            for name, (t, gflop) in rows.items():
                print(f"{side:>4}^2   {'x' + str(s):>6} {size[0]:>5}^2    {name:>17} {t:>8.3f} "
                      f"{mp / t:>8.3f} {gflop:>7.2f} {gflop / t:>8.1f} {gflop / t / peak:>7.0%} "
                      f"{t_ref / t:>6.1f}x")


if __name__ == "__main__":
    main()
