"""The diffusion process of a super-resolution stage, separate from the network.

The process runs on the *residual* ``r = (x_hr - c) * residual_scale`` over the upsampled
conditioning image ``c = U(x_lr)`` (docs/diffusion.md): the network only has to add the
detail the conditioning lacks, and ``residual_scale`` brings that small residual (std of a
few hundredths) to the unit-ish variance the noise schedule is designed for.

Forward process (DDPM, Ho et al. 2020): ``r_t = sqrt(abar_t) r_0 + sqrt(1 - abar_t) eps``,
with ``abar_t`` from a diffusers ``DDPMScheduler``. The network predicts ``eps`` or
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) r_0`` (``prediction_type``); ``predict_x0`` turns
either into the clean residual the model implies at step t, which both the
downsampling-consistency loss and the samplers use.

Conditioning augmentation (Cascaded Diffusion Models): the LR input is corrupted by Gaussian
noise of std ``level`` (per sample) before it conditions the network. Because the
conditioning upsampler may be a frozen network, the noise is added *after* it, as its
bicubic upsampling: ``c_aug = blur(c) + U_bic(level * n_lr)``. For bicubic conditioning this
is exactly "noise the LR, then upsample"; for LAINR it is the same up to LAINR's nonlinear
part. The level reaches the network only through its class embedding (``unet.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ProcessConfig:
    """The noise schedule and parameterisation (shared by training and sampling)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"  # linear | scaled_linear | squaredcos_cap_v2 (diffusers names)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: str = "v_prediction"  # epsilon | v_prediction
    residual_scale: float = 20.0  # r = (x_hr - c) * residual_scale


def make_train_scheduler(cfg: ProcessConfig):
    """The diffusers ``DDPMScheduler`` that defines the forward process."""
    from diffusers import DDPMScheduler

    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        from cascade.errors import ConfigError

        raise ConfigError(f"process.prediction_type={cfg.prediction_type!r}; "
                          "use epsilon or v_prediction")
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps,
                         beta_schedule=cfg.beta_schedule, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, prediction_type=cfg.prediction_type,
                         clip_sample=False)


def abar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """abar_t for each sample, shaped (B, 1, 1, 1) on ``like``'s device and dtype."""
    a = alphas_cumprod.to(device=like.device, dtype=torch.float32)[t.to(like.device).long()]
    return a.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))  # (B, 1, 1, 1)


def q_sample(r_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
             alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The forward process: r_t = sqrt(abar_t) r_0 + sqrt(1 - abar_t) eps."""
    abar = abar_at(alphas_cumprod, t, r_0)
    return abar.sqrt() * r_0 + (1 - abar).sqrt() * noise


def predict_x0(output: torch.Tensor, r_t: torch.Tensor, t: torch.Tensor,
               alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The clean residual r_0 implied by the network's output at step t: (B, 3, H, W)."""
    abar = abar_at(alphas_cumprod, t, r_t)
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return (r_t - s * output) / a
    if prediction_type == "v_prediction":
        return a * r_t - s * output
    raise ValueError(f"prediction_type {prediction_type!r}; use epsilon or v_prediction")


def training_target(r_0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                    alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    if prediction_type == "epsilon":
        return noise
    abar = abar_at(alphas_cumprod, t, r_0)
    return abar.sqrt() * noise - (1 - abar).sqrt() * r_0  # v


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample isotropic Gaussian blur of (B, C, H, W); sigma (B,) in pixels (0 = none)."""
    if not bool((sigma > 0).any()):
        return x
    radius = max(1, int(torch.ceil(3 * sigma.max())))
    k = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x).clamp_min(1e-6)[:, None]
    w = torch.exp(-0.5 * (k[None] / s) ** 2)
    w = w / w.sum(1, keepdim=True)  # (B, K)
    w = torch.where(sigma.to(x.device)[:, None] > 0, w, (k[None] == 0).to(x))
    B, C, H, W = x.shape
    pad = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    # separable: per-sample kernels as grouped convolutions over the B*C channels
    kh = w.repeat_interleave(C, 0)[:, None, :, None]  # (B*C, 1, K, 1)
    kw = w.repeat_interleave(C, 0)[:, None, None, :]  # (B*C, 1, 1, K)
    y = torch.nn.functional.conv2d(pad.reshape(1, B * C, *pad.shape[-2:]), kh, groups=B * C)
    y = torch.nn.functional.conv2d(y, kw, groups=B * C)
    return y.reshape(B, C, H, W)


def augment_condition(cond: torch.Tensor, level: torch.Tensor, lr_noise: torch.Tensor,
                      blur_sigma: torch.Tensor | None = None) -> torch.Tensor:
    """``c_aug = blur(c) + U_bic(level * n_lr)``: the only path by which augmentation reaches
    the network's image input. ``cond`` (B, 3, H, W), ``level`` (B,), ``lr_noise`` (B, 3, h, w)
    standard normal at the LR size, ``blur_sigma`` (B,) in output pixels or None."""
    from cascade.data.degrade import upscale_bicubic

    out = cond if blur_sigma is None else gaussian_blur(cond, blur_sigma)
    if bool((level > 0).any()):
        noise = lr_noise * level.to(lr_noise).view(-1, 1, 1, 1)
        out = out + upscale_bicubic(noise, tuple(cond.shape[-2:]))
    return out
