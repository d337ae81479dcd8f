"""The bad-input battery: whatever a user feeds the commands, one line that names the problem
and says what to do, exit status 2, and no output left behind; odd but valid images work.

Every case runs through the CLI entry point in-process and through the Python API (default
suite), and through the real ``cascade`` command in a subprocess (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.cli import main
from cascade.errors import CascadeError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "lainr.yaml"
CASCADE = Path(sys.executable).with_name("cascade")


@dataclass
class Files:
    d: Path  # the bad (and odd) inputs
    ckpt: Path  # a tiny LAINR inference checkpoint
    rgb: np.ndarray  # ok.png's pixels, (20, 24, 3) uint8 noise
    smooth: np.ndarray  # the JPEGs' pixels, (20, 24, 3) uint8 ramps (JPEG keeps them)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    from omegaconf import OmegaConf

    from cascade.checkpoint import save_checkpoint
    from cascade.inr.model import LAINR
    from cascade.train import load_train_config

    d = tmp_path_factory.mktemp("inputs")
    rgb = (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "ok.png")
    Image.fromarray(rgb).save(d / "ok.jpg", quality=95)
    (d / "emptydir").mkdir()
    (d / "textdir").mkdir()
    (d / "textdir" / "notes.txt").write_text("not an image\n")
    (d / "empty.png").write_bytes(b"")
    for ext in ("png", "jpg"):
        data = (d / f"ok.{ext}").read_bytes()
        (d / f"truncated.{ext}").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("hello, I am a text file\n")
    Image.fromarray(rgb[:1, :1]).save(d / "1x1.png")
    Image.fromarray(rgb[:2, :2]).save(d / "2x2.png")
    Image.fromarray(rgb[..., 1]).save(d / "gray.png")
    alpha = np.tile(np.linspace(0, 255, 24, dtype=np.uint8), (20, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(d / "rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16).save(
        d / "palette.png", transparency=0)
    g16 = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 131 + 7).astype(np.uint16)
    Image.fromarray(g16).save(d / "gray16.png")
    y, x = np.mgrid[0:20, 0:24]
    smooth = np.stack([x * 10, y * 12, 255 - x * 5 - y * 4], axis=-1).astype(np.uint8)
    Image.fromarray(smooth).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(smooth).save(d / "exif_rotated.jpg", exif=exif, quality=95)
    (d / "afile").write_text("a regular file, so afile/sub cannot be a folder\n")

    cfg = load_train_config(TINY)
    torch.manual_seed(0)
    model = LAINR(**OmegaConf.to_container(cfg.model, resolve=True))
    ckpt = save_checkpoint(d / "ckpt", model.state_dict(), cfg, "lainr")
    save_checkpoint(d / "ckpt_sr3", model.state_dict(), cfg, "sr3")
    for name, damage in (("ckpt_truncated", lambda b: b[: len(b) // 2]),
                         ("ckpt_corrupted", lambda b: b[:999] + bytes([b[999] ^ 1]) + b[1000:])):
        shutil.copytree(ckpt, d / name)
        weights = d / name / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
    # A training checkpoint whose optimizer state was damaged after it was written.
    step = d / "run" / "checkpoints" / "step_0000003"
    step.mkdir(parents=True)
    (step / "optimizer.bin").write_bytes(b"damaged")
    (step / "trainer_state.json").write_text(json.dumps(
        {"step": 3, "stage": "lainr", "files": {"optimizer.bin": "0" * 64}}))
    (d / "bad_key.yaml").write_text("stage: lainr\ntrain: {stepz: 3}\n")
    (d / "bad_type.yaml").write_text("stage: lainr\ntrain: {steps: many}\n")
    return Files(d, ckpt, rgb, smooth)


# -- the cases ---------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    argv: list[str]  # {d}: the inputs folder, {ckpt}: the checkpoint, {out}: the output folder
    api: Callable[[Files, Path], Any]  # the same mistake through the Python API
    needle: str  # what the one line must name


def _up(f: Files, out: Path, inputs: str | list[str], **kw) -> Any:
    from cascade.upscale import upscale_files

    items = [str(f.d / i) for i in ([inputs] if isinstance(inputs, str) else inputs)]
    kw.setdefault("scale", 2)
    return upscale_files(items, size=kw.pop("size", None), stages=kw.pop("stages", "inr"),
                         checkpoint=kw.pop("checkpoint", str(f.ckpt)), out=str(out), **kw)


def _load(name: str) -> Callable[[Files, Path], Any]:
    from cascade.data.io import load_image

    return lambda f, out: load_image(f.d / name)


def _lainr(name: str) -> Callable[[Files, Path], Any]:
    from cascade.inr.pretrained import load_lainr

    return lambda f, out: load_lainr(f.d / name)


def _config(*overrides: str, path: str | None = None) -> Callable[[Files, Path], Any]:
    from cascade.train import load_train_config

    return lambda f, out: load_train_config(f.d / path if path else TINY, list(overrides))


def _eval_config(*overrides: str) -> Callable[[Files, Path], Any]:
    from cascade.config import load_config
    from cascade.evaluation.run import EvalConfig

    return lambda f, out: load_config(EvalConfig, None, list(overrides))


def _save_image_to(*parts: str) -> Callable[[Files, Path], Any]:
    from cascade.data.io import save_image

    return lambda f, out: save_image(torch.zeros(3, 2, 2), f.d.joinpath(*parts))


def _train(*overrides: str) -> Callable[[Files, Path], Any]:
    from cascade.train import train

    return lambda f, out: train(TINY, [f"out={out}", *(o.format(d=f.d) for o in overrides)])


UP = ["--checkpoint", "{ckpt}", "--out", "{out}"]
CASES = [
    Case("missing path", ["upscale", "{d}/missing.png", "--scale", "2", *UP],
         _load("missing.png"), "missing.png"),
    Case("folder without images", ["upscale", "{d}/textdir", "--scale", "2", *UP],
         lambda f, out: _up(f, out, "textdir"), "no image files"),
    Case("empty folder", ["upscale", "{d}/emptydir", "--scale", "2", *UP],
         lambda f, out: _up(f, out, "emptydir"), "no image files"),
    Case("empty file", ["upscale", "{d}/empty.png", "--scale", "2", *UP],
         _load("empty.png"), "empty (0 bytes)"),
    Case("truncated PNG", ["upscale", "{d}/truncated.png", "--scale", "2", *UP],
         _load("truncated.png"), "truncated or corrupt image"),
    Case("truncated JPEG", ["upscale", "{d}/truncated.jpg", "--scale", "2", *UP],
         _load("truncated.jpg"), "truncated or corrupt image"),
    Case("text file named .png", ["upscale", "{d}/text.png", "--scale", "2", *UP],
         _load("text.png"), "not an image file"),
    Case("too large for memory (size)", ["upscale", "{d}/ok.png", "--size", "200000x200000", *UP],
         lambda f, out: _up(f, out, "ok.png", scale=None, size="200000x200000"),
         "exceeds the memory budget"),
    Case("too large for memory (scale)", ["upscale", "{d}/ok.png", "--scale", "20000", *UP],
         lambda f, out: _up(f, out, "ok.png", scale=20000), "exceeds the memory budget"),
    Case("larger than --max-megapixels",
         ["upscale", "{d}/ok.png", "--scale", "4", "--max-megapixels", "0.001", *UP],
         lambda f, out: _up(f, out, "ok.png", scale=4, max_megapixels=0.001), "--max-megapixels"),
    Case("--max-megapixels 0", ["upscale", "{d}/ok.png", "--scale", "2", "--max-megapixels", "0",
                                *UP],
         lambda f, out: _up(f, out, "ok.png", max_megapixels=0), "positive"),
    *[Case(f"scale {s}", ["upscale", "{d}/ok.png", f"--scale={s}", *UP],
           lambda f, out, s=s: _up(f, out, "ok.png", scale=s), "scale")
      for s in ("0", "-2", "nan", "inf", "0.5", "two")],
    Case("--samples 0", ["upscale", "{d}/ok.png", "--scale", "2", "--samples", "0", *UP],
         lambda f, out: _up(f, out, "ok.png", num_samples=0), "--samples 0 is impossible"),
    Case("size conflicts with scale", ["upscale", "{d}/ok.png", "--scale", "2", "--size",
                                       "100x100", *UP],
         lambda f, out: _up(f, out, "ok.png", scale=2, size="100x100"), "conflicts with --scale"),
    Case("size not WxH", ["upscale", "{d}/ok.png", "--size", "12by7", *UP],
         lambda f, out: _up(f, out, "ok.png", scale=None, size="12by7"), "WIDTHxHEIGHT"),
    Case("size smaller than input", ["upscale", "{d}/ok.png", "--size", "10x10", *UP],
         lambda f, out: _up(f, out, "ok.png", scale=None, size="10x10"), "only upscales"),
    Case("unknown config key", ["train", str(TINY), "out={out}", "trian.steps=3"],
         _config("trian.steps=3"), "did you mean 'train'"),
    Case("unknown key in a config file", ["train", "{d}/bad_key.yaml", "out={out}"],
         _config(path="bad_key.yaml"), "'train.stepz'"),
    Case("wrong config type", ["train", str(TINY), "out={out}", "train.steps=abc"],
         _config("train.steps=abc"), "'train.steps'"),
    Case("wrong config type (group)", ["train", str(TINY), "out={out}", "model=3"],
         _config("model=3"), "'model'"),
    Case("wrong type in a config file", ["train", "{d}/bad_type.yaml", "out={out}"],
         _config(path="bad_type.yaml"), "'train.steps'"),
    Case("missing config file", ["train", "{d}/missing.yaml", "out={out}"],
         _config(path="missing.yaml"), "not found"),
    Case("unknown evaluate key", ["evaluate", "--data", "{d}/ok.png", "--out", "{out}",
                                  "metrcs=[psnr]"],
         _eval_config("metrcs=[psnr]"), "did you mean 'metrics'"),
    Case("missing checkpoint", ["upscale", "{d}/ok.png", "--scale", "2", "--checkpoint",
                                "{d}/nock", "--out", "{out}"],
         _lainr("nock"), "not found"),
    Case("checkpoint of the wrong stage", ["upscale", "{d}/ok.png", "--scale", "2",
                                           "--checkpoint", "{d}/ckpt_sr3", "--out", "{out}"],
         _lainr("ckpt_sr3"), "'sr3' checkpoint, not 'lainr'"),
    Case("truncated checkpoint", ["upscale", "{d}/ok.png", "--scale", "2", "--checkpoint",
                                  "{d}/ckpt_truncated", "--out", "{out}"],
         _lainr("ckpt_truncated"), "does not match its checksum"),
    Case("corrupted checkpoint", ["upscale", "{d}/ok.png", "--scale", "2", "--checkpoint",
                                  "{d}/ckpt_corrupted", "--out", "{out}"],
         _lainr("ckpt_corrupted"), "does not match its checksum"),
    Case("training checkpoint passed to upscale",
         ["upscale", "{d}/ok.png", "--scale", "2", "--checkpoint",
          "{d}/run/checkpoints/step_0000003", "--out", "{out}"],
         _lainr("run/checkpoints/step_0000003"), "training-state checkpoint"),
    Case("corrupted training checkpoint on resume",
         ["train", str(TINY), "out={out}", "resume={d}/run/checkpoints/step_0000003"],
         _train("resume={d}/run/checkpoints/step_0000003"), "optimizer.bin does not match"),
    Case("output folder not writable (upscale)", ["upscale", "{d}/ok.png", "--scale", "2",
                                                  "--checkpoint", "{ckpt}", "--out",
                                                  "{d}/afile/sub"],
         lambda f, out: _up(f, f.d / "afile" / "sub", "ok.png"), "cannot write"),
    Case("output folder not writable (save_image)", ["upscale", "{d}/ok.png", "--scale", "2",
                                                     "--stages", "bicubic", "--out",
                                                     "{d}/afile"],
         _save_image_to("afile", "x.png"), "cannot write"),
    Case("output folder not writable (train)", ["train", str(TINY), "out={d}/afile/sub"],
         lambda f, out: _train()(f, f.d / "afile" / "sub"), "cannot write"),
]
if not torch.cuda.is_available():
    CASES.append(Case("--device cuda without CUDA", ["upscale", "{d}/ok.png", "--scale", "2",
                                                     "--device", "cuda", *UP],
                      lambda f, out: _up(f, out, "ok.png", device="cuda"), "no CUDA device"))


# Odd but valid images: each must upscale (x2) like any other.
WORKS = ["1x1.png", "2x2.png", "gray.png", "rgba.png", "palette.png", "gray16.png", "cmyk.jpg",
         "exif_rotated.jpg"]


def _argv(case_argv: list[str], f: Files, out: Path) -> list[str]:
    return [a.format(d=f.d, ckpt=f.ckpt, out=out) for a in case_argv]


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))


def _assert_one_line(err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli_gives_one_line_and_status_2(case, files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(case.argv, files, out)) == 2
    captured = capsys.readouterr()
    _assert_one_line(captured.err, case.needle)
    assert captured.err.startswith(f"cascade {case.argv[0]}: error: ")
    _assert_nothing_written(out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api_raises_one_line_error(case, files, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(CascadeError) as e:
        case.api(files, out)
    _assert_one_line(str(e.value), case.needle)
    _assert_nothing_written(out)


@pytest.fixture(scope="module")
def real_runs(files, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    """Every case and every odd image through the real ``cascade`` command, several at once
    (each start-up imports torch: seconds, mostly waiting on one core)."""
    cmd = [str(CASCADE)] if CASCADE.exists() else [sys.executable, "-m", "cascade.cli"]
    jobs = {}
    for i, case in enumerate(CASES):
        out = tmp_path_factory.mktemp(f"case{i}") / "out"
        jobs[case.id] = (_argv(case.argv, files, out), out)
    for name in WORKS:
        out = tmp_path_factory.mktemp("works") / "out"
        jobs[name] = (["upscale", str(files.d / name), "--scale", "2", "--checkpoint",
                       str(files.ckpt), "--out", str(out)], out)
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {key: pool.submit(subprocess.run, cmd + argv, capture_output=True, text=True,
                                    timeout=300, cwd=out.parent)
                   for key, (argv, out) in jobs.items()}
        return {key: (f.result(), jobs[key][1]) for key, f in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_real_command_gives_one_line_and_status_2(case, real_runs):
    done, out = real_runs[case.id]
    assert done.returncode == 2, done.stderr
    _assert_one_line(done.stderr, case.needle)
    _assert_nothing_written(out)


def test_samples_0_is_refused_once_there_is_a_samples_option(files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    if "--samples" not in capsys.readouterr().out:
        pytest.skip("cascade upscale has no --samples option yet (multi-sample cascade)")
    out = tmp_path / "out"
    assert main(_argv(["upscale", "{d}/ok.png", "--scale", "2", "--samples", "0", *UP],
                      files, out)) == 2
    _assert_one_line(capsys.readouterr().err, "samples")
    _assert_nothing_written(out)


# -- odd but valid images: they must work --------------------------------------------------------

def _expected_size(name: str) -> tuple[int, int]:
    """(H, W) of the x2 output."""
    return {"1x1.png": (2, 2), "2x2.png": (4, 4), "exif_rotated.jpg": (48, 40)}.get(name, (40, 48))


@pytest.mark.parametrize("name", WORKS)
def test_odd_images_upscale_through_the_cli(name, files, tmp_path, capsys):
    from cascade.data.io import load_image

    out = tmp_path / "out"
    assert main(["upscale", str(files.d / name), "--scale", "2", "--checkpoint",
                 str(files.ckpt), "--out", str(out)]) == 0
    assert capsys.readouterr().err == ""
    sr = load_image(out / f"{Path(name).stem}_x2.png")
    assert tuple(sr.shape) == (3, *_expected_size(name))
    assert json.loads((out / "run.json").read_text())["failures"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", WORKS)
def test_odd_images_upscale_through_the_real_command(name, real_runs):
    done, out = real_runs[name]
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert Image.open(out / f"{Path(name).stem}_x2.png").size[::-1] == _expected_size(name)


def test_odd_images_load_as_the_right_rgb(files):
    """The API reads each mode as what it shows: gray replicated, alpha composited on white,
    palette transparency kept, 16 bits kept, CMYK converted, EXIF rotation applied."""
    from cascade.data.io import load_image

    d, rgb = files.d, files.rgb.astype(np.float32) / 255
    as_hwc = lambda name: load_image(d / name).permute(1, 2, 0).numpy()  # noqa: E731
    gray = as_hwc("gray.png")
    np.testing.assert_array_equal(gray, np.repeat(rgb[..., 1:2], 3, axis=2))
    a = np.linspace(0, 255, 24, dtype=np.uint8).astype(np.float32)[None, :, None] / 255
    np.testing.assert_allclose(as_hwc("rgba.png"), rgb * a + (1 - a), atol=1e-6)
    pal = Image.open(d / "palette.png")
    transparent = np.asarray(pal) == 0
    assert transparent.any()
    np.testing.assert_array_equal(as_hwc("palette.png")[transparent], 1.0)  # white background
    g16 = np.asarray(Image.open(d / "gray16.png"), dtype=np.float64) / 65535
    np.testing.assert_allclose(as_hwc("gray16.png")[..., 0], g16, atol=1e-6)  # not 8-bit
    assert len(np.unique(as_hwc("gray16.png"))) > 256
    smooth = files.smooth.astype(np.float32) / 255
    assert np.abs(as_hwc("cmyk.jpg") - smooth).mean() < 0.02
    rotated = as_hwc("exif_rotated.jpg")  # stored 24 wide x 20 high, shown 20 x 24
    assert rotated.shape == (24, 20, 3)
    assert np.abs(rotated - np.rot90(smooth, k=-1)).mean() < 0.02
    assert np.abs(rotated - np.rot90(smooth, k=1)).mean() > 0.1  # and the right way round


@pytest.mark.parametrize("stages", ["inr", "bicubic"])
def test_a_one_pixel_image_upscales_to_its_colour(stages, files, tmp_path):
    from cascade.data.io import load_image
    from cascade.upscale import upscale_files

    assert upscale_files([str(files.d / "1x1.png")], scale=3, size=None, stages=stages,
                         checkpoint=str(files.ckpt), out=str(tmp_path)) == []
    sr = load_image(tmp_path / "1x1_x3.png").reshape(3, -1).T.numpy()  # (9, 3)
    colour = np.broadcast_to(files.rgb[0, 0] / 255, (9, 3))
    # Bicubic reproduces it exactly; the untrained tiny LAINR adds its small random residual.
    np.testing.assert_allclose(sr, colour, atol=1e-6 if stages == "bicubic" else 0.15)
