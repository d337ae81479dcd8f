"""The ``cascade`` command. Thin: parse, build a config, call the library.

Every subcommand takes an optional YAML config (``--config``), flags for the common
settings, and trailing ``key=value`` overrides (``train.lr=2e-4``). Errors a user can act
on (``CascadeError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from cascade.choices import OUTPUTS, SAMPLERS, STAGE_CHOICES
from cascade.errors import CascadeError, os_error_message


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _csv_float(value: str) -> list[float]:
    out = []
    for v in _csv(value):
        try:
            out.append(float(v))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{v!r} is not a number") from None
    return out


def _flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The flags the user actually gave (None = not given), as config keys."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) not in (None, False)}


def _given(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Like ``_flags`` for numeric flags, where 0 is a value (--projection 0, --seed 0)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


# -- evaluate -------------------------------------------------------------------------------

def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="compare methods on datasets and scales (PSNR, SSIM, ...)",
                       description="Evaluate methods x datasets x scales; writes OUT/results.jsonl "
                                   "and OUT/summary.csv and prints the summary.")
    p.add_argument("--config", help="YAML config (configs/eval/*.yaml)")
    p.add_argument("--methods", type=_csv, help="comma-separated, e.g. bicubic,lainr")
    p.add_argument("--data", type=_csv, help="set5,set14,bsd68,builtin or paths")
    p.add_argument("--scales", type=_csv_float, help="e.g. 2,3,4 or 2.5")
    p.add_argument("--metrics", type=_csv,
                   help="e.g. psnr,ssim,lr_psnr,lpips,swd,hf_ratio,fid,kid")
    p.add_argument("--lpips-weights", dest="lpips_weights",
                   help="torchvision AlexNet (or VGG16) ImageNet weights file for LPIPS")
    p.add_argument("--inception-weights", dest="inception_weights",
                   help="torch-fidelity InceptionV3 weights file for FID/KID")
    p.add_argument("--checkpoint", help="checkpoint folder for the learned method (lainr)")
    p.add_argument("--out", help="output folder (default outputs/eval)")
    p.add_argument("--crop", type=int,
                   help="evaluate centre crops of this many HR pixels (default 0: whole images)")
    p.add_argument("--device", help="cpu (default), cuda or auto")
    p.add_argument("--save-images", dest="save_images", action="store_true",
                   help="write every output image under OUT/images/")
    p.add_argument("--no-resume", dest="no_resume", action="store_true",
                   help="recompute rows already in results.jsonl")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(run=_run_evaluate, trailing="overrides")


def _run_evaluate(args: argparse.Namespace) -> int:
    from cascade.config import load_config
    from cascade.evaluation.run import EvalConfig, evaluate, format_table, summarize

    extra = _flags(args, ["methods", "data", "scales", "metrics", "out", "device", "save_images",
                          "lpips_weights", "inception_weights"]) | _given(args, ["crop"])
    if args.no_resume:
        extra["resume"] = False
    if args.checkpoint:
        methods = extra.get("methods") or ["lainr"]
        learned = [m for m in methods if m != "bicubic"]
        extra["settings"] = {m: {"checkpoint": args.checkpoint} for m in learned}
    cfg = load_config(EvalConfig, args.config, args.overrides, extra)
    rows = evaluate(cfg)
    scales = [float(s) for s in cfg.scales]
    summary = [e for e in summarize(rows) if e["scale"] in scales]
    print(format_table(summary, list(cfg.metrics)))
    print(f"\nresults: {cfg.out}/results.jsonl  summary: {cfg.out}/summary.csv")
    return 0


# -- leaderboard ----------------------------------------------------------------------------

def _add_leaderboard(sub) -> None:
    p = sub.add_parser("leaderboard", help="tables and a perception-distortion plot of results",
                       description="Turn DIR/results.jsonl (from cascade evaluate) into "
                                   "leaderboard.md, leaderboard.csv, leaderboard.html and "
                                   "pd_plot.png, ranked per dataset x scale.")
    p.add_argument("dir", metavar="DIR", help="an evaluate --out folder")
    p.add_argument("--out", help="where to write (default DIR)")
    p.add_argument("--sort", default="psnr", help="ranking column (default psnr)")
    p.add_argument("--pd-x", dest="pd_x", default="psnr", choices=["psnr", "rmse"],
                   help="distortion axis of the perception-distortion plot")
    p.add_argument("--image", help="image whose crops the HTML shows (default: the first, "
                                   "by name, with cached outputs of every method)")
    p.set_defaults(run=_run_leaderboard)


def _run_leaderboard(args: argparse.Namespace) -> int:
    from cascade.evaluation.leaderboard import write_leaderboard

    for path in write_leaderboard(args.dir, out=args.out, sort=args.sort, pd_x=args.pd_x,
                                  image=args.image):
        print(path)
    return 0


# -- train ----------------------------------------------------------------------------------

def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a stage (same as: accelerate launch -m cascade.train)",
                       description="Train the stage named in CONFIG (stage: lainr | sr3). "
                                   "Multi-GPU: accelerate launch -m cascade.train CONFIG ...")
    p.add_argument("config", help="YAML config, e.g. configs/lainr.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from cascade.train import train

    path = train(args.config, args.overrides)
    print(f"train: inference checkpoint at {path}")
    return 0


# -- upscale --------------------------------------------------------------------------------

SAMPLING_FLAGS = ["num_samples", "steps", "sampler", "projection", "seed"]


def _add_sampling_flags(p, default_samples: int) -> None:
    """The cascade's sampling flags (``PipelineConfig`` fields; None = not given)."""
    p.add_argument("--samples", dest="num_samples", type=int,
                   help=f"N samples (default {default_samples})")
    p.add_argument("--steps", type=int, help="sampler steps (default: the stage's)")
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--projection", type=float, help="consistency projection w in [0, 1]")
    p.add_argument("--seed", type=int, help="sample i uses seed (SEED, i) (default 0)")


