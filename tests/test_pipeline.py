import math

import pytest

from cascade.errors import ScaleError
from cascade.pipeline import check_scale, parse_size, target_size


def test_target_size_by_scale_and_size():
    assert target_size((10, 20), 2.5) == (25, 50)
    assert target_size((10, 20), size=(30, 41)) == (30, 41)
    assert target_size((10, 20), 3, size=(30, 60)) == (30, 60)


@pytest.mark.parametrize("bad", [0, -2, 0.5, math.nan, math.inf, "abc"])
def test_impossible_scales_are_refused(bad):
    with pytest.raises(ScaleError, match="scale"):
        check_scale(bad)


def test_size_conflicting_with_scale_or_smaller_than_input():
    with pytest.raises(ScaleError, match="conflicts"):
        target_size((10, 20), 2, size=(40, 40))
    with pytest.raises(ScaleError, match="smaller"):
        target_size((10, 20), size=(5, 5))
    with pytest.raises(ScaleError):
        target_size((10, 20))


@pytest.mark.parametrize("text", ["640", "0x10", "axb", "10x-3"])
def test_bad_size_strings(text):
    with pytest.raises(ScaleError, match="WIDTHxHEIGHT"):
        parse_size(text)


def test_size_is_width_by_height():
    assert parse_size("640x480") == (480, 640)


# -- the cascade: planner, pipeline object, save/load, CLI ------------------------------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cascade.cli import main  # noqa: E402
from cascade.errors import CheckpointError, ConfigError  # noqa: E402
from cascade.pipeline import (  # noqa: E402
    CascadePipeline,
    PipelineConfig,
    lattice_coords,
    make_plan,
    save_calibration,
)

from conftest import ROOT, TINY_SR3, TINY_UNET  # noqa: E402
from conftest import tiny_lainr as _tiny_lainr  # noqa: E402
FAST = dict(steps=2, sampler="ddim")


def _names(plan):
    return [(s.stage, tuple(s.out_size)) for s in plan.steps]


def test_plan_diffusion_takes_x2_steps_at_the_end_and_lainr_the_rest():
    # x4 with one stage: LAINR x2, then the stage
    p = make_plan((80, 120), (320, 480), ["sr3_x2"], "inr+1")
    assert _names(p) == [("lainr", (160, 240)), ("sr3_x2", (320, 480))] and not p.notes
    # x4 with two stages: no LAINR at all (its step would be the identity)
    p = make_plan((80, 120), (320, 480), ["a", "b"], "inr+2")
    assert _names(p) == [("a", (160, 240)), ("b", (320, 480))]
    # x3 with two stages: one x2 step, LAINR x1.5; the plan says why b is unused
    p = make_plan((80, 120), (240, 360), ["a", "b"], "inr+2")
    assert _names(p) == [("lainr", (120, 180)), ("a", (240, 360))]
    assert "1 of 2 diffusion stage(s) unused" in p.notes[0]
    # below x2 (or with no stage) LAINR does everything
    assert _names(make_plan((10, 10), (15, 15), ["a"], "inr+1")) == [("lainr", (15, 15))]
    assert _names(make_plan((10, 10), (65, 65), [], "inr")) == [("lainr", (65, 65))]
    # an exact size with another aspect: the axis that grows least decides the x2 steps
    p = make_plan((10, 10), (25, 50), ["a", "b"], "inr+2")
    assert _names(p) == [("lainr", (13, 25)), ("a", (26, 50))]
    assert _names(make_plan((10, 10), (40, 40), [], "bicubic")) == [("bicubic", (40, 40))]


def test_plan_for_sizes_not_divisible_by_the_x2_steps_renders_and_crops():
    p = make_plan((100, 100), (650, 650), ["a", "b"], "inr+2")  # x6.5
    assert _names(p) == [("lainr", (163, 163)), ("a", (326, 326)), ("b", (652, 652))]
    assert p.steps[0].scale == (1.625, 1.625)  # on the output lattice: 650 / 4 / 100
    assert p.describe().endswith("cropped to 650x650")
    assert "-> crop 650x650" in p.describe()
    d = p.to_dict()
    assert d["summary"] == p.describe() and d["steps"][1]["stage"] == "a"


def test_lattice_coords_extend_the_grid_past_the_edge_on_the_output_pitch():
    from cascade.data.coords import make_cell, make_coord

    coord, cell = lattice_coords((5, 7), (5, 7))
    torch.testing.assert_close(coord, make_coord((5, 7)))
    torch.testing.assert_close(cell, make_cell((5, 7), 35))
    coord, _ = lattice_coords((3, 1), (2.5, 1.0))  # pitch 2 / 2.5: centres -0.6, 0.2, 1.0
    torch.testing.assert_close(coord[:, 0], torch.tensor([-0.6, 0.2, 1.0]))


def _stage(seed=0, zero=False, upsampler=None, **sampling):
    from cascade.diffusion.process import ProcessConfig
    from cascade.diffusion.sampling import SamplingConfig
    from cascade.diffusion.stage import SR3Stage
    from cascade.diffusion.unet import ConditionalUNet
    from cascade.upsamplers import BicubicUpsampler

    torch.manual_seed(seed)
    unet = ConditionalUNet(**TINY_UNET)
    if zero:  # the network's output is 0: the stage returns its conditioning
        torch.nn.init.zeros_(unet.unet.conv_out.weight)
        torch.nn.init.zeros_(unet.unet.conv_out.bias)
    return SR3Stage(unet, ProcessConfig(), SamplingConfig(**sampling), scale=2.0,
                    upsampler=upsampler or BicubicUpsampler())


