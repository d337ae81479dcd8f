"""What ``cascade app`` does, as plain functions a test can call without a browser.

* ``parse_request``: the page's settings -> a checked ``Request``, or the CLI's one-line
  ``CascadeError`` (impossible scale, bad size, 0 samples, unknown stages ...);
* ``Engine``: one ``CascadePipeline`` (the one ``cascade upscale`` loads), one job at a
  time, each job written the way ``cascade upscale`` writes it (``cascade.upscale.
  upscale_one``: the image, samples, std and interval maps as figures and as float32 data,
  ``run.json``) into its own folder, plus bicubic and LAINR at the same size to compare
  with and a zip of everything; ``Engine.cancel`` stops a running job within one sampler
  step (``cascade.app.progress``);
* ``overlay``: an uncertainty map (H, W) drawn over the output with a given opacity;
* ``builtin_input``: a small input made from one of the built-in test photos.

Nothing here imports gradio (``cascade.app.ui`` is the page).
"""

from __future__ import annotations

import itertools
import re
import shutil
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cascade import choices
from cascade.app.progress import listen
from cascade.data.datasets import BUILTIN_SPLITS, builtin_photos
from cascade.data.degrade import check_scale, degrade, upscale_bicubic
from cascade.data.io import load_image, save_image, to_uint8
from cascade.devices import resolve_device
from cascade.errors import CascadeError, ConfigError, ImageError
from cascade.heatmap import map_vmax
from cascade.memory import budget_megapixels
from cascade.pipeline import CascadePipeline, parse_size, rows_per_batch, target_size
from cascade.scales import format_scale
from cascade.upscale import pipeline_settings, upscale_one, write_run_json

# the --stages values the app offers (its comparisons include bicubic already)
STAGE_CHOICES = tuple(s for s in choices.STAGE_CHOICES if s != "bicubic")
MAP_KINDS = ("std", "interval")
BUILTIN_CROP, BUILTIN_FACTOR = 256, 4  # built-in photos: centre crop, then downscaled by this

# report(fraction in [0, 1], what is happening)
Report = Callable[[float, str], None]


class Cancelled(CascadeError):
    """The user stopped the job; nothing of it is kept."""


@dataclass
class Request:
    """One upscale the page asked for, checked."""

    image: Path
    scale: float | None  # exactly one of scale and size
    size: tuple[int, int] | None  # (H, W)
    cfg: Any  # cascade.pipeline.PipelineConfig: stages, num_samples, steps, seed


@dataclass
class Result:
    """The files of one finished job and what the page shows of them."""

    folder: Path
    output: Path  # NAME_xS.png: the mean of the samples (or LAINR's output)
    bicubic: Path
    lainr: Path
    samples: list[Path]
    maps: dict[str, Path] = field(default_factory=dict)  # kind -> float32 TIFF (std, interval)
    run_json: Path | None = None
    archive: Path | None = None
    in_size: tuple[int, int] = (0, 0)  # (H, W)
    out_size: tuple[int, int] = (0, 0)
    plan: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """Plan and timings as Markdown lines."""
        (h, w), (H, W) = self.in_size, self.out_size
        lines = [f"**{w}x{h} -> {W}x{H}** in {self.seconds:.2f} s", "",
                 f"plan: `{self.plan}`", "", "| step | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in self.timings.items()]
        return "\n".join(lines)


def _integer(value: Any, what: str, low: int) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} {value!r} is not a number; use an integer >= {low}") from None
    if not f.is_integer() or f < low:
        raise ConfigError(f"{what} {value!r} is impossible; use an integer >= {low}")
    return int(f)


