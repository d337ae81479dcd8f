"""Self-describing inference checkpoints: a folder with

* ``model.safetensors``: the weights (EMA weights for a trained stage),
* ``config.yaml``: the resolved training config (``stage``, ``model``, ...),
* ``checkpoint.json``: ``{"stage", "step", "sha256", "config_sha256", "format"}``; the
  checksums detect a truncated or corrupted file before it is parsed.

The folder is written under a temporary name, fsynced and renamed into place, so a reader
sees a whole checkpoint or none. Training-state checkpoints (optimizer, RNG, ...) are
written by ``cascade.train`` beside these and checked with the same ``file_checksums``.
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

from cascade.atomic import atomic_write_text, replace_dir
from cascade.errors import CheckpointError

FORMAT = "cascade-checkpoint-v1"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_checksums(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative POSIX paths), except ``skip``."""
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def checksum_problem(folder: Path, checksums: dict[str, str]) -> str | None:
    """None if every listed file is present and matches its checksum, else what is wrong."""
    for rel, digest in checksums.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if sha256_file(p) != digest:
            return f"{rel} does not match its checksum (truncated or corrupted)"
    return None


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
            "sha256": sha256_file(tmp / "model.safetensors"),
            "config_sha256": sha256_file(tmp / "config.yaml")}
    atomic_write_text(tmp / "checkpoint.json", json.dumps(meta, indent=2) + "\n")
    replace_dir(tmp, folder)
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
    if (folder / "trainer_state.json").is_file():
        raise CheckpointError(f"{str(folder)!r} is a training-state checkpoint; pass the "
                              "inference checkpoint OUT/model beside OUT/checkpoints")
    meta_path, weights = folder / "checkpoint.json", folder / "model.safetensors"
    for p in (meta_path, weights, folder / "config.yaml"):
        if not p.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r} lacks {p.name}; it is incomplete: "
                                  "re-export it or point to another checkpoint")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{meta_path} is corrupt (not a JSON object); "
                              "re-export the checkpoint") from None
    if stage is not None and meta.get("stage") != stage:
        raise CheckpointError(f"checkpoint {str(folder)!r} is a {meta.get('stage')!r} checkpoint, "
                              f"not {stage!r}; pass a {stage} checkpoint")
    sums = {"model.safetensors": meta.get("sha256")}
    if "config_sha256" in meta:  # checkpoints written before it was added lack it
        sums["config.yaml"] = meta["config_sha256"]
    problem = checksum_problem(folder, sums)
    if problem:
        raise CheckpointError(f"checkpoint {str(folder)!r}: {problem}; copy it again or "
                              "re-export the checkpoint")
    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {weights}: {str(e).splitlines()[0]}") from None
    try:
        config = OmegaConf.load(folder / "config.yaml")
    except Exception as e:  # yaml errors carry their own line numbers
        raise CheckpointError(f"cannot parse {folder / 'config.yaml'}: {str(e).splitlines()[0]}; "
                              "re-export the checkpoint") from None
    return LoadedCheckpoint(state, config, meta, folder)


def update_config(folder: str | os.PathLike, overrides: list[str]) -> Path:
    """Rewrite an inference checkpoint's ``config.yaml`` with dotted ``key=value`` items (e.g.
    ``sampling.temperature=0.8``: a stage's default sampling settings); the weights, stage and
    step are kept, the checksums renewed, the folder replaced atomically. A key the config
    does not have is a one-line ConfigError."""
    import yaml

    from cascade.errors import ConfigError

    ck = load_checkpoint(folder)
    cfg = ck.config
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"{item!r}: give key=value with a key of {ck.path}/config.yaml, "
                              "e.g. sampling.temperature=0.8")
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return save_checkpoint(ck.path, ck.state_dict, cfg, ck.meta["stage"],
                           int(ck.meta.get("step", 0)))


_MISSING = object()

