"""Crash safety: SIGKILL a training run or an evaluation and lose nothing; non-finite losses.

The kill tests run the real entry points in subprocesses (``tests/train_probe.py`` pauses
the run at a chosen point so the kill lands exactly there) and are marked slow.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade.evaluation.store import ResultsStore, row_key
from cascade.train import checkpoint_problem, list_checkpoints, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "lainr.yaml"
PROBE = ROOT / "tests" / "train_probe.py"
STEPS, EVERY = 16, 4
RUN = [f"train.steps={STEPS}", f"train.ckpt_every={EVERY}", "train.val_every=0",
       "train.log_every=4", "train.threads=1", "train.keep_checkpoints=2"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", **extra}
    env.pop("PROBE_LOG", None)
    return env


def _train(out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cascade.train", str(TINY), f"out={out}", *RUN, *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _killed_run(out: Path, **pause: str) -> str:
    """Start a probed run, wait until it pauses where ``pause`` says, SIGKILL it."""
    cmd = [sys.executable, str(PROBE), str(TINY), f"out={out}", *RUN]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(**pause), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the probe pauses
        assert line.startswith("paused"), f"the run ended before pausing: {line!r}"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    return line.strip()


def _flatten(obj, prefix: str = ""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, np.ndarray):
        yield prefix, torch.from_numpy(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flatten(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _flatten(v, f"{prefix}/{i}")
    else:
        yield prefix, obj


def _final_state(out: Path) -> dict:
    """Everything a run ends with: weights, optimizer, schedule, EMA, RNG, exported model."""
    from safetensors.torch import load_file

    ckpt = out / "checkpoints" / f"step_{STEPS:07d}"
    parts = {"model": load_file(str(ckpt / "model.safetensors")),
             "export": load_file(str(out / "model" / "model.safetensors"))}
    for name in ("optimizer.bin", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
                 "random_states_0.pkl"):
        parts[name] = torch.load(ckpt / name, map_location="cpu", weights_only=False)
    parts["random_states_0.pkl"] = {"torch": parts["random_states_0.pkl"]["torch_manual_seed"]}
    return dict(_flatten(parts))


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if torch.is_tensor(a[k]):
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
            if a[k].numel():
                worst = max(worst, float((a[k].double() - b[k].double()).abs().max()))
        else:
            assert a[k] == b[k], k
    return worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run (same seed, same config, its own process)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _train(out)
    return _final_state(out)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["between steps", "inside a checkpoint write"])
def test_sigkill_then_resume_auto_ends_with_the_uninterrupted_weights(where, reference,
                                                                     tmp_path):
    rng = random.Random()
    if where == "between steps":
        killed_at = rng.randint(1, STEPS - 1)  # steps 0..killed_at-1 are done
        paused = _killed_run(tmp_path / "run", PROBE_PAUSE_STEP=str(killed_at))
    else:
        killed_at = rng.choice(range(EVERY, STEPS + 1, EVERY))
        paused = _killed_run(tmp_path / "run", PROBE_PAUSE_CKPT=str(killed_at))
        assert (tmp_path / "run" / "checkpoints" / f"step_{killed_at:07d}.tmp").is_dir()
    out = tmp_path / "run"
    found = list_checkpoints(out)
    assert all(s <= killed_at and checkpoint_problem(p) is None for s, p in found), (paused, found)
    assert len(found) <= 2  # keep_checkpoints

    resumed = _train(out)  # resume=auto is the default
    m = re.search(r"resumed from \S+ at step (\d+)", resumed.stderr)
    start = int(m.group(1)) if m else 0
    redone = killed_at - start
    assert 0 <= redone <= EVERY, (paused, start)  # at most one checkpoint interval redone
    if where == "inside a checkpoint write":
        assert redone == EVERY and not list((out / "checkpoints").glob("*.tmp"))
    diff = _max_abs_diff(_final_state(out), reference)
    print(f"killed {where} at step {killed_at}, resumed at {start}: max |diff| = {diff:g}")
    assert diff <= 1e-6, diff


def test_resume_auto_skips_a_corrupt_newest_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(TINY, [f"out={out}", "train.val_every=0"])  # checkpoints at 3 and 6
    (step3, old), (step6, new) = list_checkpoints(out)
    weights = new / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated by a full disk, say
    assert "model.safetensors does not match its checksum" in checkpoint_problem(new)
    from cascade.train import resolve_resume

    with pytest.warns(UserWarning, match="skipping checkpoint .*step_0000006"):
        assert resolve_resume(out, "auto", "lainr") == old
    from cascade.errors import CheckpointError

    with pytest.raises(CheckpointError, match="cannot resume from .*checksum"):
        resolve_resume(out, str(new), "lainr")
    with pytest.raises(CheckpointError, match="'lainr' checkpoint, not 'sr3'"):
        resolve_resume(out, str(old), "sr3")


# -- non-finite losses ---------------------------------------------------------------------

@pytest.fixture
def nan_at(monkeypatch):
    """Make the LAINR loss NaN at the given steps (in-process)."""
    from cascade.inr.task import LAINRTask

    bad: set[int] = set()
    batch, loss = LAINRTask.batch, LAINRTask.loss

    def tagged_batch(self, step, micro, rank, device):
        return {**batch(self, step, micro, rank, device), "_step": step}

    def nan_loss(self, model, b):
        value, logs = loss(self, model, b)
        return (value * float("nan"), logs) if b["_step"] in bad else (value, logs)

    monkeypatch.setattr(LAINRTask, "batch", tagged_batch)
    monkeypatch.setattr(LAINRTask, "loss", nan_loss)
    return bad


def test_a_non_finite_loss_skips_the_step_with_a_warning(nan_at, tmp_path):
    from safetensors.torch import load_file

    nan_at.update({1, 4})  # the 2nd and the 5th step
    with pytest.warns(UserWarning, match="non-finite") as caught:
        model = train(TINY, [f"out={tmp_path}", "train.val_every=0"])
    skipped = [str(w.message) for w in caught if "non-finite" in str(w.message)]
    assert len(skipped) == 2 and "step 2:" in skipped[0] and "step 5:" in skipped[1]
    assert all(torch.isfinite(t).all() for t in load_file(str(model / "model.safetensors")).values())


def test_k_non_finite_losses_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(
        nan_at, tmp_path):
    from safetensors.torch import load_file

    from cascade.checkpoint import load_checkpoint
    from cascade.errors import CascadeError

    nan_at.update(range(4, 100))  # 4 steps train; from the 5th on every loss is NaN
    with pytest.warns(UserWarning, match="non-finite"), \
            pytest.raises(CascadeError, match=r"stopped at step 7: 3 non-finite losses in a "
                                              r"row; last good checkpoint: .*step_0000006"):
        train(TINY, [f"out={tmp_path}", "train.val_every=0", "train.max_nonfinite=3",
                     "train.steps=20"])
    (_, step3), (_, step6) = list_checkpoints(tmp_path)
    assert step3.name == "step_0000003" and checkpoint_problem(step6) is None
    # The skipped steps (5 and 6) left the weights as the 4th step made them: finite.
    w6 = load_file(str(step6 / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in w6.values())
    assert not all(torch.equal(w6[k], t) for k, t in load_file(str(step3 / "model.safetensors")).items())
    ckpt = load_checkpoint(tmp_path / "model", "lainr")
    assert ckpt.meta["step"] == 6
    assert all(torch.isfinite(t).all() for t in ckpt.state_dict.values())


# -- evaluation ------------------------------------------------------------------------------

def _append_many(path: Path, writer: int, n: int, go: Path) -> subprocess.Popen:
    code = (
        "import sys, time, pathlib\n"
        "from cascade.evaluation.store import ResultsStore\n"
        f"go = pathlib.Path({str(go)!r})\n"
        "while not go.exists(): time.sleep(0.001)\n"
        f"s = ResultsStore({str(path)!r})\n"
        f"for i in range({n}):\n"
        f"    s.append({{'method': 'w{writer}', 'settings': {{}}, 'dataset': 'd', 'scale': 2.0,\n"
        "              'image': f'img{i}', 'psnr': float(i), 'pad': 'x' * 20000})\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def test_concurrent_appends_to_one_store_lose_nothing(tmp_path):
    path, go, n = tmp_path / "results.jsonl", tmp_path / "go", 60
    procs = [_append_many(path, w, n, go) for w in range(3)]
    time.sleep(0.5)
    go.touch()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 * n
    rows = [json.loads(line) for line in lines]  # no torn or interleaved line
    for w in range(3):  # every writer's rows, each whole and in its order
        assert [r["image"] for r in rows if r["method"] == f"w{w}"] == [f"img{i}" for i in range(n)]
    assert all(len(r["pad"]) == 20000 for r in rows)


def test_an_append_after_a_torn_line_starts_a_new_line(tmp_path):
    """A machine that died mid-write leaves a torn last line; the next run's rows must not be
    glued onto it (they would be unreadable and recomputed forever)."""
    store = ResultsStore(tmp_path / "results.jsonl")
    store.append({"method": "a", "settings": {}, "dataset": "d", "scale": 2.0, "image": "x"})
    with open(store.path, "a") as f:
        f.write('{"method": "b", "sett')
    store.append({"method": "c", "settings": {}, "dataset": "d", "scale": 2.0, "image": "x"})
    with pytest.warns(UserWarning, match="torn"):
        assert [r["method"] for r in store.rows()] == ["a", "c"]


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> Path:
    """40 small crops: enough rows for an evaluation to be killed in the middle."""
    from cascade.data.datasets import resolve_dataset
    from cascade.data.io import save_image

    root = tmp_path_factory.mktemp("many")
    ds = resolve_dataset("builtin")
    for i in range(40):
        img = ds[i % len(ds)]["image"]
        top, left = 8 * (i // len(ds)), 8 * (i % 7)
        save_image(img[:, top:top + 60, left:left + 72], root / f"p{i:02d}.png")
    return root


def _evaluate_cmd(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "cascade.cli", "evaluate", "--methods", "bicubic",
            "--data", str(data), "--scales", "2,3,4", "--out", str(out)]


@pytest.mark.slow
def test_sigkill_mid_evaluation_keeps_every_finished_row_and_resume_completes(many_photos,
                                                                             tmp_path):
    out = tmp_path / "ev"
    results = out / "results.jsonl"
    proc = subprocess.Popen(_evaluate_cmd(many_photos, out), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = random.Random().randint(5, 60)  # of 120 rows
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= kill_after:
            break
        time.sleep(0.005)
    before = results.read_bytes()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the evaluation ended before it was killed"
    after = results.read_bytes()
    assert after.startswith(before) and after.endswith(b"\n")  # nothing lost, nothing torn
    rows = [json.loads(line) for line in after.decode().splitlines()]
    assert kill_after <= len(rows) < 120

    done = subprocess.run(_evaluate_cmd(many_photos, out), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = ResultsStore(results).rows()
    assert final[: len(rows)] == rows  # the finished rows were kept, not recomputed
    assert len(final) == 120 and len({row_key(r) for r in final}) == 120


@pytest.mark.slow
def test_two_evaluations_into_one_store_at_once_lose_nothing(many_photos, tmp_path):
    out = tmp_path / "ev"
    procs = [subprocess.Popen(_evaluate_cmd(many_photos, out), cwd=ROOT, env=_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    store = ResultsStore(out / "results.jsonl")
    rows = store.rows()  # every line whole (a torn one would warn and be skipped)
    assert len(rows) == len(out.joinpath("results.jsonl").read_text().splitlines())
    assert len(store.merged()) == 120  # each image x scale once, whoever wrote it
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 4 and all(",40," in line for line in summary[1:])
