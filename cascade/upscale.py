"""``cascade upscale``: files in, upscaled PNGs and a ``run.json`` out.

With several inputs, one bad file is reported and skipped and the others are still
processed (exit status 1); a single input, or a run where every input fails, stops with
one error line (exit status 2) and leaves no output behind. An output larger than the
memory budget (``cascade.memory``) fails before anything is allocated. Outputs are written
atomically, so an interrupted run leaves whole files only.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text, writable_dir
from cascade.data.sources import expand_inputs
from cascade.errors import CascadeError
from cascade.memory import budget_megapixels, check_output_size
from cascade.pipeline import check_scale, parse_size, target_size


def upscale_files(inputs: list[str], scale: str | float | None, size: str | None, stages: str,
                  checkpoint: str, out: str, device: str = "cpu",
                  max_megapixels: float | None = None) -> list[str]:
    """Upscale every input; returns the list of failures (``"path: reason"``).

    Raises CascadeError when nothing could be upscaled (one input that fails, or all).
    """
    s = check_scale(scale) if scale is not None else None
    wanted = parse_size(size) if size is not None else None
    if s is None and wanted is None:
        raise CascadeError("give --scale S (any real >= 1) or --size WIDTHxHEIGHT")
    budget_megapixels(max_megapixels)  # a bad budget fails before any work
    if len(inputs) == 1:
        files, failures = expand_inputs(inputs), []
    else:
        failures = []
        files = expand_inputs(inputs, failures)
        if not files:
            raise CascadeError(f"no images to upscale in {' '.join(map(str, inputs))}: "
                               f"{failures[0]}" + _more(len(failures) - 1))
        for f in failures:
            print(f"skipped {f}", file=sys.stderr)
    out_dir = Path(out)
    created = not out_dir.exists()
    writable_dir(out_dir, "choose a writable --out folder")
    try:
        _run(files, failures, s, wanted, stages, checkpoint, out_dir, device, max_megapixels)
    except BaseException:
        if created:  # leave nothing behind when nothing was written
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise
    return failures


def _run(files: list[Path], failures: list[str], s: float | None,
         wanted: tuple[int, int] | None, stages: str, checkpoint: str, out_dir: Path,
         device: str, max_megapixels: float | None) -> None:
    from cascade.data.io import load_image, save_image
    from cascade.evaluation.methods import make_method
    from cascade.evaluation.run import format_scale, resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CascadeError(f"--device {device} but no CUDA device is available; "
                           "use --device cpu or auto")
    method = make_method("lainr", {"checkpoint": checkpoint}) if stages == "inr" \
        else make_method("bicubic")
    method.to(dev)
    single = len(files) == 1
    records = []
    with tqdm(files, desc=f"upscale ({stages})", unit="img", dynamic_ncols=True,
              disable=single) as bar:
        for path in bar:
            try:
                img = load_image(path)
                in_hw = tuple(img.shape[-2:])
                H, W = target_size(in_hw, s, wanted)
                check_output_size(in_hw, (H, W), max_megapixels, dense=stages == "bicubic")
                t0 = time.perf_counter()
                with torch.no_grad():
                    sr = method(img[None].to(dev), (H, W))
                seconds = time.perf_counter() - t0
                tag = f"x{format_scale(s)}" if s is not None else f"{W}x{H}"
                dest = out_dir / f"{path.stem}_{tag}.png"  # NAME_x2.5.png or NAME_640x480.png
                save_image(sr[0].cpu(), dest)
            except CascadeError as e:
                if single:
                    raise
                failures.append(f"{path}: {e}")
                tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
                continue
            records.append({"input": str(path), "output": str(dest), "in_size": list(in_hw),
                            "out_size": [H, W], "seconds": round(seconds, 4)})
            tqdm.write(f"{path} ({img.shape[-1]}x{img.shape[-2]}) -> {dest} ({W}x{H}) "
                       f"in {seconds:.2f}s")
    if not records:
        raise CascadeError(f"none of the {len(files)} images could be upscaled (see the "
                           "lines above)")
    run = {"stages": stages, "plan": [{"stage": "lainr" if stages == "inr" else "bicubic",
                                       "scale": s, "size": wanted}],
           "method": {"name": method.name, "settings": method.settings}, "device": str(dev),
           "outputs": records, "failures": failures}
    atomic_write_text(out_dir / "run.json", json.dumps(run, indent=2) + "\n")


def _more(n: int) -> str:
    return f" (and {n} more)" if n else ""
