"""``cascade upscale``: files in, upscaled PNGs and a ``run.json`` out.

One bad file is reported and skipped; the others are still processed. Outputs are written
atomically, so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text
from cascade.data.sources import expand_inputs
from cascade.errors import CascadeError, ImageError
from cascade.pipeline import check_scale, parse_size, target_size


def upscale_files(inputs: list[str], scale: str | float | None, size: str | None, stages: str,
                  checkpoint: str, out: str, device: str = "cpu") -> list[str]:
    """Upscale every input; returns the list of failures (``"path: reason"``)."""
    from cascade.data.io import load_image, save_image
    from cascade.evaluation.methods import make_method
    from cascade.evaluation.run import format_scale, resolve_device

    s = check_scale(scale) if scale is not None else None
    wanted = parse_size(size) if size is not None else None
    if s is None and wanted is None:
        raise CascadeError("give --scale S (any real >= 1) or --size WIDTHxHEIGHT")
    failures: list[str] = []
    files = expand_inputs(inputs, failures)
    for f in failures:
        print(f"skipped {f}", file=sys.stderr)
    if not files:
        raise CascadeError(f"no images to upscale in {' '.join(map(str, inputs))}")
    dev = resolve_device(device)
    method = make_method("lainr", {"checkpoint": checkpoint}) if stages == "inr" \
        else make_method("bicubic")
    method.to(dev)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for path in tqdm(files, desc=f"upscale ({stages})", unit="img", dynamic_ncols=True):
        try:
            img = load_image(path)
            H, W = target_size(tuple(img.shape[-2:]), s, wanted)
            t0 = time.perf_counter()
            with torch.no_grad():
                sr = method(img[None].to(dev), (H, W))
            seconds = time.perf_counter() - t0
            tag = f"x{format_scale(s)}" if s is not None else f"{W}x{H}"
            dest = out_dir / f"{path.stem}_{tag}.png"  # NAME_x2.5.png or NAME_640x480.png
            save_image(sr[0].cpu(), dest)
        except (ImageError, CascadeError) as e:
            failures.append(f"{path}: {e}")
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        records.append({"input": str(path), "output": str(dest), "in_size": list(img.shape[-2:]),
                        "out_size": [H, W], "seconds": round(seconds, 4)})
        tqdm.write(f"{path} ({img.shape[-1]}x{img.shape[-2]}) -> {dest} ({W}x{H}) "
                   f"in {seconds:.2f}s")
    run = {"stages": stages, "plan": [{"stage": "lainr" if stages == "inr" else "bicubic",
                                       "scale": s, "size": wanted}],
           "method": {"name": method.name, "settings": method.settings}, "device": str(dev),
           "outputs": records, "failures": failures}
    atomic_write_text(out_dir / "run.json", json.dumps(run, indent=2) + "\n")
    return failures
