"""``python tests/train_probe.py CONFIG [key=value ...]``: ``cascade.train`` with probes.

Used by test_crash.py and test_multiprocess.py as a subprocess (also under torchrun or
``accelerate launch``). The probes wrap, and never change, what the trainer computes:

* ``PROBE_LOG=FILE``: append one JSON line per event, tagged with the rank: ``batch``
  (a hash of each micro-batch), ``before`` (a hash of the weights a step starts from) and
  ``after`` (a hash of the weights after each optimizer step; skipped steps have none).
* ``PROBE_PAUSE_STEP=K``: before drawing step K's batch, print ``paused`` and wait for a
  line on stdin (the test SIGKILLs the process meanwhile).
* ``PROBE_PAUSE_CKPT=K``: pause the same way inside the step-K checkpoint write, after
  ``accelerator.save_state`` filled the temporary folder and before it is renamed.
* ``PROBE_NAN=STEP:RANK,...``: make the loss NaN at those steps on those ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import torch

RANK = int(os.environ.get("RANK", "0"))


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def log(**event) -> None:
    path = os.environ.get("PROBE_LOG")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"rank": RANK, **event}) + "\n")


def pause(what: str) -> None:
    print(f"paused {what}", flush=True)
    sys.stdin.readline()


def install() -> None:
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    from cascade.inr.task import LAINRTask

    nan_at = {tuple(int(v) for v in item.split(":"))
              for item in os.environ.get("PROBE_NAN", "").split(",") if item}
    pause_step = int(os.environ.get("PROBE_PAUSE_STEP", "-1"))
    pause_ckpt = int(os.environ.get("PROBE_PAUSE_CKPT", "-1"))
    current = {"step": -1}
    batch, loss, ema_step = LAINRTask.batch, LAINRTask.loss, EMAModel.step
    save_state = Accelerator.save_state

    def probed_batch(self, step, micro, rank, device):
        if step == pause_step and micro == 0 and rank == 0:
            pause(f"step {step}")
        b = batch(self, step, micro, rank, device)
        current["step"] = step
        log(event="batch", step=step, micro=micro, hash=digest([b["lr"], b["coord"], b["rgb"]]))
        return {**b, "_step": step, "_micro": micro}

    def probed_loss(self, model, b):
        if b["_micro"] == 0:
            log(event="before", step=b["_step"], hash=digest(model.parameters()))
        value, logs = loss(self, model, b)
        if (b["_step"], RANK) in nan_at and b["_micro"] == 0:
            value = value * float("nan")
        return value, logs

    def probed_ema_step(self, parameters):
        parameters = list(parameters)
        log(event="after", step=current["step"], hash=digest(parameters))
        return ema_step(self, parameters)

    def probed_save_state(self, output_dir=None, *args, **kwargs):
        out = save_state(self, output_dir, *args, **kwargs)
        if RANK == 0 and os.path.basename(str(output_dir)) == f"step_{pause_ckpt:07d}.tmp":
            pause(f"checkpoint {pause_ckpt}")
        return out

    LAINRTask.batch, LAINRTask.loss = probed_batch, probed_loss
    EMAModel.step, Accelerator.save_state = probed_ema_step, probed_save_state


if __name__ == "__main__":
    install()
    from cascade.train import main

    sys.exit(main(sys.argv[1:]))