def _add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="upscale images to any scale or size (LAINR; with "
                                       "--stages auto: N samples, std maps)",
                       description="Upscale INPUT files (files, folders or globs) through LAINR "
                                   "and, with --stages auto, the x2 diffusion stages. Writes "
                                   "OUT/NAME_x{S}.png and OUT/run.json; with N > 1 samples also "
                                   "OUT/NAME_x{S}_samples/ and the std and interval maps. "
                                   "Trailing key=value items override configs/pipeline.yaml "
                                   "settings (e.g. tiling.tile=128).")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--scale", help="any real scale >= 1, e.g. 4 or 2.5")
    p.add_argument("--size", help="exact output size WIDTHxHEIGHT")
    p.add_argument("--stages", choices=STAGE_CHOICES,
                   help="inr (default): LAINR alone; auto: LAINR and every x2 diffusion "
                        "stage the pipeline has (samples, std maps); inr+1 / inr+2: LAINR and "
                        "one / two x2 diffusion stages; bicubic: the baseline")
    p.add_argument("--pipeline", default="checkpoints",
                   help="pipeline folder (save_pretrained) or checkpoints folder with lainr/, "
                        "sr3_x2/, sr3_x2_b/ (default checkpoints)")
    p.add_argument("--checkpoint", help="LAINR checkpoint folder replacing the pipeline's")
    _add_sampling_flags(p, default_samples=1)
    p.add_argument("--output", choices=OUTPUTS,
                   help="what NAME_x{S}.png holds: the mean of the samples (default) or the "
                        "first sample")
    p.add_argument("--config", help="YAML pipeline settings (configs/pipeline.yaml)")
    p.add_argument("--out", default="outputs/upscale", help="output folder")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--max-megapixels", dest="max_megapixels", type=float,
                   help="largest output allowed (default: what fits in the available memory)")
    p.set_defaults(run=_run_upscale, trailing="inputs")


def _split_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """INPUT items -> (inputs, key=value overrides): an item is an override when it looks
    like one (a dotted name, '=') and is not an existing path."""
    import re
    from pathlib import Path

    inputs, overrides = [], []
    for item in items:
        is_override = re.match(r"^[A-Za-z_][\w.]*=", item) and not Path(item).exists()
        (overrides if is_override else inputs).append(item)
    return inputs, overrides


def _run_upscale(args: argparse.Namespace) -> int:
    from cascade.upscale import upscale_files

    inputs, overrides = _split_overrides(args.inputs)
    if not inputs:
        raise CascadeError("give at least one INPUT image, folder or glob")
    failures = upscale_files(inputs, scale=args.scale, size=args.size, stages=args.stages,
                             checkpoint=args.checkpoint, out=args.out, device=args.device,
                             max_megapixels=args.max_megapixels, pipeline=args.pipeline,
                             config=args.config, overrides=overrides,
                             **_given(args, [*SAMPLING_FLAGS, "output"]))
    return 1 if failures else 0


