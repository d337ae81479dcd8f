"""LAINR speed on this machine: training samples/s and inference megapixels/s, one table each.

Training: one optimizer step (forward, L1 loss, backward, AdamW) on a batch of random-scale
48x48 LR crops from the built-in photos, default config. Inference: ``LAINR.upscale`` of an
LR crop of chelsea to x2 / x4 next to the bicubic baseline (``imresize``) on the same input.
Weights do not change the speed, so the shipped checkpoint is used when present and a
freshly built model otherwise.

    python scripts/bench_lainr.py [--checkpoint checkpoints/lainr] [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cascade.benchmark import median_time


def main() -> None:
    from cascade.data.datasets import RandomScalePatches, resolve_dataset
    from cascade.data.degrade import imresize
    from cascade.inr.model import LAINR, LAINRConfig
    from cascade.paths import resolve_repo_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="checkpoints/lainr")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--queries", type=int, default=1024)
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

    # -- training ----------------------------------------------------------------------
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

    # -- inference ---------------------------------------------------------------------
    img = resolve_dataset("builtin")[0]["image"]  # chelsea, held out
    print("\ninference (LR crop of chelsea; MP/s = output megapixels per second)")
    print(f"{'input':>8} {'scale':>6} {'output':>10} {'method':>8} {'seconds':>8} {'MP/s':>8} "
          f"{'vs bicubic':>10}")
    model.eval()
    for side in (64, 128):
        lr = img[None, :, :side, :side].contiguous()
        for s in (2, 4):
            size = (side * s, side * s)
            mp = size[0] * size[1] / 1e6
            with torch.no_grad():
                t_bic = median_time(lambda: imresize(lr, size=size), args.repeats)
                t_inr = median_time(lambda: model.upscale(lr, size), args.repeats)
            for name, t in (("bicubic", t_bic), ("lainr", t_inr)):
                print(f"{side:>4}^2   {'x' + str(s):>6} {size[0]:>5}^2    {name:>8} {t:>8.3f} "
                      f"{mp / t:>8.3f} {t / t_bic:>9.0f}x")


if __name__ == "__main__":
    main()
