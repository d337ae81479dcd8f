"""The cascade: from an input image and a scale (or size) to N samples and their spread.

DESIGN.md section 2. A run is a short numbered loop over stage objects:

1. **plan** (``make_plan``): the diffusion stages take x2 steps at the end, as many as the
   scale allows (``m = min(k, floor(log2 s))`` for k stages, per axis for an exact size);
   the LAINR stage takes the rest, ``s / 2^m``, at the start. With no diffusion stage (or
   ``s < 2``) LAINR does everything. When the output size (H, W) is not divisible by 2^m,
   LAINR renders ``ceil(H / 2^m) x ceil(W / 2^m)`` pixels *on the output's lattice* (pixel
   pitch 2^m output pixels, so up to 2^m - 1 output pixels past the bottom/right edge) and
   the stages' output is cropped to (H, W): every output pixel sits exactly where a direct
   resample to (H, W) puts it, and no stage resamples by a non-integer factor near 1.
2. **LAINR** resamples the input to the first diffusion stage's input size (queries in
   chunks: memory bounded whatever the size);
3. **diffusion stages**, x2 each, sample i of stage j seeded by ``(seed, i)`` (j = 0, the
   stage's own convention) or ``(seed, i, j)``; each stage's network runs on overlapping
   tiles blended at every step (``cascade.diffusion.tiling``);
4. **samples -> mean, std** online (``cascade.uncertainty.RunningMoments``), each sample
   handed to ``on_sample`` as it finishes, so N samples of a large output are never held.

``CascadePipeline.from_pretrained(dir)`` loads a pipeline folder (``pipeline.json``, written
by ``save_pretrained``) or assembles one from a checkpoints folder holding ``lainr/`` and the
x2 stages ``sr3_x2/`` (and ``sr3_x2_b/``); ``calibration.json`` beside them holds the
conformal factors fitted by ``cascade calibrate``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from cascade.data.degrade import check_scale
from cascade.diffusion.tiling import TileConfig
from cascade.errors import CascadeError, CheckpointError, ConfigError, ScaleError
from cascade.inr.model import DECODE_CHUNK

__all__ = ["CascadeOutput", "CascadePipeline", "Plan", "PlanStep", "PipelineConfig",
           "check_scale", "make_plan", "parse_size", "target_size"]

FORMAT = "cascade-pipeline-v1"
CALIBRATION_FORMAT = "cascade-calibration-v1"
LAINR_FOLDER = "lainr"
# The x2 diffusion stages in cascade order: the first is trained on LAINR outputs of real
# LR images, the second at the first stage's output resolution (docs/pipeline.md).
DIFFUSION_FOLDERS = ("sr3_x2", "sr3_x2_b")
STAGE_CHOICES = ("auto", "inr", "inr+1", "inr+2", "bicubic")
OUTPUTS = ("mean", "sample")


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' (width x height) -> (480, 640) as (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ScaleError(f"--size {text!r} is not WIDTHxHEIGHT with positive integers (e.g. 640x480)")
    return int(m.group(2)), int(m.group(1))


def target_size(in_hw: tuple[int, int], scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """Output (H, W) for an input (h, w): round(h*s) x round(w*s), or the exact ``size``.

    With both, they must agree to within one pixel per side; a size smaller than the input
    is refused (this is an upscaler: downscale with ``cascade.data.degrade.imresize``).
    """
    h, w = in_hw
    if scale is None and size is None:
        raise ScaleError("give --scale S or --size WxH")
    if scale is not None:
        s = check_scale(scale)
        by_scale = (max(1, round(h * s)), max(1, round(w * s)))
        if size is None:
            return by_scale
        if abs(size[0] - by_scale[0]) > 1 or abs(size[1] - by_scale[1]) > 1:
            raise ScaleError(f"--size {size[1]}x{size[0]} conflicts with --scale {scale:g} for a "
                             f"{w}x{h} input ({by_scale[1]}x{by_scale[0]}); give only one")
    assert size is not None
    if size[0] < h or size[1] < w:
        raise ScaleError(f"--size {size[1]}x{size[0]} is smaller than the {w}x{h} input; "
                         "cascade only upscales")
    return size


# -- settings ---------------------------------------------------------------------------------

@dataclass
class PipelineConfig:
    """Settings of a cascade run (configs/pipeline.yaml; ``key=value`` overrides)."""

    stages: str = "auto"  # auto (every stage the pipeline has) | inr | inr+1 | inr+2 | bicubic
    num_samples: int = 1
    seed: int = 0
    # Sampler knobs of the diffusion stages; None = the stage's own default (its checkpoint).
    sampler: Optional[str] = None  # ddpm | ddim | dpm
    steps: Optional[int] = None
    eta: Optional[float] = None
    temperature: Optional[float] = None
    aug_level: Optional[float] = None
    projection: Optional[float] = None
    # Highest temperature of a diffusion stage whose sample feeds another diffusion stage
    # (the first of the two x2 stages at x4): its invented texture is the next stage's
    # conditioning and gets amplified, so it samples cooler (docs/pipeline.md, "Sampling
    # temperatures of the chain"). None: no cap; an explicit ``temperature`` sets every stage.
    chain_temperature: Optional[float] = 0.9
    output: str = "mean"  # what NAME_x{S}.png holds: mean (of the N samples) | sample (the 1st)
    tiling: TileConfig = field(default_factory=TileConfig)
    lainr_chunk: int = DECODE_CHUNK  # LAINR queries decoded at once
    max_batch: int = 8  # samples drawn together ...
    batch_megapixels: float = 0.5  # ... as long as samples x output pixels stay below this
    alpha: float = 0.1  # intervals cover with probability >= 1 - alpha (cascade calibrate)
    std_floor: float = 0.002  # smallest std an interval is built on (~half a grey level)


KNOBS = ("sampler", "steps", "eta", "temperature", "aug_level", "projection")


def merge_settings(base: PipelineConfig, **overrides: Any) -> PipelineConfig:
    """``base`` with the ``overrides`` that are not None, checked."""
    known = {f for f in asdict(base)}
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown pipeline option(s) {sorted(unknown)}; known: {sorted(known)}")
    tiling = overrides.pop("tiling", None)
    cfg = PipelineConfig(**{**asdict(base), "tiling": base.tiling,
                            **{k: v for k, v in overrides.items() if v is not None}})
    if isinstance(tiling, dict):
        unknown = set(tiling) - set(asdict(base.tiling))
        if unknown:
            raise ConfigError(f"unknown tiling option(s) {sorted(unknown)}; known: "
                              f"{sorted(asdict(base.tiling))}")
        cfg.tiling = TileConfig(**{**asdict(base.tiling), **tiling})
    elif tiling is not None:
        cfg.tiling = tiling
    check_settings(cfg)
    return cfg


def check_settings(cfg: PipelineConfig) -> None:
    """One-line errors for settings that cannot work, before anything runs."""
    if int(cfg.num_samples) < 1:
        raise ConfigError(f"--samples {cfg.num_samples} is impossible; draw at least 1 sample")
    if cfg.stages not in STAGE_CHOICES:
        raise ConfigError(f"--stages {cfg.stages!r} is unknown; use one of "
                          f"{', '.join(STAGE_CHOICES)}")
    if cfg.output not in OUTPUTS:
        raise ConfigError(f"output={cfg.output!r}; use mean or sample")
    if cfg.steps is not None and int(cfg.steps) < 1:
        raise ConfigError(f"--steps {cfg.steps} is impossible; use 1 or more")
    if cfg.projection is not None and not 0 <= float(cfg.projection) <= 1:
        raise ConfigError(f"--projection {cfg.projection} is outside [0, 1]")
    if cfg.sampler is not None and cfg.sampler not in ("ddpm", "ddim", "dpm"):
        raise ConfigError(f"--sampler {cfg.sampler!r} is unknown; use ddpm, ddim or dpm")
    if not 0 < float(cfg.alpha) < 1:
        raise ConfigError(f"alpha={cfg.alpha} is outside (0, 1); use e.g. 0.1")
    if cfg.lainr_chunk < 1 or cfg.max_batch < 1 or cfg.batch_megapixels <= 0:
        raise ConfigError("lainr_chunk, max_batch and batch_megapixels must be positive")
    if not 0 <= int(cfg.seed) < 2**32:
        raise ConfigError(f"--seed {cfg.seed} is outside [0, 2^32); use e.g. 0")
    if cfg.chain_temperature is not None and not float(cfg.chain_temperature) >= 0:
        raise ConfigError(f"chain_temperature={cfg.chain_temperature} must be >= 0 (or null: "
                          "each stage's own default)")
    if not float(cfg.std_floor) > 0:
        raise ConfigError(f"std_floor={cfg.std_floor} must be > 0 (e.g. 0.002, half a grey "
                          "level): pixels where all samples agree would get infinite scores")
    t = cfg.tiling
    if int(t.batch) < 1 or int(t.overlap) < 0 or int(t.tile) < -1 or int(t.norm_tiles) < 0 \
            or int(t.norm_tiles) == 1:
        raise ConfigError(f"tiling {asdict(t)}: tile is -1, 0 (auto) or a side in pixels, "
                          "overlap >= 0, batch >= 1, norm_tiles 0 (all) or >= 2")


def stage_knobs(cfg: PipelineConfig, stages: Sequence[Any]) -> list[Any]:
    """The sampler settings each stage of a chain runs with: the settings ``cfg`` gives,
    else the stage's own defaults; a stage that feeds another samples at most at
    ``cfg.chain_temperature`` unless ``cfg.temperature`` is set."""
    from dataclasses import replace

    knobs = {k: getattr(cfg, k) for k in KNOBS}
    out = []
    for j, stage in enumerate(stages):
        k = stage.knobs(**knobs)
        if cfg.temperature is None and cfg.chain_temperature is not None \
                and j < len(stages) - 1:
            k = replace(k, temperature=min(k.temperature, float(cfg.chain_temperature)))
        out.append(k)
    return out


def stages_needed(spec: str) -> int | None:
    """Diffusion stages ``--stages spec`` uses at most (None: all there are)."""
    if spec not in STAGE_CHOICES:
        raise ConfigError(f"--stages {spec!r} is unknown; use one of {', '.join(STAGE_CHOICES)}")
    if spec == "auto":
        return None
    return 0 if spec in ("inr", "bicubic") else int(spec.split("+")[1])


# -- the plan ---------------------------------------------------------------------------------

@dataclass
class PlanStep:
    stage: str  # lainr | bicubic | a diffusion stage's folder name
    kind: str  # resample | diffusion
    in_size: tuple[int, int]  # (h, w)
    out_size: tuple[int, int]  # (H, W) this step produces (before the final crop)
    scale: tuple[float, float]  # (y, x): input pixel pitch / output pixel pitch
    tiles: int = 1  # diffusion: network tiles per step (after the stage's padding)

    def describe(self) -> str:
        sy, sx = self.scale
        s = f"x{sy:.4g}" if abs(sy - sx) < 1e-9 else f"x{sy:.4g}/x{sx:.4g}"
        tiles = f", {self.tiles} tiles" if self.tiles > 1 else ""
        return f"{self.stage} {s}{tiles} -> {_wxh(self.out_size)}"


@dataclass
class Plan:
    in_size: tuple[int, int]
    out_size: tuple[int, int]
    steps: list[PlanStep]
    stages: str  # the resolved --stages: inr, inr+1, inr+2 or bicubic
    notes: list[str] = field(default_factory=list)

    @property
    def stochastic(self) -> bool:
        return any(s.kind == "diffusion" for s in self.steps)

    @property
    def diffusion(self) -> list[PlanStep]:
        return [s for s in self.steps if s.kind == "diffusion"]

    def describe(self) -> str:
        """'120x80 -> lainr x1.5 -> 180x120 -> sr3_x2 x2 -> 360x240' plus its notes."""
        text = " -> ".join([_wxh(self.in_size)] + [s.describe() for s in self.steps])
        final = self.steps[-1].out_size if self.steps else self.in_size
        if tuple(final) != tuple(self.out_size):
            text += f" -> crop {_wxh(self.out_size)}"
        return "; ".join([text] + self.notes)

    def to_dict(self) -> dict[str, Any]:
        return {"in_size": list(self.in_size), "out_size": list(self.out_size),
                "stages": self.stages, "steps": [asdict(s) for s in self.steps],
                "notes": list(self.notes), "summary": self.describe()}


def _wxh(hw: Sequence[int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def make_plan(in_hw: tuple[int, int], out_hw: tuple[int, int], diffusion: Sequence[str],
              stages: str = "inr", lainr: str = "lainr") -> Plan:
    """Which stage runs at which size (the rules are in the module docstring).

    ``diffusion``: the names of the x2 stages the run may use, in cascade order; the first
    ``m`` of them run, ``m = min(len(diffusion), max j with H >= 2^j h and W >= 2^j w)``.
    """
    (h, w), (H, W) = (int(v) for v in in_hw), (int(v) for v in out_hw)
    if stages == "bicubic":
        return Plan((h, w), (H, W), [PlanStep("bicubic", "resample", (h, w), (H, W),
                                              (H / h, W / w))], "bicubic")
    k = len(diffusion)
    m = 0
    while m < k and H >= 2 ** (m + 1) * h and W >= 2 ** (m + 1) * w:
        m += 1
    f = 2**m
    h1, w1 = math.ceil(H / f), math.ceil(W / f)
    notes = []
    steps: list[PlanStep] = []
    if m == 0 or (h1, w1) != (h, w) or (H, W) != (f * h, f * w):
        steps.append(PlanStep(lainr, "resample", (h, w), (h1, w1), (H / f / h, W / f / w)))
    size = (h1, w1)
    for name in diffusion[:m]:
        nxt = (size[0] * 2, size[1] * 2)
        steps.append(PlanStep(name, "diffusion", size, nxt, (2.0, 2.0)))
        size = nxt
    if m < k:
        why = ("the scale is below 2" if m == 0 else f"x{min(H / h, W / w):.4g} needs only {m} "
               "x2 step" + ("s" if m > 1 else ""))
        notes.append(f"{k - m} of {k} diffusion stage(s) unused: {why}")
    if size != (H, W):
        notes.append(f"LAINR renders {_wxh((h1, w1))} on the output's lattice "
                     f"({size[1] - W}x{size[0] - H} px past the right/bottom edge), "
                     f"the diffusion output is cropped to {_wxh((H, W))}")
    return Plan((h, w), (H, W), steps, stages, notes)


# -- the run's result -------------------------------------------------------------------------

@dataclass
class CascadeOutput:
    """What ``pipe(image, ...)`` returns. Tensors are float32 on the CPU, in [0, 1]."""

    plan: Plan
    mean: Tensor  # (3, H, W) per-pixel mean of the N samples
    std: Tensor  # (3, H, W) per-pixel std (N - 1 in the denominator; zeros for N = 1)
    first: Tensor  # (3, H, W) sample 0
    samples: Tensor | None  # (N, 3, H, W), None when the run did not keep them
    num_samples: int
    settings: dict[str, Any]
    timings: dict[str, float]
    calibration: dict[str, Any] | None = None  # the conformal factor this run's intervals use

    @property
    def image(self) -> Tensor:
        """The output image the settings ask for: the mean or the first sample."""
        return self.first if self.settings.get("output") == "sample" else self.mean

    def quantiles(self, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
        """Empirical (alpha/2, 1 - alpha/2) quantiles over the samples: (3, H, W) each."""
        from cascade.uncertainty import quantile_interval

        if self.samples is None:
            raise CascadeError("this run did not keep its samples; call the pipeline with "
                               "keep_samples=True for quantile intervals")
        return quantile_interval(self.samples, alpha)

    def interval(self) -> tuple[Tensor, Tensor]:
        """Calibrated interval ``mean +- factor * max(std, floor)`` (``cascade calibrate``)."""
        from cascade.uncertainty import std_interval

        if self.calibration is None:
            raise CascadeError("this pipeline is not calibrated for these stages; run "
                               "'cascade calibrate --data DIR --scale S' first")
        c = self.calibration
        return std_interval(self.mean, self.std, c["factor"], c["std_floor"])


# -- the pipeline -----------------------------------------------------------------------------

@dataclass
class _Diffusion:
    name: str  # folder name: sr3_x2, sr3_x2_b
    stage: Any  # SR3Stage
    source: Path | None  # its checkpoint folder (None: built in memory)


class CascadePipeline:
    """LAINR + x2 diffusion stages + uncertainty (see the module docstring).

    >>> pipe = CascadePipeline.from_pretrained("checkpoints")       # doctest: +SKIP
    >>> out = pipe(lr, scale=4, num_samples=8, steps=20, seed=0)   # doctest: +SKIP
    >>> out.samples.shape, out.mean.shape, out.std.shape, out.plan  # doctest: +SKIP
    """

    def __init__(self, lainr, diffusion: Sequence[tuple[str, Any]] = (),
                 config: PipelineConfig | None = None,
                 calibration: list[dict[str, Any]] | None = None,
                 lainr_source: Path | None = None,
                 diffusion_sources: Sequence[Path | None] | None = None,
                 home: Path | None = None) -> None:
        self.lainr = lainr.eval().requires_grad_(False)
        sources = list(diffusion_sources or [None] * len(diffusion))
        self.diffusion = [_Diffusion(n, s, src) for (n, s), src in zip(diffusion, sources)]
        self.config = config or PipelineConfig()
        check_settings(self.config)
        self.calibration = list(calibration or [])
        self.lainr_source = lainr_source
        self.home = home  # the folder it was loaded from (cascade calibrate writes there)
        self.device = torch.device("cpu")

    # -- loading and saving -------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path = "checkpoints", lainr: str | Path | None = None,
                        max_diffusion: int | None = None, **settings: Any) -> CascadePipeline:
        """A pipeline folder (``pipeline.json``) or a checkpoints folder with ``lainr/`` and
        ``sr3_x2/`` (+ ``sr3_x2_b/``); ``lainr`` replaces the LAINR checkpoint;
        ``max_diffusion`` loads at most that many diffusion stages; ``settings`` override the
        folder's defaults (``PipelineConfig`` fields). Float32 on the CPU."""
        from cascade.diffusion.pretrained import load_sr3
        from cascade.inr.pretrained import load_lainr
        from cascade.paths import resolve_repo_path

        root = resolve_repo_path(path)
        if root.is_file() and root.name == "pipeline.json":
            root = root.parent
        if not root.is_dir():
            raise CheckpointError(f"pipeline folder {str(path)!r} not found; pass a folder "
                                  "written by save_pretrained or one holding lainr/ and sr3_x2/")
        meta = _read_json(root / "pipeline.json") if (root / "pipeline.json").is_file() else None
        if meta is not None:
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{root / 'pipeline.json'} is not a {FORMAT} file; "
                                      "re-save the pipeline with save_pretrained")
            lainr_dir = root / meta["lainr"]
            entries = [(d["name"], root / d["path"], d.get("conditioning")) for d in
                       meta.get("diffusion", [])]
            base = _config_from(meta.get("config", {}))
        else:
            lainr_dir = root / LAINR_FOLDER
            if not lainr_dir.is_dir() and lainr is None:
                raise CheckpointError(f"{str(root)!r} has neither pipeline.json nor lainr/; pass "
                                      "a folder written by save_pretrained or one holding "
                                      "lainr/ (and sr3_x2/, sr3_x2_b/)")
            entries = []
            for name in DIFFUSION_FOLDERS:  # in cascade order; stop at the first missing one
                if not (root / name / "checkpoint.json").is_file():
                    break
                entries.append((name, root / name, None))
            base = PipelineConfig()
        lainr_dir = resolve_repo_path(lainr) if lainr is not None else lainr_dir
        entries = entries[:max_diffusion] if max_diffusion is not None else entries
        model = load_lainr(lainr_dir)
        stages, sources = [], []
        for name, folder, cond in entries:
            if cond is None:  # the conditioning upsampler its training config names
                stage = load_sr3(folder)
            else:
                from cascade.upsamplers import make_upsampler

                stage = load_sr3(folder, with_upsampler=False)
                stage.upsampler = make_upsampler(
                    {"name": "bicubic"} if cond == "bicubic"
                    else {"name": "lainr", "args": {"checkpoint": str(root / cond)}})
            stages.append((name, stage))
            sources.append(folder)
        calibration = load_calibration(root)
        return cls(model, stages, merge_settings(base, **settings), calibration,
                   lainr_source=lainr_dir, diffusion_sources=sources, home=root)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a self-contained pipeline folder: ``pipeline.json``, the stage checkpoints
        (copied), the LAINR checkpoints their conditioning uses, ``calibration.json``.
        Written under a temporary name and renamed into place (the folder it replaces is
        moved aside first and put back by the next save if a crash came in between)."""
        from cascade.atomic import recover_dir, replace_dir

        if self.lainr_source is None or any(d.source is None for d in self.diffusion):
            raise CascadeError("this pipeline was built from in-memory models; build it from "
                               "checkpoint folders (from_pretrained) to save it")
        dest = Path(path)
        tmp = dest.with_name(f".{dest.name}.tmp")
        recover_dir(dest)  # a save cut off between its two renames
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            self._write_folder(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_dir(tmp, dest)
        return dest

    def _write_folder(self, tmp: Path) -> None:
        """The files of ``save_pretrained`` into the (new, empty) folder ``tmp``."""
        from cascade.atomic import atomic_write_text
        from cascade.checkpoint import load_checkpoint

        shutil.copytree(self.lainr_source, tmp / LAINR_FOLDER)
        copied = {load_checkpoint(self.lainr_source).meta["sha256"]: LAINR_FOLDER}
        entries = []
        for d in self.diffusion:
            shutil.copytree(d.source, tmp / d.name, dirs_exist_ok=True)
            spec = getattr(d.stage.upsampler, "spec", None) or {"name": "bicubic"}
            cond = "bicubic"
            if spec["name"] == "lainr":
                cond_dir = Path(spec["args"]["checkpoint"])
                from cascade.paths import resolve_repo_path

                sha = load_checkpoint(resolve_repo_path(cond_dir)).meta["sha256"]
                if sha not in copied:
                    copied[sha] = f"{d.name}_conditioning"
                    shutil.copytree(resolve_repo_path(cond_dir), tmp / copied[sha])
                cond = copied[sha]
            entries.append({"name": d.name, "path": d.name, "conditioning": cond})
        meta = {"format": FORMAT, "lainr": LAINR_FOLDER, "diffusion": entries,
                "config": _config_dict(self.config)}
        atomic_write_text(tmp / "pipeline.json", json.dumps(meta, indent=2) + "\n")
        if self.calibration:
            _write_calibration(tmp, self.calibration)

    def to(self, device: torch.device | str) -> CascadePipeline:
        self.device = torch.device(device)
        self.lainr.to(self.device)
        for d in self.diffusion:
            d.stage.to(self.device)
        return self

    # -- planning -----------------------------------------------------------------------------

    def resolve_stages(self, stages: str | None = None) -> tuple[str, list[_Diffusion]]:
        """``--stages`` -> (the resolved spec, the diffusion stages it may use)."""
        spec = stages or self.config.stages
        stages_needed(spec)  # an unknown name fails here
        if spec == "bicubic":
            return spec, []
        if spec == "auto":
            k = len(self.diffusion)
            return ("inr" if k == 0 else f"inr+{k}"), list(self.diffusion)
        k = 0 if spec == "inr" else int(spec.split("+")[1])
        if k > len(self.diffusion):
            where = self.home if self.home is not None else Path("checkpoints")
            missing = where / DIFFUSION_FOLDERS[len(self.diffusion)]
            nth = ("a", "a second")[min(len(self.diffusion), 1)]
            raise CheckpointError(
                f"--stages {spec} needs {nth} x2 diffusion stage at {missing}, which does not "
                f"exist; train it (docs/pipeline.md) or use --stages "
                f"{'inr' if not self.diffusion else f'inr+{len(self.diffusion)}'}")
        return spec, list(self.diffusion[:k])

    def plan(self, in_hw: tuple[int, int], out_hw: tuple[int, int],
             stages: str | None = None, cfg: PipelineConfig | None = None) -> Plan:
        cfg = cfg or self.config
        spec, diffusion = self.resolve_stages(stages)
        plan = make_plan(in_hw, out_hw, [d.name for d in diffusion], spec)
        by_name = {d.name: d for d in diffusion}
        rows = rows_per_batch(cfg, *out_hw)
        for step in plan.diffusion:
            stage = by_name[step.stage].stage
            step.tiles = len(self._denoiser(stage, cfg.tiling)
                             .tiles_for(*_padded(stage, step.in_size), rows))
        return plan

    def _denoiser(self, stage, tiling: TileConfig, progress: bool = False, rows: int = 1):
        """``rows``: the run's samples per batch; the tiling decision is made for that many,
        so a smaller last batch is tiled like the others (sample i does not depend on N)."""
        from cascade.diffusion.tiling import TiledDenoiser, auto_tiling

        tile, overlap, untiled = auto_tiling(tiling, self.device, stage.unet.downsample_factor)
        return TiledDenoiser(stage.unet, tile, overlap, tiling.batch, progress=progress,
                             global_norm=tiling.global_norm, untiled_pixels=untiled,
                             norm_tiles=tiling.norm_tiles, min_rows=rows)

    # -- running ------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, image: Tensor | str | Path, scale: float | None = None,
                 size: tuple[int, int] | None = None, *, num_samples: int | None = None,
                 steps: int | None = None, sampler: str | None = None,
                 projection: float | None = None, seed: int | None = None,
                 stages: str | None = None, progress: bool = False, keep_samples: bool = True,
                 on_sample: Callable[[int, Tensor], None] | None = None,
                 max_megapixels: float | None = None, **settings: Any) -> CascadeOutput:
        """Upscale ``image`` ((3, h, w) or (1, 3, h, w) in [0, 1], or an image file) by
        ``scale`` or to ``size`` (H, W): N samples, their mean and std, and the plan.

        ``settings``: any other ``PipelineConfig`` field (``output``, ``tiling``, ...).
        ``on_sample(i, x)`` gets each sample (3, H, W) as it finishes; ``keep_samples=False``
        keeps only mean, std and sample 0 (bounded memory for large N and outputs).
        An output over the memory budget (``max_megapixels``, default: what fits in the
        memory available, ``cascade.memory``) is refused before anything is allocated.
        """
        cfg = merge_settings(self.config, num_samples=num_samples, steps=steps, sampler=sampler,
                             projection=projection, seed=seed, stages=stages, **settings)
        lr = self._as_batch(image)
        in_hw = (lr.shape[-2], lr.shape[-1])
        out_hw = target_size(in_hw, scale, size)
        plan = self.plan(in_hw, out_hw, cfg.stages, cfg)
        from cascade.memory import check_output_size

        check_output_size(in_hw, out_hw, max_megapixels, diffusion=plan.stochastic)
        n = int(cfg.num_samples)
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        first_step = plan.steps[0]
        t0 = time.perf_counter()
        if first_step.stage == "bicubic":
            from cascade.data.degrade import upscale_bicubic

            x = upscale_bicubic(lr, out_hw).clamp(0, 1)
        elif first_step.kind == "resample":
            x = lainr_resample(self.lainr, lr, first_step.out_size, _virtual(plan),
                               cfg.lainr_chunk, progress).clamp(0, 1)
        else:
            x = lr
        if first_step.kind == "resample":
            timings[first_step.stage] = time.perf_counter() - t0
        if not plan.stochastic:
            out = x[0].cpu().float()
            timings["total"] = time.perf_counter() - t_all
            if on_sample is not None:
                on_sample(0, out)
            return CascadeOutput(plan, out, torch.zeros_like(out), out,
                                 out.expand(n, *out.shape) if keep_samples else None, n,
                                 _settings(cfg), timings)
        return self._sample(x, plan, cfg, progress, keep_samples, on_sample, timings, t_all)

    def _sample(self, x: Tensor, plan: Plan, cfg: PipelineConfig, progress: bool,
                keep_samples: bool, on_sample, timings: dict[str, float],
                t_all: float) -> CascadeOutput:
        from cascade.seeding import generator_for
        from cascade.uncertainty import RunningMoments

        H, W = plan.out_size
        n = int(cfg.num_samples)
        by_name = {d.name: d.stage for d in self.diffusion}
        stages = [(step, by_name[step.stage]) for step in plan.diffusion]
        resolved = stage_knobs(cfg, [stage for _, stage in stages])  # checks the knobs
        rows = rows_per_batch(cfg, H, W)
        denoisers = [self._denoiser(stage, cfg.tiling, progress=progress and step.tiles > 8,
                                    rows=min(rows, n)) for step, stage in stages]
        # The first stage's conditioning does not depend on the sample: compute it once.
        step0, stage0 = stages[0]
        t0 = time.perf_counter()
        cond0 = _condition(stage0, x.to(stage0.device), step0.out_size, progress)
        timings[f"{step0.stage}.conditioning"] = time.perf_counter() - t0
        moments, kept, first = RunningMoments(), [], None
        with tqdm(total=n, desc=f"samples ({plan.stages})", unit="sample", leave=False,
                  disable=not progress, dynamic_ncols=True) as bar:  # closed on errors too
            for start in range(0, n, rows):
                batch = list(range(start, min(n, start + rows)))
                y = x.expand(len(batch), -1, -1, -1)
                for j, ((step, stage), k, den) in enumerate(zip(stages, resolved, denoisers)):
                    t0 = time.perf_counter()
                    if j == 0:
                        cond = cond0.expand(len(batch), -1, -1, -1)
                    else:
                        cond = _condition(stage, y.to(stage.device), step.out_size, progress)
                        key = f"{step.stage}.conditioning"
                        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0
                        t0 = time.perf_counter()
                    gens = [generator_for(cfg.seed, i) if j == 0
                            else generator_for(cfg.seed, i, j) for i in batch]
                    y = stage.draw(y.to(stage.device), cond.to(stage.device), gens, k,
                                   progress=progress, denoise_fn=den,
                                   desc=f"{step.stage} {k.sampler} {k.steps} steps")
                    timings[step.stage] = (timings.get(step.stage, 0.0)
                                           + time.perf_counter() - t0)
                done = y[:, :, :H, :W].to("cpu", torch.float32)  # (R, 3, H, W)
                moments.update(done)
                for r, i in enumerate(batch):
                    if first is None:
                        first = done[r].clone()
                    if on_sample is not None:
                        on_sample(i, done[r])
                    if keep_samples:
                        kept.append(done[r])
                bar.update(len(batch))
                del y, done
        timings["total"] = time.perf_counter() - t_all
        assert moments.mean is not None and first is not None
        samples = torch.stack(kept) if keep_samples else None
        settings = _settings(cfg, resolved[0])
        settings["stage_settings"] = {step.stage: {kk: getattr(k, kk) for kk in KNOBS}
                                      for (step, _), k in zip(stages, resolved)}
        out = CascadeOutput(plan, moments.mean, moments.std(), first, samples, n, settings,
                            timings)
        out.calibration = self.calibration_for(plan, n, cfg.alpha, settings["stage_settings"])
        return out

    def calibration_for(self, plan: Plan, num_samples: int, alpha: float | None = None,
                        stage_settings: dict[str, dict[str, Any]] | None = None
                        ) -> dict[str, Any] | None:
        """The calibration entry for this plan's stages (and ``alpha`` if given): the same
        scale and N if there is one, else the nearest scale (log ratio), then the nearest N.
        The copy returned says under ``match`` whether it was fitted for exactly this run
        (``exact``) and what differs (``differs``: scale, num_samples, a stage's sampler knob
        in ``stage_settings`` ({stage: {knob: value}}), or the stage weights)."""
        names = [s.stage for s in plan.diffusion]
        entries = [e for e in self.calibration if e.get("stages") == names
                   and (alpha is None or abs(e.get("alpha", 0.1) - alpha) < 1e-9)]
        if not entries:
            return None
        scale = max(plan.out_size[0] / plan.in_size[0], plan.out_size[1] / plan.in_size[1])
        best = min(entries, key=lambda e: (abs(math.log(e["scale"] / scale)),
                                           abs(e["num_samples"] - num_samples)))
        differs = []
        if abs(best["scale"] - scale) > 1e-6 * scale:
            differs.append(f"scale (fitted at x{best['scale']:g})")
        if best["num_samples"] != num_samples:
            differs.append(f"num_samples (fitted with {best['num_samples']})")
        fitted = best.get("stage_settings") or {}
        for stage, knobs in (stage_settings or {}).items():
            for k, v in knobs.items():
                was = fitted.get(stage, {}).get(k, v)
                if was != v:
                    differs.append(f"{stage} {k} (fitted with {was})")
        weights = best.get("weights")
        if weights is not None and any(weights.get(k) != v for k, v in self.fingerprint().items()
                                       if k in names or k == LAINR_FOLDER):
            differs.append("stage weights (fitted for other checkpoints)")
        return {**best, "match": {"exact": not differs, "differs": differs}}

    def fingerprint(self) -> dict[str, str]:
        """The sha256 of each stage's weights (from its checkpoint.json), by stage name
        (``lainr`` for the LAINR stage); "in memory" for stages built without a folder."""
        def sha(folder: Path | None) -> str:
            if folder is None:
                return "in memory"
            try:
                return str(_read_json(Path(folder) / "checkpoint.json").get("sha256"))
            except (CascadeError, OSError):
                return "unknown"

        return {LAINR_FOLDER: sha(self.lainr_source),
                **{d.name: sha(d.source) for d in self.diffusion}}

    def _as_batch(self, image: Tensor | str | Path) -> Tensor:
        if isinstance(image, (str, Path)):
            from cascade.data.io import load_image

            image = load_image(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ScaleError(f"expected one RGB image (3, h, w) or (1, 3, h, w), got "
                             f"{tuple(image.shape)}; call the pipeline once per image")
        return image.to(self.device, torch.float32)

    def describe(self) -> dict[str, Any]:
        """What this pipeline is made of (for run.json)."""
        return {"lainr": str(self.lainr_source) if self.lainr_source else "in memory",
                "diffusion": [{"name": d.name, "checkpoint": str(d.source) if d.source
                               else "in memory",
                               "conditioning": getattr(d.stage.upsampler, "spec", None)}
                              for d in self.diffusion],
                "device": str(self.device)}


# -- the LAINR step ---------------------------------------------------------------------------

def _virtual(plan: Plan) -> tuple[float, float]:
    """The LAINR step's pixel lattice: the output size divided by 2^m (may be fractional)."""
    f = 2 ** len(plan.diffusion)
    return plan.out_size[0] / f, plan.out_size[1] / f


