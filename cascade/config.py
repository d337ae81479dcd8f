"""Typed configs: dataclass schemas merged with YAML files and dotted overrides.

``load_config(EvalConfig, "configs/eval/bicubic.yaml", ["data=[set5]"])`` returns a
struct-mode ``DictConfig``: unknown keys fail with the nearest valid key, wrong types fail
with the key and the expected type. ``save_config`` writes the resolved config atomically
beside every output so any run can be reproduced.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from cascade.atomic import atomic_write_text
from cascade.errors import ConfigError


def _dotted_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig) and not node._is_missing() and not node._is_none():
                keys += _dotted_keys(node, full + ".")
    return keys


def _check_keys(schema: DictConfig, other: Any, where: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``other`` that ``schema`` lacks."""
    if not isinstance(other, (dict, DictConfig)) or not isinstance(schema, DictConfig):
        return
    # Free-form dict fields (typed Dict[str, Any]) accept any key.
    if schema._metadata.object_type in (None, dict) and prefix:
        return
    for k in other.keys():
        full = f"{prefix}{k}"
        if k not in schema:
            near = difflib.get_close_matches(full, _dotted_keys(_root_of(schema)), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"unknown config key {full!r} in {where}{hint}")
        sub = schema._get_node(k)
        if isinstance(sub, DictConfig):
            _check_keys(sub, other[k], where, full + ".")


def _non_mapping_key(schema: DictConfig, layer: Any, prefix: str = "") -> str | None:
    """The first key whose schema is a group of keys but whose value in ``layer`` is not."""
    if not isinstance(layer, DictConfig):
        return None
    for k in layer.keys():
        node = schema._get_node(k) if k in schema else None
        if isinstance(node, DictConfig):
            if not isinstance(layer._get_node(k), DictConfig):
                return f"{prefix}{k}"
            found = _non_mapping_key(node, layer[k], f"{prefix}{k}.")
            if found:
                return found
    return None


def _root_of(node: DictConfig) -> DictConfig:
    while node._get_parent() is not None:
        node = node._get_parent()  # type: ignore[assignment]
    return node


def _coerce_lists(schema: DictConfig, layer: Any) -> None:
    """Let ``key=a,b`` (or ``key=a``) fill a list field, as on the command line."""
    if not isinstance(layer, DictConfig) or not isinstance(schema, DictConfig):
        return
    for k in list(layer.keys()):
        if k not in schema:
            continue
        node, val = schema._get_node(k), layer._get_node(k)
        if isinstance(node, ListConfig) and not isinstance(val, (ListConfig, DictConfig)):
            raw = layer[k]
            parts = str(raw).split(",") if isinstance(raw, str) else [raw]
            layer[k] = [p.strip() if isinstance(p, str) else p for p in parts if p != ""]
        elif isinstance(node, DictConfig):
            _coerce_lists(node, layer[k])


def _parse_overrides(overrides: Iterable[str]) -> DictConfig:
    items = list(overrides)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=2e-4)")
    try:
        return OmegaConf.from_dotlist(items)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {items}: {e.msg}") from None


def load_config(
    schema: type,
    path: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> DictConfig:
    """Merge ``schema`` defaults <- ``defaults`` (a command's own, e.g. `cascade upscale`'s
    stages) <- YAML file <- ``extra`` (e.g. CLI flags) <- dotted overrides."""
    base = OmegaConf.structured(schema)
    layers: list[tuple[Any, str]] = []
    if defaults:
        layers.append((OmegaConf.create(defaults), "the command's defaults"))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} not found; pass an existing YAML file")
        try:
            layers.append((OmegaConf.load(p), str(p)))
        except Exception as e:  # yaml errors carry their own line numbers
            raise ConfigError(f"cannot parse config {str(p)!r}: {str(e).splitlines()[0]}") from None
    if extra:
        layers.append((OmegaConf.create(extra), "command-line options"))
    if overrides:
        layers.append((_parse_overrides(overrides), "overrides"))
    cfg = base
    for layer, where in layers:
        _check_keys(base, layer, where)
        _coerce_lists(base, layer)
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except ValidationError as e:
            key = e.full_key or _non_mapping_key(base, layer) or "?"
            msg = (e.msg or str(e)).splitlines()[0]  # a merge error has no .msg
            raise ConfigError(f"config key {key!r} in {where}: {msg}") from None
        except ConfigKeyError as e:  # safety net; _check_keys normally catches these first
            raise ConfigError(f"unknown config key {e.full_key!r} in {where}") from None
    OmegaConf.set_struct(cfg, True)
    return cfg  # type: ignore[return-value]


def to_container(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML, atomically."""
    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


# -- shared training-loop settings (every stage's training config has a ``train`` field) ----

from dataclasses import dataclass, field  # noqa: E402


@dataclass
class TrainLoopConfig:
    """Optimisation and bookkeeping of ``cascade.train`` (the same for every stage)."""

    steps: int = 2000  # optimizer steps
    batch_size: int = 8  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    schedule: str = "cosine"  # cosine | step | constant (all after a linear warm-up)
    warmup: int = 100
    min_lr_ratio: float = 0.05  # cosine floor, as a fraction of lr
    step_milestones: list[int] = field(default_factory=list)  # for schedule=step
    step_gamma: float = 0.5
    grad_clip: float = 1.0  # max gradient norm (0 disables)
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    ckpt_every: int = 250
    keep_checkpoints: int = 2
    mixed_precision: str = "auto"  # auto (bf16 on CUDA, none on CPU) | no | bf16 | fp16
    max_nonfinite: int = 10  # consecutive non-finite losses before the run stops
    threads: int = 0  # torch CPU threads (0 = torch's default)
    # an inference checkpoint folder whose weights start a fresh run (fine-tuning), validated
    # at step 0 (the curve's starting point) when val_every > 0; null or empty
    # (`train.init=`): from scratch
    init: Optional[str] = None
    # false: modules that checkpoint lacks keep their fresh initialisation if they start as
    # identities (growing a model, e.g. LAINR stem_blocks added to a trained stem); any other
    # missing tensor, names it has that the model lacks and other shapes are still an error
    init_strict: bool = True
