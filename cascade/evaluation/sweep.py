"""Sweeps: the method x settings variants an evaluation config asks for.

Per method, ``settings`` holds fixed settings and ``grid`` the settings to sweep, either as
axes (every combination, in the order written) or as an explicit list of points::

    settings: {sr3: {checkpoint: checkpoints/sr3}}
    grid:
      sr3: {steps: [10, 50], projection: [0, 1]}          # 4 variants
      # sr3: [{sampler: ddim, steps: 20}, {sampler: ddpm, steps: 200}]   # 2 variants

A variant's output images are cached under ``images/<variant_dir>/DATASET/xS/NAME.png``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cascade.errors import ConfigError


def expand(methods: list[str], settings: Mapping[str, Any] | None = None,
           grid: Mapping[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """[(method, settings)] for every variant: each method's fixed settings updated by each
    point of its grid (a method without a grid is one variant)."""
    settings, grid = dict(settings or {}), dict(grid or {})
    stray = [m for m in grid if m not in methods]
    if stray:
        raise ConfigError(f"grid names method {stray[0]!r}, which is not in methods "
                          f"({', '.join(methods)}); add it to methods or drop its grid")
    variants = []
    for m in methods:
        base = dict(settings.get(m) or {})
        for point in _points(m, grid.get(m)):
            variants.append((m, {**base, **point}))
    return variants


def _points(method: str, spec: Any) -> list[dict[str, Any]]:
    if spec is None:
        return [{}]
    if isinstance(spec, (list, tuple)):
        if not spec or not all(isinstance(p, Mapping) for p in spec):
            raise ConfigError(f"grid of {method!r}: a list must hold settings mappings, "
                              "e.g. [{steps: 10}, {steps: 50}]")
        return [dict(p) for p in spec]
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"grid of {method!r} must map settings to lists of values, "
                          "e.g. {steps: [10, 50]}")
    keys = list(spec)
    axes = [v if isinstance(v, (list, tuple)) else [v] for v in spec.values()]
    if any(len(a) == 0 for a in axes):
        raise ConfigError(f"grid of {method!r}: every setting needs at least one value")
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _short(key: str, value: Any) -> str:
    return Path(str(value)).name if key == "checkpoint" else f"{value:g}" if isinstance(
        value, float) else str(value)


def label(method: str, settings: Mapping[str, Any], keys: list[str] | None = None) -> str:
    """``sr3(steps=20,projection=0.5)``: the method and its settings (only ``keys``, in that
    order, if given); a checkpoint is named by its folder."""
    items = (list(settings.items()) if keys is None
             else [(k, settings[k]) for k in keys if k in settings])
    if not items:
        return method
    return f"{method}({','.join(f'{k}={_short(k, v)}' for k, v in items)})"


def label_keys(method: str) -> list[str] | None:
    """The settings that name a lone variant of ``method`` (its class's ``label_keys``;
    None: all of them, also for a method that is not registered)."""
    from cascade.evaluation.methods import METHODS

    try:
        keys = getattr(METHODS.get(method), "label_keys", None)
    except Exception:  # an unknown name: label it by everything
        return None
    return list(keys) if keys is not None else None


def settings_digest(settings: Mapping[str, Any]) -> str:
    """Six hex digits of the settings' sorted JSON: tells apart variants that print alike."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]


def differing_settings(variants: list[Mapping[str, Any]], skip: tuple[str, ...] = ()
                       ) -> list[str]:
    """The settings (first-seen order, less ``skip``) whose values differ between
    ``variants``, or that some of them lack: a null setting and a missing one differ."""
    keys = dict.fromkeys(k for v in variants for k in v)
    return [k for k in keys if k not in skip
            and len({(k in v, json.dumps(v.get(k), sort_keys=True)) for v in variants}) > 1]


def variant_labels(entries: list[dict[str, Any]]) -> list[str]:
    """One label per entry (``method``, ``settings`` as a dict or JSON): the method and the
    settings that vary between its variants, or its ``label_keys`` when it has one variant."""
    def settings_of(e):
        return json.loads(e["settings"]) if isinstance(e["settings"], str) else e["settings"]

    by_method: dict[str, set[str]] = {}
    for e in entries:
        by_method.setdefault(e["method"], set()).add(json.dumps(settings_of(e), sort_keys=True))
    labels = []
    for e in entries:
        settings = settings_of(e)
        variants = [json.loads(v) for v in sorted(by_method[e["method"]])]
        differ = set(differing_settings(variants))
        keys = ([k for k in settings if k in differ] if len(variants) > 1
                else label_keys(e["method"]))
        labels.append(label(e["method"], settings, keys))
    return labels


def variant_dir(method: str, settings: Mapping[str, Any]) -> Path:
    """``bicubic`` or ``sr3/steps=20,projection=0.5-1a2b3c``: a readable, collision-free folder."""
    if not settings:
        return Path(method)
    readable = ",".join(f"{k}={_short(k, v)}" for k, v in settings.items())
    readable = re.sub(r"[^A-Za-z0-9._=,+-]", "_", readable)[:80]
    return Path(method) / f"{readable}-{settings_digest(settings)}"
