"""cascade app: its functions called directly (no browser); tiny checkpoints, tiny images."""

import json
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from cascade.app.core import (
    Cancelled,
    Engine,
    builtin_input,
    input_summary,
    overlay,
    parse_request,
)
from cascade.cli import main
from cascade.data.io import load_image, load_map, save_image
from cascade.errors import CascadeError, ConfigError, ImageError, ScaleError


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "in" / "photo.png"
    save_image(torch.rand(3, 12, 14, generator=torch.Generator().manual_seed(0)), path)
    return path


@pytest.fixture
def engine(folder, tmp_path):  # noqa: F811
    from cascade.pipeline import CascadePipeline

    return Engine(CascadePipeline.from_pretrained(folder), tmp_path / "app")


def test_settings_are_checked_with_the_clis_one_line_messages(photo):
    req = parse_request(photo, 2.5, "", 3, 0, "inr+1", 7)
    assert (req.scale, req.size) == (2.5, None)
    assert (req.cfg.num_samples, req.cfg.steps, req.cfg.seed, req.cfg.stages) == (3, None, 7,
                                                                                 "inr+1")
    assert parse_request(photo, 2, " 40x30 ").size == (30, 40)  # a size wins over the scale
    bad = [((photo, 0.5), ScaleError, "scale 0.5 is impossible"),
           ((photo, "abc"), ScaleError, "not a number"),
           ((photo, 2, "40"), ScaleError, "WIDTHxHEIGHT"),
           ((photo, 2, "", 0), ConfigError, "--samples 0 is impossible"),
           ((photo, 2, "", 2.5), ConfigError, "--samples 2.5"),
           ((photo, 2, "", 1, 0, "inr+9"), ConfigError, "--stages 'inr+9' is unknown"),
           ((None, 2), ImageError, "no image")]
    for args, kind, needle in bad:
        with pytest.raises(kind) as e:
            parse_request(*args)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_lainr_only_job_writes_the_upscale_files_and_its_comparisons(engine, photo):
    res = engine.run(parse_request(photo, 2, "", 2, 0, "inr"))
    assert tuple(load_image(res.output).shape) == (3, 24, 28) and res.out_size == (24, 28)
    assert res.output.name == "photo_x2.png" and res.folder.parent == engine.out_root
    assert tuple(load_image(res.bicubic).shape) == (3, 24, 28)
    assert res.lainr == res.output and res.samples == [res.output]
    assert res.maps == {}  # deterministic: no std or interval map
    run = json.loads(res.run_json.read_text())
    assert run["stages"] == "inr" and run["outputs"][0]["out_size"] == [24, 28]
    assert "lainr" in res.plan and "bicubic (comparison)" in res.timings
    names = set(zipfile.ZipFile(res.archive).namelist())
    assert {"photo_x2.png", "photo_x2_bicubic.png", "run.json"} <= names
    assert "14x12 -> 28x24" in res.summary()


def test_diffusion_job_shows_samples_and_the_maps_as_data(engine, photo):
    seen = []
    res = engine.run(parse_request(photo, None, "28x24", 3, 2, "inr+1", 1),
                     report=lambda f, text: seen.append((f, text)))
    assert res.output.name == "photo_28x24.png"
    assert [p.name for p in res.samples] == ["sample_00.png", "sample_01.png", "sample_02.png"]
    assert res.lainr.name == "photo_28x24_lainr.png" and res.lainr.is_file()
    for kind in ("std", "interval"):
        assert tuple(load_map(res.maps[kind]).shape) == (24, 28)  # pixel-aligned with the output
    # progress: fractions never go back and end at 1
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    texts = [text for _, text in seen]
    assert "samples 1-3 of 3: sr3_x2 dpm 2 steps 1/2" in texts  # drawn in one batch
    assert "2 of 3 sample(s) done" in texts
    rec = json.loads(res.run_json.read_text())["outputs"][0]
    assert rec["std_data"]["file"].endswith("photo_28x24_std.tiff")
    assert "0-1 scale" in rec["std_data"]["units"]
    assert rec["interval"]["data"]["file"].endswith("photo_28x24_interval.tiff")


@pytest.mark.parametrize("content, needle", [(b"", "empty (0 bytes)"),
                                             (b"hello, not a picture", "not an image file")])
