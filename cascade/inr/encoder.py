"""The LAINR encoder: a bidirectional Mamba over patch tokens interleaved with latent tokens.

The LR image is reflection-padded to a multiple of ``patch_size * latent_stride``, cut into
``patch_size`` patches (a strided conv), and grouped into latent cells of
``latent_stride x latent_stride`` patches. The scan order visits the cells row-major and,
inside each cell, first one learnable latent token, then the cell's patch tokens
row-major::

    [z_00, p, p, p, p,  z_01, p, p, p, p,  ...]        # latent_stride = 2

so every latent token sits next to the patches it summarises, and after ``depth``
bidirectional Mamba layers the latent tokens are read out as a grid.

Position. Each token gets (a) a learned embedding of its *slot* inside its cell (slot 0 is
the latent token itself) and (b) a projection of low-frequency Fourier features of its
cell's centre in normalised [-1, 1] coordinates. Neither is a table indexed by absolute
position, so any LR size works; (b) tells the scan where rows begin and end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from cascade.nn.fourier import FourierFeatures
from cascade.nn.mamba import BiMamba

__all__ = ["Latents", "MambaEncoder", "StemBlock", "pad_to_multiple"]


@dataclass
class Latents:
    """What the encoder hands the decoder."""

    tokens: Tensor  # (B, gh, gw, D) latent tokens as a grid
    centres: Tensor  # (gh, gw, 2) token centres, (y, x) in the LR's [-1, 1] frame (may pass 1
    # in the padded border)
    lr: Tensor  # (B, 3, h, w) the unpadded input, for the bicubic base
    pixels: int  # LR pixels per latent token side (patch_size * latent_stride)
    pixel_features: Tensor | None = None  # (B, C, h, w) per-LR-pixel features of the stem

    @property
    def size(self) -> tuple[int, int]:
        """The true (unpadded) LR size (h, w)."""
        return self.lr.shape[-2], self.lr.shape[-1]


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad (B, C, h, w) at the bottom/right to multiples of ``multiple``.

    Reflection (no artificial edge) where the image is large enough for it; replication
    for images smaller than the pad, which reflection cannot handle.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def cell_centres(grid: tuple[int, int], pixels: int, size: tuple[int, int], device=None) -> Tensor:
    """Centres of a (gh, gw) grid of ``pixels``-wide cells in the [-1, 1] frame of an image of
    true size (h, w) -> (gh, gw, 2) as (y, x)."""
    (gh, gw), (h, w) = grid, size
    ys = (torch.arange(gh, device=device) + 0.5) * pixels * 2 / h - 1  # (gh,)
    xs = (torch.arange(gw, device=device) + 0.5) * pixels * 2 / w - 1  # (gw,)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).float()


class StemBlock(nn.Module):
    """(B, C, h, w) -> x + conv(relu(conv(x))), EDSR's residual block without batch norm.

    The second convolution starts at zero, so a new block is an identity: blocks added to a
    trained stem (``train.init_strict=false``) leave its output unchanged until they learn.
    """

    grows_as_identity = True  # train.init_strict=false may add it to a trained model

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="replicate")
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class MambaEncoder(nn.Module):
    """(B, 3, h, w) in [0, 1] -> :class:`Latents` with a (B, ceil(h/P), ceil(w/P), dim) grid,
    P = patch_size * latent_stride."""

    def __init__(
        self,
        dim: int = 64,
        depth: int = 2,
        patch_size: int = 2,
        latent_stride: int = 2,
        d_state: int = 16,
        expand: int = 2,
        n_freq_pos: int = 4,
        stem_channels: int = 0,
        stem_depth: int = 3,
        stem_blocks: int = 0,
    ) -> None:
        super().__init__()
        # Pixel stem: a few 3x3 convs give every LR pixel a feature vector (edges, their
        # orientation and position to sub-pixel precision) for the decoder's local path,
        # then ``stem_blocks`` residual blocks that widen what each feature sees (a receptive
        # field of 2 * stem_depth + 4 * stem_blocks + 1 LR pixels).
        self.stem = None
        if stem_channels:
            layers: list[nn.Module] = []
            for i in range(stem_depth):
                layers += [nn.Conv2d(3 if i == 0 else stem_channels, stem_channels, 3,
                                     padding=1, padding_mode="replicate"), nn.ReLU()]
            layers = layers[:-1]  # linear output
            layers += [StemBlock(stem_channels) for _ in range(stem_blocks)]
            self.stem = nn.Sequential(*layers)
        self.patch_size = patch_size
        self.latent_stride = latent_stride
        self.embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        # Slot 0 is the learnable latent token; slots 1.. the patch positions in a cell.
        self.slot = nn.Parameter(torch.randn(1 + latent_stride**2, dim) * 0.02)
        # Frequencies 1..4 in normalised units: periods from the whole image down to 1/4 of it.
        self.gamma_pos = FourierFeatures(2, n_freq_pos, sigma=4.0)
        self.pos = nn.Linear(self.gamma_pos.out_dim, dim)
        self.layers = nn.ModuleList(
            BiMamba(dim, d_state=d_state, expand=expand) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    @property
    def pixels(self) -> int:
        """LR pixels per latent token side."""
        return self.patch_size * self.latent_stride

    def forward(self, lr: Tensor) -> Latents:
        h, w = lr.shape[-2:]
        s = self.latent_stride
        x = self.embed(pad_to_multiple(lr - 0.5, self.pixels))  # (B, D, gh*s, gw*s)
        gh, gw = x.shape[-2] // s, x.shape[-1] // s
        patches = rearrange(x, "b d (gh sh) (gw sw) -> b (gh gw) (sh sw) d", sh=s, sw=s)
        B, cells, _, D = patches.shape
        latent = patches.new_zeros(B, cells, 1, D)  # content of slot 0 is all in self.slot
        seq = torch.cat([latent, patches], dim=2) + self.slot  # (B, cells, 1 + s*s, D)
        centres = cell_centres((gh, gw), self.pixels, (h, w), lr.device).to(lr.dtype)  # (gh, gw, 2)
        seq = seq + self.pos(self.gamma_pos(centres.reshape(cells, 1, 2)))  # per cell
        seq = seq.reshape(B, cells * (1 + s * s), D)  # (B, L, D) in scan order
        for layer in self.layers:
            seq = layer(seq)
        z = self.norm(seq.reshape(B, cells, 1 + s * s, D)[:, :, 0])  # (B, cells, D)
        feats = self.stem(lr - 0.5) if self.stem is not None else None  # (B, C, h, w)
        return Latents(tokens=z.reshape(B, gh, gw, D), centres=centres, lr=lr, pixels=self.pixels,
                       pixel_features=feats)
