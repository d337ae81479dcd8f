"""Training checkpoints: ``OUT/checkpoints/step_N`` folders (accelerate's state plus
``trainer_state.json`` with the step and every file's checksum), found, checked and written
atomically, and the inference checkpoint ``OUT/model`` written beside them (EMA weights)."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

from omegaconf import DictConfig

from cascade.atomic import atomic_write_text, fsync_dir, fsync_tree
from cascade.checkpoint import checksum_problem, file_checksums, save_checkpoint
from cascade.errors import CheckpointError

__all__ = ["STATE_FILE", "STEP_DIR", "checkpoint_problem", "list_checkpoints",
           "resolve_resume", "write_checkpoint"]

STEP_DIR = re.compile(r"^step_(\d+)$")


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """Complete training checkpoints under OUT/checkpoints, oldest first."""
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_DIR.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


STATE_FILE = "trainer_state.json"


def checkpoint_problem(path: Path, stage: str | None = None) -> str | None:
    """None if the training checkpoint at ``path`` is whole (every file matches the checksum
    in trainer_state.json) and of ``stage``; else what is wrong with it."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"{STATE_FILE} is unreadable"
    if stage is not None and state.get("stage", stage) != stage:
        return f"it is a {state['stage']!r} checkpoint, not {stage!r}"
    # Checkpoints written before checksums were added have no "files": trusted as they are.
    return checksum_problem(path, state.get("files", {}))


def resolve_resume(out: Path, resume: str, stage: str | None = None) -> Path | None:
    """The checkpoint to resume from: ``auto`` = the newest whole one (a corrupt one is
    skipped with a warning), ``none``, or a ``step_N`` folder (which must be whole)."""
    if resume in ("", "none", "no", "false", "False"):
        return None
    if resume == "auto":
        ckpts = list_checkpoints(out)
        for _, p in reversed(ckpts):
            problem = checkpoint_problem(p, stage)
            if problem is None:
                return p
            warnings.warn(f"skipping checkpoint {p}: {problem}", stacklevel=2)
        if ckpts:
            raise CheckpointError(f"no usable checkpoint in {out / 'checkpoints'} (see the "
                                  "warnings above); remove them, or resume=none to start over")
        return None
    p = Path(resume)
    if not (p / STATE_FILE).is_file():
        raise CheckpointError(f"resume={resume!r} is not a training checkpoint folder "
                              "(expected OUT/checkpoints/step_N); use resume=auto")
    problem = checkpoint_problem(p, stage)
    if problem:
        raise CheckpointError(f"cannot resume from {p}: {problem}; pass another checkpoint "
                              "or resume=auto")
    return p



def write_checkpoint(accelerator, raw, ema, step: int, cfg: DictConfig) -> None:
    """Write ``OUT/checkpoints/step_N`` (under a temporary name, checksummed, renamed into
    place; only the newest ``train.keep_checkpoints`` are kept) and ``OUT/model``."""
    out = Path(cfg.out)
    final = out / "checkpoints" / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        loop = cfg.train
        # Batches are keyed by (seed, step, micro, rank): the step is the sampler position.
        state = {"step": step, "stage": cfg.stage, "seed": loop.seed,
                 "processes": accelerator.num_processes, "batch_size": loop.batch_size,
                 "grad_accum": loop.grad_accum,
                 "files": file_checksums(tmp, skip=(STATE_FILE,))}
        atomic_write_text(tmp / STATE_FILE, json.dumps(state, indent=1) + "\n")
        fsync_tree(tmp)
        if final.exists():  # a resumed run reached this step again
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        for _, old in list_checkpoints(out)[: -loop.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        # The inference checkpoint: EMA weights + the resolved config.
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
        save_checkpoint(out / "model", raw.state_dict(), cfg, cfg.stage, step)
        ema.restore(raw.parameters())
    accelerator.wait_for_everyone()
