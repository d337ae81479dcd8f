"""The generalization gate's checks (cascade.evaluation.gate) on rows made up to hit each
threshold from both sides, and its report script on a results file."""

import json
import subprocess
import sys

import pytest

from cascade.evaluation.gate import gate, variant_label
from conftest import ROOT


def row(method, image, psnr, dataset="photos:unseen", scale=2.0, n=None, **metrics):
    settings = {} if n is None else {"num_samples": n, "output": "sample" if n == 1 else "mean"}
    return {"method": method, "settings": settings, "dataset": dataset, "scale": scale,
            "image": image, "psnr": psnr, **metrics}


def by_target(checks):
    return {(c.method, c.target.split(" >=")[0].split(" <=")[0].split(" in")[0]): c
            for c in checks}


def test_one_sample_checks_pass_and_miss_at_their_thresholds():
    rows = [row("lainr", "a", 40.0, swd=100.0), row("lainr", "b", 40.0, swd=100.0),
            row("cascade", "a", 38.0, n=1, swd=70.0, hf_ratio=0.9, lr_psnr=60.0),
            row("cascade", "b", 35.5, n=1, swd=90.0, hf_ratio=0.6, lr_psnr=44.0),
            row("lainr", "c", 40.0)]  # no cascade row for c: skipped
    c = by_target(gate(rows))
    m = "cascade(num_samples=1,output=sample)"
    assert c[(m, "PSNR - LAINR (mean)")].value == pytest.approx(-3.25)
    assert not c[(m, "PSNR - LAINR (mean)")].passed
    assert c[(m, "PSNR - LAINR (worst image)")].value == pytest.approx(-4.5)
    assert c[(m, "PSNR - LAINR (worst image)")].passed
    assert c[(m, "HF ratio")].value == pytest.approx(0.75) and not c[(m, "HF ratio")].passed
    assert c[(m, "SWD / LAINR's")].value == pytest.approx(0.8) and c[(m, "SWD / LAINR's")].passed
    assert c[(m, "LR-PSNR (worst image)")].value == 44.0
    assert not c[(m, "LR-PSNR (worst image)")].passed


def test_mean_of_n_and_colour_spread():
    rows = []
    for i, (ref, mean) in enumerate([(40.0, 39.8), (41.0, 40.2), (39.0, 39.0)]):
        rows += [row("lainr", f"v{i}", ref, dataset="photos:colour"),
                 row("cascade", f"v{i}", mean, dataset="photos:colour", n=8)]
    c = by_target(gate(rows))
    m = "cascade(num_samples=8,output=mean)"
    assert c[(m, "PSNR - LAINR (mean of 8)")].value == pytest.approx(-1.0 / 3)
    assert c[(m, "PSNR - LAINR (mean of 8)")].passed
    assert (m, "PSNR - LAINR (worst image)") not in c  # a one-sample target only
    assert c[(m, "PSNR spread over colours")].value == pytest.approx(1.2)
    assert not c[(m, "PSNR spread over colours")].passed


def test_variants_with_the_same_label_from_two_pipelines_are_not_mixed():
    """Two result folders of the same grid point, run with two pipelines: two variants,
    each checked on its own rows and labelled by the setting that differs."""
    rows = [row("lainr", "a", 40.0), row("lainr", "b", 40.0)]
    for pipe, psnr in (("checkpoints", 39.0), ("runs/pipe_new", 36.0)):
        for image in ("a", "b"):
            r = row("cascade", image, psnr, n=1)
            r["settings"] = {**r["settings"], "pipeline": pipe, "steps": 10}
            rows.append(r)
    c = by_target(gate(rows))
    old = "cascade(num_samples=1,output=sample,pipeline=checkpoints)"
    new = "cascade(num_samples=1,output=sample,pipeline=runs/pipe_new)"
    assert c[(old, "PSNR - LAINR (mean)")].value == pytest.approx(-1.0)
    assert c[(new, "PSNR - LAINR (mean)")].value == pytest.approx(-4.0)
    # a lone variant keeps the short label
    assert {x.method for x in gate(rows[:4])} == {"cascade(num_samples=1,output=sample)"}
    # a setting one variant lacks and the other has as null differs too
    for r in rows[2:4]:
        r["settings"] = {**r["settings"], "chain_temperature": None}
    assert len({x.method for x in gate(rows)}) == 2
    # values that print alike (checkpoints named by their folder): a digest tells them apart
    for r, ckpt in zip(rows[2:], ["a/lainr"] * 2 + ["b/lainr"] * 2):
        r["settings"] = {"num_samples": 1, "output": "sample", "checkpoint": ckpt}
    labels = sorted({x.method for x in gate(rows)})
    assert len(labels) == 2 and all(m.startswith(
        "cascade(num_samples=1,output=sample,checkpoint=lainr)#") for m in labels)


def test_variant_label_and_nothing_to_pair():
    assert variant_label(row("lainr", "a", 1.0)) == "lainr"
    assert gate([row("cascade", "a", 30.0, n=1)]) == []  # no LAINR row to compare with


def test_gate_report_script(tmp_path):
    rows = [row("lainr", "a", 40.0, swd=100.0),
            row("cascade", "a", 38.0, n=1, swd=70.0, hf_ratio=0.9, lr_psnr=60.0)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gate_report.py"),
                          str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "5 of 5 checks pass" in out and "MISS" not in out
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "gate_report.py"),
                              str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode == 2 and "run cascade evaluate first" in missing.stderr
