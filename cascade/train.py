"""One thin trainer for every stage, driven by ``accelerate``.

    accelerate launch -m cascade.train configs/lainr.yaml train.steps=5000
    cascade train configs/lainr.yaml resume=auto

A *task* (registered in ``cascade.registry.TASKS`` by each stage: ``lainr``, ``sr3``)
supplies the typed config, the model, batches, the loss and validation; this module owns
everything else: optimizer and schedule, gradient accumulation and clipping, EMA
(diffusers ``EMAModel``), mixed precision (bf16 autocast on CUDA only), logging
(TensorBoard through accelerate's trackers, tqdm), validation, atomic checkpoints and
``resume=auto``.

Batches are a pure function of ``(seed, step, micro-batch, rank)``, so the step is the
data sampler's position: a resumed run draws exactly the batches the uninterrupted run
would have drawn, and each rank of a multi-process run draws its own shard. Checkpoints
(``OUT/checkpoints/step_N/``) are written by ``accelerator.save_state`` into a temporary
folder, checksummed (``trainer_state.json``), fsynced and renamed into place once complete;
``resume=auto`` takes the newest one whose checksums hold. ``OUT/model/`` always holds the
latest EMA weights as an inference checkpoint (``cascade.checkpoint``).

Several processes: ``torchrun --nproc_per_node N -m cascade.train ...`` or ``accelerate
launch`` (docs/training.md); on machines without CUDA the processes talk over gloo.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from cascade.atomic import atomic_write_text, fsync_dir, fsync_tree, writable_dir
from cascade.checkpoint import checksum_problem, file_checksums, save_checkpoint
from cascade.config import load_config, save_config
from cascade.errors import CascadeError, CheckpointError, ConfigError, os_error_message
from cascade.registry import TASKS

STEP_DIR = re.compile(r"^step_(\d+)$")


class Task(Protocol):
    """What a stage provides to the trainer (see ``cascade/inr/task.py``)."""

    config_cls: type

    def build_model(self) -> torch.nn.Module: ...

    def batch(self, step: int, micro: int, rank: int, device: torch.device) -> dict: ...

    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...

    def validate(self, model: torch.nn.Module, step: int | None = None) -> dict[str, float]: ...


def _import_tasks() -> None:
    import importlib

    for module in ("cascade.inr.task", "cascade.diffusion.task"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


def load_train_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> DictConfig:
    """Read ``stage`` from the file (or a ``stage=`` override), then load that stage's schema."""
    _import_tasks()
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass an existing YAML file "
                          "(e.g. configs/lainr.yaml)")
    stage = None
    for item in overrides:
        if item.startswith("stage="):
            stage = item.split("=", 1)[1]
    if stage is None and path is not None and Path(path).is_file():
        stage = OmegaConf.load(path).get("stage")
    if stage is None:
        raise ConfigError(f"no 'stage' in {path}; add e.g. 'stage: lainr' "
                          f"(known: {', '.join(TASKS.names())})")
    return load_config(TASKS.get(stage).config_cls, path, overrides)


# -- learning-rate schedule ------------------------------------------------------------------

def lr_lambda(cfg) -> Any:
    """Linear warm-up, then cosine (to min_lr_ratio), step decay or constant."""

    def f(step: int) -> float:
        if cfg.warmup > 0 and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "cosine":
            t = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
            return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if cfg.schedule == "step":
            return cfg.step_gamma ** sum(step >= m for m in cfg.step_milestones)
        if cfg.schedule == "constant":
            return 1.0
        raise ConfigError(f"train.schedule={cfg.schedule!r}; use cosine, step or constant")

    return f


# -- checkpoints -----------------------------------------------------------------------------

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


