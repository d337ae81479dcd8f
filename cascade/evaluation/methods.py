"""Upscaling methods that ``cascade evaluate`` compares, registered by name.

A method is built from its settings and called as ``method(lr, size) -> sr`` with
``lr`` (B, 3, h, w) in [0, 1] and ``size`` the exact (H, W) of the ground truth; it returns
(B, 3, H, W). ``settings`` (a plain dict) is recorded in every result row, so two settings
of one method are two rows of the leaderboard.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
from typing import Any

import torch

from cascade.data.degrade import upscale_bicubic
from cascade.diffusion.pretrained import load_sr3
from cascade.errors import ConfigError, ScaleError
from cascade.inr.lattice import DECODE_CHUNK
from cascade.inr.pretrained import load_lainr
from cascade.pipeline import CascadePipeline
from cascade.registry import Registry

METHODS: Registry = Registry("method")


class Method:
    """Base class: ``name``, ``settings`` and the parameter count for the leaderboard."""

    name: str = ""
    # The settings that name a lone variant in tables (None: all); variants of a sweep are
    # named by the settings that differ between them.
    label_keys: tuple[str, ...] | None = None

    def __init__(self, **settings: Any) -> None:
        self.settings = dict(settings)

    @property
    def num_params(self) -> int:
        return 0

    def to(self, device: torch.device | str) -> Method:
        return self

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        raise NotImplementedError

    def ran(self) -> str | None:
        """What the last call ran, where that depends on the input and the settings do not
        say it (recorded in the image's row as ``ran``); None: nothing to add."""
        return None


@METHODS.register("bicubic")
class Bicubic(Method):
    """MATLAB-style bicubic interpolation: the baseline every table starts from."""

    name = "bicubic"

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return upscale_bicubic(lr, size).clamp(0, 1)


@METHODS.register("lainr")
class LAINRMethod(Method):
    """The LAINR stage alone: any-scale resampling by the implicit representation."""

    name = "lainr"

    def __init__(self, checkpoint: str = "checkpoints/lainr", chunk: int = DECODE_CHUNK) -> None:
        super().__init__(checkpoint=str(checkpoint))
        self.model = load_lainr(checkpoint)
        self.chunk = chunk

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def to(self, device: torch.device | str) -> Method:
        self.model.to(device)
        return self

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.model.upscale(lr, size=size, chunk=self.chunk).clamp(0, 1)


_UPSAMPLED: dict[tuple, torch.Tensor] = {}  # (upsampler, input digest, size) -> output


def _upsample_cached(upsampler, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``upsampler(x, size)``, remembered for the last few inputs: the variants of a sweep
    condition on the same deterministic upsampling of the same images (LAINR takes seconds)."""
    digest = hashlib.sha1(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    key = (json.dumps(upsampler.spec, sort_keys=True), digest, tuple(x.shape), tuple(size))
    if key not in _UPSAMPLED:
        if len(_UPSAMPLED) >= 32:
            _UPSAMPLED.pop(next(iter(_UPSAMPLED)))
        with torch.no_grad():
            _UPSAMPLED[key] = upsampler(x, size).cpu()
    return _UPSAMPLED[key].to(x.device)


@METHODS.register("sr3")
class SR3Method(Method):
    """The x2 diffusion stage; at other scales the stage's conditioning upsampler (LAINR)
    first takes the input to half the output size (the two-stage cascade LAINR -> x2).

    Settings: the sampler knobs of ``cascade.diffusion.sampling`` (``sampler``, ``steps``,
    ``eta``, ``temperature``, ``aug_level``, ``projection``), ``num_samples`` (the output is
    the mean of N samples: N > 1 trades realism for PSNR) and ``seed``.
    """

    name = "sr3"
    label_keys = ("steps", "projection", "num_samples")

    def __init__(self, checkpoint: str = "checkpoints/sr3_x2", sampler: str | None = None,
                 steps: int | None = None, eta: float | None = None,
                 temperature: float | None = None, aug_level: float | None = None,
                 projection: float | None = None, num_samples: int = 1, seed: int = 0) -> None:
        self.stage = load_sr3(checkpoint)
        self.knobs = dict(sampler=sampler, steps=steps, eta=eta, temperature=temperature,
                          aug_level=aug_level, projection=projection)
        resolved = self.stage.knobs(**self.knobs)  # also validates the names
        super().__init__(checkpoint=str(checkpoint), **vars(resolved),
                         num_samples=int(num_samples), seed=int(seed))
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples}; use 1 or more")
        self.num_samples, self.seed = int(num_samples), int(seed)

    @property
    def num_params(self) -> int:
        return self.stage.num_params

    def to(self, device: torch.device | str) -> Method:
        self.stage.to(device)
        return self

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        H, W = size
        s = round(self.stage.scale)
        if H % s or W % s:
            raise ScaleError(f"sr3 makes outputs whose sides are multiples of {s}, not {W}x{H}")
        mid = (H // s, W // s)
        if self.stage.upsampler is None:
            raise RuntimeError("the sr3 stage has no conditioning upsampler")
        if tuple(lr.shape[-2:]) != mid:
            lr = _upsample_cached(self.stage.upsampler, lr, mid).clamp(0, 1)
        cond = _upsample_cached(self.stage.upsampler, lr, (H, W))
        x = self.stage(lr, cond=cond, num_samples=self.num_samples, seed=self.seed, **self.knobs)
        return x.mean(1).to(lr.device)  # (B, 3, H, W): the mean of the N samples


@METHODS.register("cascade")
class CascadeMethod(Method):
    """The whole cascade (``cascade.pipeline``): LAINR, then the x2 diffusion stages the plan
    uses at this scale; the output is the mean of ``num_samples`` samples (``output: sample``
    for the first sample instead).

    Settings: ``pipeline`` (folder), ``stages`` (auto | inr | inr+1 | inr+2; recorded
    resolved), ``checkpoint`` (a LAINR checkpoint replacing the pipeline's), the sampler knobs
    (``sampler``, ``steps``, ``eta``, ``temperature``, ``aug_level``, ``projection``; recorded
    with the stage defaults filled in), ``chain_temperature`` (the cap on a stage that feeds
    another; unset: the pipeline folder's; a value at or above the stages' own temperatures
    removes it), ``num_samples``, ``seed``, ``output``.
    """

    name = "cascade"
    label_keys = ("stages", "num_samples", "steps")

    def __init__(self, pipeline: str = "checkpoints", stages: str = "auto",
                 checkpoint: str | None = None, num_samples: int = 1, seed: int = 0,
                 output: str = "mean", sampler: str | None = None, steps: int | None = None,
                 eta: float | None = None, temperature: float | None = None,
                 aug_level: float | None = None, projection: float | None = None,
                 chain_temperature: float | None = None) -> None:
        self.pipe = CascadePipeline.from_pretrained(
            pipeline, lainr=checkpoint, resolve=True, stages=stages, num_samples=num_samples,
            seed=seed, output=output, sampler=sampler, steps=steps, eta=eta,
            temperature=temperature, aug_level=aug_level, projection=projection,
            chain_temperature=chain_temperature)
        # What the pipeline runs with: the resolved stages, each sampler knob with the stage
        # defaults filled in (one value per stage where they differ), chain_temperature.
        settings: dict[str, Any] = {"pipeline": str(pipeline), **self.pipe.report(),
                                    "num_samples": int(num_samples), "seed": int(seed),
                                    "output": output}
        if checkpoint is not None:
            settings["checkpoint"] = str(checkpoint)
        super().__init__(**settings)
        self._ran: str | None = None  # set by each call: the steps of its last image's plan

    @property
    def num_params(self) -> int:
        return self.pipe.num_params

    def to(self, device: torch.device | str) -> Method:
        self.pipe.to(device)
        return self

    def __call__(self, lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        outs = [self.pipe(x, size=tuple(size)) for x in lr]  # one image at a time
        # The settings record the stages the pipeline may use (stages: auto -> inr+2) and the
        # chain's temperature cap; the plan uses as many x2 stages as the scale needs, e.g.
        # only sr3_x2 at x2, where the cap does not apply.
        knobs = outs[-1].settings.get("stage_settings", {})
        self._ran = " -> ".join(
            f"{s.stage} (T={knobs[s.stage]['temperature']:g})" if s.stage in knobs else s.stage
            for s in outs[-1].plan.steps)
        return torch.stack([o.image for o in outs]).to(lr.device)  # (B, 3, H, W)

    def ran(self) -> str | None:
        """The steps of the last image's plan, each diffusion stage with the temperature it
        sampled at: "sr3_x2 (T=1)" at x2, "sr3_x2 (T=0.97) -> sr3_x2_b (T=1)" at x4 (the
        chain's cap on the stage that feeds another), "lainr -> sr3_x2 (T=1)" at x2.5 (LAINR
        resamples to x1.25 first). Only the plan's steps: a diffusion stage also runs LAINR x2
        inside it, for its conditioning, so "sr3_x2" alone still used LAINR."""
        return self._ran


def make_method(name: str, settings: dict[str, Any] | None = None) -> Method:
    """Build a registered method from its settings; an unknown setting is a ConfigError."""
    cls = METHODS.get(name)
    settings = dict(settings or {})
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in settings:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown setting {key!r} of method {name!r}{hint}; "
                              f"known: {', '.join(known) or 'none'}")
    return cls(**settings)
