"""Load a trained diffusion stage from an inference checkpoint folder."""

from __future__ import annotations

import os

from cascade.checkpoint import load_checkpoint
from cascade.errors import CheckpointError
from cascade.paths import resolve_repo_path


def load_sr3(folder: str | os.PathLike = "checkpoints/sr3_x2", with_upsampler: bool = True):
    """-> SR3Stage (EMA weights, eval mode, float32 on the CPU; move it with ``.to``)."""
    from omegaconf import OmegaConf

    from cascade.config import load_config
    from cascade.diffusion.stage import SR3Stage
    from cascade.diffusion.task import SR3TrainConfig
    from cascade.diffusion.unet import ConditionalUNet

    ckpt = load_checkpoint(resolve_repo_path(folder), stage="sr3")
    cfg = load_config(SR3TrainConfig)
    cfg = OmegaConf.merge(cfg, ckpt.config)
    unet = ConditionalUNet(**OmegaConf.to_container(cfg.model, resolve=True))
    missing, unexpected = unet.load_state_dict(ckpt.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r} does not fit this diffusion stage "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); it was "
                              "made by another version: retrain or use a matching one")
    upsampler = None
    if with_upsampler:
        from cascade.upsamplers import make_upsampler

        upsampler = make_upsampler(conditioning_spec(cfg.conditioning))
    return SR3Stage(unet, OmegaConf.to_object(cfg.process), OmegaConf.to_object(cfg.sampling),
                    scale=cfg.data.scale, upsampler=upsampler)


def conditioning_spec(cond) -> dict:
    if cond.upsampler == "lainr":
        return {"name": "lainr", "args": {"checkpoint": cond.checkpoint}}
    return {"name": cond.upsampler}
