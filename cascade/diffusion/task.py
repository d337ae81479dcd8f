"""Training an SR3-style x2 stage with the shared trainer (``cascade train configs/sr3_x2.yaml``).

Data: every training photo is degraded once, ``x_lr = D(x_hr)`` (rounded to uint8), and
brought back to the HR size by the conditioning upsampler, ``c = U(x_lr)`` (the frozen LAINR
stage, or bicubic); these three images are cached in ``OUT/conditioning.safetensors`` (LAINR
takes about a minute over the photos on 2 CPU cores). A batch is a set of aligned random
crops of (x_hr, x_lr, c), HR crops at even offsets so the LR crop is exact, with random
flips/transposes. All randomness of a step (crops, t, noise, augmentation) comes from one
generator keyed by (seed, step, micro-batch, rank): resumable and sharded per rank.

Validation samples centre crops of held-out photos (DPM-Solver++, fixed seeds) and reports
PSNR-Y, LR-PSNR and the high-frequency energy ratio of the samples and of the conditioning,
and writes ``OUT/val/step_N.png`` (rows: conditioning | sample | ground truth).
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cascade.config import TrainLoopConfig
from cascade.data.augment import (
    ColourAugConfig,
    DefocusAugConfig,
    apply_colour,
    check_defocus,
    colour_active,
    defocus_active,
    defocus_crop,
    disc_kernel,
    draw_colour_matrix,
    draw_defocus_radius,
)
from cascade.data.datasets import apply_flips
from cascade.diffusion.objective import ObjectiveConfig, diffusion_loss, draw_noise_and_levels
from cascade.diffusion.process import ProcessConfig, make_train_scheduler
from cascade.diffusion.sampling import SamplingConfig
from cascade.diffusion.unet import ConditionalUNet, SR3UNetConfig
from cascade.errors import ConfigError
from cascade.registry import TASKS
from cascade.seeding import generator_for


@dataclass
class ConditioningConfig:
    upsampler: str = "lainr"  # lainr (a frozen LAINR checkpoint) | bicubic
    checkpoint: str = "checkpoints/lainr"  # for upsampler=lainr


@dataclass
class SR3DataConfig:
    train: list[str] = field(default_factory=lambda: ["builtin"])  # datasets or paths
    split: str = "train"
    scale: float = 2.0  # the stage's factor (an integer)
    hr_patch: int = 64  # HR crop side (a multiple of scale * the UNet's down-sampling)
    cache: bool = True  # keep (hr, lr, cond) of the training photos in OUT/conditioning.safetensors
    colour: ColourAugConfig = field(default_factory=ColourAugConfig)  # off by default
    defocus: DefocusAugConfig = field(default_factory=DefocusAugConfig)  # off by default
    val: list[str] = field(default_factory=lambda: ["builtin"])
    val_split: str = "test"
    val_crop: int = 128  # centre crops of this HR side
    val_steps: int = 20  # sampler steps for validation samples (the sampling: block's sampler)
    val_images: int = 4  # at most this many held-out images


@dataclass
class SR3TrainConfig:
    stage: str = "sr3"
    model: SR3UNetConfig = field(default_factory=SR3UNetConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # defaults for inference
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    data: SR3DataConfig = field(default_factory=SR3DataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    out: str = "runs/sr3_x2"
    resume: str = "auto"


@TASKS.register("sr3")
class SR3Task:
    config_cls = SR3TrainConfig

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        d = cfg.data
        s = round(d.scale)
        if abs(d.scale - s) > 1e-9 or s < 2:
            raise ConfigError(f"data.scale={d.scale}: a diffusion stage takes an integer factor >= 2")
        self.s = s
        f = 2 ** (len(cfg.model.block_out_channels) - 1)
        if d.hr_patch % (s * f):
            raise ConfigError(f"data.hr_patch={d.hr_patch} must be a multiple of {s * f} "
                              f"(scale x the UNet's down-sampling)")
        check_defocus(d.defocus)  # before the (minutes of) conditioning, not at the first batch
        self.alphas_cumprod = make_train_scheduler(cfg.process).alphas_cumprod
        self._upsampler = None
        self.images = self._training_images()
        self._val = None

    # -- data ----------------------------------------------------------------------------------

    def upsampler(self):
        if self._upsampler is None:
            from cascade.diffusion.pretrained import conditioning_spec
            from cascade.upsamplers import make_upsampler

            self._upsampler = make_upsampler(conditioning_spec(self.cfg.conditioning))
        return self._upsampler

    def _degrade_and_condition(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        from cascade.data.degrade import degrade

        hr, lr = degrade(img[None], float(self.s))
        with torch.no_grad():
            cond = self.upsampler()(lr, tuple(hr.shape[-2:]))
        return {"hr": hr[0], "lr": lr[0], "cond": cond[0].float()}

    def _weights_digest(self) -> str | None:
        """The conditioning LAINR's ``model.safetensors`` sha256 (from its checkpoint.json), so
        a cache made with other weights at the same path is recomputed, not silently reused."""
        c = self.cfg.conditioning
        if c.upsampler != "lainr":
            return None
        meta = Path(c.checkpoint) / "checkpoint.json"
        return json.loads(meta.read_text()).get("sha256") if meta.is_file() else None

    def _training_images(self) -> list[dict[str, torch.Tensor]]:
        from cascade.data.datasets import resolve_dataset

        d = self.cfg.data
        files = [(name, ds, i) for name in d.train
                 for ds in [resolve_dataset(name, split=d.split)] for i in range(len(ds))]
        key = json.dumps({"files": [str(ds.paths[i]) for _, ds, i in files], "scale": self.s,
                          "cond": dict(self.cfg.conditioning), "weights": self._weights_digest(),
                          "v": 2}, sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache = Path(self.cfg.out) / "conditioning.safetensors"
        if d.cache and cache.is_file():
            from safetensors import safe_open

            with safe_open(str(cache), "pt") as f:
                if (f.metadata() or {}).get("key") == digest:
                    n = int(f.metadata()["n"])
                    return [{k: f.get_tensor(f"{i}.{k}") for k in ("hr", "lr", "cond")}
                            for i in range(n)]
        from tqdm.auto import tqdm

        out = []
        for _, ds, i in tqdm(files, desc="conditioning the training photos", dynamic_ncols=True,
                             file=sys.stderr):
            out.append(self._degrade_and_condition(ds[i]["image"]))
        small = [i for i, x in enumerate(out) if min(x["hr"].shape[-2:]) < d.hr_patch]
        if small:
            raise ConfigError(f"{len(small)} training images are smaller than data.hr_patch="
                              f"{d.hr_patch}; lower it")
        if d.cache:
            from safetensors.torch import save

            from cascade.atomic import atomic_write

            tensors = {f"{i}.{k}": v.contiguous() for i, x in enumerate(out) for k, v in x.items()}
            with atomic_write(cache) as fh:
                fh.write(save(tensors, metadata={"key": digest, "n": str(len(out))}))
        return out

    def build_model(self) -> ConditionalUNet:
        from omegaconf import OmegaConf

        return ConditionalUNet(**OmegaConf.to_container(self.cfg.model, resolve=True))

    def sample_crops(self, batch_size: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """Aligned random crops of (hr, lr, cond): flips, one colour map per crop applied to
        all three (``data.colour``), and a defocus of some crops (``data.defocus``: HR and
        conditioning blurred alike with their surroundings in the photo, LR degraded again
        from the blurred HR). Each is drawn only when it is on, so old runs replay."""
        from cascade.data.degrade import degrade

        S, s = self.cfg.data.hr_patch, self.s
        colour, blur = self.cfg.data.colour, self.cfg.data.defocus
        p = S // s
        crops: dict[str, list[torch.Tensor]] = {"hr": [], "lr": [], "cond": []}
        for _ in range(batch_size):
            im = self.images[int(torch.randint(len(self.images), (), generator=g))]
            h, w = im["lr"].shape[-2:]
            i = int(torch.randint(h - p + 1, (), generator=g))
            j = int(torch.randint(w - p + 1, (), generator=g))
            flips = torch.rand(3, generator=g) < 0.5
            crop = {"lr": im["lr"][:, i:i + p, j:j + p]}
            for k in ("hr", "cond"):
                crop[k] = im[k][:, i * s:i * s + S, j * s:j * s + S]
            M = draw_colour_matrix(colour, g) if colour_active(colour) else None
            radius = draw_defocus_radius(blur, g) if defocus_active(blur) else None
            if radius is not None:
                kernel = disc_kernel(radius)
                for k in ("hr", "cond"):
                    crop[k] = defocus_crop(im[k], i * s, j * s, S, kernel)
                crop["lr"] = degrade(crop["hr"][None], float(s))[1][0]
            for k, v in crop.items():
                v = apply_flips(v, flips)
                crops[k].append(apply_colour(v, M, clip=k != "cond") if M is not None else v)
        return {k: torch.stack(v) for k, v in crops.items()}

    def batch(self, step: int, micro: int, rank: int, device: torch.device) -> dict:
        g = generator_for(self.cfg.train.seed, step, micro, rank)
        b = self.sample_crops(self.cfg.train.batch_size, g)
        draws = draw_noise_and_levels(b, self.cfg.objective, self.cfg.process.num_train_timesteps,
                                      g)
        return {"batch": {k: v.to(device) for k, v in b.items()},
                "draws": {k: v.to(device) for k, v in draws.items()}}

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        return diffusion_loss(model, batch["batch"], batch["draws"], self.cfg.process,
                              self.cfg.objective, self.alphas_cumprod)

    # -- validation ------------------------------------------------------------------------------

    def _val_pairs(self) -> list[dict[str, torch.Tensor]]:
        if self._val is None:
            from cascade.data.datasets import resolve_dataset

            d, pairs = self.cfg.data, []
            for name in d.val:
                ds = resolve_dataset(name, split=d.val_split)
                for i in range(min(len(ds), d.val_images - len(pairs))):
                    img = ds[i]["image"]
                    H, W = img.shape[-2:]
                    c = min(d.val_crop, H, W) // (4 * self.s) * (4 * self.s)
                    top, left = (H - c) // 2, (W - c) // 2
                    pairs.append(self._degrade_and_condition(img[:, top:top + c, left:left + c]))
            self._val = pairs
        return self._val

    def validate(self, model, step: int | None = None) -> dict[str, float]:
        from cascade.diffusion.stage import SR3Stage
        from cascade.metrics import hf_ratio, lr_psnr, psnr

        pairs = self._val_pairs()
        stage = SR3Stage(model, self.cfg.process, SamplingConfig(**self.cfg.sampling),
                         scale=self.s)
        hr = torch.stack([p["hr"] for p in pairs])
        lr = torch.stack([p["lr"] for p in pairs])
        cond = torch.stack([p["cond"] for p in pairs])
        dev = next(model.parameters()).device
        # the stage's own sampler (sampling:), with the validation's step count
        x = stage(lr.to(dev), cond=cond.to(dev), seed=0, steps=self.cfg.data.val_steps)[:, 0]
        out = {}
        for name, img in (("sample", x), ("cond", cond.clamp(0, 1))):
            out[f"psnr_{name}"] = float(psnr(img, hr, scale=self.s).mean())
            out[f"lrpsnr_{name}"] = float(lr_psnr(img, lr=lr, scale=self.s).mean())
            out[f"hf_{name}"] = float(hf_ratio(img, hr, scale=self.s).mean())
        if step is not None:
            from cascade.data.io import save_image

            grid = torch.cat([torch.cat(list(r), dim=-1) for r in (cond.clamp(0, 1), x, hr)], -2)
            save_image(grid, Path(self.cfg.out) / "val" / f"step_{step:07d}.png")
        return out
