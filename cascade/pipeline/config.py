"""The settings of a cascade run: the schema, the ``--stages`` spec, checks, sampler knobs.

``PipelineConfig`` is the one settings object (configs/pipeline.yaml, ``key=value``
overrides, the keyword arguments of ``CascadePipeline.__call__``); ``merge_settings`` makes
a checked copy with overrides; ``stage_knobs`` resolves the sampler knobs each diffusion
stage runs with (the settings given, else the stage's own defaults).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

from cascade.choices import OUTPUTS, SAMPLERS, STAGE_CHOICES
from cascade.diffusion.tiling import TileConfig
from cascade.errors import CheckpointError, ConfigError
from cascade.inr.lattice import DECODE_CHUNK

__all__ = ["KNOBS", "OUTPUTS", "SAMPLERS", "STAGE_CHOICES", "PipelineConfig", "StageSpec",
           "check_settings", "config_from", "merge_settings", "rows_per_batch",
           "settings_dict", "stage_knobs", "stages_needed"]

# The sampler knobs of a diffusion stage (``cascade.diffusion.sampling.SamplingConfig``).
KNOBS = ("sampler", "steps", "eta", "temperature", "aug_level", "projection")


@dataclass
class PipelineConfig:
    """Settings of a cascade run (configs/pipeline.yaml; ``key=value`` overrides)."""

    # auto (LAINR and every x2 diffusion stage the pipeline has) | inr | inr+1 | inr+2 |
    # bicubic. `cascade upscale` defaults to inr instead (cascade.upscale.USER_STAGES).
    stages: str = "auto"
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
    # (the first of the two x2 stages at x4). With dpm_karras the x4 chain's HF ratio on
    # unseen photos moves steeply with it: 0.71-0.82 at 0.95, 0.80-0.99 at 0.97, 1.02-1.34
    # at 1 (no cap); 0.97 passes every check of the unseen gate at x4 (docs/pipeline.md,
    # "The chain with dpm_karras"). None: no cap. An explicit ``temperature`` sets every stage.
    chain_temperature: Optional[float] = 0.97
    output: str = "mean"  # what NAME_x{S}.png holds: mean (of the N samples) | sample (the 1st)
    tiling: TileConfig = field(default_factory=TileConfig)
    lainr_chunk: int = DECODE_CHUNK  # LAINR queries decoded at once
    max_batch: int = 8  # samples drawn together ...
    batch_megapixels: float = 0.5  # ... as long as samples x output pixels stay below this
    alpha: float = 0.1  # intervals cover with probability >= 1 - alpha (cascade calibrate)
    std_floor: float = 0.002  # smallest std an interval is built on (~half a grey level)


@dataclass(frozen=True)
class StageSpec:
    """A ``--stages`` value, parsed once: ``diffusion`` is how many x2 diffusion stages it
    uses at most (None: every one the pipeline has), ``bicubic`` the bicubic baseline."""

    text: str
    diffusion: int | None
    bicubic: bool = False

    @classmethod
    def parse(cls, text: str) -> StageSpec:
        if text not in STAGE_CHOICES:
            raise ConfigError(f"--stages {text!r} is unknown; use one of "
                              f"{', '.join(STAGE_CHOICES)}")
        if text == "auto":
            return cls(text, None)
        if text in ("inr", "bicubic"):
            return cls(text, 0, bicubic=text == "bicubic")
        return cls(text, int(text.split("+")[1]))

    @staticmethod
    def name(k: int) -> str:
        """The spec that uses ``k`` diffusion stages: inr, inr+1, inr+2."""
        return "inr" if k == 0 else f"inr+{k}"


def stages_needed(spec: str) -> int | None:
    """Diffusion stages ``--stages spec`` uses at most (None: all there are)."""
    return StageSpec.parse(spec).diffusion


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
    StageSpec.parse(cfg.stages)
    if cfg.output not in OUTPUTS:
        raise ConfigError(f"output={cfg.output!r}; use mean or sample")
    if cfg.steps is not None and int(cfg.steps) < 1:
        raise ConfigError(f"--steps {cfg.steps} is impossible; use 1 or more")
    if cfg.projection is not None and not 0 <= float(cfg.projection) <= 1:
        raise ConfigError(f"--projection {cfg.projection} is outside [0, 1]")
    if cfg.sampler is not None and cfg.sampler not in SAMPLERS:
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
    _check_tiling(cfg.tiling)


def _check_tiling(t: TileConfig) -> None:
    if int(t.batch) < 1 or int(t.overlap) < 0 or int(t.tile) < -1 or int(t.norm_tiles) < 0 \
            or int(t.norm_tiles) == 1:
        raise ConfigError(f"tiling {asdict(t)}: tile is -1, 0 (auto) or a side in pixels, "
                          "overlap >= 0, batch >= 1, norm_tiles 0 (all) or >= 2")


def stage_knobs(cfg: PipelineConfig, stages: Sequence[Any]) -> list[Any]:
    """The sampler settings each stage of a chain runs with: the settings ``cfg`` gives,
    else the stage's own defaults; a stage that feeds another samples at most at
    ``cfg.chain_temperature`` unless ``cfg.temperature`` is set."""
    knobs = {k: getattr(cfg, k) for k in KNOBS}
    out = []
    for j, stage in enumerate(stages):
        k = stage.knobs(**knobs)
        if cfg.temperature is None and cfg.chain_temperature is not None \
                and j < len(stages) - 1:
            k = replace(k, temperature=min(k.temperature, float(cfg.chain_temperature)))
        out.append(k)
    return out


def rows_per_batch(cfg: PipelineConfig, H: int, W: int) -> int:
    """Samples drawn together: at most ``max_batch`` and N, and as many as keep samples x
    output pixels under ``batch_megapixels`` (at least one)."""
    fit = int(cfg.batch_megapixels * 1e6 // max(1, H * W))
    return max(1, min(int(cfg.max_batch), int(cfg.num_samples), fit))


def settings_dict(cfg: PipelineConfig, knobs=None) -> dict[str, Any]:
    """``cfg`` as a dict (run.json, pipeline.json); ``knobs``: the sampler knobs the first
    diffusion stage actually used (defaults filled in) replace the unset ones."""
    out = asdict(cfg)
    if knobs is not None:
        out.update({k: getattr(knobs, k) for k in KNOBS})
    return out


def config_from(d: dict[str, Any]) -> PipelineConfig:
    """The ``config`` of a pipeline.json back into a ``PipelineConfig``."""
    d = dict(d)
    tiling = TileConfig(**d.pop("tiling", {}))
    try:
        return PipelineConfig(**d, tiling=tiling)
    except TypeError as e:
        raise CheckpointError(f"pipeline.json has a config this version does not know ({e}); "
                              "re-save the pipeline") from None
