"""Sampling a diffusion SR stage with any diffusers scheduler, through one function.

``sample(unet, cond, lr, process=..., sampler="dpm", steps=20, ...)`` draws one sample per
row of ``cond`` (repeat a row for several samples of one input). Every sampler shares this
loop (k-diffusion style: the samplers differ only in their scheduler):

1. ``r_T = temperature * eps`` (per-sample generators: sample i depends only on its seed);
2. for each timestep t: the network's output -> the clean residual it implies
   (``process.predict_x0``) -> the image ``x0 = c + r0 / residual_scale`` (clamped to [0, 1]
   with ``clip``) -> **consistency projection** ``x0 += w * U(x_lr - D(x0))`` -> back to a
   residual, handed to the scheduler as an x0 ("sample") prediction, so DDPM, DDIM and
   DPM-Solver++ all step from the corrected estimate;
3. the final image, projected once more with the same ``w`` and clamped.

``w = 0`` is the plain sampler; ``w = 1`` makes the output agree with the input at the LR
frequencies (SR3's LR-consistency): D(x0) ~ x_lr up to what one bicubic back-projection
leaves. U is MATLAB bicubic (``degrade.upscale_bicubic``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cascade.choices import SAMPLERS
from cascade.diffusion.process import ProcessConfig, augment_condition, predict_x0
from cascade.errors import ConfigError
from cascade.progress import nested_bar


@dataclass
class SamplingConfig:
    """Default knobs of a stage's sampler (each can be overridden per call)."""

    sampler: str = "dpm"  # ddpm | ddim | dpm (DPM-Solver++ 2M) | dpm_karras (on Karras sigmas)
    steps: int = 20
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 DDPM-like
    temperature: float = 1.0  # std of the initial noise
    aug_level: float = 0.01  # conditioning-augmentation noise std at sampling (small, non-zero)
    projection: float = 1.0  # w in [0, 1]: consistency projection strength
    clip: bool = True  # clamp each x0 estimate to [0, 1]


def make_sampler(name: str, process: ProcessConfig, steps: int):
    """A diffusers scheduler over the training schedule, fed x0 ("sample") predictions.

    ``dpm`` spaces its timesteps evenly ("trailing"): with 10 steps the last network call is
    at t = 99, noise sigma = sqrt((1 - abar) / abar) = 0.34, and the output is that call's x0
    estimate, a posterior mean that has averaged away the residual's finest detail.
    ``dpm_karras`` places the same number of calls on Karras et al.'s sigmas (rho = 7), which
    crowd towards the clean end and reach the schedule's smallest sigma (t = 0, 0.01), so
    the last estimate keeps the detail the earlier steps drew (docs/diffusion.md, "Sampling").
    """
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=process.num_train_timesteps,
                  beta_schedule=process.beta_schedule, beta_start=process.beta_start,
                  beta_end=process.beta_end, prediction_type="sample",
                  timestep_spacing="trailing")
    if name == "ddpm":
        sched = DDPMScheduler(clip_sample=False, **common)
    elif name == "ddim":
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common)
    elif name in ("dpm", "dpm_karras"):
        sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                            lower_order_final=True,
                                            use_karras_sigmas=name == "dpm_karras", **common)
    else:
        raise ConfigError(f"unknown sampler {name!r}; use one of {', '.join(SAMPLERS)}")
    if not 1 <= steps <= process.num_train_timesteps:
        raise ConfigError(f"steps={steps} is impossible; use 1..{process.num_train_timesteps}")
    sched.set_timesteps(steps)
    return sched


def project(x0: torch.Tensor, lr: torch.Tensor, w: float) -> torch.Tensor:
    """``x0 + w * U(x_lr - D(x0))``: pull the low frequencies of x0 onto the input's."""
    if w == 0:
        return x0
    from cascade.data.degrade import imresize, upscale_bicubic

    err = lr - imresize(x0, size=tuple(lr.shape[-2:]))
    return x0 + w * upscale_bicubic(err, tuple(x0.shape[-2:]))


def _randn(shape: Sequence[int], generators: list[torch.Generator], like: torch.Tensor):
    """One standard-normal row per generator (drawn on the CPU: identical on every device)."""
    rows = [torch.randn(tuple(shape[1:]), generator=g) for g in generators]
    return torch.stack(rows).to(device=like.device, dtype=like.dtype)


def sample(unet, cond: torch.Tensor, lr: torch.Tensor, *, process: ProcessConfig,
           alphas_cumprod: torch.Tensor, generators: list[torch.Generator],
           sampler: str = "dpm", steps: int = 20, eta: float = 0.0, temperature: float = 1.0,
           aug_level: float = 0.01, projection: float = 1.0, clip: bool = True,
           progress: bool = False, denoise_fn=None, desc: str | None = None) -> torch.Tensor:
    """Samples (B, 3, H, W) in [0, 1] for ``cond`` (B, 3, H, W) = U(lr), ``lr`` (B, 3, h, w).

    ``generators``: one CPU ``torch.Generator`` per row (its seed fixes that sample).
    ``denoise_fn(r_t, cond_in, t, level) -> output`` replaces ``unet(...)`` when given (the
    pipeline uses it to evaluate the network tile by tile); ``desc`` labels the progress bar.
    """
    B = cond.shape[0]
    if len(generators) != B:
        raise ValueError(f"need one generator per sample: {len(generators)} for {B} rows")
    if not 0.0 <= projection <= 1.0:
        raise ConfigError(f"projection={projection} is outside [0, 1]")
    if aug_level < 0 or temperature < 0:
        raise ConfigError("aug_level and temperature must be >= 0")
    sched = make_sampler(sampler, process, steps)
    rs = process.residual_scale
    level = torch.full((B,), float(aug_level), device=cond.device)
    cond_in = augment_condition(cond, level, _randn(lr.shape, generators, lr))
    r = _randn(cond.shape, generators, cond) * temperature * sched.init_noise_sigma
    fn = denoise_fn or unet
    extra = {"eta": eta} if sampler == "ddim" else {}
    noise_gen = generators if sampler in ("ddpm", "ddim") else None
    for t in nested_bar(sched.timesteps, desc=desc or f"{sampler} {steps} steps",
                        disable=not progress):
        tt = torch.full((B,), int(t), device=cond.device, dtype=torch.long)
        out = fn(sched.scale_model_input(r, t), cond_in, tt, level)
        x0 = cond + predict_x0(out.float(), r, tt, alphas_cumprod, process.prediction_type) / rs
        if clip:
            x0 = x0.clamp(0, 1)
        x0 = project(x0, lr, projection)
        r = sched.step((x0 - cond) * rs, t, r, generator=noise_gen, **extra).prev_sample
    x = project(cond + r / rs, lr, projection)
    return x.clamp(0, 1)