# -- calibrate ------------------------------------------------------------------------------

def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="fit the conformal factor of the uncertainty intervals",
                       description="Degrade the images of DATA by SCALE, upscale them with N "
                                   "samples, fit the factor l so that mean +- l * std covers "
                                   "the true pixel with probability >= 1 - alpha on half of "
                                   "the images, report coverage, interval width, "
                                   "Spearman(std, |error|) and AUSE on the other half, and "
                                   "save the factor with the pipeline (calibration.json).")
    p.add_argument("--data", required=True, help="bsd68, set14, builtin, a folder or a glob")
    p.add_argument("--scale", required=True, help="the scale to calibrate, e.g. 4")
    p.add_argument("--pipeline", default="checkpoints", help="pipeline or checkpoints folder")
    p.add_argument("--stages", choices=["auto", "inr+1", "inr+2"])
    _add_sampling_flags(p, default_samples=8)
    p.add_argument("--alpha", type=float, help="target miscoverage (default 0.1: 90%% intervals)")
    p.add_argument("--crop", type=int, default=0,
                   help="calibrate on centre crops of this many HR pixels (faster; 0 = whole)")
    p.add_argument("--max-images", dest="max_images", type=int, default=0,
                   help="use the first N images only (0 = all)")
    p.add_argument("--fit", choices=("even", "odd"), default="even",
                   help="which interleaved half of the images fits the factor (default even; "
                   "odd swaps the halves, to see how much coverage depends on the split)")
    p.add_argument("--out", help="also write the report (JSON) into this folder")
    p.add_argument("--no-save", dest="no_save", action="store_true",
                   help="report only; leave the pipeline's calibration.json as it is")
    p.add_argument("--device", default="cpu")
    p.add_argument("overrides", nargs="*", help="key=value pipeline settings")
    p.set_defaults(run=_run_calibrate, trailing="overrides")


def _run_calibrate(args: argparse.Namespace) -> int:
    from cascade.calibrate import calibrate, format_report

    report = calibrate(args.data, args.scale, pipeline=args.pipeline, crop=args.crop,
                       max_images=args.max_images, out=args.out, save=not args.no_save,
                       fit=args.fit,
                       device=args.device, overrides=args.overrides,
                       **_given(args, ["stages", *SAMPLING_FLAGS, "alpha"]))
    print(format_report(report))
    return 0


# -- diagnose -------------------------------------------------------------------------------

def _add_diagnose(sub) -> None:
    p = sub.add_parser("diagnose", help="diagnostics (spectrum: true SR or resampling?)")
    dsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    s = dsub.add_parser("spectrum", help="radially averaged power spectra vs ground truth",
                        description="Degrade each IMAGE by SCALE, upscale it with each method, and "
                                    "compare power spectra with the original: the high-frequency "
                                    "energy above the LR Nyquist frequency, relative to ground truth.")
    s.add_argument("inputs", nargs="+", metavar="IMAGE", help="ground-truth images (files, folders)")
    s.add_argument("--scale", type=float, default=4.0)
    s.add_argument("--methods", type=_csv, default=["bicubic", "lainr"])
    s.add_argument("--checkpoint", default="checkpoints/lainr")
    s.add_argument("--out", default="outputs/spectrum")
    p.set_defaults(run=_run_diagnose)


def _run_diagnose(args: argparse.Namespace) -> int:
    from cascade.evaluation.diagnose import spectrum_report

    print(spectrum_report(args.inputs, scale=args.scale, methods=args.methods,
                          checkpoint=args.checkpoint, out=args.out))
    return 0


# -- compare --------------------------------------------------------------------------------

def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="side-by-side crops: ground truth vs methods",
                       description="Degrade each IMAGE by SCALE, upscale it with each method and "
                                   "write a PNG of the most detailed crop, side by side.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE")
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--methods", type=_csv, default=["bicubic", "lainr"])
    p.add_argument("--checkpoint", default="checkpoints/lainr")
    p.add_argument("--crop", type=int, default=96, help="crop size in HR pixels")
    p.add_argument("--out", default="outputs/compare")
    p.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from cascade.data.sources import expand_inputs
    from cascade.evaluation.figures import compare_figure
    from cascade.pipeline import check_scale

    files = compare_figure(expand_inputs(args.inputs), check_scale(args.scale), args.methods,
                           args.checkpoint, args.out, crop=args.crop)
    for f in files:
        print(f)
    return 0


