"""Training objective of a diffusion SR stage: denoising loss + downsampling consistency.

    L = E_t || f(r_t, c_aug, t, a) - target_t ||^2
        + lambda * E_t [ w(t) * || (D(x0_hat) - x_lr) * residual_scale ||^2 ]

``x0_hat = c + r0_hat / residual_scale`` is the clean image the model implies at step t
(``process.predict_x0``) and D the same MATLAB-bicubic operator that made the LR data, so the
second term asks every intermediate estimate to explain the input (SR3 reports LR-consistency;
here it is trained for). It is measured in the network's residual units (times
``residual_scale``) so that lambda = 1 weighs it like the denoising term. ``w(t)`` is 1
(``uniform``) or ``abar_t`` (``alpha_bar``: near-pure-noise steps, whose x0 estimates are
necessarily poor, count less).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cascade.diffusion.process import (
    ProcessConfig,
    abar_at,
    augment_condition,
    predict_x0,
    q_sample,
    training_target,
)


@dataclass
class ObjectiveConfig:
    consistency_weight: float = 1.0  # lambda (0 = the plain denoising loss)
    consistency_weighting: str = "alpha_bar"  # uniform | alpha_bar
    aug_max: float = 0.05  # conditioning augmentation: LR noise std ~ U(0, aug_max)
    aug_zero_prob: float = 0.2  # fraction of samples trained with no augmentation
    blur_max: float = 0.0  # optional blur of the conditioning, sigma ~ U(0, blur_max) pixels


def draw_noise_and_levels(batch: dict, cfg: ObjectiveConfig, num_timesteps: int,
                          g: torch.Generator) -> dict:
    """All randomness of one training step, from one generator (resumable, per-rank)."""
    hr, lr = batch["hr"], batch["lr"]
    B = hr.shape[0]
    level = torch.rand(B, generator=g) * cfg.aug_max
    level = torch.where(torch.rand(B, generator=g) < cfg.aug_zero_prob, 0.0, level)
    return {"t": torch.randint(0, num_timesteps, (B,), generator=g),
            "noise": torch.randn(hr.shape, generator=g),
            "lr_noise": torch.randn(lr.shape, generator=g),
            "aug_level": level,
            "blur": torch.rand(B, generator=g) * cfg.blur_max}


def consistency_error(x0_img: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """Per-sample mean ||D(x0) - x_lr||^2: (B,)."""
    from cascade.data.degrade import imresize

    return (imresize(x0_img, size=tuple(lr.shape[-2:])) - lr).square().mean(dim=(1, 2, 3))


def diffusion_loss(unet, batch: dict, draws: dict, process: ProcessConfig,
                   cfg: ObjectiveConfig, alphas_cumprod: torch.Tensor
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """``batch``: hr (B,3,H,W), lr (B,3,h,w), cond = U(lr) (B,3,H,W); ``draws`` from
    ``draw_noise_and_levels`` (moved to the batch's device)."""
    hr, lr, cond = batch["hr"], batch["lr"], batch["cond"]
    t, noise = draws["t"], draws["noise"]
    rs = process.residual_scale
    r0 = (hr - cond) * rs  # (B, 3, H, W)
    r_t = q_sample(r0, noise, t, alphas_cumprod)
    cond_in = augment_condition(cond, draws["aug_level"], draws["lr_noise"],
                                draws["blur"] if cfg.blur_max > 0 else None)
    out = unet(r_t, cond_in, t, draws["aug_level"])
    target = training_target(r0, noise, t, alphas_cumprod, process.prediction_type)
    denoise = (out.float() - target).square().mean()
    logs = {"loss_denoise": float(denoise.detach())}
    loss = denoise
    if cfg.consistency_weight > 0:
        x0_img = cond + predict_x0(out.float(), r_t, t, alphas_cumprod,
                                   process.prediction_type) / rs
        err = consistency_error(x0_img, lr) * rs**2  # (B,)
        if cfg.consistency_weighting == "alpha_bar":
            err = err * abar_at(alphas_cumprod, t, r0).view(-1)
        elif cfg.consistency_weighting != "uniform":
            from cascade.errors import ConfigError

            raise ConfigError(f"objective.consistency_weighting={cfg.consistency_weighting!r}; "
                              "use uniform or alpha_bar")
        cons = err.mean()
        loss = loss + cfg.consistency_weight * cons
        logs["loss_consistency"] = float(cons.detach())
    logs["loss"] = float(loss.detach())
    return loss, logs
