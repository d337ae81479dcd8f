"""A trained x2 diffusion stage ready to sample: network + process + default knobs.

``stage(lr, num_samples=4, seed=0, steps=20, sampler="dpm", projection=1.0)`` upsamples
``lr`` (B, 3, h, w) by the stage's scale through its conditioning upsampler and draws
``num_samples`` samples per image: (B, N, 3, H, W). Sample i of an image is seeded by
``(seed, i)`` alone, so it does not change with N or with the batch it is drawn in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import torch

from cascade.diffusion.process import ProcessConfig, make_train_scheduler
from cascade.diffusion.sampling import SamplingConfig, sample
from cascade.errors import ConfigError
from cascade.seeding import generator_for


class SR3Stage:
    def __init__(self, unet, process: ProcessConfig, sampling: SamplingConfig,
                 scale: float = 2.0, upsampler=None) -> None:
        self.unet = unet.eval()
        self.process = process
        self.sampling = sampling
        self.scale = float(scale)
        self.upsampler = upsampler
        self.alphas_cumprod = make_train_scheduler(process).alphas_cumprod

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> SR3Stage:
        self.unet.to(device)
        if self.upsampler is not None:
            self.upsampler.to(device)
        return self

    def knobs(self, **overrides) -> SamplingConfig:
        """The stage's default sampling settings with ``overrides`` (None = keep)."""
        unknown = set(overrides) - set(asdict(self.sampling))
        if unknown:
            raise ConfigError(f"unknown sampling option(s) {sorted(unknown)}; "
                              f"known: {sorted(asdict(self.sampling))}")
        return replace(self.sampling, **{k: v for k, v in overrides.items() if v is not None})

    def pad_multiple(self) -> int:
        """LR sides must be a multiple of this so the output fits the UNet's down-sampling."""
        f = self.unet.downsample_factor
        s = round(self.scale)
        return f // math.gcd(f, s)

    @torch.no_grad()
    def __call__(self, lr: torch.Tensor, num_samples: int = 1, seed: int = 0,
                 cond: torch.Tensor | None = None, progress: bool = False,
                 max_batch: int = 8, **knobs) -> torch.Tensor:
        """Samples (B, N, 3, H, W) in [0, 1] for ``lr`` (B, 3, h, w); ``cond`` (B, 3, H, W)
        skips the conditioning upsampler (e.g. when it was computed already)."""
        if num_samples < 1:
            raise ConfigError(f"num_samples={num_samples}; draw at least 1 sample")
        k = self.knobs(**knobs)
        B, _, h, w = lr.shape
        s = round(self.scale)
        if abs(self.scale - s) > 1e-9:
            raise ConfigError(f"this stage has the non-integer scale {self.scale}")
        H, W = h * s, w * s
        dev = self.device
        lr = lr.to(dev, torch.float32)
        if cond is None:
            if self.upsampler is None:
                raise ConfigError("this stage has no conditioning upsampler; pass cond=")
            cond = self.upsampler(lr, (H, W))
        cond = cond.to(dev, torch.float32)
        out = torch.empty(B, num_samples, 3, H, W)
        rows = [(b, i) for b in range(B) for i in range(num_samples)]
        for start in range(0, len(rows), max_batch):
            chunk = rows[start:start + max_batch]
            idx = torch.tensor([b for b, _ in chunk], device=dev)
            gens = [generator_for(seed, i) for _, i in chunk]
            x = self.draw(lr[idx], cond[idx], gens, k, progress=progress)
            for j, (b, i) in enumerate(chunk):
                out[b, i] = x[j].cpu()
        return out

    @torch.no_grad()
    def draw(self, lr: torch.Tensor, cond: torch.Tensor, generators: list[torch.Generator],
             knobs: SamplingConfig, progress: bool = False, denoise_fn=None,
             desc: str | None = None) -> torch.Tensor:
        """One sample per row: ``lr`` (R, 3, h, w) and its conditioning ``cond`` (R, 3, sh, sw)
        on the stage's device, one generator per row -> (R, 3, sh, sw) on that device.

        Pads the bottom/right so the UNet's sides divide and crops back; ``denoise_fn``
        (e.g. a ``tiling.TiledDenoiser``) replaces the whole-image network call.
        """
        s = round(self.scale)
        h, w = lr.shape[-2:]
        H, W = h * s, w * s
        m = self.pad_multiple()
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:  # reflect-pad bottom/right so the UNet's sides divide; cropped below
            mode = "reflect" if ph < h and pw < w else "replicate"
            lr = torch.nn.functional.pad(lr, (0, pw, 0, ph), mode=mode)
            cond = torch.nn.functional.pad(cond, (0, pw * s, 0, ph * s), mode=mode)
        k = knobs
        x = sample(self.unet, cond, lr, process=self.process, alphas_cumprod=self.alphas_cumprod,
                   generators=generators, sampler=k.sampler, steps=k.steps, eta=k.eta,
                   temperature=k.temperature, aug_level=k.aug_level, projection=k.projection,
                   clip=k.clip, progress=progress, denoise_fn=denoise_fn, desc=desc)
        return x[:, :, :H, :W]
