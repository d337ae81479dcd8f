"""The spectral diagnostic: does a method add detail above the LR Nyquist limit?

For each ground-truth image: LR = D(HR, s); each method upsamples LR back to the HR size;
the radially averaged power spectra of the outputs are compared with the ground truth's.
Resampling leaves the band above the LR Nyquist frequency (1/(2s) cycles per HR pixel)
nearly empty; super-resolution fills it towards the ground truth's level. The printed
figure is the high-frequency energy relative to ground truth (1.0 = as much as GT).
"""

from __future__ import annotations

from pathlib import Path

import torch


def spectrum_report(inputs: list[str], scale: float, methods: list[str], checkpoint: str,
                    out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cascade.data.degrade import degrade
    from cascade.data.io import load_image
    from cascade.data.sources import expand_inputs
    from cascade.evaluation.methods import make_method
    from cascade.evaluation.figures import save_figure
    from cascade.metrics.spectrum import hf_energy, radial_power_spectrum
    from cascade.pipeline import check_scale

    scale = check_scale(scale)
    files = expand_inputs(inputs)
    built = [make_method(m, {"checkpoint": checkpoint} if m != "bicubic" else {}) for m in methods]
    cutoff = 1.0 / (2.0 * scale)
    ratios: dict[str, list[float]] = {m.name: [] for m in built}
    spectra: dict[str, list] = {"ground truth": [], **{m.name: [] for m in built}}
    # Images of different sizes have different frequency bins: put all on one grid.
    freqs = torch.linspace(0, 0.5, 129, dtype=torch.float64)
    for f in files:
        hr, lr = degrade(load_image(f)[None], scale)
        gt_e = float(hf_energy(hr, cutoff))
        spectra["ground truth"].append(_resample(radial_power_spectrum(hr), freqs))
        for m in built:
            with torch.no_grad():
                sr = m(lr, tuple(hr.shape[-2:]))
            ratios[m.name].append(float(hf_energy(sr, cutoff)) / gt_e)
            spectra[m.name].append(_resample(radial_power_spectrum(sr), freqs))

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, ps in spectra.items():
        mean = torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in ps]).mean(0)
        ax.semilogy(freqs, mean, label=name, lw=2 if name == "ground truth" else 1.4)
    ax.axvline(cutoff, color="gray", ls="--", lw=1)
    ax.text(cutoff, ax.get_ylim()[1], f" LR Nyquist (x{scale:g})", va="top", fontsize=8)
    ax.set_xlabel("spatial frequency (cycles / HR pixel)")
    ax.set_ylabel("radially averaged power (luma)")
    ax.set_title(f"Power spectra, {len(files)} image(s), x{scale:g}")
    ax.legend()
    fig.tight_layout()
    plot = save_figure(fig, out_dir / f"spectrum_x{scale:g}.png")

    lines = [f"high-frequency energy above the LR Nyquist frequency ({cutoff:.3f} cycles/px), "
             f"relative to ground truth, x{scale:g}, {len(files)} image(s):"]
    for name, rs in ratios.items():
        lines.append(f"  {name:<10s} {sum(rs) / len(rs):.4f}")
    lines.append(f"plot: {plot}")
    return "\n".join(lines)


def _resample(fp: tuple, freqs) -> torch.Tensor:
    """Spectra of images of the same size share bins; interpolate otherwise."""
    f, p = (torch.as_tensor(v, dtype=torch.float64) for v in fp)
    target = torch.as_tensor(freqs, dtype=torch.float64)
    if f.shape == target.shape and torch.allclose(f, target):
        return p
    import numpy as np

    return torch.from_numpy(np.interp(target.numpy(), f.numpy(), p.numpy()))
