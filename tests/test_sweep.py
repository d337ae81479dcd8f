"""Sweeps: grids expand to variants, a rerun skips finished rows (an interrupted sweep loses
nothing), a metric added later is computed from the cached outputs without the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cascade.config import load_config
from cascade.data.datasets import resolve_dataset
from cascade.data.io import save_image
from cascade.errors import ConfigError
from cascade.evaluation.methods import METHODS, Method
from cascade.evaluation.run import EvalConfig, evaluate
from cascade.evaluation.store import SET_ROW, ResultsStore
from cascade.evaluation.sweep import expand, label, variant_dir
from cascade.metrics import perceptual

CALLS: list[dict] = []  # one entry per call of the fake method: its settings


class Blend(Method):
    """A fake method with knobs: bicubic blended towards the LR mean by ``w``; ``fail_at``
    raises KeyboardInterrupt on that call (a user pressing Ctrl-C mid-sweep)."""

    name = "blend_sweep_test"

    def __init__(self, w: float = 0.0, steps: int = 1, fail_at: int = -1) -> None:
        super().__init__(w=w, steps=steps)
        self.fail_at = fail_at

    @property
    def num_params(self) -> int:
        return 7

    def __call__(self, lr, size):
        from cascade.data.degrade import upscale_bicubic

        CALLS.append(dict(self.settings))
        if len(CALLS) == self.fail_at:
            raise KeyboardInterrupt
        self.last = f"bicubic to {size[1]}x{size[0]}"
        up = upscale_bicubic(lr, size).clamp(0, 1)
        return (1 - self.settings["w"]) * up + self.settings["w"] * up.mean()

    def ran(self):
        return getattr(self, "last", None)


if Blend.name not in METHODS:
    METHODS.register(Blend.name)(Blend)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    ds = resolve_dataset("builtin")
    for i, name in enumerate(["chelsea", "coffee"]):
        save_image(ds[i]["image"][:, 100:164, 120:184], root / f"{name}.png")
    return root


@pytest.fixture(autouse=True)
def fresh_calls():
    CALLS.clear()


def _cfg(photos, out, *overrides, sweep=True):
    """bicubic and the fake method at w = 0 and 0.5 (``sweep=False``: bicubic alone)."""
    methods = [f"methods=[bicubic,{Blend.name}]",
               f"grid={{{Blend.name}: {{w: [0.0, 0.5]}}}}"] if sweep else ["methods=[bicubic]"]
    return load_config(EvalConfig, None, [f"data=[{photos}]", "scales=[2]", f"out={out}",
                                          *methods, *overrides])


def test_grid_axes_points_and_errors():
    v = expand(["bicubic", "sr3"], {"sr3": {"checkpoint": "c", "steps": 5}},
               {"sr3": {"steps": [10, 50], "projection": [0, 1]}})
    assert v[0] == ("bicubic", {})
    assert [(s["steps"], s["projection"]) for _, s in v[1:]] == [(10, 0), (10, 1), (50, 0), (50, 1)]
    assert all(s["checkpoint"] == "c" for _, s in v[1:])  # fixed settings kept, steps overridden
    points = expand(["sr3"], {}, {"sr3": [{"sampler": "ddim"}, {"sampler": "ddpm", "steps": 200}]})
    assert [s for _, s in points] == [{"sampler": "ddim"}, {"sampler": "ddpm", "steps": 200}]
    assert expand(["sr3"], {}, {"sr3": {"steps": 20}}) == [("sr3", {"steps": 20})]
    with pytest.raises(ConfigError, match="not in methods"):
        expand(["bicubic"], {}, {"sr3": {"steps": [1]}})
    with pytest.raises(ConfigError, match="lists of values"):
        expand(["sr3"], {}, {"sr3": 5})
    with pytest.raises(ConfigError, match="at least one value"):
        expand(["sr3"], {}, {"sr3": {"steps": []}})


def test_labels_and_cache_folders_are_readable_and_distinct():
    assert label("lainr", {"checkpoint": "/x/checkpoints/lainr"}) == "lainr(checkpoint=lainr)"
    assert label("sr3", {"steps": 20, "w": 0.5}, keys=["w"]) == "sr3(w=0.5)"
    assert variant_dir("bicubic", {}) == Path("bicubic")
    a = variant_dir("lainr", {"checkpoint": "/a/lainr"})
    b = variant_dir("lainr", {"checkpoint": "/b/lainr"})
    assert a != b and a.parent == Path("lainr") and a.name.startswith("checkpoint=lainr-")


def test_the_sweep_config_file_loads():
    cfg = load_config(EvalConfig, Path(__file__).resolve().parents[1] / "configs" / "eval"
                      / "tradeoff.yaml")
    from cascade.config import to_container

    variants = expand(list(cfg.methods), to_container(cfg.settings), to_container(cfg.grid))
    assert len(variants) > len(cfg.methods) and "fid" in cfg.metrics


@pytest.mark.parametrize("name", sorted(p.name for p in (
    Path(__file__).resolve().parents[1] / "configs" / "eval").glob("*.yaml")))
def test_every_shipped_evaluation_config_loads_and_expands(name):
    from cascade.config import to_container

    cfg = load_config(EvalConfig, Path(__file__).resolve().parents[1] / "configs" / "eval" / name)
    variants = expand(list(cfg.methods), to_container(cfg.settings), to_container(cfg.grid))
    assert {m for m, _ in variants} == set(cfg.methods)
    if name == "cascade_x4.yaml":  # three cascade variants: one stage, two, the first twice
        stages = [s["stages"] for m, s in variants if m == "cascade"]
        assert stages == ["inr+1", "inr+2", "inr+2"]


def test_a_sweep_runs_every_variant_once_and_resumes(photos, tmp_path):
    out = tmp_path / "ev"
    with pytest.raises(KeyboardInterrupt):  # stopped on the 3rd image the fake method sees
        evaluate(_cfg(photos, out, f"settings={{{Blend.name}: {{fail_at: 3}}}}"))
    finished = ResultsStore(out / "results.jsonl").rows()
    assert len(finished) == 2 + 2  # bicubic x 2 images, blend(w=0) x 2 images
    CALLS.clear()
    rows = evaluate(_cfg(photos, out))  # same sweep without the interruption
    # fail_at is not a setting of the rows, so the finished ones are skipped: 2 calls remain.
    assert [c["w"] for c in CALLS] == [0.5, 0.5]
    assert len(rows) == 6 and len(ResultsStore(out / "results.jsonl").rows()) == 6
    assert {json.dumps(r["settings"], sort_keys=True) for r in rows} == {
        "{}", '{"steps": 1, "w": 0.0}', '{"steps": 1, "w": 0.5}'}
    blended = [r for r in rows if r["method"] == Blend.name]
    assert all(r["params"] == 7 and r["seconds"] >= 0 for r in blended)
    # what the method says it ran is in its rows (the 64 px photos are the HR), not bicubic's
    assert {r["ran"] for r in blended} == {"bicubic to 64x64"}
    assert all("ran" not in r for r in rows if r["method"] == "bicubic")
    w0 = {r["image"]: r["psnr"] for r in blended if r["settings"]["w"] == 0.0}
    bic = {r["image"]: r["psnr"] for r in rows if r["method"] == "bicubic"}
    assert w0 == bic  # w=0 is bicubic
    CALLS.clear()
    evaluate(_cfg(photos, out))  # nothing left to do
    assert CALLS == [] and len(ResultsStore(out / "results.jsonl").rows()) == 6


def test_a_metric_added_later_reads_the_cached_outputs(photos, tmp_path):
    out = tmp_path / "ev"
    evaluate(_cfg(photos, out, "metrics=[psnr]", "save_images=true"))
    first = {(r["method"], r["settings"].get("w"), r["image"]): r
             for r in ResultsStore(out / "results.jsonl").merged()}
    assert len(CALLS) == 4 and len(list((out / "images").rglob("*.png"))) == 6
    CALLS.clear()
    rows = evaluate(_cfg(photos, out, "metrics=[psnr,ssim]", "save_images=true"))
    assert CALLS == []  # no model ran
    assert len(ResultsStore(out / "results.jsonl").rows()) == 12  # 6 rows + 6 with ssim only
    for r in rows:
        old = first[(r["method"], r["settings"].get("w"), r["image"])]
        assert 0 < r["ssim"] <= 1 and r["psnr"] == old["psnr"] and r["seconds"] == old["seconds"]


@pytest.fixture
def tiny_features(monkeypatch):
    """FID/KID through a small registered extractor (no InceptionV3 weights here)."""
    from test_perceptual import TINY_FE

    real = perceptual.features
    monkeypatch.setattr(perceptual, "features",
                        lambda images, **kw: real(images, **{**kw, "extractor": TINY_FE}))
    monkeypatch.setattr(perceptual, "inception_file", lambda weights=None: Path("constructed"))


def test_set_metrics_get_one_row_per_group_with_the_patch_count(photos, tmp_path, tiny_features):
    out = tmp_path / "ev"
    rows = evaluate(_cfg(photos, out, "metrics=[psnr,fid,kid]", "fid_patch=16", sweep=False))
    sets = [r for r in rows if r["image"] == SET_ROW]
    assert len(sets) == 1
    s = sets[0]
    assert s["patches"] == 2 * 16 and s["kid_subset"] == 32 and s["patch"] == 16  # 2 x 4 x 4
    assert s["fid"] > 0 and s["kid"] is not None and s["kid_std"] >= 0
    assert len(list((out / "images").rglob("*.png"))) == 2  # fid/kid cache the outputs
    evaluate(_cfg(photos, out, "metrics=[psnr,fid,kid]", "fid_patch=16", sweep=False))
    assert len(ResultsStore(out / "results.jsonl").rows()) == 3  # resumed: nothing added


def test_missing_backbones_record_null_once_and_fill_in_later(photos, tmp_path, monkeypatch,
                                                              capsys):
    def no_network(url, dest):
        raise OSError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(perceptual, "_fetch", no_network)
    monkeypatch.setattr(perceptual, "_reported", set())
    monkeypatch.setattr(perceptual, "_fetch_failed", set())
    out = tmp_path / "ev"
    cfg = _cfg(photos, out, "metrics=[psnr,lpips,fid,kid]", "save_images=true", sweep=False)
    rows = evaluate(cfg)
    assert all(r["lpips"] is None for r in rows if r["image"] != SET_ROW)
    assert [r["fid"] for r in rows if r["image"] == SET_ROW] == [None]
    err = capsys.readouterr().err
    assert err.count("alexnet-owt-7be5be79.pth are missing") == 1
    assert err.count("weights-inception-2015-12-05-6726825d.pth are missing") == 1
    n = len(ResultsStore(out / "results.jsonl").rows())
    evaluate(cfg)  # still missing: nothing to redo
    assert len(ResultsStore(out / "results.jsonl").rows()) == n

    # The weights arrive (a constructed AlexNet): the nulls are filled from the cached images.
    import torchvision

    dest = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.alexnet().state_dict(), dest)
    CALLS.clear()
    rows = evaluate(cfg)
    assert all(r["lpips"] > 0 for r in rows if r["image"] != SET_ROW)


def test_tables_name_a_lone_variant_by_its_label_keys_and_variants_by_what_differs():
    import json

    from cascade.evaluation.run import format_table
    from cascade.evaluation.sweep import variant_labels

    cas = {"pipeline": "checkpoints", "stages": "inr+2", "sampler": "dpm", "steps": 10,
           "aug_level": [0.01, 0.03], "num_samples": 4, "seed": 0}
    rows = [{"method": "cascade", "settings": json.dumps(cas), "dataset": "d", "scale": 4.0,
             "images": 1, "psnr": 25.0},
            {"method": "lainr", "settings": json.dumps({"checkpoint": "x/lainr"}),
             "dataset": "d", "scale": 4.0, "images": 1, "psnr": 27.0}]
    assert variant_labels(rows) == ["cascade(stages=inr+2,num_samples=4,steps=10)",
                                    "lainr(checkpoint=lainr)"]
    assert "cascade(stages=inr+2,num_samples=4,steps=10)" in format_table(rows, ["psnr"])
    other = dict(rows[0], settings=json.dumps({**cas, "aug_level": 0.05}))
    assert variant_labels([rows[0], other]) == ["cascade(aug_level=[0.01, 0.03])",
                                                "cascade(aug_level=0.05)"]
    assert variant_labels([{"method": "unregistered", "settings": {"a": 1}}]) == [
        "unregistered(a=1)"]


def test_crop_evaluates_centre_crops_under_their_own_set_name(photos, tmp_path):
    """``crop`` cuts the centre of each HR image before degrading it; the rows name the set
    ``NAME@CROP`` so they never mix with (or resume from) whole-image rows."""
    from cascade.data.datasets import centre_crop
    from cascade.data.degrade import degrade, upscale_bicubic
    from cascade.metrics import METRICS

    out = tmp_path / "e"
    whole = evaluate(_cfg(photos, out, "metrics=[psnr]", sweep=False))
    rows = evaluate(_cfg(photos, out, "metrics=[psnr]", "crop=32", sweep=False))
    cropped = [r for r in rows if str(r["dataset"]).endswith("@32") and r["image"] != SET_ROW]
    assert len(whole) == 2 and len(cropped) == 2 and len(rows) == 4
    img = resolve_dataset(str(photos))[0]["image"]
    hr, lr = degrade(centre_crop(img, 32)[None], 2.0)
    want = METRICS.get("psnr")(upscale_bicubic(lr, (32, 32)).clamp(0, 1), hr, lr=lr, scale=2.0,
                               y_channel=True)
    got = [r["psnr"] for r in cropped if r["image"] == resolve_dataset(str(photos)).names[0]]
    assert got == pytest.approx([float(want[0])], abs=1e-4)
    with pytest.raises(ConfigError, match="crop=-1"):
        evaluate(_cfg(photos, out, "crop=-1", sweep=False))


def test_centre_crop_takes_the_middle_and_caps_at_the_image():
    from cascade.data.datasets import centre_crop

    x = torch.arange(6 * 8.0).reshape(1, 6, 8)
    torch.testing.assert_close(centre_crop(x, 4), x[:, 1:5, 2:6])
    assert centre_crop(x, 100).shape == (1, 6, 8) and centre_crop(x, 0) is x


def test_differing_settings_and_digest_are_shared_by_tables_folders_and_gate():
    from cascade.evaluation.sweep import differing_settings, settings_digest, variant_labels

    a, b = {"steps": 10, "t": None, "x": 1}, {"steps": 10, "x": 2, "new": 0}
    # a null setting differs from a missing one; first-seen order; skip
    assert differing_settings([a, b]) == ["t", "x", "new"]
    assert differing_settings([a, b], skip=("x",)) == ["t", "new"]
    assert differing_settings([a, dict(a)]) == []
    # the cache folder ends with the digest of its settings
    s = {"checkpoint": "/a/lainr", "chunk": 4}
    assert variant_dir("lainr", s).name.endswith("-" + settings_digest(s))
    assert settings_digest(s) == settings_digest(dict(reversed(list(s.items()))))  # order-free
    # pinned: a new formula would rename every image-cache folder and orphan the cached outputs
    assert settings_digest(s) == "eee056"
    # two variants that differ only by a null vs a missing setting get two labels
    rows = [{"method": "sr3", "settings": {"steps": 10, "temperature": None}},
            {"method": "sr3", "settings": {"steps": 10}}]
    assert variant_labels(rows) == ["sr3(temperature=None)", "sr3"]
