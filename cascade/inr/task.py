"""Training the LAINR stage: random-scale batches (LIIF protocol), L1 loss, PSNR validation.

Each batch draws one scale s ~ U(scale_min, scale_max), 48x48 LR crops and HR crops of
48*s pixels, and a random subset of HR pixel centres, jittered inside their cell anew for
every batch: without multi-scale supervision and fresh jitter a LAINR learns little
beyond resampling (docs/lainr.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cascade.config import TrainLoopConfig
from cascade.inr.model import LAINR, LAINRConfig
from cascade.registry import TASKS
from cascade.seeding import generator_for


@dataclass
class LAINRDataConfig:
    train: list[str] = field(default_factory=lambda: ["builtin"])  # datasets or paths
    split: str = "train"  # split of the built-in photos used for training
    lr_patch: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    queries: int = 1024  # HR pixels queried per crop (0 = all)
    jitter: float = 0.5  # +- fraction of an HR cell, drawn anew per query per batch (0 = off)
    # Validation: centre crops of held-out images (monitoring only; no model selection).
    val: list[str] = field(default_factory=lambda: ["builtin"])
    val_split: str = "test"
    val_crop: int = 192
    val_scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])


@dataclass
class LAINRTrainConfig:
    stage: str = "lainr"
    model: LAINRConfig = field(default_factory=LAINRConfig)
    data: LAINRDataConfig = field(default_factory=LAINRDataConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    out: str = "runs/lainr"
    resume: str = "auto"  # auto | none | a checkpoint folder


@TASKS.register("lainr")
class LAINRTask:
    config_cls = LAINRTrainConfig

    def __init__(self, cfg) -> None:
        from cascade.data.datasets import RandomScalePatches, resolve_dataset

        self.cfg = cfg
        d = cfg.data
        images = [ds[i]["image"] for name in d.train
                  for ds in [resolve_dataset(name, split=d.split)] for i in range(len(ds))]
        self.sampler = RandomScalePatches(images, lr_patch=d.lr_patch, scale_min=d.scale_min,
                                          scale_max=d.scale_max, queries=d.queries or None,
                                          jitter=d.jitter)
        self._val = None

    def build_model(self) -> LAINR:
        from omegaconf import OmegaConf

        return LAINR(**OmegaConf.to_container(self.cfg.model, resolve=True))

    def batch(self, step: int, micro: int, rank: int, device: torch.device) -> dict:
        g = generator_for(self.cfg.train.seed, step, micro, rank)
        b = self.sampler.sample_batch(self.cfg.train.batch_size, g)
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        pred = model(batch["lr"], batch["coord"], batch["cell"])  # (B, Q, 3)
        loss = F.l1_loss(pred, batch["rgb"])
        return loss, {"loss": float(loss.detach()), "scale": float(batch["scale"])}

    def _val_pairs(self):
        if self._val is None:
            from cascade.data.datasets import resolve_dataset
            from cascade.data.degrade import degrade

            d, pairs = self.cfg.data, []
            for name in d.val:
                ds = resolve_dataset(name, split=d.val_split)
                for i in range(len(ds)):
                    img = ds[i]["image"]
                    H, W = img.shape[-2:]
                    c = min(d.val_crop, H, W)
                    top, left = (H - c) // 2, (W - c) // 2
                    crop = img[:, top:top + c, left:left + c][None]
                    for s in d.val_scales:
                        pairs.append((float(s), *degrade(crop, float(s))))
            self._val = pairs
        return self._val

    def validate(self, model, step: int | None = None) -> dict[str, float]:
        """Mean PSNR-Y per scale of the model and its gain over bicubic."""
        from cascade.data.degrade import upscale_bicubic
        from cascade.metrics.fidelity import psnr

        device = next(model.parameters()).device
        sums: dict[float, list[float]] = {}
        for s, hr, lr in self._val_pairs():
            hr, lr = hr.to(device), lr.to(device)
            sr = model.upscale(lr, size=tuple(hr.shape[-2:])).clamp(0, 1)
            bic = upscale_bicubic(lr, tuple(hr.shape[-2:])).clamp(0, 1)
            p, b = float(psnr(sr, hr, scale=s)[0]), float(psnr(bic, hr, scale=s)[0])
            acc = sums.setdefault(s, [0.0, 0.0, 0])
            acc[0] += p
            acc[1] += p - b
            acc[2] += 1
        out = {}
        for s, (p, g, n) in sorted(sums.items()):
            out[f"psnr_x{s:g}"] = p / n
            out[f"gain_x{s:g}"] = g / n
        return out