def parse_request(image: str | Path | None, scale: Any = None, size: str | None = None,
                  samples: Any = 1, steps: Any = None, stages: str = "auto",
                  seed: Any = 0) -> Request:
    """The page's settings -> a ``Request``; the CLI's one-line CascadeError otherwise.

    A non-empty ``size`` (WIDTHxHEIGHT) wins over ``scale``; ``steps`` None or 0 means each
    stage's own default. The image file itself is read (and judged) when the job runs."""

    if not image:
        raise ImageError("no image: drop an image file or pick a built-in photo first")
    wanted = parse_size(size) if size and str(size).strip() else None
    s = None
    if wanted is None:
        if scale in (None, ""):
            raise ConfigError("give a scale (any real >= 1) or a size WIDTHxHEIGHT")
        s = check_scale(scale)
    if stages not in STAGE_CHOICES:
        raise ConfigError(f"--stages {stages!r} is unknown; use one of {', '.join(STAGE_CHOICES)}")
    n = _integer(samples, "--samples", 1)
    k = None if steps in (None, "", 0) else _integer(steps, "--steps", 1)
    cfg = pipeline_settings(stages=stages, num_samples=n, steps=k,
                            seed=_integer(seed, "--seed", 0))
    return Request(Path(image), s, wanted, cfg)


class Engine:
    """One loaded pipeline serving one job at a time (see the module docstring)."""

    def __init__(self, pipe, out_root: str | Path, device: str = "cpu",
                 max_megapixels: float | None = None, keep: int = 20) -> None:
        budget_megapixels(max_megapixels)  # a bad budget fails at start-up
        self.pipe = pipe
        self.defaults = pipe.config
        self.out_root = Path(out_root)
        self.device = torch.device(device)
        self.max_megapixels = max_megapixels
        self.keep = keep
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._owner: str | None = None
        self._ids = itertools.count(1)

    @classmethod
    def load(cls, pipeline: str | Path = "checkpoints", device: str = "cpu",
             out_root: str | Path = "outputs/app", max_megapixels: float | None = None,
             keep: int = 20) -> Engine:
        """Load the pipeline folder once (every stage it has), on ``device``."""
        dev = resolve_device(device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise CascadeError(f"--device {device} but no CUDA device is available; "
                               "use --device cpu or auto")
        pipe = CascadePipeline.from_pretrained(pipeline).to(dev)
        return cls(pipe, out_root, str(dev), max_megapixels, keep)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def cancel(self, owner: str | None = None) -> bool:
        """Stop the running job (only ``owner``'s when given) at its next sampler step;
        True when there was one to stop."""
        if not self.busy or (owner is not None and owner != self._owner):
            return False
        self._cancel.set()
        return True

    def run(self, req: Request, report: Report | None = None,
            owner: str | None = None) -> Result:
        """Run one job (waiting for the one before to finish); raises CascadeError with the
        CLI's one-line message for a bad image or an impossible size, ``Cancelled`` when
        stopped. A failed or stopped job leaves no folder behind."""
        with self._lock:
            self._cancel.clear()
            self._owner = owner
            try:
                return self._run(req, report or (lambda f, s: None))
            finally:
                self._owner = None

    def _run(self, req: Request, report: Report) -> Result:
        img = load_image(req.image)
        in_hw = (img.shape[-2], img.shape[-1])
        out_hw = target_size(in_hw, req.scale, req.size)
        cfg = req.cfg
        cfg.stages, _ = self.pipe.resolve_stages(cfg.stages)  # inr+2 without sr3_x2_b: one line
        plan = self.pipe.plan(in_hw, out_hw, cfg.stages, cfg)
        stem = _safe_stem(req.image)
        tag = f"x{format_scale(req.scale)}" if req.scale is not None else f"{out_hw[1]}x{out_hw[0]}"
        name = f"{stem}_{tag}"
        folder = self.out_root / f"{next(self._ids):04d}_{name}"
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        n = int(cfg.num_samples) if plan.stochastic else 1  # LAINR only: one output
        tracker = _Tracker(plan, n, rows_per_batch(cfg, *out_hw), self._cancel, report)
        try:
            self.pipe.config = cfg
            with listen(tracker.on_bar):
                record = upscale_one(self.pipe, cfg, img, out_hw, folder, name, self.device,
                                     self.max_megapixels, on_sample=tracker.on_sample)
            report(1.0, "bicubic and LAINR to compare with")
            bicubic, lainr = self._baselines(img, out_hw, plan, folder, name, record)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self.pipe.config = self.defaults
        seconds = time.perf_counter() - t0
        settings = record.pop("settings")
        record.update(input=str(req.image), in_size=list(in_hw), out_size=list(out_hw),
                      seconds=round(seconds, 4))
        run_json = write_run_json(folder, cfg.stages, settings, self.pipe, self.device,
                                  [record], [])
        result = Result(folder=folder, output=Path(record["output"]), bicubic=bicubic,
                        lainr=lainr, samples=_sample_files(record), maps=_map_files(record),
                        run_json=run_json, in_size=in_hw, out_size=out_hw,
                        plan=record["plan"]["summary"], timings=record["timings"],
                        seconds=seconds)
        result.archive = _zip(folder, folder / f"{name}.zip")
        self._prune()
        return result

    def _baselines(self, img: torch.Tensor, out_hw: tuple[int, int], plan, folder: Path,
                   name: str, record: dict[str, Any]) -> tuple[Path, Path]:
        """Bicubic and LAINR at the output size (LAINR is the output itself for a plan
        without diffusion); their seconds go into the record's timings."""
        t0 = time.perf_counter()
        with torch.no_grad():
            bic = upscale_bicubic(img[None], out_hw).clamp(0, 1)[0]
        bicubic = save_image(bic, folder / f"{name}_bicubic.png")
        record["timings"]["bicubic (comparison)"] = round(time.perf_counter() - t0, 3)
        if not plan.stochastic:
            return bicubic, Path(record["output"])
        t0 = time.perf_counter()
        out = self.pipe(img, size=out_hw, stages="inr", num_samples=1,
                        max_megapixels=self.max_megapixels)
        lainr = save_image(out.image, folder / f"{name}_lainr.png")
        record["timings"]["lainr (comparison)"] = round(time.perf_counter() - t0, 3)
        return bicubic, lainr

    def _prune(self) -> None:
        """Keep the newest ``keep`` job folders under ``out_root``."""
        jobs = sorted(p for p in self.out_root.iterdir()
                      if p.is_dir() and re.match(r"\d{4}_", p.name))
        for old in jobs[:-self.keep] if self.keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)


