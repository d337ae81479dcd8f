"""Check the std maps of ``cascade upscale`` runs against the ground truth.

For every output of every run folder (``run.json`` from ``cascade upscale --samples N`` on
downscaled photos whose originals are in ``--truth``), it reports:

* PSNR-Y of bicubic, LAINR alone, the mean of the N samples and sample 0 (fidelity);
* ``spearman``: rank correlation of the per-pixel std with the mean's |error| (> 0: the
  samples disagree where the output is wrong);
* ``detail/flat``: mean std on the 20% of 8x8 blocks with the most ground-truth detail
  (local std of luma) over the mean std on the 20% flattest blocks (> 1: the std map
  highlights edges and textures, not flat regions);
* ``ause`` (sparsification error; 0 = std ranks the errors perfectly) beside ``ause_rand``,
  the same area for an uninformative (constant) uncertainty;
* ``coverage``: of the calibrated interval ``mean +- factor * max(std, floor)`` when the run
  was calibrated (``cascade calibrate``), else of ``mean +- std``.

and writes ``OUT/NAME_panel.png``: ground truth | bicubic | LAINR | mean | two samples | std
| |error| on the most detailed window, at full resolution.

    python scripts/uncertainty_report.py outputs/up_x4 [more runs] --truth photos/
        [--crop 160] [--out outputs/uncertainty_report]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def truth_for(name: str, truth: Path, lr: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """The original ``truth/NAME.*`` cropped top-left to the output size (as ``degrade`` crops
    it), checked to be what the input was made from: D(crop) within 30 dB of the input."""
    from cascade.data.degrade import imresize
    from cascade.data.io import list_images, load_image
    from cascade.metrics.fidelity import psnr

    found = [p for p in list_images(truth) if p.stem == name]
    if not found:
        raise SystemExit(f"no {name}.* in {truth}; pass the folder of the originals the inputs "
                         "were downscaled from as --truth")
    H, W = out_hw
    hr = load_image(found[0])[None, :, :H, :W]
    if tuple(hr.shape[-2:]) != (H, W) or float(
            psnr(imresize(hr, size=tuple(lr.shape[-2:])), lr)[0]) < 30:
        raise SystemExit(f"{found[0]} is not the original of the input {name} (too small, or "
                         "its downscaling does not match the input); pass the originals the "
                         "inputs were made from (scripts/make_crops.py --downscale)")
    return hr


def report_one(rec: dict, run: dict, truth: Path, pipe) -> tuple[dict, dict]:
    """The figures for one output record of a run.json (``cascade upscale``), and the images
    for its panel. The interval is calibrated by ``pipe``'s calibration.json entry for the
    plan (what the run would use now), else it is ``mean +- std``. Std, mean and intervals
    come from the written 8-bit samples (the run's float std is not stored), so they differ
    from the run's own by up to half a grey level."""
    from cascade.data.degrade import upscale_bicubic
    from cascade.data.io import load_image
    from cascade.metrics.fidelity import psnr
    from cascade.uncertainty import (ause, coverage, detail_contrast, sparsification, spearman,
                                     std_interval)

    name = Path(rec["input"]).stem
    lr = load_image(rec["input"])[None]
    H, W = rec["out_size"]
    hr = truth_for(name, truth, lr, (H, W))
    scale = W / lr.shape[-1]
    n = int(run["settings"]["num_samples"])
    files = [Path(rec["samples"]) / f"sample_{i:02d}.png" for i in range(n)]
    if not all(f.is_file() for f in files):
        raise SystemExit(f"{rec['samples']} does not hold the run's {n} samples; rerun "
                         "cascade upscale")
    samples = torch.stack([load_image(f) for f in files])  # (N, 3, H, W)
    std = samples.std(0, correction=1)  # (3, H, W)
    mean = (load_image(rec["output"])[None] if run["settings"].get("output", "mean") == "mean"
            else samples.mean(0, keepdim=True))  # output=sample: the PNG is sample 0
    with torch.no_grad():
        bic = upscale_bicubic(lr, (H, W)).clamp(0, 1)
        inr = pipe(lr[0], size=(H, W), stages="inr").mean[None]
    err = (mean - hr).abs()[0]  # (3, H, W)
    cal = pipe.calibration_for(pipe.plan(tuple(lr.shape[-2:]), (H, W), run["stages"]), n,
                               run["settings"].get("alpha"))
    factor = cal["factor"] if cal else 1.0
    lo, hi = std_interval(mean[0], std, factor, cal["std_floor"] if cal else 0.0)
    _, curve, oracle = sparsification(std, err)
    fractions = torch.arange(curve.numel(), dtype=torch.float64) / curve.numel()
    row = {
        "image": name, "scale": round(scale, 3), "size": f"{W}x{H}", "N": samples.shape[0],
        "plan": rec["plan"]["summary"],
        **{f"psnr_{k}": float(psnr(v, hr, scale=scale)[0])
           for k, v in (("bicubic", bic), ("lainr", inr), ("mean", mean),
                        ("sample0", samples[:1]))},
        "std_mean": float(std.mean()),
        "spearman": spearman(std, err),
        "detail_flat": detail_contrast(std.mean(0), hr[0]),
        "ause": ause(std, err),
        "ause_rand": float(torch.trapezoid(1 - oracle, fractions)),
        "interval": f"mean +- {factor:.2f} std" if cal else "mean +- std",
        "calibration": ("none" if cal is None else "fitted for this run" if cal["match"]["exact"]
                        else "fitted with other " + ", ".join(cal["match"]["differs"])),
        "coverage": coverage(lo, hi, hr[0]),
    }
    images = {"ground truth": hr[0], "bicubic": bic[0], "LAINR": inr[0],
              f"mean of {samples.shape[0]}": mean[0], "sample 0": samples[0],
              "sample 1": samples[1], "std": std.mean(0), "|error| of mean": err.mean(0)}
    return row, images


def panel(images: dict[str, torch.Tensor], row: dict, dest: Path, crop: int) -> Path:
    from cascade.evaluation.figures import save_figure

    return save_figure(panel_figure(images, row, crop), dest)


def panel_figure(images: dict[str, torch.Tensor], row: dict, crop: int):
    """The same ``crop`` of every image (the most detailed window of the ground truth), in
    two rows under a title with the row's figures; maps get their own colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade.evaluation.figures import detailed_window

    hr = images["ground truth"]
    y, x = detailed_window(hr, crop)
    c = min(crop, *hr.shape[-2:])
    cols = (len(images) + 1) // 2
    # two rows of square crops 3.3 in wide, each under a title, below a two-line suptitle
    fig, axes = plt.subplots(2, cols, figsize=(3.3 * cols, 7.8), dpi=110)
    for ax, (title, img) in zip(axes.flat, images.items()):
        part = img[..., y:y + c, x:x + c]
        if part.ndim == 2:  # a map: its own colour scale (99th percentile of the crop)
            vmax = float(part.flatten().kthvalue(max(1, int(0.99 * part.numel()))).values)
            ax.imshow(part.numpy(), cmap="magma", vmin=0, vmax=max(vmax, 1e-6),
                      interpolation="nearest")
        else:
            ax.imshow(part.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{row['image']} x{row['scale']:g} ({row['plan'].split(';')[0]}); crop {c}x{c} at y={y}, "
                 f"x={x}\nPSNR-Y: bicubic {row['psnr_bicubic']:.2f}, LAINR "
                 f"{row['psnr_lainr']:.2f}, mean {row['psnr_mean']:.2f}, sample "
                 f"{row['psnr_sample0']:.2f}; Spearman(std, |err|) {row['spearman']:.2f}",
                 fontsize=8)
    fig.tight_layout()
    return fig


def main() -> None:
    from cascade.errors import CascadeError
    from cascade.pipeline import CascadePipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="cascade upscale output folders (with run.json)")
    ap.add_argument("--truth", required=True, help="folder of the original photos (NAME.*)")
    ap.add_argument("--pipeline", default="checkpoints", help="for the LAINR-only column")
    ap.add_argument("--crop", type=int, default=160, help="panel crop side in output pixels")
    ap.add_argument("--out", default="outputs/uncertainty_report")
    args = ap.parse_args()
    try:
        pipe = CascadePipeline.from_pretrained(args.pipeline)
    except CascadeError as e:
        raise SystemExit(f"uncertainty_report: {e}") from None
    out = Path(args.out)
    rows = []
    for run_dir in map(Path, args.runs):
        if not (run_dir / "run.json").is_file():
            raise SystemExit(f"{run_dir} has no run.json; pass folders written by cascade "
                             "upscale --samples N (N >= 2)")
        run = json.loads((run_dir / "run.json").read_text())
        for rec in run["outputs"]:
            if not rec.get("samples"):
                print(f"skipped {rec['input']}: no samples (a deterministic plan or N = 1)")
                continue
            row, images = report_one(rec, run, Path(args.truth), pipe)
            tag = f"{row['image']}_x{row['scale']:g}"
            while any(Path(r["panel"]).name == f"{tag}_panel.png" for r in rows):
                tag += "_"  # the same image and scale in another run folder
            row["panel"] = str(panel(images, row, out / f"{tag}_panel.png", args.crop))
            rows.append(row)
    cols = ["image", "scale", "size", "N", "psnr_bicubic", "psnr_lainr", "psnr_mean",
            "psnr_sample0", "std_mean", "spearman", "detail_flat", "ause", "ause_rand",
            "coverage", "interval"]
    fmt = {"std_mean": "{:.4f}", "coverage": "{:.3f}", "spearman": "{:.3f}",
           "detail_flat": "{:.2f}", "ause": "{:.3f}", "ause_rand": "{:.3f}"}
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [fmt.get(c, "{:.2f}" if isinstance(r[c], float) else "{}").format(r[c])
                 for c in cols]
        print("| " + " | ".join(cells) + " |")
    from cascade.atomic import atomic_write_text

    atomic_write_text(out / "report.json", json.dumps(rows, indent=2) + "\n")
    print(f"panels and report.json in {out}/")


if __name__ == "__main__":
    main()
