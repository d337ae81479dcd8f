"""What several test files share: the tiny configs (configs/tiny/) and a tiny checkpoints
folder built from them with weights drawn from fixed seeds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
TINY_LAINR = ROOT / "configs" / "tiny" / "lainr.yaml"
TINY_SR3 = ROOT / "configs" / "tiny" / "sr3_x2.yaml"
# The tiny UNet of configs/tiny/sr3_x2.yaml (sequences as tuples), for ConditionalUNet(**...)
TINY_UNET = {k: tuple(v) if isinstance(v, list) else v
             for k, v in OmegaConf.to_container(OmegaConf.load(TINY_SR3).model).items()}


def tiny_lainr(overrides=("model.head_init_std=0",)):
    """A tiny LAINR from seed 0 and its training config; by default its residual heads are
    zero, so it is exactly bicubic."""
    from cascade.inr.model import LAINR
    from cascade.train import load_train_config

    cfg = load_train_config(TINY_LAINR, list(overrides))
    torch.manual_seed(0)
    return LAINR(**OmegaConf.to_container(cfg.model, resolve=True)), cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A checkpoints folder: tiny lainr/ and sr3_x2/ (conditioned by that LAINR), no sr3_x2_b/."""
    from cascade.checkpoint import save_checkpoint
    from cascade.diffusion.unet import ConditionalUNet
    from cascade.train import load_train_config

    root = tmp_path_factory.mktemp("ckpts")
    lainr, cfg = tiny_lainr()
    save_checkpoint(root / "lainr", lainr.state_dict(), cfg, "lainr")
    scfg = load_train_config(TINY_SR3, ["conditioning.upsampler=lainr",
                                        f"conditioning.checkpoint={root / 'lainr'}"])
    torch.manual_seed(0)
    save_checkpoint(root / "sr3_x2", ConditionalUNet(**TINY_UNET).state_dict(), scfg, "sr3")
    return root
