"""The leaderboard: ranking and best marks per dataset x scale, n/a for unmeasured values, the
Pareto front, and ``cascade leaderboard`` writing md/csv/html/png from an evaluate folder."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from cascade.cli import main
from cascade.data.io import load_image
from cascade.evaluation.leaderboard import cell, csv_text, markdown, sections
from cascade.evaluation.methods import METHODS, Method
from cascade.evaluation.pdplot import pareto_front, perception_key
from cascade.evaluation.store import SET_ROW, ResultsStore
from test_sweep import photos  # noqa: F401  (the shared fixture: two 64x64 photo crops)


def _row(method, image, psnr, lpips=None, hf=0.5, settings=None, dataset="set5", scale=4.0):
    return {"method": method, "settings": settings or {}, "dataset": dataset, "scale": scale,
            "image": image, "psnr": psnr, "ssim": 0.8, "lpips": lpips, "hf_ratio": hf,
            "seconds": 0.1, "params": 1234567}


ROWS = [
    _row("bicubic", "a", 28.0, hf=0.05), _row("bicubic", "b", 30.0, hf=0.05),
    _row("sr3", "a", 27.0, 0.10, hf=0.9, settings={"steps": 10, "ckpt": "c"}),
    _row("sr3", "b", 27.0, 0.12, hf=0.9, settings={"steps": 10, "ckpt": "c"}),
    _row("sr3", "a", 29.5, 0.20, hf=1.3, settings={"steps": 50, "ckpt": "c"}),
    _row("sr3", "b", 29.5, 0.20, hf=1.3, settings={"steps": 50, "ckpt": "c"}),
    _row("bicubic", "a", 25.0, dataset="set14"),
    {"method": "sr3", "settings": {"steps": 10, "ckpt": "c"}, "dataset": "set5", "scale": 4.0,
     "image": SET_ROW, "fid": 12.5, "kid": 0.01, "kid_std": 0.002, "patches": 40,
     "kid_subset": 40, "patch": 64},
]


def test_sections_rank_mark_best_and_label_varying_settings():
    secs = sections(ROWS)
    assert [s.title for s in secs] == ["set5 x4", "set14 x4"]  # as evaluated
    s = secs[0]
    assert [e["label"] for e in s.entries] == ["sr3(steps=50)", "bicubic", "sr3(steps=10)"]
    assert [e["psnr"] for e in s.entries] == [29.5, 29.0, 27.0]
    assert s.best["psnr"] == {0} and s.best["lpips"] == {2}  # lower LPIPS is better
    assert s.best["hf_ratio"] == {2}  # 0.9 is closest to 1 (|log 0.9| < |log 1.3|)
    assert s.best["ssim"] == {0, 1, 2}  # ties are all marked
    assert s.best["params"] == set()  # not ranked
    assert s.entries[1]["images"] == 2 and s.entries[2]["fid"] == 12.5
    by_lpips = sections(ROWS, sort="lpips")[0]
    assert [e["label"] for e in by_lpips.entries][-1] == "bicubic"  # n/a sorts last


def test_cells_say_n_a_and_the_samples_behind_fid_kid():
    s = sections(ROWS)[0]
    bic, sr3_10 = s.entries[1], s.entries[2]
    assert cell(bic, "lpips") == "n/a" and cell(bic, "fid") == "n/a"
    assert cell(sr3_10, "fid") == "12.50 (n=40)"
    assert cell(sr3_10, "kid") == "0.0100 ±0.0020 (n=40, k=40)"
    assert cell(bic, "params") == "1.23M"


def test_markdown_and_csv():
    secs = sections(ROWS)
    md = markdown(secs, "x/results.jsonl", "psnr")
    assert "## set5 x4 (2 images)" in md and "| 1 | sr3(steps=50) | **29.50** |" in md
    assert "| LPIPS ↓ |" in md and "n/a" in md
    rows = list(csv.DictReader(io.StringIO(csv_text(secs))))
    assert [(r["dataset"], r["rank"]) for r in rows] == [
        ("set5", "1"), ("set5", "2"), ("set5", "3"), ("set14", "1")]
    assert rows[0]["label"] == "sr3(steps=50)" and float(rows[0]["psnr"]) == 29.5
    assert rows[2]["fid"] == "12.5" and rows[2]["patches"] == "40" and rows[1]["lpips"] == ""


def test_pareto_front_and_perception_axis():
    pts = [(30.0, 0.30), (29.0, 0.20), (28.0, 0.25), (27.0, 0.10), (30.0, 0.35)]
    assert pareto_front(pts, x_higher_better=True) == [0, 1, 3]
    rmse = [(255 * 10 ** (-p / 20), y) for p, y in pts]
    assert pareto_front(rmse, x_higher_better=False) == [0, 1, 3]
    assert perception_key([{"lpips": 0.1, "swd": 3.0}, {"lpips": None, "swd": 2.0}]) == "swd"
    assert perception_key([{"lpips": 0.1}, {"lpips": 0.2}]) == "lpips"
    assert perception_key([{"psnr": 1.0}]) is None


class Blurred(Method):
    """A method that lands after the first evaluation: bicubic, then a 3x3 box blur."""

    name = "blurred_leaderboard_test"

    def __call__(self, lr, size):
        import torch.nn.functional as F

        from cascade.data.degrade import upscale_bicubic

        up = upscale_bicubic(lr, size)
        return F.avg_pool2d(up, 3, 1, 1, count_include_pad=False).clamp(0, 1)


if Blurred.name not in METHODS:
    METHODS.register(Blurred.name)(Blurred)


def test_cascade_leaderboard_end_to_end_and_a_method_added_later(photos, tmp_path, capsys):
    out = tmp_path / "ev"
    common = ["--data", str(photos), "--scales", "2", "--out", str(out), "--save-images",
              "--metrics", "psnr,ssim,swd,hf_ratio"]
    assert main(["evaluate", "--methods", "bicubic", *common]) == 0
    assert main(["leaderboard", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["leaderboard.md", "leaderboard.csv", "pd_plot.png", "leaderboard.html"]
    assert [Path(p).name for p in printed[-4:]] == names

    # A method that lands later, evaluated into the same folder; the leaderboard is rebuilt.
    n = len(ResultsStore(out / "results.jsonl").rows())
    assert main(["evaluate", "--methods", f"bicubic,{Blurred.name}", *common]) == 0
    assert len(ResultsStore(out / "results.jsonl").rows()) == n + 2  # bicubic resumed
    assert main(["leaderboard", str(out), "--sort", "swd"]) == 0
    md = (out / "leaderboard.md").read_text()
    assert Blurred.name in md and "bicubic" in md and "ranked by SWD" in md
    page = (out / "leaderboard.html").read_text()
    assert page.count('<table class="sortable">') == 1 and "<script>" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|[\w./-]+\.(png|css|js))""", page)
    assert page.count("data:image/png;base64,") == 1 + 3  # plot + ground truth + 2 methods
    assert 'class="best"' in page
    png = (out / "pd_plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_image(out / "pd_plot.png").shape[0] == 3


def test_leaderboard_of_a_folder_without_results_is_one_line(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cascade evaluate" in err[0]
    ResultsStore(tmp_path / "results.jsonl").append(ROWS[0])
    assert main(["leaderboard", str(tmp_path), "--sort", "params"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot rank by 'params'" in err[0]


def test_a_row_over_fewer_images_is_flagged_ranked_last_and_never_best():
    from cascade.evaluation.leaderboard import sections

    def row(method, image, psnr):
        return {"dataset": "set14", "scale": 4.0, "method": method, "settings": {},
                "image": image, "psnr": psnr, "seconds": 1.0}

    rows = [row("bicubic", f"im{i}", 20.0) for i in range(3)]
    rows += [row("partial", "im0", 30.0)]
    (sec,) = sections(rows)
    assert [e["method"] for e in sec.entries] == ["bicubic", "partial"]
    assert sec.entries[1]["label"].endswith("[incomplete: 1/3 images]")
    assert sec.best["psnr"] == set()  # a lone complete value is not "best" either