class _Tracker:
    """Turns the pipeline's bars and finished samples into ``report`` calls, and stops the
    job (``Cancelled``) once the cancel event is set. Samples are drawn in batches of
    ``rows``: a sampler step advances every sample of the batch."""

    def __init__(self, plan, n: int, rows: int, cancel: threading.Event,
                 report: Report) -> None:
        self.stages = [s.stage for s in plan.diffusion]
        self.n, self.rows, self.done, self.last = n, rows, 0, 0.0
        self.cancel, self.report = cancel, report

    def _check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"stopped after {self.done} of {self.n} sample(s); nothing was kept")

    def _say(self, fraction: float, text: str) -> None:
        self.last = max(self.last, min(fraction, 1.0))  # never backwards
        self.report(self.last, text)

    def on_bar(self, desc: str, done: int, total: int | None) -> None:
        self._check()
        if not total or desc.startswith("samples"):
            return  # the samples bar: counted by on_sample
        stage = next((i for i, s in enumerate(self.stages) if desc.startswith(f"{s} ")), None)
        batch = max(1, min(self.rows, self.n - self.done))
        fraction = self.last
        if stage is not None:  # a sampler's steps: this stage's share of the batch
            fraction = (self.done + batch * (stage + done / total) / len(self.stages)) / self.n
        elif not self.stages:  # LAINR only: its decode is the whole job
            fraction = done / total
        first, last = min(self.done + 1, self.n), min(self.done + batch, self.n)
        which = f"sample {first}" if first == last else f"samples {first}-{last}"
        self._say(fraction, f"{which} of {self.n}: {desc} {done}/{total}")

    def on_sample(self, i: int, x: torch.Tensor) -> None:
        self.done += 1
        self._say(self.done / self.n, f"{self.done} of {self.n} sample(s) done")
        self._check()