def lattice_coords(count: tuple[int, int], virtual: tuple[float, float], device=None,
                   dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Pixel centres and cells of the first ``count`` pixels of a grid of ``virtual`` pixels
    over the input's [-1, 1]^2 (``cascade.data.coords``; equal to ``make_coord`` /
    ``make_cell`` when count == virtual) -> coord, cell (count_h * count_w, 2) as (y, x)."""
    (ch, cw), (vh, vw) = count, virtual
    ys = -1 + (2 * torch.arange(ch, device=device, dtype=torch.float64) + 1) / vh
    xs = -1 + (2 * torch.arange(cw, device=device, dtype=torch.float64) + 1) / vw
    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2).to(dtype)
    cell = torch.tensor([2.0 / vh, 2.0 / vw], device=device, dtype=dtype).expand(ch * cw, 2)
    return coord, cell


@torch.no_grad()
def lainr_resample(model, lr: Tensor, count: tuple[int, int], virtual: tuple[float, float],
                   chunk: int = DECODE_CHUNK, progress: bool = False) -> Tensor:
    """LAINR at the pixel centres of ``lattice_coords(count, virtual)``: (B, 3, *count).
    Encodes once and decodes about ``chunk`` queries at a time (bounded memory) with the
    lattice decoder (``LAINR.decode_grid``)."""
    from cascade.inr.lattice import lattice_axes

    ys, xs, cell = lattice_axes(count, virtual, lr.device, lr.dtype)
    return model.decode_grid(model.encode(lr), ys, xs, cell, chunk, progress)


def _condition(stage, x: Tensor, size: tuple[int, int], progress: bool) -> Tensor:
    """The stage's conditioning ``U(x)`` at ``size``; a LAINR upsampler decodes through
    ``lainr_resample`` (same queries as ``LAINR.upscale``) to show its progress."""
    up = stage.upsampler
    if up is None:
        raise ConfigError("this diffusion stage has no conditioning upsampler")
    model = getattr(up, "model", None)
    if model is None or not hasattr(model, "decode"):
        return up(x, size)
    return lainr_resample(model, x, size, size, getattr(up, "chunk", DECODE_CHUNK), progress)


def rows_per_batch(cfg: PipelineConfig, H: int, W: int) -> int:
    """Samples drawn together: at most ``max_batch`` and N, and as many as keep samples x
    output pixels under ``batch_megapixels`` (at least one)."""
    fit = int(cfg.batch_megapixels * 1e6 // max(1, H * W))
    return max(1, min(int(cfg.max_batch), int(cfg.num_samples), fit))


def _padded(stage, hw: tuple[int, int]) -> tuple[int, int]:
    """The output size a stage's network sees for an input of ``hw`` (after its padding)."""
    m = stage._pad_multiple()
    s = round(stage.scale)
    return (hw[0] + (-hw[0]) % m) * s, (hw[1] + (-hw[1]) % m) * s


