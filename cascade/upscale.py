"""``cascade upscale``: files in; upscaled PNGs, samples, std maps and a ``run.json`` out.

Each input goes through the cascade (``cascade.pipeline``): LAINR, then the x2 diffusion
stages the plan asks for, N samples. Per input ``NAME`` and tag ``x{S}`` (or ``WxH`` for
``--size``) it writes ``NAME_x{S}.png`` (the mean of the samples, or the first sample with
``output=sample``) and, when the plan samples (diffusion) and N >= 2,
``NAME_x{S}_samples/sample_NN.png`` (written as they finish into ``.NAME_x{S}_samples.tmp/``,
renamed into place when all N are done, replacing an earlier run's) and ``NAME_x{S}_std.png`` (the
per-pixel std over the samples, mean of R, G, B, as a heatmap with a colour bar) and
``NAME_x{S}_interval.png`` (the width of the samples' empirical ``[alpha/2, 1 - alpha/2]``
quantile interval, from the written 8-bit samples; skipped, and said in ``run.json``, when
N x output pixels exceed ``QUANTILE_PIXELS``). Those two PNGs are figures (title, colour
bar); the same maps are also written as data, ``NAME_x{S}_std.tiff`` and
``NAME_x{S}_interval.tiff``: float32, one channel, H x W like the output, in the 0-1 units
of the pixel values (``MAP_UNITS``). ``run.json`` records the plans, the settings, the
timings, the map files and their units, and the mean interval widths (the calibrated one
too when ``cascade calibrate`` has fitted the pipeline for these stages).

With several inputs, one bad file is reported and skipped and the others are still
processed (exit status 1); a single input, or a run where every input fails, stops with
one error line (exit status 2) and leaves no output behind. Settings are checked before any
work, and an output larger than the memory budget (``cascade.memory``) fails before
anything is allocated. Outputs are written atomically, so an interrupted run leaves whole
files only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text, replace_dir, writable_dir
from cascade.config import load_config
from cascade.data.degrade import upscale_bicubic
from cascade.data.io import load_image, save_image, save_map, to_uint8
from cascade.data.sources import expand_inputs
from cascade.devices import resolve_device
from cascade.errors import CascadeError, ConfigError
from cascade.heatmap import save_heatmap
from cascade.memory import budget_megapixels, check_output_size
from cascade.pipeline import (
    CascadePipeline,
    PipelineConfig,
    StageSpec,
    check_scale,
    check_settings,
    make_plan,
    parse_size,
    target_size,
)
from cascade.scales import format_scale
from cascade.uncertainty import quantile_interval

# Quantile maps keep the samples as 8 bits: at most this many sample pixels (N x H x W) are
# held (3 bytes each: 384 MB), e.g. 8 samples of a 4096 x 4096 output.
QUANTILE_PIXELS = 128 * 2**20

# What the float32 map files hold (recorded in run.json beside their names).
MAP_FORMAT = "float32 TIFF, one channel, H x W pixel-aligned with the output"
MAP_UNITS = {
    "std": "per-pixel std of the N samples (N - 1 in the denominator), pixel values on the "
           "0-1 scale, mean of R, G, B (what NAME_std.png draws)",
    "interval": "width of the samples' empirical [alpha/2, 1 - alpha/2] quantile interval, "
                "from the 8-bit samples, 0-1 scale, mean of R, G, B (what NAME_interval.png "
                "draws)",
}


# What `cascade upscale` runs when neither --stages, the --config file nor an override says:
# LAINR alone. The diffusion stages still miss the realism and fidelity targets on photos
# unlike their training set (docs/pipeline.md, "Why LAINR alone by default"), so they run
# only on request (--stages auto | inr+1 | inr+2).
USER_STAGES = "inr"


def pipeline_settings(config: str | None = None, overrides: Sequence[str] = (),
                      defaults: dict[str, Any] | None = None, **flags: Any) -> PipelineConfig:
    """``defaults`` <- configs/pipeline.yaml-style file <- flags (None = not given) <-
    key=value overrides, checked (``--samples 0`` and friends fail here, before any work)."""
    extra = {k: v for k, v in flags.items() if v is not None}
    cfg = OmegaConf.to_object(load_config(PipelineConfig, config, list(overrides), extra,
                                          defaults))
    check_settings(cfg)
    return cfg


def upscale_files(inputs: list[str], scale: str | float | None, size: str | None,
                  stages: str | None = None, checkpoint: str | None = None,
                  out: str = "outputs/upscale", device: str = "cpu",
                  max_megapixels: float | None = None, pipeline: str = "checkpoints",
                  config: str | None = None, overrides: Sequence[str] = (),
                  **settings: Any) -> list[str]:
    """Upscale every input; returns the list of failures (``"path: reason"``).

    ``stages``: inr (default: LAINR alone), auto (every stage ``pipeline`` has), inr+1,
    inr+2, bicubic; N > 1 samples need a diffusion stage (one line otherwise);
    ``checkpoint``: a LAINR checkpoint replacing the pipeline's. ``settings``:
    ``PipelineConfig`` fields (num_samples, steps, sampler, projection, seed, output, ...).
    Raises CascadeError when nothing could be upscaled (one input that fails, or all).
    """
    s = check_scale(scale) if scale is not None else None
    wanted = parse_size(size) if size is not None else None
    if s is None and wanted is None:
        raise CascadeError("give --scale S (any real >= 1) or --size WIDTHxHEIGHT")
    cfg = pipeline_settings(config, overrides, defaults={"stages": USER_STAGES}, stages=stages,
                            **settings)
    _check_samples(cfg)
    budget_megapixels(max_megapixels)  # a bad budget fails before any work
    if len(inputs) == 1:
        files, failures = expand_inputs(inputs), []
    else:
        failures = []
        files = expand_inputs(inputs, failures)
        if not files:
            raise CascadeError(f"no images to upscale in {' '.join(map(str, inputs))}: "
                               f"{failures[0]}" + _more(len(failures) - 1))
        for f in failures:
            print(f"skipped {f}", file=sys.stderr)
    out_dir = Path(out)
    created = not out_dir.exists()
    writable_dir(out_dir, "choose a writable --out folder")
    try:
        _run(files, failures, s, wanted, cfg, checkpoint, pipeline, out_dir, device,
             max_megapixels)
    except BaseException:
        if created:  # leave nothing behind when nothing was written
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    return failures


def _check_samples(cfg: PipelineConfig, why: str = "") -> None:
    """N > 1 samples of a deterministic plan would be N equal images and zero std maps."""
    spec = StageSpec.parse(cfg.stages)
    if cfg.num_samples > 1 and spec.diffusion == 0:
        raise ConfigError(f"{cfg.num_samples} samples with --stages {cfg.stages}{why}: "
                          f"{'bicubic' if spec.bicubic else 'LAINR alone'} is deterministic "
                          "and every sample would be the same; add --stages auto for the "
                          "diffusion stages' samples and uncertainty maps")


def _load_pipeline(cfg: PipelineConfig, checkpoint: str | None, pipeline: str,
                   dev: torch.device) -> CascadePipeline | None:
    """The pipeline resolved for ``cfg`` (None for bicubic); a missing stage fails here
    (inr+2 without sr3_x2_b: one line, before any work)."""
    if cfg.stages == "bicubic":
        return None
    return CascadePipeline.from_pretrained(pipeline, lainr=checkpoint, config=cfg).to(dev)


def _run(files: list[Path], failures: list[str], s: float | None,
         wanted: tuple[int, int] | None, cfg: PipelineConfig, checkpoint: str | None,
         pipeline: str, out_dir: Path, device: str, max_megapixels: float | None) -> None:
    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CascadeError(f"--device {device} but no CUDA device is available; "
                           "use --device cpu or auto")
    pipe = _load_pipeline(cfg, checkpoint, pipeline, dev)
    if pipe is not None:
        cfg = pipe.config  # the stages resolved (auto -> inr+2)
        _check_samples(cfg, f" ({pipeline} has no x2 diffusion stage)")
    single = len(files) == 1
    records: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    first_of: dict[str, Path] = {}  # output stem -> the input that claimed it
    with tqdm(files, desc=f"upscale ({cfg.stages})", unit="img", dynamic_ncols=True,
              disable=single) as bar:
        for path in bar:
            try:
                if first_of.setdefault(path.stem, path) != path:
                    raise CascadeError(f"its outputs ({path.stem}_*) would overwrite those of "
                                       f"{first_of[path.stem]}; rename it or upscale it into "
                                       "another --out folder")
                img = load_image(path)
                in_hw = tuple(img.shape[-2:])
                H, W = target_size(in_hw, s, wanted)
                if pipe is None:  # the pipeline checks its own runs (diffusion or not)
                    check_output_size(in_hw, (H, W), max_megapixels, dense=True)
                tag = f"x{format_scale(s)}" if s is not None else f"{W}x{H}"
                name = f"{path.stem}_{tag}"  # NAME_x2.5 or NAME_640x480
                t0 = time.perf_counter()
                record = upscale_one(pipe, cfg, img, (H, W), out_dir, name, dev,
                                     max_megapixels)
                seconds = time.perf_counter() - t0
            except CascadeError as e:
                if single:
                    raise
                failures.append(f"{path}: {e}")
                tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
                continue
            settings = record.pop("settings")
            records.append({"input": str(path), **record, "in_size": list(in_hw),
                            "out_size": [H, W], "seconds": round(seconds, 4)})
            tqdm.write(f"{path} ({img.shape[-1]}x{img.shape[-2]}) -> {record['output']} "
                       f"({W}x{H}) in {seconds:.2f}s  [{record['plan']['summary']}]")
    if not records:
        raise CascadeError(f"none of the {len(files)} images could be upscaled (see the "
                           "lines above)")
    write_run_json(out_dir, cfg.stages, settings, pipe, dev, records, failures)


def write_run_json(out_dir: Path, stages: str, settings: dict[str, Any], pipe,
                   dev: torch.device, records: list[dict[str, Any]],
                   failures: list[str]) -> Path:
    """Write ``out_dir/run.json``: the resolved stages, the settings, what the pipeline is
    made of, the device, one record per output (``upscale_one``'s) and the failures."""
    run = {"stages": stages, "settings": settings,
           "pipeline": pipe.describe() if pipe is not None else {"bicubic": True},
           "device": str(dev), "outputs": records, "failures": failures}
    dest = out_dir / "run.json"
    atomic_write_text(dest, json.dumps(run, indent=2) + "\n")
    return dest


def upscale_one(pipe, cfg: PipelineConfig, img: torch.Tensor, out_hw: tuple[int, int],
                out_dir: Path, name: str, dev: torch.device,
                max_megapixels: float | None = None,
                on_sample: Callable[[int, torch.Tensor], None] | None = None
                ) -> dict[str, Any]:
    """Run one image through the pipeline and write its files; returns its run.json record
    (with the run's ``settings``, which ``_run`` moves to the top of run.json).

    ``pipe`` None is the bicubic baseline. ``on_sample(i, x)`` is called with each sample
    (3, H, W) after it is written (``cascade app`` shows progress and stops there)."""
    dest = out_dir / f"{name}.png"
    if pipe is None:
        return _bicubic_one(cfg, img, out_hw, dest, dev)
    plan = pipe.plan(tuple(img.shape[-2:]), out_hw, cfg.stages)
    n = int(cfg.num_samples)
    record: dict[str, Any] = {"output": str(dest)}
    final_samples = out_dir / f"{name}_samples"
    # Samples go into a temporary folder renamed into place at the end, so a rerun with
    # another N, or an interrupted one, never leaves a mix of two runs' samples.
    sample_dir = out_dir / f".{name}_samples.tmp"
    streamed = plan.stochastic and n > 1  # one stochastic sample is the output itself
    if sample_dir.exists():
        shutil.rmtree(sample_dir)

    H, W = out_hw
    kept: list[torch.Tensor] | None = [] if n * H * W <= QUANTILE_PIXELS else None

    def writer(i: int, x: torch.Tensor) -> None:
        if streamed:
            save_image(x, sample_dir / f"sample_{i:02d}.png")
            if kept is not None:
                kept.append(torch.from_numpy(to_uint8(x)))  # (H, W, 3): what the PNG holds
        if on_sample is not None:
            on_sample(i, x)

    if streamed:
        record["samples"] = str(final_samples)
    try:
        result = pipe(img, size=out_hw, keep_samples=False, max_megapixels=max_megapixels,
                      on_sample=writer, progress=True)
    except BaseException:
        shutil.rmtree(sample_dir, ignore_errors=True)
        raise
    save_image(result.image, dest)
    replace_dir(sample_dir if streamed else None, final_samples)
    if not streamed:  # maps an earlier run into this folder made and this one does not
        for stale in ("std", "interval"):
            _remove_map(out_dir, f"{name}_{stale}")
    if streamed:
        record.update(_std_maps(result, kept, cfg.alpha, out_dir, name))
    record.update({"plan": result.plan.to_dict(),
                   "timings": {k: round(v, 3) for k, v in result.timings.items()},
                   "settings": result.settings})
    return record


def _bicubic_one(cfg: PipelineConfig, img: torch.Tensor, out_hw: tuple[int, int], dest: Path,
                 dev: torch.device) -> dict[str, Any]:
    """The bicubic baseline (no model at all): the image and its run.json record."""
    with torch.no_grad():
        sr = upscale_bicubic(img[None].to(dev), out_hw).clamp(0, 1)
    save_image(sr[0].cpu(), dest)
    plan = make_plan(tuple(img.shape[-2:]), out_hw, [], "bicubic")
    return {"output": str(dest), "plan": plan.to_dict(), "timings": {},
            "settings": asdict(cfg)}


def _std_maps(result, kept: list[torch.Tensor] | None, alpha: float, out_dir: Path,
              name: str) -> dict[str, Any]:
    """Write NAME_std.png/.tiff and the interval maps; their run.json entries."""
    n = result.num_samples
    std_map = out_dir / f"{name}_std.png"
    std = result.std.mean(0)  # (H, W): the mean of the R, G, B stds
    save_heatmap(std, std_map, label=f"std over {n} samples (0-1 scale)",
                 title=f"{name}: per-pixel std of {n} samples ({result.plan.stages})")
    return {"std_map": str(std_map),
            "std_data": _map_data(std, out_dir / f"{name}_std.tiff", "std"),
            "std_mean": round(float(result.std.mean()), 6),
            "interval": _interval_maps(result, kept, alpha, out_dir, name)}


def quantile_width(samples: list[torch.Tensor], alpha: float, rows: int = 128) -> torch.Tensor:
    """Width of the empirical ``[alpha/2, 1 - alpha/2]`` interval over uint8 samples
    (each (H, W, 3), as ``cascade.data.io.to_uint8`` gives them), in [0, 1] units, mean of
    R, G, B: (H, W). Computed in bands of ``rows`` rows so the float copy stays small."""
    H = samples[0].shape[0]
    out = []
    for top in range(0, H, rows):
        band = torch.stack([s[top:top + rows] for s in samples]).float() / 255
        lo, hi = quantile_interval(band, alpha)  # (rows, W, 3) each
        out.append((hi - lo).mean(-1))
    return torch.cat(out)


def _interval_maps(result, kept: list[torch.Tensor] | None, alpha: float, out_dir: Path,
                   name: str) -> dict[str, Any]:
    """Write NAME_interval.png (the sample-quantile interval's width) and return the
    run.json record: mean widths of that interval and of the calibrated one."""
    n, level = result.num_samples, f"{100 * (1 - alpha):g}%"
    rec: dict[str, Any] = {"alpha": alpha}
    if kept is not None:
        width = quantile_width(kept, alpha)
        dest = out_dir / f"{name}_interval.png"
        save_heatmap(width, dest, label=f"{level} interval width (0-1 scale)",
                     title=f"{name}: width of the {level} quantile interval of {n} samples")
        rec.update(map=str(dest), quantile_width_mean=round(float(width.mean()), 6),
                   data=_map_data(width, out_dir / f"{name}_interval.tiff", "interval"))
    else:
        _remove_map(out_dir, f"{name}_interval")  # an earlier run's
        rec["map"] = None
        rec["note"] = (f"{n} samples x {result.mean[0].numel()} pixels exceed "
                       f"{QUANTILE_PIXELS} kept sample pixels: no quantile map")
    if result.calibration is not None:
        lo, hi = result.interval()
        c = result.calibration
        rec["calibrated"] = {"factor": c["factor"], "alpha": c.get("alpha"),
                             "fitted_at": {"scale": c["scale"], "num_samples": c["num_samples"]},
                             "match": c.get("match"),
                             "width_mean": round(float((hi - lo).mean()), 6)}
    return rec


def _map_data(value: torch.Tensor, dest: Path, kind: str) -> dict[str, str]:
    """Write a map (H, W) as float32 data; its run.json entry (file, format, units)."""
    save_map(value, dest)
    return {"file": str(dest), "format": MAP_FORMAT, "units": MAP_UNITS[kind]}


def _remove_map(out_dir: Path, stem: str) -> None:
    """Delete an earlier run's map (the figure and the data) that this run does not make."""
    for suffix in (".png", ".tiff"):
        (out_dir / f"{stem}{suffix}").unlink(missing_ok=True)


def _more(n: int) -> str:
    return f" (and {n} more)" if n else ""
