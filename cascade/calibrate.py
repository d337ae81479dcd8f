"""``cascade calibrate``: fit and check the conformal factor of the uncertainty intervals.

The images of a dataset are split in two interleaved halves (sorted; even positions fit,
odd positions test, or the other way round with ``fit="odd"``). Each image is degraded by D at the scale, upscaled by the pipeline with
N samples (mean, std), and every pixel and channel of the *fit* half gives a score
``|y - mean| / max(std, floor)``; the factor is their split-conformal quantile
(``cascade.uncertainty.conformal_factor``). On the *test* half the report gives the coverage
of ``mean +- factor * max(std, floor)`` (target >= 1 - alpha), its mean width, the same for
the raw ``mean +- std`` and the empirical quantile interval of the samples, Spearman(std,
|error|) and AUSE (``cascade.uncertainty``). The factor is saved in the pipeline folder's
``calibration.json`` under (stages, scale, N); ``CascadeOutput.interval()`` uses it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text
from cascade.data.datasets import centre_crop, resolve_dataset
from cascade.data.degrade import check_scale, degrade
from cascade.devices import resolve_device
from cascade.errors import CascadeError, ConfigError
from cascade.pipeline import CascadePipeline, save_calibration
from cascade.uncertainty import (
    ause,
    conformal_factor,
    coverage,
    mean_width,
    normalized_scores,
    quantile_interval,
    spearman,
    std_interval,
)
from cascade.upscale import pipeline_settings

# Below this many fit images the report warns (the guarantee is over images, not pixels).
MIN_FIT_IMAGES = 10


def calibrate(data: str, scale: float | str, pipeline: str = "checkpoints", crop: int = 0,
              max_images: int = 0, out: str | None = None, save: bool = True,
              device: str = "cpu", config: str | None = None, overrides: Sequence[str] = (),
              fit: str = "even", **settings: Any) -> dict[str, Any]:
    """Fit on half of ``data`` (the images at even positions, or odd with ``fit="odd"``),
    test on the other half; returns the calibration entry."""
    s = check_scale(scale)
    if fit not in ("even", "odd"):
        raise ConfigError(f"fit={fit!r}; use even or odd")
    parity = 0 if fit == "even" else 1
    settings.setdefault("num_samples", 8)
    cfg = pipeline_settings(config, overrides, **settings)
    if cfg.num_samples < 2:
        raise ConfigError(f"--samples {cfg.num_samples}: a spread needs 2 or more samples "
                          "(8 recommended)")
    ds = resolve_dataset(data)
    n_img = len(ds) if max_images <= 0 else min(max_images, len(ds))
    if n_img < 2:
        raise CascadeError(f"{data} has {n_img} image(s); calibration needs 2 or more "
                           "(half to fit, half to test)")
    pipe = CascadePipeline.from_pretrained(pipeline, config=cfg)
    spec, used = pipe.resolve_stages()
    pipe.to(resolve_device(device))
    t0 = time.perf_counter()
    fit_scores, test, res, plan = _run_images(pipe, ds, n_img, s, crop, parity, spec)
    factor = conformal_factor(torch.cat(fit_scores), cfg.alpha)
    report = _test_report(test, factor, cfg.std_floor)
    knobs = res.settings
    entry = {
        "stages": [d.name for d in used][:len(res.plan.diffusion)], "stages_spec": spec,
        "scale": s, "num_samples": int(cfg.num_samples), "sampler": knobs.get("sampler"),
        "steps": knobs.get("steps"), "projection": knobs.get("projection"),
        "stage_settings": knobs.get("stage_settings"),  # every stage's sampler knobs
        "seed": int(cfg.seed), "alpha": float(cfg.alpha), "factor": factor,
        "std_floor": float(cfg.std_floor), "data": str(data), "crop": int(crop),
        "fit_images": len(fit_scores), "test_images": len(test), "fit_half": fit,
        "plan": plan,
        "pipeline": pipe.describe(), "weights": pipe.fingerprint(),
        "seconds": round(time.perf_counter() - t0, 1),
        "test": report,
    }
    if save:
        entry["saved"] = str(save_calibration(pipe, entry))
    if out is not None:
        dest = Path(out) / f"calibration_x{s:g}.json"
        atomic_write_text(dest, json.dumps(entry, indent=2) + "\n")
        entry["report"] = str(dest)
    return entry


def _run_images(pipe, ds, n_img: int, s: float, crop: int, parity: int, spec: str):
    """Degrade and upscale each image: the normalised scores of the fit half, (mean, std,
    truth, quantile interval) of the test half, the last run's output and the first one's
    plan (its one-line summary)."""
    cfg = pipe.config
    fit_scores, test, res, plan = [], [], None, None
    for i in tqdm(range(n_img), desc=f"calibrate x{s:g} ({spec}, N={cfg.num_samples})",
                  unit="img", dynamic_ncols=True):
        hr, lr = degrade(centre_crop(ds[i]["image"], crop)[None], s)  # (1,3,H,W), (1,3,h,w)
        fitting = i % 2 == parity
        res = pipe(lr[0], size=tuple(hr.shape[-2:]), keep_samples=not fitting)
        if not res.plan.stochastic:
            raise ConfigError(f"--stages {spec} at x{s:g} runs no diffusion stage "
                              f"({res.plan.describe()}): nothing to calibrate; use a scale "
                              ">= 2 and --stages inr+1 or auto")
        plan = plan or res.plan.describe()
        y = hr[0].cpu()
        if fitting:
            fit_scores.append(normalized_scores(res.mean, res.std, y, cfg.std_floor).reshape(-1))
        else:
            lo_q, hi_q = quantile_interval(res.samples, cfg.alpha)
            test.append((res.mean, res.std, y, lo_q, hi_q))
    return fit_scores, test, res, plan


def _test_report(test: list[tuple], factor: float, std_floor: float) -> dict[str, Any]:
    """Coverage, widths and ranking of the intervals on the test half."""
    mean, std, y, lo_q, hi_q = (torch.cat([t[k].reshape(-1) for t in test]) for k in range(5))
    per_image = [coverage(*std_interval(m, sd, factor, std_floor), yy)
                 for m, sd, yy, _, _ in test]  # how much coverage varies between images
    lo, hi = std_interval(mean, std, factor, std_floor)
    raw_lo, raw_hi = std_interval(mean, std, 1.0, std_floor)
    err = (y - mean).abs()
    return {
        "coverage": coverage(lo, hi, y), "mean_width": mean_width(lo, hi),
        "coverage_per_image": {"min": min(per_image), "median": statistics.median(per_image),
                               "max": max(per_image)},
        "coverage_raw_std": coverage(raw_lo, raw_hi, y),
        "mean_width_raw_std": mean_width(raw_lo, raw_hi),
        "coverage_quantile": coverage(lo_q, hi_q, y),
        "mean_width_quantile": mean_width(lo_q, hi_q),
        "spearman_std_abs_error": spearman(std, err), "ause": ause(std, err),
        "mean_std": float(std.double().mean()), "mean_abs_error": float(err.double().mean()),
        "elements": int(y.numel())}


def format_report(e: dict[str, Any]) -> str:
    t = e["test"]
    per = t["coverage_per_image"]
    target = 1 - e["alpha"]
    lines = [
        f"calibration x{e['scale']:g}, stages {e['stages_spec']} ({', '.join(e['stages'])}), "
        f"N={e['num_samples']}, {e['sampler']} {e['steps']} steps, projection {e['projection']}",
        f"data {e['data']}" + (f" (centre crops {e['crop']} px)" if e["crop"] else "")
        + f": fit on {e['fit_images']} images, tested on {e['test_images']} "
        f"({t['elements']:,} pixel values); plan {e['plan']}",
        f"factor {e['factor']:.3f}: intervals mean +- {e['factor']:.3f} x max(std, "
        f"{e['std_floor']:g})",
        f"  coverage      {100 * t['coverage']:.2f}%  (target >= {100 * target:.0f}%)  "
        f"mean width {t['mean_width']:.4f}",
        f"  per test image: coverage {100 * per['min']:.1f}% (min) / {100 * per['median']:.1f}% "
        f"(median) / {100 * per['max']:.1f}% (max)",
        f"  raw mean+-std {100 * t['coverage_raw_std']:.2f}%  mean width "
        f"{t['mean_width_raw_std']:.4f};  sample quantiles {100 * t['coverage_quantile']:.2f}%  "
        f"mean width {t['mean_width_quantile']:.4f}",
        f"  Spearman(std, |error|) {t['spearman_std_abs_error']:.3f}   AUSE {t['ause']:.4f}   "
        f"mean std {t['mean_std']:.4f}  mean |error| {t['mean_abs_error']:.4f}",
    ]
    if e["fit_images"] < MIN_FIT_IMAGES:
        lines.append(f"warning: fitted on {e['fit_images']} images; pixels of one image are "
                     f"not independent, so the coverage guarantee rests on the number of "
                     f"images: use {2 * MIN_FIT_IMAGES} or more")
    if "saved" in e:
        lines.append(f"saved: {e['saved']}")
    if "report" in e:
        lines.append(f"report: {e['report']}")
    return "\n".join(lines)