def _precision(requested: str) -> str:
    """train.mixed_precision, where ``auto`` is float32 on a CPU (its bf16 matmuls are far
    slower) and on CUDA the launcher's choice (``accelerate launch`` sets it from its config)
    or else bf16."""
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "no"
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "bf16")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _all_finite(accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all must skip a step together: a rank
    that skips backward while the others all-reduce would hang them)."""
    bad = (~torch.isfinite(loss.detach())).any().to(torch.float32).reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return bool(bad.item() == 0)


def init_weights(model: torch.nn.Module, folder: str, stage: str) -> None:
    """Load an inference checkpoint's weights into a freshly built model (``train.init``):
    same stage, same parameter names and shapes, or a one-line CheckpointError."""
    from cascade.checkpoint import load_checkpoint
    from cascade.paths import resolve_repo_path

    ckpt = load_checkpoint(resolve_repo_path(folder), stage=stage)
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(own))
    shapes = [k for k in own if k in ckpt.state_dict and own[k].shape != ckpt.state_dict[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"train.init={folder!r} does not fit this model (missing "
                              f"{missing[:2]}, unexpected {unexpected[:2]}, other shape "
                              f"{shapes[:2]}); use a checkpoint trained with the same model: keys")
    model.load_state_dict(ckpt.state_dict)


@dataclass
class Trainer:
    cfg: DictConfig

    def run(self) -> Path:
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers.training_utils import EMAModel

        cfg, loop = self.cfg, self.cfg.train
        start = resolve_resume(Path(cfg.out), cfg.resume, cfg.stage)  # before writing anything
        out = writable_dir(cfg.out, "choose a writable out=FOLDER")
        if loop.threads:
            torch.set_num_threads(loop.threads)
        mp = _precision(loop.mixed_precision)
        # Without CUDA, accelerate only forms a process group (gloo) when told it is on a
        # CPU; otherwise every torchrun process would silently train a model of its own.
        accelerator = Accelerator(mixed_precision=mp, gradient_accumulation_steps=loop.grad_accum,
                                  log_with="tensorboard", project_dir=str(out),
                                  cpu=not torch.cuda.is_available() and _world_size() > 1)
        if _world_size() != accelerator.num_processes:
            raise CascadeError(f"launched as {_world_size()} processes but accelerate formed "
                               f"{accelerator.num_processes}; check the launcher's settings")
        set_seed(loop.seed)
        main = accelerator.is_main_process
        if main:
            for stale in (out / "checkpoints").glob("step_*.tmp"):  # left by a killed run
                shutil.rmtree(stale, ignore_errors=True)
        task = TASKS.get(cfg.stage)(cfg)
        model = task.build_model()
        if loop.init and start is None:  # a resumed run has its own weights
            init_weights(model, loop.init, cfg.stage)
            if main:
                print(f"train: weights from {loop.init} (train.init)", file=sys.stderr)
        optimizer = torch.optim.AdamW(model.parameters(), lr=loop.lr, betas=tuple(loop.betas),
                                      weight_decay=loop.weight_decay)
        # Stepped by hand once per optimizer step (accelerate's wrapper would step it
        # once per process).
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(loop))
        model, optimizer = accelerator.prepare(model, optimizer)
        raw = accelerator.unwrap_model(model)
        ema = EMAModel(raw.parameters(), decay=loop.ema_decay)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(scheduler, ema)

        step = 0
        if start is not None:
            state = json.loads((start / STATE_FILE).read_text())
            try:
                accelerator.load_state(str(start))
            except (RuntimeError, KeyError, ValueError, OSError, EOFError) as e:
                raise CheckpointError(f"cannot resume from {start}: {str(e).splitlines()[0]}; "
                                      "use the config it was trained with, or resume=none")
            step = int(state["step"])
            if main:
                was = state.get("processes", accelerator.num_processes)
                print(f"train: resumed from {start} at step {step}"
                      + (f" (written by {was} processes)" if was != accelerator.num_processes
                         else ""), file=sys.stderr)
        if main:
            save_config(cfg, out / "config.yaml")
        accelerator.init_trackers(cfg.stage, config=_flat_scalars(cfg))
        n_params = sum(p.numel() for p in raw.parameters())
        if main:
            eff = loop.batch_size * loop.grad_accum * accelerator.num_processes
            print(f"train: stage={cfg.stage} params={n_params:,} device={accelerator.device} "
                  f"precision={mp} processes={accelerator.num_processes} "
                  f"batch={loop.batch_size}x{loop.grad_accum} accum -> effective {eff}",
                  file=sys.stderr)
            accelerator.log({"effective_batch_size": eff, "grad_accum": loop.grad_accum}, step=step)

        bar = tqdm(total=loop.steps, initial=step, desc=f"train {cfg.stage}", disable=not main,
                   dynamic_ncols=True)
        nonfinite, t_last, seen = 0, time.perf_counter(), 0
        # Clip at train.grad_clip, or only measure (max_norm=inf scales by exactly 1): a
        # non-finite gradient norm skips the step like a non-finite loss. (fp16's scaler
        # handles overflow itself.)
        clip = loop.grad_clip if loop.grad_clip > 0 else math.inf
        model.train()
        while step < loop.steps:
            logs: dict[str, float] = {}
            skipped = False
            for micro in range(loop.grad_accum):
                batch = task.batch(step, micro, accelerator.process_index, accelerator.device)
                with accelerator.accumulate(model), accelerator.autocast():
                    loss, logs = task.loss(model, batch)
                    if not _all_finite(accelerator, loss):
                        skipped = True
                    else:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            norm = float(accelerator.clip_grad_norm_(model.parameters(), clip))
                            logs["grad_norm"] = norm
                            if not math.isfinite(norm) and accelerator.scaler is None:
                                skipped = True
                        if not skipped:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                seen += loop.batch_size
            if skipped:
                optimizer.zero_grad(set_to_none=True)
                nonfinite += 1
                warnings.warn(f"step {step + 1}: non-finite loss or gradient, step skipped "
                              f"({nonfinite}/{loop.max_nonfinite} in a row)", stacklevel=1)
                if nonfinite >= loop.max_nonfinite:
                    # Skipped steps leave the weights as they were, so every checkpoint
                    # written so far holds finite weights; none is removed.
                    bar.close()
                    accelerator.end_training()
                    last = list_checkpoints(out)
                    where = f"{last[-1][1]} (resume=auto continues from it)" if last else "none"
                    raise CascadeError(f"training stopped at step {step + 1}: {nonfinite} "
                                       f"non-finite losses in a row; last good checkpoint: "
                                       f"{where}; lower train.lr or check the data")
            else:
                nonfinite = 0
                ema.step(raw.parameters())
            scheduler.step()
            step += 1
            bar.update()
            if main and (step % loop.log_every == 0 or step == loop.steps):
                dt = time.perf_counter() - t_last
                logs.update(lr=scheduler.get_last_lr()[0], samples_per_s=seen / max(dt, 1e-9))
                t_last, seen = time.perf_counter(), 0
                accelerator.log(logs, step=step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "lr")})
            if loop.val_every and (step % loop.val_every == 0 or step == loop.steps):
                self._validate(accelerator, task, raw, ema, step)
            if step % loop.ckpt_every == 0 or step == loop.steps:
                self._checkpoint(accelerator, raw, ema, step)
        bar.close()
        accelerator.end_training()
        return out / "model"

    # -- pieces ------------------------------------------------------------------------------

    def _validate(self, accelerator, task, raw, ema, step: int) -> None:
        if not accelerator.is_main_process:
            return
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
        raw.eval()
        with torch.no_grad():
            metrics = task.validate(raw, step=step)
        raw.train()
        ema.restore(raw.parameters())
        accelerator.log({f"val/{k}": v for k, v in metrics.items()}, step=step)
        tqdm.write("val step {}: {}".format(step, "  ".join(f"{k}={v:.3f}" for k, v in metrics.items())))

    def _checkpoint(self, accelerator, raw, ema, step: int) -> None:
        out = Path(self.cfg.out)
        final = out / "checkpoints" / f"step_{step:07d}"
        tmp = final.with_name(final.name + ".tmp")
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            loop = self.cfg.train
            # Batches are keyed by (seed, step, micro, rank): the step is the sampler position.
            state = {"step": step, "stage": self.cfg.stage, "seed": loop.seed,
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
            save_checkpoint(out / "model", raw.state_dict(), self.cfg, self.cfg.stage, step)
            ema.restore(raw.parameters())
        accelerator.wait_for_everyone()


def _flat_scalars(cfg: DictConfig) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, (int, float, str, bool)):
            flat[prefix[:-1]] = node
        elif isinstance(node, list):
            flat[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def train(config: str | os.PathLike | None, overrides: Sequence[str] = ()) -> Path:
    """Train the stage described by ``config``; returns the inference checkpoint folder."""
    return Trainer(load_train_config(config, overrides)).run()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        print("usage: python -m cascade.train CONFIG.yaml [key=value ...]")
        return 0 if argv else 2
    try:
        path = train(argv[0], argv[1:])
    except CascadeError as e:
        print(f"cascade train: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ... mid-run
        print(f"cascade train: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cascade train: interrupted; resume=auto continues from the last checkpoint",
              file=sys.stderr)
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(f"train: inference checkpoint at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