def _ramp(h, w):
    ys = -1 + (2 * torch.arange(h) + 1) / h
    xs = -1 + (2 * torch.arange(w) + 1) / w
    return 0.2 + 0.15 * (ys[:, None] + 1) + 0.125 * (xs[None, :] + 1)  # (h, w)


@pytest.mark.parametrize("size", [(80, 96), (83, 101), (61, 77)])
def test_every_output_pixel_lands_where_a_direct_resample_puts_it(size):
    """A linear ramp through LAINR (bicubic here) and two stages that return their (bicubic)
    conditioning: in the interior the output is the ramp at the output's pixel centres,
    also when the size is not divisible by the x2 steps (LAINR on the output lattice, crop).
    Rendering the LAINR step on its own grid instead puts the ramp 0.008 off."""
    lainr, _ = _tiny_lainr()
    zero = dict(temperature=0.0, projection=0.0, aug_level=0.0, steps=2)
    pipe = CascadePipeline(lainr, [("a", _stage(zero=True, **zero)),
                                   ("b", _stage(zero=True, **zero))])
    out = pipe(_ramp(20, 24).expand(3, -1, -1), size=size)
    assert tuple(out.mean.shape) == (3, *size) and out.plan.stochastic
    err = (out.mean[0] - _ramp(*size))[10:-10, 10:-10].abs().max()
    assert err < 2e-3  # LAINR's own bicubic base (a = -0.75) is this far from a ramp


def test_lainr_only_is_model_upscale_and_chunking_changes_nothing():
    lainr, _ = _tiny_lainr()
    img = torch.rand(3, 30, 26, generator=torch.Generator().manual_seed(0))
    pipe = CascadePipeline(lainr)
    one = pipe(img, scale=2.7, num_samples=3)
    chunked = pipe(img, scale=2.7, lainr_chunk=97)
    ref = lainr.upscale(img[None], size=(81, 70)).clamp(0, 1)[0]
    torch.testing.assert_close(one.mean, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.mean, one.mean, atol=1e-5, rtol=0)
    assert one.samples.shape == (3, 3, 81, 70) and float(one.std.abs().max()) == 0
    assert not one.plan.stochastic and one.plan.stages == "inr"


def test_one_stage_pipeline_reproduces_the_stage_and_samples_do_not_depend_on_n():
    from cascade.data.degrade import upscale_bicubic

    lainr, _ = _tiny_lainr()
    stage = _stage()
    pipe = CascadePipeline(lainr, [("sr3_x2", stage)])
    lr = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(1))
    out = pipe(lr, scale=2, num_samples=3, seed=5, tiling={"tile": -1}, **FAST)
    direct = stage(lr[None], num_samples=3, seed=5, cond=upscale_bicubic(lr[None], (32, 40)),
                   **FAST)[0]
    torch.testing.assert_close(out.samples, direct, atol=1e-6, rtol=0)
    # sample i is the same whatever N and however the samples are batched
    two = CascadePipeline(lainr, [("a", _stage(0)), ("b", _stage(1))])
    many = two(lr, scale=4, num_samples=3, seed=2, **FAST)
    few = two(lr, scale=4, num_samples=2, seed=2, max_batch=1, **FAST)
    torch.testing.assert_close(few.samples, many.samples[:2], atol=1e-5, rtol=0)
    assert (many.samples[0] - many.samples[1]).abs().max() > 1e-3


