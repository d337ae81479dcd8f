"""Multi-process training through accelerate: two CPU processes over gloo.

``accelerate launch --config_file configs/accelerate/cpu_2proc.yaml`` runs the tiny LAINR
config under ``tests/train_probe.py``, which records a hash of every batch and of the
weights before and after every step on each rank. Slow: two processes plus a resume.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from train_probe import digest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny" / "lainr.yaml"
PROBE = ROOT / "tests" / "train_probe.py"
CPU_2PROC = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
RUN = ["train.steps=6", "train.ckpt_every=3", "train.grad_accum=2", "train.val_every=0",
       "train.log_every=1", "train.threads=1"]
NAN_STEP = 2  # rank 1's loss is NaN here: both ranks must skip the step together


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(log: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "PROBE_LOG": str(log),
            **extra}


def _events(log: Path) -> dict[tuple, dict[int, str]]:
    """(event, step[, micro]) -> {rank: hash}."""
    out: dict[tuple, dict[int, str]] = defaultdict(dict)
    for line in log.read_text().splitlines():
        e = json.loads(line)
        key = (e["event"], e["step"]) + ((e["micro"],) if "micro" in e else ())
        assert e["rank"] not in out[key], f"{key} recorded twice on rank {e['rank']}"
        out[key][e["rank"]] = e["hash"]
    return out


def _weights_digest(folder: Path) -> str:
    """The probe's hash of a saved model: its parameters in the model's order."""
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from cascade.inr.model import LAINR
    from cascade.train import load_train_config

    weights = load_file(str(folder / "model.safetensors"))
    model = LAINR(**OmegaConf.to_container(load_train_config(TINY).model))
    return digest(weights[name] for name, _ in model.named_parameters())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out, log = tmp / "run", tmp / "probe.jsonl"
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--config_file", str(CPU_2PROC), "--main_process_port",
           str(_free_port()), str(PROBE), str(TINY), f"out={out}", *RUN]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(log, PROBE_NAN=f"{NAN_STEP}:1"),
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, _events(log), done.stderr


@pytest.mark.slow
def test_ranks_hold_identical_weights_after_every_step(two_process_run):
    out, events, stderr = two_process_run
    before = {s: events[("before", s)] for s in range(6)}
    for s, by_rank in before.items():
        assert by_rank.keys() == {0, 1} and by_rank[0] == by_rank[1], f"step {s + 1}"
    for s in range(6):
        after = events.get(("after", s), {})
        if s == NAN_STEP:  # skipped on both ranks, though only rank 1 saw the NaN
            assert not after and before[s + 1] == before[s]
        else:
            assert after.keys() == {0, 1} and after[0] == after[1], f"step {s + 1}"
            assert s == 5 or after[0] == before[s + 1][0]
            assert after[0] != before[s][0]  # the step changed the weights
    # What rank 0 saved is what both ranks held.
    assert _weights_digest(out / "checkpoints" / "step_0000006") == events[("after", 5)][0]
    assert "step 3: non-finite loss" in stderr


@pytest.mark.slow
def test_each_rank_draws_its_own_shard_and_the_effective_batch_is_logged(two_process_run):
    out, events, stderr = two_process_run
    batches = [h for key, by_rank in events.items() if key[0] == "batch" for h in by_rank.values()]
    assert len(batches) == 6 * 2 * 2 and len(set(batches)) == len(batches)  # steps x micro x rank
    assert "processes=2 batch=2x2 accum -> effective 8" in stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((out / "lainr").glob("events.out.tfevents.*")))).Reload()
    logged = {tag: acc.Scalars(tag)[0].value for tag in ("effective_batch_size", "grad_accum")}
    assert logged == {"effective_batch_size": 8, "grad_accum": 2}


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    out, events, _ = two_process_run
    log = tmp_path / "probe.jsonl"
    step3 = out / "checkpoints" / "step_0000003"
    cmd = [sys.executable, str(PROBE), str(TINY), f"out={tmp_path / 'one'}", f"resume={step3}",
           *RUN, "train.steps=5"]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(log), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"resumed from \S+step_0000003 at step 3 \(written by 2 processes\)",
                     done.stderr)
    assert "processes=1 batch=2x2 accum -> effective 4" in done.stderr
    one = _events(log)
    assert ("before", 2) not in one  # it started at step 4, not from scratch
    assert one[("before", 3)][0] == events[("before", 3)][0]  # with the weights both ranks had
    assert one[("batch", 3, 0)][0] == events[("batch", 3, 0)][0]  # and rank 0's data stream
    assert one[("after", 3)][0] != events[("after", 3)][0]  # half the batch: another step
    assert (tmp_path / "one" / "checkpoints" / "step_0000005").is_dir()
