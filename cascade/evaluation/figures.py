"""Side-by-side comparison figures: ground truth | method 1 | method 2 ... on a zoomed crop.

For each image the crop is the window (of ``crop`` HR pixels) with the most detail in the
ground truth (highest local variance of the Laplacian), where methods differ most visibly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cascade.heatmap import save_figure  # noqa: F401  (re-exported: its old home)


def detailed_window(img: torch.Tensor, crop: int) -> tuple[int, int]:
    """Top-left (y, x) of the crop x crop window with the most Laplacian energy in img (3,H,W)."""
    gray = img.mean(0, keepdim=True)[None]  # (1, 1, H, W)
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    energy = F.conv2d(gray, lap, padding=1).pow(2)
    H, W = img.shape[-2:]
    c = min(crop, H, W)
    pooled = F.avg_pool2d(energy, c, stride=max(1, c // 4))  # (1, 1, h', w')
    idx = int(pooled.flatten().argmax())
    w_ = pooled.shape[-1]
    y, x = (idx // w_) * max(1, c // 4), (idx % w_) * max(1, c // 4)
    return min(y, H - c), min(x, W - c)


def compare_figure(files: list[Path], scale: float, methods: list[str], checkpoint: str,
                   out: str, crop: int = 96) -> list[Path]:
    """One PNG per image: crops of GT and each method's upscale of D(GT), with PSNR-Y."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade.data.degrade import degrade
    from cascade.data.io import load_image
    from cascade.evaluation.methods import make_method
    from cascade.metrics.fidelity import psnr

    built = [make_method(m, {"checkpoint": checkpoint} if m != "bicubic" else {}) for m in methods]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for f in files:
        hr, lr = degrade(load_image(f)[None], scale)
        y, x = detailed_window(hr[0], crop)
        c = min(crop, *hr.shape[-2:])
        panels = [("ground truth", hr, None)]
        for m in built:
            with torch.no_grad():
                sr = m(lr, tuple(hr.shape[-2:])).clamp(0, 1)
            panels.append((m.name, sr, float(psnr(sr, hr, scale=scale)[0])))
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.5), dpi=110)
        for ax, (name, img, p) in zip(axes, panels):
            ax.imshow(img[0, :, y:y + c, x:x + c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(name if p is None else f"{name}  {p:.2f} dB", fontsize=10)
            ax.axis("off")
        fig.suptitle(f"{Path(f).stem}, x{scale:g} (crop {c}x{c} at y={y}, x={x}; "
                     "PSNR-Y of the whole image)", fontsize=9)
        fig.tight_layout()
        written.append(save_figure(fig, out_dir / f"{Path(f).stem}_x{scale:g}.png"))
    return written