def test_bad_uploads_give_one_line_and_the_engine_keeps_working(engine, photo, tmp_path,
                                                                 content, needle):
    bad = tmp_path / "upload.png"
    bad.write_bytes(content)
    with pytest.raises(ImageError) as e:
        engine.run(parse_request(bad, 2, "", 1, 0, "inr"))
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert input_summary(bad) == (None, f"error: {str(e.value).replace(str(bad), bad.name)}")
    assert str(bad.parent) not in input_summary(bad)[1]  # the name, not the server's copy
    assert not engine.busy and not list(engine.out_root.glob("0*"))  # nothing left behind
    assert engine.run(parse_request(photo, 2, "", 1, 0, "inr")).output.is_file()


def test_work_over_the_memory_budget_is_refused_as_the_cli_refuses_it(folder, photo, tmp_path,  # noqa: F811
                                                                      capsys):
    from cascade.pipeline import CascadePipeline

    engine = Engine(CascadePipeline.from_pretrained(folder), tmp_path / "app",
                    max_megapixels=0.001)
    with pytest.raises(ScaleError) as e:
        engine.run(parse_request(photo, 4, "", 1, 0, "inr"))
    assert "exceeds the memory budget" in str(e.value)
    assert main(["upscale", str(photo), "--scale", "4", "--stages", "inr", "--pipeline",
                 str(folder), "--max-megapixels", "0.001", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"cascade upscale: error: {e.value}"
    with pytest.raises(ScaleError, match="max-megapixels"):
        Engine(engine.pipe, tmp_path / "x", max_megapixels=-1)


def test_a_job_stops_at_the_next_step_and_leaves_nothing(engine, photo):
    def report(fraction, text):
        assert engine.cancel(owner="me") and not engine.cancel(owner="someone else")

    with pytest.raises(Cancelled, match="stopped after 0 of 4"):
        engine.run(parse_request(photo, 2, "", 4, 2, "inr+1"), report=report, owner="me")
    assert not engine.busy and not engine.cancel()
    assert not list(engine.out_root.glob("0*"))
    assert len(engine.run(parse_request(photo, 2, "", 2, 2, "inr+1")).samples) == 2


def test_one_job_at_a_time(engine, photo):
    started, release, order = threading.Event(), threading.Event(), []

    def slow(fraction, text):
        started.set()
        release.wait(30)

    first = threading.Thread(target=lambda: order.append(
        engine.run(parse_request(photo, 2, "", 2, 2, "inr+1"), report=slow)))
    first.start()
    assert started.wait(30) and engine.busy
    second = threading.Thread(target=lambda: order.append(
        engine.run(parse_request(photo, 2, "", 1, 0, "inr"))))
    second.start()
    second.join(1.0)
    assert second.is_alive() and not order  # waits for the first job
    release.set()
    first.join(60), second.join(60)
    assert [r.plan.count("sr3_x2") for r in order] == [1, 0]  # in order, one after the other


def test_overlay_blends_the_map_over_the_image_with_the_opacity():
    img = torch.full((3, 4, 5), 0.5)
    value = torch.zeros(4, 5)
    value[0, 0] = 1.0
    plain = overlay(img, value, 0.0)
    assert plain.shape == (4, 5, 3) and (plain == 128).all()
    full = overlay(img, value, 1.0, vmax=1.0)
    assert tuple(full[0, 0]) != tuple(full[1, 1])  # the bright pixel stands out
    half = overlay(img, value, 0.5, vmax=1.0)
    assert abs(int(half[0, 0, 0]) - (128 + int(full[0, 0, 0])) / 2) <= 1
    with pytest.raises(ConfigError, match="pixel-aligned"):
        overlay(img, torch.zeros(3, 3), 0.5)
    with pytest.raises(ConfigError, match="opacity"):
        overlay(img, value, 1.5)


def test_input_summary_and_a_built_in_photo(tmp_path, photo):
    preview, text = input_summary(photo)
    assert preview.shape == (12, 14, 3) and text == "photo.png: 14x12 input"
    path = builtin_input("chelsea", tmp_path)
    assert tuple(load_image(path).shape) == (3, 64, 64)
    with pytest.raises(ImageError, match="no built-in photo"):
        builtin_input("nope", tmp_path)


def test_cascade_app_without_gradio_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["app", "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[app]'" in err[0]


def test_the_page_uses_system_fonts_and_no_share_button(engine):
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    from cascade.app import ui

    theme = ui.theme()  # system fonts only: none served by a font host or from gradio's files
    assert all(isinstance(f, str) for f in [*theme.font, *theme.font_mono])
    page = ui.build(engine)
    config = json.dumps(page.get_config_file(), default=str)
    assert "share" not in json.dumps([c.get("props", {}).get("buttons") for c in
                                      page.get_config_file()["components"]], default=str)
    assert "fonts.googleapis" not in config
    with pytest.raises(CascadeError):
        parse_request(None)