def _safe_stem(path: Path) -> str:
    """The input's name for output files (letters, digits, - and _ only)."""
    return re.sub(r"[^\w-]+", "_", path.stem)[:60] or "image"


def _sample_files(record: dict[str, Any]) -> list[Path]:
    folder = record.get("samples")
    if not folder:
        return [Path(record["output"])]
    return sorted(Path(folder).glob("sample_*.png"))


def _map_files(record: dict[str, Any]) -> dict[str, Path]:
    maps = {}
    if "std_data" in record:
        maps["std"] = Path(record["std_data"]["file"])
    data = record.get("interval", {}).get("data")
    if data:
        maps["interval"] = Path(data["file"])
    return maps


def _zip(folder: Path, dest: Path) -> Path:
    """Every file of the job (PNGs, samples, maps, run.json) in one zip for download."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path != dest:
                z.write(path, path.relative_to(folder))
    return dest


# -- what the page shows --------------------------------------------------------------------

def overlay(image: str | Path | torch.Tensor, value: torch.Tensor, opacity: float,
            vmax: float | None = None, cmap: str = "magma") -> np.ndarray:
    """An uncertainty map (H, W) over the image it describes: the map in ``cmap`` from 0 to
    ``vmax`` (default ``map_vmax``: its 99.5th percentile, as the heatmap PNGs), blended as
    ``(1 - opacity) * image + opacity * colour`` -> (H, W, 3) uint8."""
    from matplotlib import colormaps

    img = load_image(image) if isinstance(image, (str, Path)) else image
    if tuple(value.shape) != tuple(img.shape[-2:]):
        raise ConfigError(f"the map is {tuple(value.shape)} but the image "
                          f"{tuple(img.shape[-2:])}; they must be pixel-aligned")
    a = float(opacity)
    if not 0 <= a <= 1:
        raise ConfigError(f"opacity {opacity!r} is outside [0, 1]")
    top = map_vmax(value) if vmax is None else float(vmax)
    rgb = colormaps[cmap]((value.float() / top).clamp(0, 1).numpy())[..., :3]
    colour = torch.from_numpy(rgb).float().permute(2, 0, 1)
    return to_uint8((1 - a) * img.float() + a * colour)


def message(error: Exception, upload: str | Path | None = None) -> str:
    """The one line to show for ``error``: the CLI's message, with the upload's temporary
    path (the web server's copy) replaced by the file's own name."""
    text = str(error)
    if upload:
        text = text.replace(str(upload), Path(upload).name)
    return f"error: {text}"


def input_summary(path: str | Path | None) -> tuple[np.ndarray | None, str]:
    """An uploaded file -> (the image as uint8 to preview, 'WxH input'), or (None, the
    loader's one-line error) for a bad upload."""
    if not path:
        return None, ""
    try:
        img = load_image(path)
    except CascadeError as e:
        return None, message(e, path)
    return to_uint8(img), f"{Path(path).name}: {img.shape[-1]}x{img.shape[-2]} input"


def builtin_names() -> list[str]:
    """The built-in test photos offered in the page."""
    return list(BUILTIN_SPLITS["test"])


def builtin_input(name: str, folder: str | Path, crop: int = BUILTIN_CROP,
                  factor: int = BUILTIN_FACTOR) -> Path:
    """A built-in test photo's centre crop (``crop`` pixels a side) downscaled by ``factor``
    (the demo's inputs: 64x64), written to ``folder/NAME.png`` for the page to use."""
    photos = dict(builtin_photos("test"))
    if name not in photos:
        raise ImageError(f"no built-in photo {name!r}; pick one of {', '.join(photos)}")
    dest = Path(folder) / f"{name}.png"
    if not dest.is_file():
        img = load_image(photos[name])
        H, W = img.shape[-2:]
        ch, cw = min(crop, H), min(crop, W)
        top, left = (H - ch) // 2, (W - cw) // 2
        save_image(degrade(img[:, top:top + ch, left:left + cw], factor)[1], dest)
    return dest