def test_mean_std_and_streamed_samples_agree_with_the_kept_samples():
    lainr, _ = _tiny_lainr()
    pipe = CascadePipeline(lainr, [("sr3_x2", _stage())])
    lr = torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(2))
    kept = pipe(lr, scale=3, num_samples=4, **FAST)
    torch.testing.assert_close(kept.mean, kept.samples.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(kept.std, kept.samples.std(0), atol=1e-6, rtol=0)
    seen = []
    streamed = pipe(lr, scale=3, num_samples=4, keep_samples=False, max_batch=3,
                    on_sample=lambda i, x: seen.append((i, x.clone())), **FAST)
    assert streamed.samples is None and [i for i, _ in seen] == [0, 1, 2, 3]
    torch.testing.assert_close(torch.stack([x for _, x in seen]), kept.samples, atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(streamed.std, kept.std, atol=1e-5, rtol=0)
    lo, hi = kept.quantiles(0.5)
    assert bool((lo <= kept.samples.median(0).values + 1e-6).all()) and bool((lo <= hi).all())
    assert kept.image is kept.mean
    assert pipe(lr, scale=3, num_samples=2, output="sample", **FAST).image.shape == (3, 36, 36)


def test_tiled_pipeline_matches_untiled():
    lainr, _ = _tiny_lainr()
    pipe = CascadePipeline(lainr, [("sr3_x2", _stage())])
    lr = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(3))
    whole = pipe(lr, scale=2, tiling={"tile": -1}, **FAST)
    tiled = pipe(lr, scale=2, tiling={"tile": 32, "overlap": 8, "untiled": -1}, **FAST)
    assert tiled.plan.steps[-1].tiles == 9 and whole.plan.steps[-1].tiles == 1
    assert float((tiled.mean - whole.mean).abs().mean()) < 0.01


def test_from_pretrained_assembles_a_checkpoints_folder_and_names_a_missing_stage(folder):
    pipe = CascadePipeline.from_pretrained(folder)
    assert [d.name for d in pipe.diffusion] == ["sr3_x2"]
    assert pipe.resolve_stages("auto")[0] == "inr+1"
    with pytest.raises(CheckpointError, match="sr3_x2_b, which does not exist") as e:
        pipe.resolve_stages("inr+2")
    assert "\n" not in str(e.value) and "--stages inr+1" in str(e.value)
    assert not CascadePipeline.from_pretrained(folder, max_diffusion=0).diffusion
    with pytest.raises(CheckpointError, match="neither pipeline.json nor lainr"):
        CascadePipeline.from_pretrained(folder / "sr3_x2")
    with pytest.raises(ConfigError, match="samples"):
        CascadePipeline.from_pretrained(folder, num_samples=0)


def test_save_pretrained_round_trip_is_self_contained_and_identical(folder, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(folder, src)
    pipe = CascadePipeline.from_pretrained(src, steps=2, sampler="ddim")
    lr = torch.rand(3, 14, 18, generator=torch.Generator().manual_seed(4))
    a = pipe(lr, scale=3, num_samples=2, seed=7)
    saved = pipe.save_pretrained(tmp_path / "pipe")
    meta = json.loads((saved / "pipeline.json").read_text())
    assert meta["diffusion"] == [{"name": "sr3_x2", "path": "sr3_x2", "conditioning": "lainr"}]
    assert meta["config"]["steps"] == 2
    shutil.rmtree(src)  # the saved folder must not need the original checkpoints
    again = CascadePipeline.from_pretrained(saved)
    b = again(lr, scale=3, num_samples=2, seed=7)
    torch.testing.assert_close(b.samples, a.samples, atol=0, rtol=0)
    again.save_pretrained(saved)  # saving over itself works
    c = CascadePipeline.from_pretrained(saved)(lr, scale=3, num_samples=2, seed=7)
    torch.testing.assert_close(c.samples, a.samples, atol=0, rtol=0)
    # one stage listed twice is refused: settings and calibration are keyed by stage name
    meta["diffusion"] = meta["diffusion"] * 2
    (saved / "pipeline.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'sr3_x2' twice") as e:
        CascadePipeline.from_pretrained(saved)
    assert "\n" not in str(e.value)


def test_calibration_is_saved_with_the_pipeline_and_used_by_intervals(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "ck")
    pipe = CascadePipeline.from_pretrained(tmp_path / "ck")
    lr = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(5))
    out = pipe(lr, scale=4, num_samples=2, **FAST)
    with pytest.raises(Exception, match="cascade calibrate"):
        out.interval()
    for scale, factor in ((2.0, 1.5), (4.0, 2.5)):
        save_calibration(pipe, {"stages": ["sr3_x2"], "scale": scale, "num_samples": 8,
                                "factor": factor, "std_floor": 0.002})
    again = CascadePipeline.from_pretrained(tmp_path / "ck")
    assert len(again.calibration) == 2
    out = again(lr, scale=3.5, num_samples=2, **FAST)
    assert out.calibration["factor"] == 2.5  # the nearest scale
    lo, hi = out.interval()
    torch.testing.assert_close(hi - lo, 5.0 * out.std.clamp_min(0.002))


def test_cascade_method_for_evaluate(folder):
    from cascade.evaluation.methods import make_method

    m = make_method("cascade", {"pipeline": str(folder), "steps": 2, "num_samples": 2})
    assert m.settings["stages"] == "inr+1" and m.settings["diffusion"] == ["sr3_x2"]
    assert m.settings["steps"] == 2 and m.settings["sampler"] == "dpm"  # default filled in
    lr = torch.rand(1, 3, 10, 12)
    assert m(lr, (40, 48)).shape == (1, 3, 40, 48)
    with pytest.raises(ConfigError, match="unknown setting"):
        make_method("cascade", {"pipeline": str(folder), "stepz": 2})


def test_upscale_defaults_to_lainr_alone_and_runs_diffusion_on_request(folder, tmp_path,
                                                                      capsys):
    from cascade.data.io import save_image

    img = tmp_path / "photo.png"
    save_image(torch.rand(3, 12, 14, generator=torch.Generator().manual_seed(6)), img)
    common = ["--scale", "2", "--steps", "1", "--pipeline", str(folder)]
    assert main(["upscale", str(img), *common, "--out", str(tmp_path / "a")]) == 0
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["stages"] == "inr"
    assert [s["stage"] for s in run["outputs"][0]["plan"]["steps"]] == ["lainr"]
    # N samples of a deterministic upscale would be identical: one line that says what to do
    capsys.readouterr()
    assert main(["upscale", str(img), *common, "--samples", "3",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "LAINR alone is deterministic" in err[0]
    assert "--stages auto" in err[0] and not (tmp_path / "b").exists()
    # on request: the flag, an override or a config file
    cfg = tmp_path / "p.yaml"
    cfg.write_text("stages: auto\n")
    for i, how in enumerate((["--stages", "auto"], ["stages=auto"], ["--config", str(cfg)])):
        out = tmp_path / f"c{i}"
        assert main(["upscale", str(img), *common, "--out", str(out), *how]) == 0
        assert json.loads((out / "run.json").read_text())["stages"] == "inr+1"


def test_upscale_cli_writes_samples_std_map_and_run_json(folder, tmp_path, capsys):
    from cascade.data.io import load_image, save_image

    img = tmp_path / "in" / "photo.png"
    save_image(torch.rand(3, 12, 14, generator=torch.Generator().manual_seed(6)), img)
    out = tmp_path / "out"
    assert main(["upscale", str(img), "--stages", "auto",
                 "--scale", "3", "--samples", "3", "--steps", "2",
                 "--pipeline", str(folder), "--out", str(out), "tiling.tile=16",
                 "tiling.untiled=-1"]) == 0
    assert tuple(load_image(out / "photo_x3.png").shape) == (3, 36, 42)
    assert sorted(p.name for p in (out / "photo_x3_samples").iterdir()) == [
        "sample_00.png", "sample_01.png", "sample_02.png"]
    from PIL import Image

    assert Image.open(out / "photo_x3_std.png").size[0] > 42  # a heatmap with its colour bar
    assert Image.open(out / "photo_x3_interval.png").size[0] > 42
    run = json.loads((out / "run.json").read_text())
    rec = run["outputs"][0]
    # the interval record: the sample-quantile width from the written samples, uncalibrated
    samples = torch.stack([load_image(p) for p in sorted((out / "photo_x3_samples").iterdir())])
    lo, hi = torch.quantile(samples, torch.tensor([0.05, 0.95]), dim=0)
    assert rec["interval"]["alpha"] == 0.1 and "calibrated" not in rec["interval"]
    assert rec["interval"]["quantile_width_mean"] == pytest.approx(float((hi - lo).mean()),
                                                                   abs=1e-5)
    assert run["stages"] == "inr+1" and run["settings"]["num_samples"] == 3
    assert run["settings"]["tiling"]["tile"] == 16 and run["settings"]["batch_megapixels"] == 0.5
    assert [s["stage"] for s in rec["plan"]["steps"]] == ["lainr", "sr3_x2"]
    assert rec["plan"]["steps"][1]["tiles"] > 1
    assert {"lainr", "sr3_x2", "total"} <= set(rec["timings"])
    # --output sample: the image is the first sample
    assert main(["upscale", str(img), "--stages", "auto",
                 "--scale", "3", "--samples", "2", "--steps", "2",
                 "--pipeline", str(folder), "--out", str(tmp_path / "o2"), "--output",
                 "sample"]) == 0
    torch.testing.assert_close(load_image(tmp_path / "o2" / "photo_x3.png"),
                               load_image(tmp_path / "o2" / "photo_x3_samples" /
                                          "sample_00.png"))
    # --stages inr+2 without sr3_x2_b: one line naming it, nothing written
    capsys.readouterr()
    bad = tmp_path / "o3"
    assert main(["upscale", str(img), "--scale", "4", "--stages", "inr+2", "--pipeline",
                 str(folder), "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sr3_x2_b" in err[0] and not bad.exists()


def test_quantile_width_in_bands_matches_the_whole_image_quantiles(monkeypatch):
    import cascade.upscale as up
    from cascade.data.io import to_uint8

    g = torch.Generator().manual_seed(3)
    samples = [torch.from_numpy(to_uint8(torch.rand(3, 37, 11, generator=g)))
               for _ in range(5)]  # (37, 11, 3) each
    whole = torch.stack(samples).permute(0, 3, 1, 2).float() / 255  # (5, 3, 37, 11)
    lo, hi = torch.quantile(whole, torch.tensor([0.1, 0.9]), dim=0)
    torch.testing.assert_close(up.quantile_width(samples, 0.2, rows=8), (hi - lo).mean(0))


def test_upscale_skips_the_quantile_map_when_the_samples_would_not_fit(folder, tmp_path,
                                                                       monkeypatch):
    import shutil

    import cascade.upscale as up
    from cascade.data.io import save_image

    shutil.copytree(folder, tmp_path / "ck")
    pipe = CascadePipeline.from_pretrained(tmp_path / "ck")
    save_calibration(pipe, {"stages": ["sr3_x2"], "scale": 2.0, "num_samples": 8,
                            "factor": 3.0, "std_floor": 0.002, "alpha": 0.1})
    monkeypatch.setattr(up, "QUANTILE_PIXELS", 100)
    img = tmp_path / "photo.png"
    save_image(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2)), img)
    out = tmp_path / "out"
    assert main(["upscale", str(img), "--stages", "auto",
                 "--scale", "2", "--samples", "2", "--steps", "2",
                 "--pipeline", str(tmp_path / "ck"), "--out", str(out)]) == 0
    rec = json.loads((out / "run.json").read_text())["outputs"][0]["interval"]
    assert rec["map"] is None and "exceed" in rec["note"]
    assert not (out / "photo_x2_interval.png").exists()
    assert rec["calibrated"]["factor"] == 3.0 and rec["calibrated"]["width_mean"] > 0


def test_calibrate_cli_fits_reports_and_saves(folder, tmp_path, capsys):
    import shutil

    from cascade.data.datasets import resolve_dataset
    from cascade.data.io import save_image

    ck = tmp_path / "ck"
    shutil.copytree(folder, ck)
    ds = resolve_dataset("builtin")
    for i in range(4):
        save_image(ds[i]["image"][:, 60:92, 60:92], tmp_path / "data" / f"{i}.png")
    assert main(["calibrate", "--data", str(tmp_path / "data"), "--scale", "2", "--samples",
                 "3", "--steps", "2", "--pipeline", str(ck), "--out", str(tmp_path / "rep"),
                 "--alpha", "0.2"]) == 0
    text = capsys.readouterr().out
    assert "coverage" in text and "Spearman" in text and "AUSE" in text
    entry = json.loads((ck / "calibration.json").read_text())["entries"][0]
    assert entry["stages"] == ["sr3_x2"] and entry["fit_images"] == 2
    assert entry["factor"] > 0 and 0 <= entry["test"]["coverage"] <= 1
    assert (tmp_path / "rep" / "calibration_x2.json").is_file()
    assert CascadePipeline.from_pretrained(ck).calibration[0]["factor"] == entry["factor"]
    # --fit odd swaps the halves: another factor, not saved with --no-save
    assert main(["calibrate", "--data", str(tmp_path / "data"), "--scale", "2", "--samples",
                 "3", "--steps", "2", "--pipeline", str(ck), "--alpha", "0.2", "--fit", "odd",
                 "--no-save", "--out", str(tmp_path / "rep_odd")]) == 0
    odd = json.loads((tmp_path / "rep_odd" / "calibration_x2.json").read_text())
    assert odd["fit_half"] == "odd" and odd["factor"] != entry["factor"]
    assert json.loads((ck / "calibration.json").read_text())["entries"] == [entry]
    assert main(["calibrate", "--data", str(tmp_path / "data"), "--scale", "2", "--samples",
                 "1", "--pipeline", str(ck)]) == 2
    assert "2 or more samples" in capsys.readouterr().err


def test_pipeline_config_file_matches_the_schema():
    from cascade.upscale import USER_STAGES, pipeline_settings

    cfg = pipeline_settings(str(ROOT / "configs" / "pipeline.yaml"))
    # the file also spells out `cascade upscale`'s default stages (LAINR alone)
    assert cfg == PipelineConfig(stages=USER_STAGES) and USER_STAGES == "inr"


def test_cascade_method_records_each_stages_defaults_when_they_differ(folder, tmp_path):
    """A second stage sampled at another aug_level (as sr3_x2_b is): the row's settings
    give one value per stage for that knob, a single value for the knobs they share."""
    import shutil

    from cascade.checkpoint import save_checkpoint
    from cascade.diffusion.unet import ConditionalUNet
    from cascade.evaluation.methods import make_method
    from cascade.train import load_train_config

    two = tmp_path / "two"
    shutil.copytree(folder, two)
    scfg = load_train_config(TINY_SR3, ["conditioning.upsampler=lainr",
                                        f"conditioning.checkpoint={two / 'lainr'}",
                                        "sampling.aug_level=0.03"])
    torch.manual_seed(1)
    save_checkpoint(two / "sr3_x2_b", ConditionalUNet(**TINY_UNET).state_dict(), scfg, "sr3")
    m = make_method("cascade", {"pipeline": str(two), "steps": 2})
    assert m.settings["diffusion"] == ["sr3_x2", "sr3_x2_b"] and m.settings["stages"] == "inr+2"
    assert m.settings["aug_level"] == [0.01, 0.03] and m.settings["steps"] == 2
    assert m.ran() is None  # nothing ran yet
    assert m(torch.rand(1, 3, 8, 8), (32, 32)).shape == (1, 3, 32, 32)
    # x4: no resampling step; the first stage feeds the second: capped at 0.97
    assert m.ran() == "sr3_x2 (T=0.97) -> sr3_x2_b (T=1)"
    # the settings say which stages it may use; the row says which the scale used
    assert m(torch.rand(1, 3, 8, 8), (16, 16)).shape == (1, 3, 16, 16)
    assert m.ran() == "sr3_x2 (T=1)" and m.settings["stages"] == "inr+2"  # no cap at x2
    m(torch.rand(1, 3, 8, 8), (20, 20))
    assert m.ran() == "lainr -> sr3_x2 (T=1)"  # x2.5: LAINR to x1.25, then one x2 stage
    m = make_method("cascade", {"pipeline": str(two), "steps": 2, "aug_level": 0.02})
    assert m.settings["aug_level"] == 0.02 and m.settings["chain_temperature"] == 0.97
    # the chain's cap is a setting too (a sweep axis): recorded, and it changes the samples
    lr = torch.rand(1, 3, 8, 8)
    capped = make_method("cascade", {"pipeline": str(two), "steps": 2, "output": "sample",
                                     "chain_temperature": 0.5})
    free = make_method("cascade", {"pipeline": str(two), "steps": 2, "output": "sample",
                                   "chain_temperature": 1.0})
    assert capped.settings["chain_temperature"] == 0.5
    assert not torch.allclose(capped(lr, (32, 32)), free(lr, (32, 32)))
    assert capped.ran() == "sr3_x2 (T=0.5) -> sr3_x2_b (T=1)"
    assert free.ran() == "sr3_x2 (T=1) -> sr3_x2_b (T=1)"  # a cap above T is no cap
    # where it cannot apply it is not recorded: one stage, or a temperature for all stages
    one = make_method("cascade", {"pipeline": str(two), "stages": "inr+1", "steps": 2,
                                  "chain_temperature": 0.5})
    hot = make_method("cascade", {"pipeline": str(two), "steps": 2, "temperature": 0.8,
                                  "chain_temperature": 0.5})
    assert one.settings["chain_temperature"] is None and hot.settings["chain_temperature"] is None


def test_memory_budget_counts_diffusion_plans_at_their_own_bytes_per_pixel(folder, tmp_path,
                                                                          monkeypatch, capsys):
    """With 20 MB usable, a 0.1-megapixel output fits LAINR's budget (64 B/px) but not a
    diffusion plan's (384 B/px): the cascade refuses it in one line, --stages inr makes it."""
    from cascade import memory
    from cascade.data.io import save_image

    monkeypatch.setattr(memory, "available_bytes",
                        lambda: int((memory.WORKING_BYTES + 20e6) / memory.USABLE_FRACTION))
    assert memory.budget_megapixels() == pytest.approx(20e6 / 64 / 1e6)
    assert memory.budget_megapixels(diffusion=True) == pytest.approx(20e6 / 384 / 1e6)
    assert memory.estimate_bytes((40, 40), (320, 320), diffusion=True) == 384 * 320 * 320
    img = tmp_path / "in.png"
    save_image(torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0)), img)
    args = ["upscale", str(img), "--stages", "auto",
            "--scale", "8", "--pipeline", str(folder), "--steps", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exceeds the memory budget" in err[0]
    assert not (tmp_path / "a").exists()
    assert main([*args, "--stages", "inr", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "in_x8.png").is_file()


# -- review fixes: settings, tiling decision, calibration matching, reruns, name clashes -------

@pytest.mark.parametrize("override, needle", [
    ({"seed": -1}, "seed"), ({"seed": 2**32}, "seed"), ({"std_floor": 0.0}, "std_floor"),
    ({"tiling": {"norm_tiles": 1}}, "norm_tiles"), ({"tiling": {"batch": 0}}, "batch"),
    ({"tiling": {"tiel": 64}}, "unknown tiling option"),
])
def test_settings_that_cannot_work_are_one_line_config_errors(override, needle):
    from cascade.pipeline import merge_settings

    with pytest.raises(ConfigError, match=needle):
        merge_settings(PipelineConfig(), **override)


def test_the_last_smaller_batch_is_tiled_like_the_others():
    """With 2 samples per batch over the untiled limit, sample 2 is tiled whether it is drawn
    in a full batch (N=4) or alone in the last one (N=3): it does not depend on N."""
    lainr, _ = _tiny_lainr()
    pipe = CascadePipeline(lainr, [("sr3_x2", _stage())])
    lr = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(4))
    tiling = {"tile": 24, "overlap": 8, "untiled": 1.5 * 40 * 40 / 1e6}  # 1 row fits, 2 don't
    three = pipe(lr, scale=2, num_samples=3, max_batch=2, tiling=tiling, **FAST)
    four = pipe(lr, scale=2, num_samples=4, max_batch=2, tiling=tiling, **FAST)
    alone = pipe(lr, scale=2, num_samples=3, max_batch=1, tiling=tiling, **FAST)
    torch.testing.assert_close(three.samples, four.samples[:3], atol=1e-5, rtol=0)
    assert float((alone.samples[2] - three.samples[2]).abs().max()) > 1e-4  # untiled differs


def test_calibration_matches_alpha_and_says_what_differs(folder, tmp_path):
    import shutil

    shutil.copytree(folder, tmp_path / "ck")
    pipe = CascadePipeline.from_pretrained(tmp_path / "ck")
    lr = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(5))
    fitted = pipe(lr, scale=2, num_samples=2, **FAST).settings["stage_settings"]
    assert fitted["sr3_x2"]["steps"] == 2 and fitted["sr3_x2"]["temperature"] == 1.0
    base = {"stages": ["sr3_x2"], "scale": 2.0, "num_samples": 2, "std_floor": 0.002,
            "stage_settings": fitted, "weights": pipe.fingerprint()}
    save_calibration(pipe, {**base, "alpha": 0.1, "factor": 2.0})
    # another process adds an entry meanwhile: this pipeline's next save keeps it
    other = CascadePipeline.from_pretrained(tmp_path / "ck")
    save_calibration(other, {**base, "alpha": 0.2, "factor": 1.5})
    save_calibration(pipe, {**base, "alpha": 0.1, "scale": 4.0, "factor": 3.0})
    again = CascadePipeline.from_pretrained(tmp_path / "ck")
    assert sorted(e["factor"] for e in again.calibration) == [1.5, 2.0, 3.0]
    out = again(lr, scale=2, num_samples=2, **FAST)
    assert out.calibration["factor"] == 2.0 and out.calibration["match"]["exact"]
    out = again(lr, scale=2, num_samples=2, alpha=0.2, **FAST)
    assert out.calibration["factor"] == 1.5
    out = again(lr, scale=2, num_samples=3, steps=3, sampler="ddim")
    assert not out.calibration["match"]["exact"]
    assert any("num_samples" in d for d in out.calibration["match"]["differs"])
    assert any("sr3_x2 steps (fitted with 2)" == d for d in out.calibration["match"]["differs"])
    out = again(lr, scale=2, num_samples=2, temperature=0.8, **FAST)
    assert out.calibration["match"]["differs"] == ["sr3_x2 temperature (fitted with 1.0)"]
    retrained = dict(base["weights"], sr3_x2="0" * 64)
    save_calibration(again, {**base, "alpha": 0.1, "factor": 2.0, "weights": retrained})
    out = again(lr, scale=2, num_samples=2, **FAST)
    assert out.calibration["match"]["differs"] == ["stage weights (fitted for other checkpoints)"]
    assert again(lr, scale=2, num_samples=2, alpha=0.05, **FAST).calibration is None


def test_upscale_rerun_into_the_same_folder_replaces_the_samples_and_maps(folder, tmp_path):
    from cascade.data.io import save_image

    img = tmp_path / "photo.png"
    save_image(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1)), img)
    out = tmp_path / "out"
    args = ["upscale", str(img), "--stages", "auto",
            "--scale", "2", "--steps", "2", "--pipeline", str(folder),
            "--out", str(out)]
    assert main([*args, "--samples", "4"]) == 0
    assert len(list((out / "photo_x2_samples").iterdir())) == 4
    assert main([*args, "--samples", "2"]) == 0
    assert sorted(p.name for p in (out / "photo_x2_samples").iterdir()) == [
        "sample_00.png", "sample_01.png"]
    assert main([*args, "--samples", "1"]) == 0  # one sample: no samples folder, no maps
    assert sorted(p.name for p in out.iterdir()) == ["photo_x2.png", "run.json"]


