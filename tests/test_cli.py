"""The ``cascade`` command end to end on small real images: outputs, resume and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cascade.cli import main, parse_args
from cascade.data.datasets import resolve_dataset
from cascade.data.io import load_image, save_image

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "lainr.yaml"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two 60x72 crops of held-out built-in photos (small, so every test runs in seconds)."""
    root = tmp_path_factory.mktemp("photos")
    ds = resolve_dataset("builtin")
    for i, name in enumerate(["chelsea", "coffee"]):
        img = ds[i]["image"]
        save_image(img[:, 100:160, 120:192], root / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny LAINR saved as an inference checkpoint (its output is bicubic-like)."""
    from omegaconf import OmegaConf

    from cascade.checkpoint import save_checkpoint
    from cascade.inr.model import LAINR
    from cascade.train import load_train_config

    cfg = load_train_config(TINY)
    torch.manual_seed(0)
    model = LAINR(**OmegaConf.to_container(cfg.model, resolve=True))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "lainr", model.state_dict(), cfg,
                           "lainr", step=0)


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_evaluate_writes_rows_summary_config_and_images(photos, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--methods", "bicubic", "--data", str(photos), "--scales", "2,2.5",
                 "--out", str(out), "--save-images"]) == 0
    printed = capsys.readouterr().out
    assert "psnr" in printed and "x2.5" in printed
    rows = _rows(out)
    assert len(rows) == 4  # 2 images x 2 scales
    for r in rows:
        assert {"method", "settings", "dataset", "scale", "image", "psnr", "ssim",
                "lr_psnr"} <= r.keys()
        assert 20 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and r["lr_psnr"] > 30
    assert (out / "summary.csv").read_text().count("\n") == 3  # header + 2 scales
    assert "methods" in (out / "config.yaml").read_text()
    pngs = sorted(p.name for p in (out / "images").rglob("*.png"))
    assert len(pngs) == 4
    # x2.5 on 60x72: LR is 24x28 (even sides), so the scored HR is 60x70.
    sr = load_image(out / "images" / "bicubic" / photos.name / "x2.5" / "coffee.png")
    assert tuple(sr.shape[-2:]) == (60, 70)

    # Resume: a second run adds nothing.
    assert main(["evaluate", "--methods", "bicubic", "--data", str(photos), "--scales", "2,2.5",
                 "--out", str(out)]) == 0
    assert len(_rows(out)) == 4


def test_evaluate_with_a_config_file_and_overrides(photos, tmp_path):
    cfg = Path(__file__).resolve().parents[1] / "configs" / "eval" / "bicubic.yaml"
    out = tmp_path / "ev"
    assert main(["evaluate", "--config", str(cfg), f"data=[{photos}]", "scales=[3]",
                 f"out={out}"]) == 0
    assert {r["scale"] for r in _rows(out)} == {3.0}


def test_lainr_method_runs_from_a_checkpoint(photos, tiny_checkpoint, tmp_path):
    out = tmp_path / "ev"
    assert main(["evaluate", "--methods", "bicubic,lainr", "--checkpoint", str(tiny_checkpoint),
                 "--data", str(photos), "--scales", "3", "--out", str(out)]) == 0
    rows = _rows(out)
    assert sorted({r["method"] for r in rows}) == ["bicubic", "lainr"]


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "--data", "/no/such/folder"], "/no/such/folder"),
    (["evaluate", "--methods", "bicubik"], "bicubic"),
    (["evaluate", "metrcs=[psnr]"], "metrics"),
    (["evaluate", "--scales", "0.5"], "scale"),
    (["upscale", "x.png", "--scale", "2", "--checkpoint", "/no/ckpt"], "/no/ckpt"),
    (["upscale", "x.png", "--size", "12by7"], "WIDTHxHEIGHT"),
])
def test_bad_input_is_one_clear_line(argv, needle, photos, tmp_path, capsys):
    argv = [a.replace("x.png", str(photos / "chelsea.png")) for a in argv]
    if argv[0] == "evaluate":
        argv += ["--out", str(tmp_path / "ev")] if "--out" not in argv else []
        if "--data" not in argv:
            argv += ["--data", str(photos)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_upscale_any_scale_or_size_and_skip_bad_files(photos, tiny_checkpoint, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "up"
    code = main(["upscale", str(photos), str(bad), "--scale", "2.5", "--checkpoint",
                 str(tiny_checkpoint), "--out", str(out)])
    assert code == 1  # one failure reported, the rest written
    img = load_image(out / "chelsea_x2.5.png")
    assert tuple(img.shape) == (3, 150, 180)
    run = json.loads((out / "run.json").read_text())
    assert len(run["outputs"]) == 2 and len(run["failures"]) == 1
    assert "broken.png" in run["failures"][0]

    assert main(["upscale", str(photos / "coffee.png"), "--size", "100x77", "--stages", "bicubic",
                 "--out", str(out)]) == 0
    assert tuple(load_image(out / "coffee_100x77.png").shape) == (3, 77, 100)


def test_diagnose_spectrum_and_compare_write_pngs(photos, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "spec"
    odd = tmp_path / "odd"  # a second size: spectra of different sizes are averaged
    save_image(load_image(photos / "chelsea.png")[:, :50, :64], odd / "small.png")
    assert main(["diagnose", "spectrum", str(photos), str(odd), "--scale", "2",
                 "--methods", "bicubic,lainr", "--checkpoint", str(tiny_checkpoint),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bicubic" in text and "lainr" in text
    assert list(out.glob("*.png"))
    cmp_out = tmp_path / "cmp"
    assert main(["compare", str(photos / "chelsea.png"), "--scale", "2", "--methods", "bicubic",
                 "--crop", "32", "--out", str(cmp_out)]) == 0
    assert list(cmp_out.glob("*.png"))


@pytest.mark.parametrize("command,head,option", [
    ("evaluate", ["--config", "e.yaml"], ["--device", "cpu"]),
    ("calibrate", ["--data", "bsd68", "--scale", "4"], ["--seed", "3"])])
def test_overrides_may_stand_before_and_after_an_option(command, head, option):
    args = parse_args([command, *head, "a=1", *option, "b=[2]", "c.d=x"])
    assert args.overrides == ["a=1", "b=[2]", "c.d=x"]
    with pytest.raises(SystemExit):  # an unknown option among them is still refused
        parse_args([command, *head, "a=1", "--no-such-flag", "b=2"])
