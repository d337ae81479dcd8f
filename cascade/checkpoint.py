"""Self-describing inference checkpoints: a folder with

* ``model.safetensors``: the weights (EMA weights for a trained stage),
* ``config.yaml``: the resolved training config (``stage``, ``model``, ...),
* ``checkpoint.json``: ``{"stage", "step", "sha256", "format"}``; the checksum detects a
  truncated or corrupted weights file before it is parsed.

The folder is written under a temporary name and renamed into place, so a reader sees a
whole checkpoint or none. Training-state checkpoints (optimizer, RNG, ...) are written by
``cascade.train`` beside these.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from cascade.atomic import atomic_write_text
from cascade.errors import CheckpointError

FORMAT = "cascade-checkpoint-v1"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    folder: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    config: DictConfig | dict,
    stage: str,
    step: int = 0,
) -> Path:
    """Write an inference checkpoint atomically (temp folder + rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    cfg = config if isinstance(config, DictConfig) else OmegaConf.create(config)
    atomic_write_text(tmp / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    meta = {"format": FORMAT, "stage": stage, "step": int(step),
            "sha256": sha256_file(tmp / "model.safetensors")}
    atomic_write_text(tmp / "checkpoint.json", json.dumps(meta, indent=2) + "\n")
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(folder, old)
    os.replace(tmp, folder)
    if old.exists():
        shutil.rmtree(old)
    return folder


@dataclass
class LoadedCheckpoint:
    state_dict: dict[str, torch.Tensor]
    config: DictConfig
    meta: dict[str, Any]
    path: Path


def load_checkpoint(folder: str | os.PathLike, stage: str | None = None) -> LoadedCheckpoint:
    """Read and verify a checkpoint folder; ``stage`` checks it is the expected kind."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"checkpoint {str(folder)!r} not found; pass a folder written by "
                              "'cascade train' (e.g. checkpoints/lainr)")
    if folder.is_file():
        folder = folder.parent
    meta_path, weights = folder / "checkpoint.json", folder / "model.safetensors"
    for p in (meta_path, weights, folder / "config.yaml"):
        if not p.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} lacks {p.name}; it is incomplete: "
                                  "re-export it or point to another checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{meta_path} is corrupt (not JSON); re-export the checkpoint") from None
    if stage is not None and meta.get("stage") != stage:
        raise CheckpointError(f"checkpoint {str(folder)!r} is a {meta.get('stage')!r} checkpoint, "
                              f"not {stage!r}; pass a {stage} checkpoint")
    if sha256_file(weights) != meta.get("sha256"):
        raise CheckpointError(f"{weights} does not match its checksum (truncated or corrupted); "
                              "copy it again or re-export the checkpoint")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {weights}: {e}") from None
    return LoadedCheckpoint(state, OmegaConf.load(folder / "config.yaml"), meta, folder)
