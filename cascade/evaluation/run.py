"""Run methods x settings x datasets x scales over every image and record metrics.

The protocol is DESIGN.md section 5: HR is cropped so its size is an exact multiple of the
LR size (``cascade.data.degrade.crop_to_scale``), LR = D(HR) rounded to uint8, each method
upsamples LR to exactly the HR size, metrics compare rounded outputs. Rows go to
``results.jsonl`` as they finish; rows already there are skipped (resume).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text
from cascade.config import save_config, to_container
from cascade.evaluation.methods import make_method
from cascade.evaluation.store import ResultsStore, row_key


@dataclass
class EvalConfig:
    """``cascade evaluate`` settings (YAML: configs/eval/*.yaml; flags and key=value override)."""

    methods: list[str] = field(default_factory=lambda: ["bicubic"])
    # Per-method settings, e.g. {lainr: {checkpoint: checkpoints/lainr}}.
    settings: dict[str, Any] = field(default_factory=dict)
    # Named sets (set5, set14, bsd68, builtin) or paths (folder, file, glob).
    data: list[str] = field(default_factory=lambda: ["set5"])
    split: str = "test"  # split of the built-in photos
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lr_psnr"])
    y_channel: bool = True  # PSNR/SSIM on Y of BT.601 (False: RGB)
    out: str = "outputs/eval"
    save_images: bool = False
    resume: bool = True  # skip rows already in results.jsonl
    device: str = "cpu"  # cpu, cuda, cuda:1, or auto


def format_scale(scale: float) -> str:
    """2.0 -> '2', 2.5 -> '2.5' (file names and tables)."""
    return f"{scale:g}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(cfg) -> list[dict[str, Any]]:
    """Run the evaluation described by ``cfg`` (an EvalConfig DictConfig); return all rows."""
    import cascade.metrics as metrics_pkg
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import degrade
    from cascade.data.io import save_image

    from cascade.data.degrade import check_scale

    scales = [check_scale(s) for s in cfg.scales]  # fail before any work is done
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    store = ResultsStore(out / "results.jsonl")
    done = store.keys() if cfg.resume else set()
    device = resolve_device(cfg.device)

    metric_fns = {name: metrics_pkg.METRICS.get(name) for name in cfg.metrics}
    methods = [make_method(m, to_container(cfg.settings).get(m, {})).to(device)
               for m in cfg.methods]
    datasets = [resolve_dataset(d, split=cfg.split) for d in cfg.data]

    total = sum(len(ds) for ds in datasets) * len(scales) * len(methods)
    bar = tqdm(total=total, desc="evaluate", unit="img", dynamic_ncols=True)
    for ds in datasets:
        for i in range(len(ds)):
            item = None  # loaded lazily: a fully resumed image is never read
            name = ds.names[i]
            for scale in scales:
                pair = None  # (HR cropped to the scale, LR = D(HR)), made once per scale
                for method in methods:
                    base = {"method": method.name, "settings": method.settings,
                            "dataset": ds.name, "scale": scale, "image": name}
                    if row_key(base) in done:
                        bar.update()
                        continue
                    if item is None:
                        item = ds[i]
                    if pair is None:
                        pair = degrade(item["image"][None].to(device), scale)
                    hr, lr = pair  # (1, 3, H, W), (1, 3, H/s, W/s)
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        sr = method(lr, tuple(hr.shape[-2:]))
                    seconds = time.perf_counter() - t0
                    row = dict(base)
                    for mname, fn in metric_fns.items():
                        value = fn(sr, hr, lr=lr, scale=scale, y_channel=cfg.y_channel)
                        row[mname] = None if value is None else float(value[0])
                    row["seconds"] = seconds
                    row["params"] = method.num_params
                    store.append(row)
                    if cfg.save_images:
                        save_image(sr[0].cpu(), out / "images" / method.name / ds.name
                                   / f"x{format_scale(scale)}" / f"{name}.png")
                    bar.update()
    bar.close()
    rows = store.rows()
    write_summary(summarize(rows), out / "summary.csv")
    return rows


SUMMARY_KEYS = ("method", "settings", "dataset", "scale")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every numeric field per method x settings x dataset x scale (nulls skipped)."""
    import json

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        key = (r["method"], json.dumps(r.get("settings") or {}, sort_keys=True),
               r["dataset"], float(r["scale"]))
        groups[key].append(r)
    summary = []
    for (method, settings, dataset, scale), rs in groups.items():
        entry: dict[str, Any] = {"method": method, "settings": settings, "dataset": dataset,
                                 "scale": scale, "images": len(rs)}
        fields = [k for k in rs[0] if k not in (*SUMMARY_KEYS, "image")]
        for k in fields:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
            finite = [v for v in vals if math.isfinite(v)]
            entry[k] = sum(finite) / len(finite) if finite else None
        summary.append(entry)
    summary.sort(key=lambda e: (e["dataset"], e["scale"], e["method"], e["settings"]))
    return summary


def write_summary(summary: list[dict[str, Any]], path: Path) -> None:
    if not summary:
        return
    fields = list(dict.fromkeys(k for e in summary for k in e))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(summary)
    atomic_write_text(path, buf.getvalue())


def format_table(summary: list[dict[str, Any]], metrics: list[str]) -> str:
    """A plain-text table of the summary (what ``cascade evaluate`` prints)."""
    header = ["dataset", "scale", "method", "images", *metrics, "sec/img"]
    lines = []
    for e in summary:
        cells = [e["dataset"], f"x{format_scale(e['scale'])}", _method_label(e),
                 str(e["images"])]
        for m in metrics:
            v = e.get(m)
            cells.append("n/a" if v is None else (f"{v:.4f}" if m == "ssim" else f"{v:.2f}"))
        cells.append(f"{e.get('seconds') or 0:.3f}")
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def _method_label(entry: dict[str, Any]) -> str:
    import json

    settings = json.loads(entry["settings"]) if isinstance(entry["settings"], str) else entry["settings"]
    if not settings:
        return entry["method"]
    inner = ",".join(f"{k}={Path(v).name if k == 'checkpoint' else v}" for k, v in settings.items())
    return f"{entry['method']}({inner})"