# -- data -----------------------------------------------------------------------------------

def _add_data(sub) -> None:
    p = sub.add_parser("data", help="prepare training data (the photo corpus)")
    dsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    s = dsub.add_parser(
        "photos", help="the photo corpus from Debian's wallpaper packages, or your own folder",
        description="Fetch the photographs listed in cascade/data/photos.json from Debian's "
                    "wallpaper packages (apt-get download), check their sha256, downscale them "
                    "and cut HR sub-images as for DIV2K: OUT/train (sub-images), OUT/val "
                    "(held-out photos, never trained on), OUT/unseen, OUT/saturated, "
                    "OUT/colour (the generalization sets). Idempotent and resumable.")
    s.add_argument("--out", default="data/photos", help="output folder (default data/photos; "
                                                        "datasets photos:SPLIT read it)")
    s.add_argument("--from", dest="source", help="prepare this folder of images instead "
                                                 "(DIV2K / Flickr2K layout)")
    s.add_argument("--val", type=_csv, default=[], help="with --from: names (file stems) to "
                                                        "hold out")
    s.add_argument("--max-side", dest="max_side", type=int, default=1280,
                   help="downscale originals to this longer side first (0: keep; default 1280)")
    s.add_argument("--sub-size", dest="sub_size", type=int, default=480,
                   help="sub-image side (default 480)")
    s.add_argument("--stride", type=int, default=480, help="sub-image stride (default 480)")
    s.set_defaults(run=_run_data_photos)


def _run_data_photos(args: argparse.Namespace) -> int:
    from cascade.data.photos import PhotosConfig, prepare

    cfg = PhotosConfig(out=args.out, source=args.source, val=args.val, max_side=args.max_side,
                       sub_size=args.sub_size, stride=args.stride)
    rec = prepare(cfg)
    done = rec["done"].values()
    n = {sp: sum(1 for d in done if d["split"] == sp) for sp in ("train", "val")}
    subs = sum(d["files"] for d in done if d["split"] == "train")
    print(f"photos: {n['train']} training photos -> {subs} sub-images in {args.out}/train, "
          f"{n['val']} held out in {args.out}/val ({rec['made']} prepared now, "
          f"{len(rec['done']) - rec['made']} already there)")
    return 0


# -- app ------------------------------------------------------------------------------------

def _add_app(sub) -> None:
    p = sub.add_parser("app", help="a local web page: upload, upscale, compare, see the std map",
                       description="Serve the cascade as a web page on this machine (needs the "
                                   "app extra: pip install -e '.[app]'). Offline: no telemetry, "
                                   "no share link, nothing fetched from outside. One job at a "
                                   "time; each job's files go to OUT/NNNN_NAME/ (docs/app.md).")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 "
                        "serves the network)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    p.add_argument("--pipeline", default="checkpoints",
                   help="pipeline or checkpoints folder (default checkpoints)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--out", default="outputs/app", help="where each job's files go")
    p.add_argument("--max-megapixels", dest="max_megapixels", type=float,
                   help="largest output allowed (default: what fits in the available memory)")
    p.set_defaults(run=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    from cascade.app import serve

    serve(args.pipeline, host=args.host, port=args.port, device=args.device, out=args.out,
          max_megapixels=args.max_megapixels)
    return 0


# -- main -----------------------------------------------------------------------------------

SUBCOMMANDS: list[Callable] = [_add_evaluate, _add_leaderboard, _add_train, _add_upscale,
                               _add_calibrate, _add_diagnose, _add_compare, _add_data, _add_app]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _version() -> str:
    from cascade import __version__

    return f"cascade {__version__}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line -> its namespace; positional items (inputs, key=value overrides) may
    stand before and after the options, e.g. ``evaluate data=[bsd68] --crop 128 scales=[4]``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    trailing = getattr(args, "trailing", None)  # positional items given after an option
    if extra and trailing and not any(e.startswith("-") for e in extra):
        setattr(args, trailing, getattr(args, trailing) + extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.run(args)
    except CascadeError as e:
        print(f"cascade {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # one line, not a traceback, for a path or disk a check missed
        print(f"cascade {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cascade {args.command}: interrupted; finished results are saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