# -- settings and calibration files -----------------------------------------------------------

def _settings(cfg: PipelineConfig, knobs=None) -> dict[str, Any]:
    out = _config_dict(cfg)
    if knobs is not None:  # the knobs the first stage actually used (defaults filled in)
        out.update({k: getattr(knobs, k) for k in KNOBS})
    return out


def _config_dict(cfg: PipelineConfig) -> dict[str, Any]:
    return asdict(cfg)


def _config_from(d: dict[str, Any]) -> PipelineConfig:
    d = dict(d)
    tiling = TileConfig(**d.pop("tiling", {}))
    try:
        return PipelineConfig(**d, tiling=tiling)
    except TypeError as e:
        raise CheckpointError(f"pipeline.json has a config this version does not know ({e}); "
                              "re-save the pipeline") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError
        return data
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupt (not a JSON object); re-save it") from None


def load_calibration(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / "calibration.json"
    if not path.is_file():
        return []
    data = _read_json(path)
    if data.get("format") != CALIBRATION_FORMAT:
        raise CheckpointError(f"{path} is not a {CALIBRATION_FORMAT} file; rerun cascade "
                              "calibrate")
    return list(data.get("entries", []))


def _write_calibration(folder: Path, entries: list[dict[str, Any]]) -> Path:
    from cascade.atomic import atomic_write_text

    path = Path(folder) / "calibration.json"
    atomic_write_text(path, json.dumps({"format": CALIBRATION_FORMAT, "entries": entries},
                                       indent=2) + "\n")
    return path


def save_calibration(pipe: CascadePipeline, entry: dict[str, Any],
                     folder: Path | None = None) -> Path:
    """Add ``entry`` to the pipeline's calibration (replacing one for the same stages, scale,
    N and alpha) and write ``calibration.json`` into ``folder`` (default: where it was
    loaded). Entries another process saved there since this pipeline was loaded are kept."""
    def key(e: dict[str, Any]) -> tuple:
        return (e.get("stages"), e.get("scale"), e.get("num_samples"), e.get("alpha", 0.1))

    where = folder or pipe.home
    if where is None:
        raise CascadeError("this pipeline has no folder; pass one to save the calibration in")
    merged = {json.dumps(key(e)): e for e in [*load_calibration(Path(where)), *pipe.calibration]}
    merged[json.dumps(key(entry))] = entry
    pipe.calibration = list(merged.values())
    return _write_calibration(where, pipe.calibration)
