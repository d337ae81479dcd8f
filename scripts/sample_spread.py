"""Where do two samples of one input differ? The x2 diffusion stage on a test set.

For every image: LR = D(HR), the stage's conditioning c = U(LR), and two samples s0, s1
(same seed, sample indices 0 and 1). Reported per set (means over images):

* ``lr_agree``: PSNR between D(s0) and D(s1) in dB: do the samples agree at the
  frequencies the input determines? (high = yes)
* ``hr_agree``: PSNR between s0 and s1 at full resolution (lower: they differ in detail)
* ``hf_share``: the fraction of the energy of s0 - s1 above the LR Nyquist frequency
  (1 = they differ only in detail the input cannot carry)
* ``missing_share``: the share of |s0 - s1| that falls on the 10% of pixels where the
  conditioning misses the most detail (largest local |HR - c|); 0.10 would be "anywhere"
* ``spearman``: rank correlation, over 8x8 blocks, of the mean |s0 - s1| with the mean
  |HR - c| (the detail the conditioning lacks)

    python scripts/sample_spread.py [--data set14] [--checkpoint checkpoints/sr3_x2]
        [--steps 20] [--sampler dpm] [--projection 1.0]
"""

from __future__ import annotations

import argparse

import torch


def _blocks(x: torch.Tensor, k: int = 8) -> torch.Tensor:
    """Mean over k x k blocks of a (H, W) map -> flat (N,)."""
    H, W = (x.shape[-2] // k) * k, (x.shape[-1] // k) * k
    return torch.nn.functional.avg_pool2d(x[None, None, :H, :W], k).flatten()


def spread(s0, s1, hr, cond, lr, scale: float) -> dict[str, float]:
    from scipy.stats import spearmanr

    from cascade.data.degrade import imresize
    from cascade.metrics.fidelity import psnr
    from cascade.metrics.spectrum import hf_energy, luma

    d = (s0 - s1)[None]
    low0, low1 = imresize(s0[None], size=lr.shape[-2:]), imresize(s1[None], size=lr.shape[-2:])
    total = float(luma(d).square().sum())
    # hf_energy of a difference image: energy above the LR Nyquist frequency, windowed as
    # for the images; its share of the difference's windowed energy at all frequencies.
    hf = float(hf_energy(d + 0.5, 1 / (2 * scale))[0])
    allf = float(hf_energy(d + 0.5, 0.0)[0])
    diff = (s0 - s1).abs().mean(0)  # (H, W)
    miss = torch.nn.functional.avg_pool2d((hr - cond).abs().mean(0)[None, None], 5, 1, 2)[0, 0]
    top = miss >= torch.quantile(miss.flatten(), 0.9)
    rho = spearmanr(_blocks(diff).numpy(), _blocks(miss).numpy()).statistic
    return {"lr_agree": float(psnr(low0, low1, crop_border=0, y_channel=False)[0]),
            "hr_agree": float(psnr(s0[None], s1[None], crop_border=0, y_channel=False)[0]),
            "hf_share": hf / allf if allf > 0 else float("nan"),
            "missing_share": float(diff[top].sum() / diff.sum()) if total > 0 else float("nan"),
            "spearman": float(rho)}


def main() -> None:
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import degrade
    from cascade.diffusion.pretrained import load_sr3

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="set14")
    ap.add_argument("--checkpoint", default="checkpoints/sr3_x2")
    ap.add_argument("--sampler", default="dpm")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--projection", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    stage = load_sr3(args.checkpoint)
    ds = resolve_dataset(args.data)
    rows = []
    for i in range(len(ds)):
        hr, lr = degrade(ds[i]["image"][None], stage.scale)
        cond = stage.upsampler(lr, tuple(hr.shape[-2:])).clamp(0, 1)
        s = stage(lr, cond=cond, num_samples=2, seed=args.seed, sampler=args.sampler,
                  steps=args.steps, projection=args.projection)[0]
        r = spread(s[0], s[1], hr[0], cond[0], lr, stage.scale)
        rows.append(r)
        print(f"{ds.names[i]:>12}  " + "  ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
    keys = rows[0].keys()
    print(f"\n{args.data} x{stage.scale:g}, {len(rows)} images, {args.sampler} {args.steps} steps, "
          f"w={args.projection:g}: mean " + "  ".join(
              f"{k}={sum(r[k] for r in rows) / len(rows):.3f}" for k in keys))


if __name__ == "__main__":
    main()
