"""Run methods x settings x datasets x scales over every image and record metrics.

The protocol (docs/evaluation.md): HR is cropped so its size is an exact multiple of the
LR size (``cascade.data.degrade.crop_to_scale``), LR = D(HR) rounded to uint8, each method
upsamples LR to exactly the HR size, metrics compare rounded outputs. Rows go to
``results.jsonl`` as they finish; rows already there are skipped (resume). FID and KID score
each method x settings x dataset x scale as a whole, on patches, in one more row.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text
from cascade.config import save_config, to_container
from cascade.devices import resolve_device
from cascade.errors import ConfigError
from cascade.evaluation.methods import METHODS, make_method
from cascade.evaluation.store import SET_ROW, ResultsStore, row_key
from cascade.evaluation.sweep import expand, variant_dir, variant_labels
from cascade.scales import format_scale


@dataclass
class EvalConfig:
    """``cascade evaluate`` settings (YAML: configs/eval/*.yaml; flags and key=value override)."""

    methods: list[str] = field(default_factory=lambda: ["bicubic"])
    # Per-method settings, e.g. {lainr: {checkpoint: checkpoints/lainr}}.
    settings: dict[str, Any] = field(default_factory=dict)
    # Per-method settings to sweep (cascade.evaluation.sweep): axes {sr3: {steps: [10, 50]}}
    # (every combination) or points {sr3: [{steps: 10}, {steps: 50, sampler: ddpm}]}.
    grid: dict[str, Any] = field(default_factory=dict)
    # Named sets (set5, set14, bsd68, builtin) or paths (folder, file, glob).
    data: list[str] = field(default_factory=lambda: ["set5"])
    split: str = "test"  # split of the built-in photos
    # Centre crops of this HR side (0: whole images); rows then name the set "bsd68@128".
    crop: int = 0
    scales: list[float] = field(default_factory=lambda: [2.0, 3.0, 4.0])
    # Per image: psnr ssim lr_psnr lpips swd hf_ratio; per set (on patches): fid kid.
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lr_psnr"])
    y_channel: bool = True  # PSNR/SSIM on Y of BT.601 (False: RGB)
    lpips_net: str = "alex"  # alex | vgg
    # Pretrained backbone files; None: $TORCH_HOME/hub/checkpoints (fetched there if possible).
    lpips_weights: Optional[str] = None  # torchvision alexnet-owt-7be5be79.pth / vgg16-397923af.pth
    inception_weights: Optional[str] = None  # weights-inception-2015-12-05-6726825d.pth
    fid_patch: int = 64  # FID/KID on the non-overlapping fid_patch x fid_patch grid of each image
    out: str = "outputs/eval"
    # Write (and on resume reuse) every output image, images/VARIANT/DATASET/xS/NAME.png, so
    # a metric added later does not rerun the models (always on when fid/kid are asked for).
    save_images: bool = False
    resume: bool = True  # skip rows already in results.jsonl
    device: str = "cpu"  # cpu, cuda, cuda:1, or auto


@dataclass
class _Run:
    """What every group of one evaluation shares."""

    cfg: Any
    out: Path
    store: ResultsStore
    done: dict[tuple, dict[str, Any]]  # merged rows already in the store, by key
    device: torch.device
    image_metrics: dict[str, Any]  # name -> registered function
    set_metrics: list[str]
    available: dict[str, bool]  # False: the backbone's weights are missing (recorded as null)
    hr_features: dict[tuple, torch.Tensor] = field(default_factory=dict)

    @property
    def cache(self) -> bool:
        return bool(self.cfg.save_images or self.set_metrics)

    def missing(self, row: dict[str, Any] | None, names: list[str]) -> list[str]:
        """Metrics ``row`` lacks: absent, or null while their weights are now available."""
        if row is None:
            return list(names)
        return [m for m in names if m not in row or (row[m] is None and self.available[m])]


def evaluate(cfg) -> list[dict[str, Any]]:
    """Run the evaluation (or sweep) described by ``cfg`` (an EvalConfig DictConfig).

    Variants run one at a time (one model in memory); per image, rows already in the store
    are skipped and metrics they lack are added from the cached output when there is one.
    Returns all rows of the store, merged per key.
    """
    import cascade.metrics as metrics_pkg
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import check_scale
    from cascade.metrics.perceptual import SET_METRICS, weights_available

    scales = [check_scale(s) for s in cfg.scales]  # fail before any work is done
    variants = expand(list(cfg.methods), to_container(cfg.settings), to_container(cfg.grid))
    for name in cfg.methods:  # an unknown name fails now; each variant is built when it runs
        METHODS.get(name)
    set_metrics = [m for m in cfg.metrics if m in SET_METRICS]
    image_metrics = {m: metrics_pkg.METRICS.get(m) for m in cfg.metrics if m not in SET_METRICS}
    if cfg.crop < 0:
        raise ConfigError(f"crop={cfg.crop}: use 0 (whole images) or a side in pixels")
    if cfg.fid_patch < 8:
        raise ConfigError(f"fid_patch={cfg.fid_patch} is too small; use 32 or more (default 64)")
    datasets = [resolve_dataset(d, split=cfg.split) for d in cfg.data]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    store = ResultsStore(out / "results.jsonl")
    available = {m: weights_available(m, lpips_net=cfg.lpips_net, lpips_weights=cfg.lpips_weights,
                                      inception_weights=cfg.inception_weights)
                 for m in cfg.metrics}
    run = _Run(cfg, out, store, {row_key(r): r for r in store.merged()} if cfg.resume else {},
               resolve_device(cfg.device), image_metrics, set_metrics, available)

    total = len(variants) * len(scales) * sum(len(ds) for ds in datasets)
    # closed on an error too, so the error line is not printed into a half-drawn bar
    with tqdm(total=total, desc="evaluate", unit="img", dynamic_ncols=True) as bar:
        names = variant_labels([{"method": n, "settings": st} for n, st in variants])
        for (name, settings), short in zip(variants, names):
            method = make_method(name, settings).to(run.device)
            bar.set_postfix_str(short, refresh=False)  # what tells the variants apart
            for ds in datasets:
                for scale in scales:
                    _evaluate_group(run, method, ds, scale, bar)
            del method  # before the next variant's model is built
    rows = store.merged()
    write_summary(summarize(rows), out / "summary.csv")
    return rows


def _evaluate_group(run: _Run, method, ds, scale: float, bar) -> None:
    """One variant on one dataset at one scale: a row per image, then the set row (FID/KID)."""
    from cascade.data.datasets import centre_crop
    from cascade.data.degrade import degrade
    from cascade.data.io import load_image, save_image
    from cascade.metrics.perceptual import features, patches, set_scores

    cfg = run.cfg
    dataset = f"{ds.name}@{cfg.crop}" if cfg.crop > 0 else ds.name
    base = {"method": method.name, "settings": method.settings, "dataset": dataset,
            "scale": scale}
    set_todo = run.missing(run.done.get(row_key({**base, "image": SET_ROW})), run.set_metrics)
    set_live = [m for m in set_todo if run.available[m]]
    if set_todo and not set_live:  # no backbone: record n/a once, run nothing for it
        run.store.append({**base, "image": SET_ROW, **{m: None for m in set_todo}})
    cache_dir = (run.out / "images" / variant_dir(method.name, method.settings) / dataset
                 / f"x{format_scale(scale)}")
    sr_patches, hr_patches = [], []
    for i, name in enumerate(ds.names):
        have = run.done.get(row_key({**base, "image": name}))
        todo = run.missing(have, list(run.image_metrics))
        if have is not None and not todo and not set_live:
            bar.update()
            continue
        image = centre_crop(ds[i]["image"], cfg.crop)[None].to(run.device)
        hr, lr = degrade(image, scale)  # (1,3,H,W), (1,3,h,w)
        row: dict[str, Any] = {**base, "image": name}
        cached = cache_dir / f"{name}.png"
        if have is not None and cached.is_file():  # a finished row's output: no model run
            sr = load_image(cached)[None].to(run.device)
        else:
            t0 = time.perf_counter()
            with torch.no_grad():
                sr = method(lr, tuple(hr.shape[-2:]))
            seconds = time.perf_counter() - t0
            if run.cache:  # before the row, so a row with a cache entry always has its image
                save_image(sr[0].cpu(), cached)
            if have is None:
                row.update({"seconds": seconds, "params": method.num_params})
            if (ran := method.ran()) is not None and "ran" not in (have or {}):
                row["ran"] = ran  # also for a row from before rows had it, once it runs
        for mname in todo:
            value = None
            if run.available[mname]:
                value = run.image_metrics[mname](sr, hr, lr=lr, scale=scale,
                                                 y_channel=cfg.y_channel,
                                                 **_metric_options(cfg, mname))
            row[mname] = None if value is None else float(value[0])
        if len(row) > len(base) + 1:  # something new to record
            run.store.append(row)
        if set_live:
            sr_patches.append(patches([sr.cpu()], cfg.fid_patch))
            hr_patches.append(patches([hr.cpu()], cfg.fid_patch))
        bar.update()
    if set_live:
        sr_p, hr_p = torch.cat(sr_patches), torch.cat(hr_patches)
        key = (ds.name, scale, cfg.fid_patch)
        if key not in run.hr_features:
            run.hr_features[key] = features(hr_p, weights=cfg.inception_weights,
                                            device=run.device)
        scores = set_scores(sr_p, hr_p, set_live, hr_features=run.hr_features[key],
                            weights=cfg.inception_weights, device=run.device)
        run.store.append({**base, "image": SET_ROW, **scores, "patch": cfg.fid_patch})


def _metric_options(cfg, name: str) -> dict[str, Any]:
    if name == "lpips":
        return {"net": cfg.lpips_net, "weights": cfg.lpips_weights}
    return {}


SUMMARY_KEYS = ("method", "settings", "dataset", "scale")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean of every numeric field per method x settings x dataset x scale (nulls skipped),
    the distinct values of a text field (``ran``) joined by " | "; the fields of the group's
    set row (FID, KID, patches) are added as they are."""
    import json

    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    set_rows: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["method"], json.dumps(r.get("settings") or {}, sort_keys=True),
               r["dataset"], float(r["scale"]))
        if r.get("image") == SET_ROW:
            set_rows.setdefault(key, {}).update(r)
        else:
            groups[key].append(r)
    summary = []
    for key in dict.fromkeys([*groups, *set_rows]):
        method, settings, dataset, scale = key
        rs = groups.get(key, [])
        entry: dict[str, Any] = {"method": method, "settings": settings, "dataset": dataset,
                                 "scale": scale, "images": len(rs)}
        fields = dict.fromkeys(k for r in rs for k in r if k not in (*SUMMARY_KEYS, "image"))
        for k in fields:
            given = [r[k] for r in rs if r.get(k) is not None]
            if given and all(isinstance(v, str) for v in given):  # text (``ran``): its values
                entry[k] = " | ".join(sorted(set(given)))
                continue
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float)) and r.get(k) is not None]
            finite = [v for v in vals if math.isfinite(v)]
            entry[k] = sum(finite) / len(finite) if finite else None
        entry.update({k: v for k, v in set_rows.get(key, {}).items()
                      if k not in (*SUMMARY_KEYS, "image")})
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


# How each metric is printed (digits); shared by the printed table and the leaderboard.
FORMATS = {"psnr": "{:.2f}", "ssim": "{:.4f}", "lr_psnr": "{:.2f}", "lpips": "{:.4f}",
           "fid": "{:.2f}", "kid": "{:.4f}", "swd": "{:.2f}", "hf_ratio": "{:.3f}",
           "seconds": "{:.3f}"}


def format_value(metric: str, value: Any) -> str:
    """A metric value as printed; "n/a" for null (e.g. a backbone's weights are missing)."""
    if value is None:
        return "n/a"
    return FORMATS.get(metric, "{:.2f}").format(value)


def format_table(summary: list[dict[str, Any]], metrics: list[str]) -> str:
    """A plain-text table of the summary (what ``cascade evaluate`` prints)."""
    header = ["dataset", "scale", "method", "images", *metrics, "sec/img"]
    lines = []
    for e, name in zip(summary, variant_labels(summary)):
        cells = [e["dataset"], f"x{format_scale(e['scale'])}", name, str(e["images"])]
        cells += [format_value(m, e.get(m)) for m in metrics]
        cells.append(f"{e.get('seconds') or 0:.3f}")
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h)
              for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])

