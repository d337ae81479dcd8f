"""``calibration.json``: the conformal factors ``cascade calibrate`` fitted for a pipeline.

One entry per (diffusion stages, scale, N, alpha): the factor of the calibrated interval
``mean +- factor * max(std, std_floor)`` and what it was fitted with (the stages' sampler
settings, their weights' sha256). A run uses the entry for its stages nearest its scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cascade.atomic import atomic_write_text
from cascade.errors import CascadeError, CheckpointError
from cascade.pipeline.folder import LAINR_FOLDER, read_json
from cascade.pipeline.plan import Plan

__all__ = ["CALIBRATION_FORMAT", "load_calibration", "match_calibration", "save_calibration",
           "write_calibration"]

CALIBRATION_FORMAT = "cascade-calibration-v1"


def load_calibration(folder: Path) -> list[dict[str, Any]]:
    path = Path(folder) / "calibration.json"
    if not path.is_file():
        return []
    data = read_json(path)
    if data.get("format") != CALIBRATION_FORMAT:
        raise CheckpointError(f"{path} is not a {CALIBRATION_FORMAT} file; rerun cascade "
                              "calibrate")
    return list(data.get("entries", []))


def write_calibration(folder: Path, entries: list[dict[str, Any]]) -> Path:
    path = Path(folder) / "calibration.json"
    atomic_write_text(path, json.dumps({"format": CALIBRATION_FORMAT, "entries": entries},
                                       indent=2) + "\n")
    return path


def save_calibration(pipe, entry: dict[str, Any], folder: Path | None = None) -> Path:
    """Add ``entry`` to the pipeline's calibration (replacing one for the same stages, scale,
    N and alpha) and write ``calibration.json`` into ``folder`` (default: where it was
    loaded). Entries another process saved there since this pipeline was loaded are kept."""
    def key(e: dict[str, Any]) -> tuple:
        return (e.get("stages"), e.get("scale"), e.get("num_samples"), e.get("alpha", 0.1))

    where = folder or pipe.home
    if where is None:
        raise CascadeError("this pipeline has no folder; pass one to save the calibration in")
    merged = {json.dumps(key(e)): e for e in [*load_calibration(Path(where)), *pipe.calibration]}
    merged[json.dumps(key(entry))] = entry
    pipe.calibration = list(merged.values())
    return write_calibration(where, pipe.calibration)


def match_calibration(entries: list[dict[str, Any]], plan: Plan, num_samples: int,
                      alpha: float | None, stage_settings: dict[str, dict[str, Any]] | None,
                      weights: Callable[[], dict[str, str]]) -> dict[str, Any] | None:
    """The entry for this plan's stages (and ``alpha`` if given): the same scale and N if
    there is one, else the nearest scale (log ratio), then the nearest N. The copy returned
    says under ``match`` whether it was fitted for exactly this run (``exact``) and what
    differs (``differs``: scale, num_samples, a stage's sampler knob in ``stage_settings``
    ({stage: {knob: value}}), or the stage weights: ``weights()`` gives the pipeline's
    fingerprint, read only when the entry records one)."""
    names = [s.stage for s in plan.diffusion]
    entries = [e for e in entries if e.get("stages") == names
               and (alpha is None or abs(e.get("alpha", 0.1) - alpha) < 1e-9)]
    if not entries:
        return None
    scale = max(plan.out_size[0] / plan.in_size[0], plan.out_size[1] / plan.in_size[1])
    best = min(entries, key=lambda e: (abs(math.log(e["scale"] / scale)),
                                       abs(e["num_samples"] - num_samples)))
    differs = []
    if abs(best["scale"] - scale) > 1e-6 * scale:
        differs.append(f"scale (fitted at x{best['scale']:g})")
    if best["num_samples"] != num_samples:
        differs.append(f"num_samples (fitted with {best['num_samples']})")
    fitted = best.get("stage_settings") or {}
    for stage, knobs in (stage_settings or {}).items():
        for k, v in knobs.items():
            was = fitted.get(stage, {}).get(k, v)
            if was != v:
                differs.append(f"{stage} {k} (fitted with {was})")
    fitted_weights = best.get("weights")
    if fitted_weights is not None and any(fitted_weights.get(k) != v
                                          for k, v in weights().items()
                                          if k in names or k == LAINR_FOLDER):
        differs.append("stage weights (fitted for other checkpoints)")
    return {**best, "match": {"exact": not differs, "differs": differs}}
