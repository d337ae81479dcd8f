"""``CascadePipeline``: an input image and a scale (or size) in, N samples and their spread out.

One call is a short numbered recipe (``CascadePipeline.__call__``): settings, input, plan
(``plan.py``), the resample step (LAINR or bicubic), then the x2 diffusion stages
(``stages.py``) drawing the samples in batches, folded into mean and std as they finish.
Sample i of diffusion stage j is seeded by ``(seed, i)`` for j = 0 (the stage's own
convention) or ``(seed, i, j)``: it does not depend on N or on how samples are batched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cascade.data.io import load_image
from cascade.errors import CascadeError, CheckpointError, ScaleError
from cascade.inr.pretrained import load_lainr
from cascade.memory import check_output_size
from cascade.pipeline.calibration import load_calibration, match_calibration, write_calibration
from cascade.pipeline.config import (
    KNOBS,
    PipelineConfig,
    StageSpec,
    check_settings,
    merge_settings,
    rows_per_batch,
    settings_dict,
    stage_knobs,
)
from cascade.pipeline.folder import (
    DIFFUSION_FOLDERS,
    LAINR_FOLDER,
    fingerprint,
    read_folder,
    save_folder,
    write_folder,
)
from cascade.pipeline.output import CascadeOutput
from cascade.pipeline.plan import Plan, make_plan, target_size
from cascade.pipeline.stages import DiffusionStage, resample
from cascade.progress import nested_bar
from cascade.seeding import generator_for
from cascade.uncertainty import RunningMoments

__all__ = ["CascadePipeline"]

OnSample = Callable[[int, Tensor], None]


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
        self.diffusion = [DiffusionStage(n, s, src) for (n, s), src in zip(diffusion, sources)]
        self.config = config or PipelineConfig()
        check_settings(self.config)
        self.calibration = list(calibration or [])
        self.lainr_source = lainr_source
        self.home = home  # the folder it was loaded from (cascade calibrate writes there)
        self.device = torch.device("cpu")

    # -- loading and saving (folder.py) -------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path = "checkpoints", lainr: str | Path | None = None,
                        max_diffusion: int | None = None, config: PipelineConfig | None = None,
                        resolve: bool = False, **settings: Any) -> CascadePipeline:
        """A pipeline folder (``pipeline.json``) or a checkpoints folder with ``lainr/`` and
        ``sr3_x2/`` (+ ``sr3_x2_b/``); ``lainr`` replaces the LAINR checkpoint;
        ``max_diffusion`` loads at most that many diffusion stages; ``settings`` override the
        folder's defaults (``PipelineConfig`` fields), or ``config`` when given. Float32 on
        the CPU.

        With ``config`` (or ``resolve=True``) the pipeline is *resolved*: it loads only the
        diffusion stages its ``stages`` setting uses, and its ``config.stages`` is the
        resolved spec (auto -> inr+2; a missing stage fails here, in one line)."""
        resolve = resolve or config is not None
        if resolve and settings.get("stages") is not None:
            StageSpec.parse(settings["stages"])  # an unknown spec fails before any reading
        found = read_folder(path, lainr)
        if resolve:
            cfg = merge_settings(config or found.config, **settings)
            if max_diffusion is None:
                max_diffusion = StageSpec.parse(cfg.stages).diffusion
        model = load_lainr(found.lainr)
        stages = found.load_stages(max_diffusion)
        calibration = load_calibration(found.root)
        if not resolve:
            cfg = merge_settings(found.config, **settings)
        pipe = cls(model, [(d.name, d.stage) for d in stages], cfg, calibration,
                   lainr_source=found.lainr, diffusion_sources=[d.source for d in stages],
                   home=found.root)
        if resolve:
            pipe.config.stages = pipe.resolve_stages()[0]
        return pipe

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a self-contained pipeline folder: ``pipeline.json``, the stage checkpoints
        (copied), the LAINR checkpoints their conditioning uses, ``calibration.json``.
        Written under a temporary name and renamed into place (the folder it replaces is
        moved aside first and put back by the next save if a crash came in between)."""
        if self.lainr_source is None or any(d.source is None for d in self.diffusion):
            raise CascadeError("this pipeline was built from in-memory models; build it from "
                               "checkpoint folders (from_pretrained) to save it")
        return save_folder(path, self._write_folder)

    def _write_folder(self, tmp: Path) -> None:
        """The files of ``save_pretrained`` into the (new, empty) folder ``tmp``."""
        write_folder(tmp, self.lainr_source, self.diffusion, self.config)
        if self.calibration:
            write_calibration(tmp, self.calibration)

    def to(self, device: torch.device | str) -> CascadePipeline:
        self.device = torch.device(device)
        self.lainr.to(self.device)
        for d in self.diffusion:
            d.stage.to(self.device)
        return self

    # -- what it is ---------------------------------------------------------------------------

    @property
    def num_params(self) -> int:
        """Parameters of the LAINR model and of every diffusion stage loaded."""
        return sum(p.numel() for p in self.lainr.parameters()) + sum(
            d.num_params for d in self.diffusion)

    def report(self) -> dict[str, Any]:
        """The settings this pipeline runs with, as an evaluation row records them: the
        resolved ``stages``, the diffusion stages used, each sampler knob with the stages'
        defaults filled in (one value when the stages agree, else one per stage, in order;
        without the chain's temperature cap, which ``chain_temperature`` gives, None where it
        cannot apply: one diffusion stage, or ``temperature`` set)."""
        cfg = self.config
        spec, used = self.resolve_stages()
        knobs = {k: getattr(cfg, k) for k in KNOBS}
        per_stage = [vars(d.knobs(**knobs)) for d in used]
        resolved = {k: (per_stage[0][k] if all(p[k] == per_stage[0][k] for p in per_stage)
                        else [p[k] for p in per_stage]) for k in (per_stage[0] if used else {})}
        return {"stages": spec, "diffusion": [d.name for d in used], **resolved,
                # the cap applies only where a stage feeds another and no temperature is set
                "chain_temperature": None if cfg.temperature is not None or len(used) < 2
                else cfg.chain_temperature}

    def describe(self) -> dict[str, Any]:
        """What this pipeline is made of (for run.json)."""
        return {"lainr": str(self.lainr_source) if self.lainr_source else "in memory",
                "diffusion": [{"name": d.name, "checkpoint": str(d.source) if d.source
                               else "in memory",
                               "conditioning": getattr(d.stage.upsampler, "spec", None)}
                              for d in self.diffusion],
                "device": str(self.device)}

    def fingerprint(self) -> dict[str, str]:
        """The sha256 of each stage's weights (from its checkpoint.json), by stage name
        (``lainr`` for the LAINR stage); "in memory" for stages built without a folder."""
        return fingerprint(self.lainr_source, self.diffusion)

    def calibration_for(self, plan: Plan, num_samples: int, alpha: float | None = None,
                        stage_settings: dict[str, dict[str, Any]] | None = None
                        ) -> dict[str, Any] | None:
        """The calibration entry for this plan's stages (``calibration.match_calibration``)."""
        return match_calibration(self.calibration, plan, num_samples, alpha, stage_settings,
                                 self.fingerprint)

    # -- planning -----------------------------------------------------------------------------

    def resolve_stages(self, stages: str | None = None) -> tuple[str, list[DiffusionStage]]:
        """``--stages`` -> (the resolved spec, the diffusion stages it may use)."""
        spec = StageSpec.parse(stages or self.config.stages)
        have = len(self.diffusion)
        if spec.bicubic:
            return spec.text, []
        if spec.diffusion is None:
            return StageSpec.name(have), list(self.diffusion)
        if spec.diffusion > have:
            where = self.home if self.home is not None else Path("checkpoints")
            nth = ("a", "a second")[min(have, 1)]
            raise CheckpointError(
                f"--stages {spec.text} needs {nth} x2 diffusion stage at "
                f"{where / DIFFUSION_FOLDERS[have]}, which does not exist; train it "
                f"(docs/pipeline.md) or use --stages {StageSpec.name(have)}")
        return spec.text, list(self.diffusion[:spec.diffusion])

    def plan(self, in_hw: tuple[int, int], out_hw: tuple[int, int],
             stages: str | None = None, cfg: PipelineConfig | None = None) -> Plan:
        """The plan (``plan.make_plan``) with each diffusion step's tile count."""
        cfg = cfg or self.config
        spec, diffusion = self.resolve_stages(stages)
        plan = make_plan(in_hw, out_hw, [d.name for d in diffusion], spec, LAINR_FOLDER)
        by_name = {d.name: d for d in diffusion}
        rows = rows_per_batch(cfg, *out_hw)
        for step in plan.diffusion:
            step.tiles = by_name[step.stage].tiles_for(step.in_size, cfg.tiling, self.device,
                                                       rows)
        return plan

    # -- running ------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, image: Tensor | str | Path, scale: float | None = None,
                 size: tuple[int, int] | None = None, *, num_samples: int | None = None,
                 steps: int | None = None, sampler: str | None = None,
                 projection: float | None = None, seed: int | None = None,
                 stages: str | None = None, progress: bool = False, keep_samples: bool = True,
                 on_sample: OnSample | None = None,
                 max_megapixels: float | None = None, **settings: Any) -> CascadeOutput:
        """Upscale ``image`` ((3, h, w) or (1, 3, h, w) in [0, 1], or an image file) by
        ``scale`` or to ``size`` (H, W): N samples, their mean and std, and the plan.

        ``settings``: any other ``PipelineConfig`` field (``output``, ``tiling``, ...).
        ``on_sample(i, x)`` gets each sample (3, H, W) as it finishes; ``keep_samples=False``
        keeps only mean, std and sample 0 (bounded memory for large N and outputs).
        An output over the memory budget (``max_megapixels``, default: what fits in the
        memory available, ``cascade.memory``) is refused before anything is allocated.
        """
        # 1. this call's settings over the pipeline's, checked
        cfg = merge_settings(self.config, num_samples=num_samples, steps=steps, sampler=sampler,
                             projection=projection, seed=seed, stages=stages, **settings)
        # 2. the input (one image) and the output size
        lr = self._as_batch(image)
        in_hw = (lr.shape[-2], lr.shape[-1])
        out_hw = target_size(in_hw, scale, size)
        # 3. the plan; an output over the memory budget fails before anything is allocated
        plan = self.plan(in_hw, out_hw, cfg.stages, cfg)
        check_output_size(in_hw, out_hw, max_megapixels, diffusion=plan.stochastic)
        run = _Run(cfg, plan, progress, keep_samples, on_sample)
        # 4. the resample step (LAINR or bicubic) when the plan starts with one
        x = self._resample(lr, run)
        # 5. no diffusion stage: that image is every sample (std 0)
        if not plan.stochastic:
            return run.deterministic(x[0].cpu().float())
        # 6. the diffusion stages draw N samples in batches, folded into mean and std
        return self._sample(x, run)

    def _as_batch(self, image: Tensor | str | Path) -> Tensor:
        if isinstance(image, (str, Path)):
            image = load_image(image)
        if image.ndim == 3:
            image = image[None]
        if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
            raise ScaleError(f"expected one RGB image (3, h, w) or (1, 3, h, w), got "
                             f"{tuple(image.shape)}; call the pipeline once per image")
        return image.to(self.device, torch.float32)

    def _resample(self, lr: Tensor, run: _Run) -> Tensor:
        step = run.plan.steps[0]
        if step.kind != "resample":
            return lr
        t0 = time.perf_counter()
        x = resample(step, self.lainr, lr, run.plan, run.cfg.lainr_chunk, run.progress)
        run.timings[step.stage] = time.perf_counter() - t0
        return x

    def _sample(self, x: Tensor, run: _Run) -> CascadeOutput:
        cfg, plan, n = run.cfg, run.plan, run.n
        H, W = plan.out_size
        by_name = {d.name: d for d in self.diffusion}
        chain = [(step, by_name[step.stage]) for step in plan.diffusion]
        knobs = stage_knobs(cfg, [d for _, d in chain])  # checks the knobs
        rows = rows_per_batch(cfg, H, W)
        denoisers = [d.denoiser(cfg.tiling, self.device, rows=min(rows, n),
                                progress=run.progress and step.tiles > 8) for step, d in chain]
        # The first stage's conditioning does not depend on the sample: computed once.
        step0, first = chain[0]
        cond0 = run.timed(f"{step0.stage}.conditioning", first.condition, x, step0.out_size,
                          run.progress)
        moments = RunningMoments()
        with nested_bar(total=n, desc=f"samples ({plan.stages})", unit="sample",
                        disable=not run.progress) as bar:  # closed on errors too
            for start in range(0, n, rows):
                batch = list(range(start, min(n, start + rows)))
                y = x.expand(len(batch), -1, -1, -1)
                for j, ((step, stage), k, den) in enumerate(zip(chain, knobs, denoisers)):
                    cond = (cond0.expand(len(batch), -1, -1, -1) if j == 0 else
                            run.timed(f"{step.stage}.conditioning", stage.condition, y,
                                      step.out_size, run.progress))
                    gens = [generator_for(cfg.seed, i) if j == 0
                            else generator_for(cfg.seed, i, j) for i in batch]
                    y = run.timed(step.stage, stage.draw, y, cond, gens, k, den, run.progress)
                done = y[:, :, :H, :W].to("cpu", torch.float32)  # (R, 3, H, W)
                moments.update(done)
                run.collect(batch, done)
                bar.update(len(batch))
                del y, done
        settings = settings_dict(cfg, knobs[0])
        settings["stage_settings"] = {step.stage: {kk: getattr(k, kk) for kk in KNOBS}
                                      for (step, _), k in zip(chain, knobs)}
        out = run.result(moments, settings)
        out.calibration = self.calibration_for(plan, n, cfg.alpha, settings["stage_settings"])
        return out


