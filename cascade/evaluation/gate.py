"""The generalization gate: a diffusion method's per-image results against LAINR's, checked
against the targets of issue 13 (docs/training.md, "The generalization gate").

Input: the rows of an evaluation (``cascade evaluate --config configs/eval/unseen.yaml``
writes them to ``results.jsonl``): per image, per method, PSNR-Y, SWD, HF ratio and LR-PSNR.
For every (dataset, scale) and every variant of the diffusion method (one sample; the mean
of N samples) the gate pairs each image with LAINR's result on the same image and checks:

* one sample: mean PSNR >= LAINR - 3.0 dB (a perfect posterior sample has twice the MMSE
  error, -3.01 dB), every image >= LAINR - 5.0 dB;
* the mean of N >= 2 samples: mean PSNR >= LAINR - 0.5 dB;
* HF ratio (mean over images) in [0.8, 1.25]; SWD (mean) <= 0.8 x LAINR's; LR-PSNR >= 45;
* on a dataset of colour variants of one photo (``photos:colour``): the spread (max - min)
  of the method's PSNR over the variants <= 1 dB.

Variants are told apart by all their settings: rows of the same grid point run with two
pipelines (two result folders) are two variants, labelled by the settings that differ.
Pure functions of the rows; ``scripts/gate_report.py`` prints them as a table.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cascade.evaluation.sweep import differing_settings, label, settings_digest

__all__ = ["Check", "gate", "variant_label"]

SAMPLE_DROP = -3.0  # dB, mean over images, one sample against LAINR
IMAGE_DROP = -5.0  # dB, any image, one sample against LAINR
MEAN_DROP = -0.5  # dB, mean over images, the mean of N samples against LAINR
HF_RANGE = (0.8, 1.25)
SWD_RATIO = 0.8
LR_PSNR = 45.0
COLOUR_SPREAD = 1.0  # dB over the colour variants of one photo
COLOUR_SETS = ("photos:colour",)


@dataclass(frozen=True)
class Check:
    dataset: str
    scale: float
    method: str  # the variant's label, e.g. "cascade(num_samples=1)"
    target: str  # what is checked, e.g. "PSNR - LAINR (mean) >= -3.0"
    value: float
    passed: bool


LABEL_KEYS = ("num_samples", "output")  # the settings every label shows


def variant_label(row: dict[str, Any], more: Iterable[str] = ()) -> str:
    """A method and the settings that tell its variants apart: the number of samples, the
    output, and ``more`` (settings that differ between variants with the same two)."""
    s = row.get("settings") or {}
    return label(str(row["method"]), s, [*LABEL_KEYS, *more])


def _labels(settings: dict[tuple, dict[str, Any]]) -> dict[tuple, str]:
    """(method, settings JSON) -> label; variants that share a short label (e.g. the same
    grid point from two pipelines' result folders) also show the settings that differ."""
    short = {key: variant_label({"method": key[0], "settings": s})
             for key, s in settings.items()}
    labels = {}
    for key, s in settings.items():
        rivals = [settings[k] for k in settings if short[k] == short[key]]
        differ = differing_settings(rivals, skip=LABEL_KEYS)
        labels[key] = variant_label({"method": key[0], "settings": s}, differ)
    # values that print alike (a checkpoint is named by its folder) still collide: a digest
    # of all the settings tells them apart, as the image cache's folder names do
    counts = Counter(labels.values())
    return {key: text if counts[text] == 1 else f"{text}#{settings_digest(settings[key])}"
            for key, text in labels.items()}


def _samples(row: dict[str, Any]) -> int:
    return int((row.get("settings") or {}).get("num_samples", 1))


def gate(rows: Iterable[dict[str, Any]], reference: str = "lainr",
         methods: tuple[str, ...] = ("cascade", "sr3")) -> list[Check]:
    """Every check of every variant of ``methods`` against ``reference``, per (dataset,
    scale). Images the reference lacks are skipped; a variant with no paired image gives no
    check."""
    ref: dict[tuple, dict[str, Any]] = {}
    runs: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    settings: dict[tuple, dict[str, Any]] = {}  # (method, settings JSON) -> settings
    for r in rows:
        key = (r["dataset"], float(r["scale"]))
        if r["method"] == reference:
            ref[key + (r["image"],)] = r
        elif r["method"] in methods:
            variant = (r["method"], json.dumps(r.get("settings") or {}, sort_keys=True))
            settings[variant] = r.get("settings") or {}
            runs[key + variant][r["image"]] = r
    labels = _labels(settings)
    checks: list[Check] = []
    for (dataset, scale, *variant), images in sorted(
            runs.items(), key=lambda kv: (*kv[0][:2], labels[tuple(kv[0][2:])])):
        label = labels[tuple(variant)]
        pairs = [(r, ref[(dataset, scale, name)]) for name, r in sorted(images.items())
                 if (dataset, scale, name) in ref]
        if not pairs:
            continue

        def add(target: str, value: float, passed: bool) -> None:
            checks.append(Check(dataset, scale, label, target, value, passed))

        drops = [r["psnr"] - x["psnr"] for r, x in pairs]
        n = _samples(pairs[0][0])
        if n == 1:
            add(f"PSNR - LAINR (mean) >= {SAMPLE_DROP}", statistics.fmean(drops),
                statistics.fmean(drops) >= SAMPLE_DROP)
            add(f"PSNR - LAINR (worst image) >= {IMAGE_DROP}", min(drops),
                min(drops) >= IMAGE_DROP)
        else:
            add(f"PSNR - LAINR (mean of {n}) >= {MEAN_DROP}", statistics.fmean(drops),
                statistics.fmean(drops) >= MEAN_DROP)
        if all("hf_ratio" in r for r, _ in pairs):
            hf = statistics.fmean(r["hf_ratio"] for r, _ in pairs)
            add(f"HF ratio in [{HF_RANGE[0]}, {HF_RANGE[1]}]", hf,
                HF_RANGE[0] <= hf <= HF_RANGE[1])
        if all("swd" in r and "swd" in x for r, x in pairs):
            ratio = statistics.fmean(r["swd"] for r, _ in pairs) / \
                statistics.fmean(x["swd"] for _, x in pairs)
            add(f"SWD / LAINR's <= {SWD_RATIO}", ratio, ratio <= SWD_RATIO)
        if all("lr_psnr" in r for r, _ in pairs):
            lr = min(r["lr_psnr"] for r, _ in pairs)
            add(f"LR-PSNR (worst image) >= {LR_PSNR}", lr, lr >= LR_PSNR)
        if dataset in COLOUR_SETS and len(pairs) > 1:
            values = [r["psnr"] for r, _ in pairs]
            spread = max(values) - min(values)
            add(f"PSNR spread over colours <= {COLOUR_SPREAD}", spread,
                spread <= COLOUR_SPREAD)
    return checks
