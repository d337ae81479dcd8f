"""The network of an SR3-style x2 stage: ``diffusers.UNet2DModel`` on [noisy residual, condition].

Inputs (all at the output resolution H x W):

* ``x_t`` (B, 3, H, W): the noisy *residual* over the upsampled conditioning image, in the
  diffusion process's units (``residual * residual_scale``, see ``cascade.diffusion.process``);
* ``cond`` (B, 3, H, W): the upsampled (and possibly augmented) LR image in [0, 1];
* ``t`` (B,) training timesteps; ``aug_level`` (B,) the conditioning-augmentation noise std.

The two images are concatenated on channels (3 + 3). The augmentation level enters only
through the UNet's class embedding (``class_embed_type="timestep"``: the same sinusoidal
projection as the timestep, then its own MLP), scaled by ``AUG_EMBED_SCALE`` so that levels
of a few hundredths map to distinct embeddings (Cascaded Diffusion Models, Ho et al. 2021).
The network never sees the process: prediction type, schedule and losses live in
``process.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cascade.registry import MODELS

AUG_EMBED_SCALE = 1000.0  # aug std 0.1 -> "timestep" 100 of the class embedding


@dataclass
class SR3UNetConfig:
    """Sizes of the conditional UNet (diffusers ``UNet2DModel`` arguments)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 96])
    layers_per_block: int = 1
    # One entry per resolution: "DownBlock2D" or "AttnDownBlock2D" (the up blocks mirror it).
    down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "DownBlock2D", "DownBlock2D"])
    norm_num_groups: int = 16
    attention_head_dim: int = 16
    dropout: float = 0.0


@MODELS.register("sr3_unet")
class ConditionalUNet(nn.Module):
    """eps / v / x0 prediction (the process decides which) from [x_t, cond], t and aug level."""

    def __init__(self, block_out_channels=(32, 64, 96), layers_per_block: int = 1,
                 down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
                 norm_num_groups: int = 16, attention_head_dim: int = 16,
                 dropout: float = 0.0) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        down = list(down_block_types)
        if len(down) != len(block_out_channels):
            raise ValueError(f"down_block_types has {len(down)} entries but block_out_channels "
                             f"{len(block_out_channels)}; give one block type per resolution")
        up = [t.replace("Down", "Up") for t in reversed(down)]
        self.unet = UNet2DModel(
            in_channels=6, out_channels=3, block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block, down_block_types=tuple(down),
            up_block_types=tuple(up), norm_num_groups=norm_num_groups,
            attention_head_dim=attention_head_dim, dropout=dropout,
            class_embed_type="timestep")
        self.downsample_factor = 2 ** (len(down) - 1)

    def forward(self, x_t: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                aug_level: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x_t.shape
        f = self.downsample_factor
        if H % f or W % f:
            raise ValueError(f"the UNet needs sides divisible by {f}, got {H}x{W}; pad the input")
        t = torch.as_tensor(t, device=x_t.device).expand(B)
        aug = torch.as_tensor(aug_level, device=x_t.device, dtype=x_t.dtype).expand(B)
        h = torch.cat([x_t, cond * 2 - 1], dim=1)  # (B, 6, H, W); cond to [-1, 1]
        return self.unet(h, t, class_labels=aug * AUG_EMBED_SCALE).sample  # (B, 3, H, W)