class _Run:
    """One call's state: its settings and plan, the timings, the samples handed out."""

    def __init__(self, cfg: PipelineConfig, plan: Plan, progress: bool, keep_samples: bool,
                 on_sample: OnSample | None) -> None:
        self.cfg, self.plan, self.progress = cfg, plan, progress
        self.n = int(cfg.num_samples)
        self.keep_samples, self.on_sample = keep_samples, on_sample
        self.timings: dict[str, float] = {}
        self.kept: list[Tensor] = []
        self.first: Tensor | None = None
        self.t_all = time.perf_counter()

    def timed(self, key: str, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        """``fn(*args)``, its seconds added to ``timings[key]``."""
        t0 = time.perf_counter()
        out = fn(*args)
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0
        return out

    def collect(self, batch: list[int], done: Tensor) -> None:
        """Finished samples ``done`` (R, 3, H, W), numbered ``batch``: kept, handed out."""
        for r, i in enumerate(batch):
            if self.first is None:
                self.first = done[r].clone()
            if self.on_sample is not None:
                self.on_sample(i, done[r])
            if self.keep_samples:
                self.kept.append(done[r])

    def result(self, moments: RunningMoments, settings: dict[str, Any]) -> CascadeOutput:
        self.timings["total"] = time.perf_counter() - self.t_all
        assert moments.mean is not None and self.first is not None
        samples = torch.stack(self.kept) if self.keep_samples else None
        return CascadeOutput(self.plan, moments.mean, moments.std(), self.first, samples,
                             self.n, settings, self.timings)

    def deterministic(self, out: Tensor) -> CascadeOutput:
        """The output of a plan without diffusion: ``out`` (3, H, W) is every sample."""
        self.timings["total"] = time.perf_counter() - self.t_all
        if self.on_sample is not None:
            self.on_sample(0, out)
        return CascadeOutput(self.plan, out, torch.zeros_like(out), out,
                             out.expand(self.n, *out.shape) if self.keep_samples else None,
                             self.n, settings_dict(self.cfg), self.timings)