def test_upscale_inputs_with_the_same_name_do_not_overwrite_each_other(folder, tmp_path,
                                                                       capsys):
    from cascade.data.io import save_image

    for sub in ("a", "b"):
        save_image(torch.rand(3, 8, 8), tmp_path / "in" / sub / "photo.png")
    out = tmp_path / "out"
    assert main(["upscale", str(tmp_path / "in"), "--scale", "2", "--stages", "inr",
                 "--pipeline", str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "would overwrite" in err and str(tmp_path / "in" / "a" / "photo.png") in err
    run = json.loads((out / "run.json").read_text())
    assert [Path(r["input"]).parent.name for r in run["outputs"]] == ["a"]
    assert len(run["failures"]) == 1


def test_run_settings_record_every_stages_knobs(folder, tmp_path):
    import shutil

    from cascade.checkpoint import save_checkpoint
    from cascade.diffusion.unet import ConditionalUNet
    from cascade.train import load_train_config

    two = tmp_path / "two"
    shutil.copytree(folder, two)
    scfg = load_train_config(TINY_SR3, ["conditioning.upsampler=lainr",
                                        f"conditioning.checkpoint={two / 'lainr'}",
                                        "sampling.aug_level=0.03"])
    save_checkpoint(two / "sr3_x2_b", ConditionalUNet(**TINY_UNET).state_dict(), scfg, "sr3")
    pipe = CascadePipeline.from_pretrained(two)
    lr = torch.rand(3, 6, 6)
    per = pipe(lr, scale=4, steps=2).settings["stage_settings"]
    assert per["sr3_x2"]["aug_level"] == 0.01 and per["sr3_x2_b"]["aug_level"] == 0.03
    assert per["sr3_x2_b"]["steps"] == 2
    assert per["sr3_x2"]["temperature"] == 0.97  # the chain's default cap
    # the stage that feeds another samples at chain_temperature, the last at its own
    per = pipe(lr, scale=4, steps=2, chain_temperature=0.9).settings["stage_settings"]
    assert per["sr3_x2"]["temperature"] == 0.9 and per["sr3_x2_b"]["temperature"] == 1.0
    per = pipe(lr, scale=4, steps=2, temperature=0.7).settings["stage_settings"]
    assert per["sr3_x2"]["temperature"] == per["sr3_x2_b"]["temperature"] == 0.7
    per = pipe(lr, scale=4, steps=2, chain_temperature=1.0).settings["stage_settings"]
    assert per["sr3_x2"]["temperature"] == 1.0  # a cap above the stage's own changes nothing
    per = pipe(lr, scale=2, steps=2).settings["stage_settings"]  # one stage: not a chain
    assert per == {"sr3_x2": {**per["sr3_x2"], "temperature": 1.0}}
    a = pipe(lr, scale=4, steps=2, chain_temperature=0.5).first
    b = pipe(lr, scale=4, steps=2, chain_temperature=1.0).first
    assert float((a - b).abs().max()) > 1e-4  # it reaches the sampler


def test_uncertainty_report_script_on_an_upscale_run(folder, tmp_path, capsys, monkeypatch):
    import runpy
    import sys

    from cascade.data.degrade import degrade
    from cascade.data.io import save_image

    hr = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    save_image(hr, tmp_path / "truth" / "photo.png")
    save_image(degrade(hr, 2)[1], tmp_path / "in" / "photo.png")
    run = tmp_path / "run"
    assert main(["upscale", str(tmp_path / "in" / "photo.png"), "--stages", "auto",
                 "--scale", "2", "--samples",
                 "3", "--steps", "2", "--pipeline", str(folder), "--out", str(run)]) == 0
    capsys.readouterr()
    script = str(ROOT / "scripts" / "uncertainty_report.py")
    monkeypatch.setattr(sys, "argv", [script, str(run), "--truth", str(tmp_path / "truth"),
                                      "--pipeline", str(folder), "--out", str(tmp_path / "rep"),
                                      "--crop", "16"])
    runpy.run_path(script, run_name="__main__")
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(rows) == 1 and rows[0]["N"] == 3 and rows[0]["interval"] == "mean +- std"
    assert -1 <= rows[0]["spearman"] <= 1 and 0 <= rows[0]["coverage"] <= 1
    assert (tmp_path / "rep" / "photo_x2_panel.png").is_file()
    monkeypatch.setattr(sys, "argv", [script, str(run), "--truth", str(tmp_path / "in"),
                                      "--pipeline", str(folder)])
    with pytest.raises(SystemExit, match="not the original"):
        runpy.run_path(script, run_name="__main__")


def test_a_failed_save_pretrained_keeps_the_old_folder_and_leaves_no_temp(folder, tmp_path,
                                                                         monkeypatch):
    pipe = CascadePipeline.from_pretrained(folder)
    saved = pipe.save_pretrained(tmp_path / "pipe")
    before = sorted(p.name for p in saved.iterdir())

    def broken(self, tmp):
        (tmp / "half").write_text("x")
        raise OSError("disk full")

    monkeypatch.setattr(CascadePipeline, "_write_folder", broken)
    with pytest.raises(OSError, match="disk full"):
        pipe.save_pretrained(saved)
    assert sorted(p.name for p in saved.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    monkeypatch.undo()
    saved.rename(tmp_path / ".pipe.old")  # a save cut off between its two renames
    pipe.save_pretrained(saved)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]
    assert CascadePipeline.from_pretrained(saved).diffusion[0].name == "sr3_x2"


def test_update_config_changes_a_stage_default_and_keeps_the_weights(folder, tmp_path):
    import shutil

    from cascade.checkpoint import load_checkpoint, update_config
    from cascade.diffusion.pretrained import load_sr3

    shutil.copytree(folder, tmp_path / "ck")
    stage_dir = tmp_path / "ck" / "sr3_x2"
    before = load_checkpoint(stage_dir).meta
    update_config(stage_dir, ["sampling.temperature=0.8", "sampling.steps=3"])
    after = load_checkpoint(stage_dir)  # checksums verified
    assert after.meta["sha256"] == before["sha256"] and after.meta["step"] == before["step"]
    assert after.meta["config_sha256"] != before["config_sha256"]
    k = load_sr3(stage_dir).knobs()
    assert k.temperature == 0.8 and k.steps == 3
    with pytest.raises(ConfigError, match="sampling.temperature=0.8"):
        update_config(stage_dir, ["sampling.temprature=0.8"])
    assert sorted(p.name for p in stage_dir.parent.iterdir()) == ["lainr", "sr3_x2"]


def test_the_python_api_refuses_an_output_over_the_memory_budget(folder, monkeypatch):
    from cascade import memory
    from cascade.errors import ScaleError

    pipe = CascadePipeline.from_pretrained(folder)
    monkeypatch.setattr(memory, "available_bytes",
                        lambda: int((memory.WORKING_BYTES + 1e6) / memory.USABLE_FRACTION))
    with pytest.raises(ScaleError, match="exceeds the memory budget"):
        pipe(torch.rand(3, 40, 40), scale=8, steps=1)


def test_max_megapixels_overrides_the_memory_budget_through_the_whole_run(folder, tmp_path,
                                                                          monkeypatch):
    """--max-megapixels is the budget, also inside the pipeline: with almost no memory
    reported free, a run that the flag allows is made, one that it does not is refused."""
    from cascade import memory
    from cascade.data.io import save_image

    monkeypatch.setattr(memory, "available_bytes", lambda: memory.WORKING_BYTES)
    img = tmp_path / "in.png"
    save_image(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)), img)
    args = ["upscale", str(img), "--stages", "auto",
            "--scale", "2", "--pipeline", str(folder), "--steps", "1"]
    assert main([*args, "--max-megapixels", "1", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--max-megapixels", "0.0001", "--out", str(tmp_path / "b")]) == 2


def test_upscale_writes_the_std_and_interval_maps_as_pixel_aligned_float_data(folder, tmp_path):
    """NAME_std.tiff is CascadeOutput.std averaged over R, G, B (what NAME_std.png draws),
    NAME_interval.tiff the quantile width of the written samples; both H x W float32."""
    from cascade.data.io import load_image, load_map, save_image
    from cascade.upscale import quantile_width

    img = tmp_path / "photo.png"
    save_image(torch.rand(3, 10, 13, generator=torch.Generator().manual_seed(3)), img)
    out = tmp_path / "out"
    assert main(["upscale", str(img), "--stages", "auto",
                 "--scale", "2", "--samples", "3", "--steps", "2",
                 "--pipeline", str(folder), "--out", str(out)]) == 0
    std = load_map(out / "photo_x2_std.tiff")
    assert std.dtype == torch.float32 and tuple(std.shape) == (20, 26)
    expected = CascadePipeline.from_pretrained(folder)(load_image(img), scale=2, num_samples=3,
                                                       steps=2)
    torch.testing.assert_close(std, expected.std.mean(0), atol=1e-6, rtol=0)
    from cascade.data.io import to_uint8

    samples = [torch.from_numpy(to_uint8(load_image(p)))
               for p in sorted((out / "photo_x2_samples").iterdir())]
    torch.testing.assert_close(load_map(out / "photo_x2_interval.tiff"),
                               quantile_width(samples, 0.1))
    rec = json.loads((out / "run.json").read_text())["outputs"][0]
    assert rec["std_data"]["file"] == str(out / "photo_x2_std.tiff")
    assert "mean of R, G, B" in rec["std_data"]["units"]
    assert rec["interval"]["data"]["format"].startswith("float32 TIFF")
    # a LAINR-only rerun into the same folder removes the maps it does not make
    assert main(["upscale", str(img), "--scale", "2", "--stages", "inr", "--pipeline",
                 str(folder), "--out", str(out)]) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(("photo_x2_std", "photo_x2_int"))]


def test_uncertainty_panel_titles_clear_the_row_above():
    """The panel's second-row titles sit below the first row's crops (a 7-inch figure drew
    them over the crops' lower edge)."""
    import runpy

    import matplotlib.pyplot as plt

    mod = runpy.run_path(str(ROOT / "scripts" / "uncertainty_report.py"))
    g = torch.Generator().manual_seed(0)
    names = ["ground truth", "bicubic", "LAINR", "mean of 4", "sample 0", "sample 1"]
    images = {k: torch.rand(3, 256, 256, generator=g) for k in names}
    images.update({k: torch.rand(256, 256, generator=g) for k in ("std", "|error| of mean")})
    row = dict(image="photo", scale=4, plan="64x64 -> sr3_x2 x2 -> 128x128; note",
               psnr_bicubic=24.0, psnr_lainr=25.0, psnr_mean=25.5, psnr_sample0=23.0,
               spearman=0.5)
    fig = mod["panel_figure"](images, row, 128)
    try:
        fig.canvas.draw()  # applies the crops' equal aspect: the axes shrink to the images
        renderer = fig.canvas.get_renderer()
        axes = fig.axes
        assert [a.get_title() for a in axes] == list(images)
        top, bottom = axes[:4], axes[4:]
        lowest_image = min(a.get_window_extent(renderer).y0 for a in top)
        for a in bottom:
            assert a.title.get_window_extent(renderer).y1 <= lowest_image, a.get_title()
        suptitle = fig._suptitle.get_window_extent(renderer)
        for a in top:
            assert a.title.get_window_extent(renderer).y1 <= suptitle.y0, a.get_title()
    finally:
        plt.close(fig)
