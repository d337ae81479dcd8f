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

from cascade.atomic import writable_dir
from cascade.config import load_config, save_config
from cascade.errors import CascadeError, CheckpointError, ConfigError, os_error_message
from cascade.registry import TASKS
from cascade.training_checkpoints import (  # noqa: F401  (checkpoint_problem: its old home)
    STATE_FILE,
    STEP_DIR,
    checkpoint_problem,
    list_checkpoints,
    resolve_resume,
    write_checkpoint,
)



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


def init_weights(model: torch.nn.Module, folder: str, stage: str, strict: bool = True) -> list[str]:
    """Load an inference checkpoint's weights into a freshly built model (``train.init``):
    same stage, same parameter names and shapes, or a one-line CheckpointError. With
    ``strict=False`` the model may also hold modules the checkpoint lacks, provided each
    starts as an identity (a class attribute ``grows_as_identity = True``, e.g. LAINR's
    ``StemBlock``): a grown model then computes what the checkpoint did. Returns the names
    of the tensors that keep their fresh initialisation."""
    from cascade.checkpoint import load_checkpoint
    from cascade.paths import resolve_repo_path

    ckpt = load_checkpoint(resolve_repo_path(folder), stage=stage)
    own = model.state_dict()
    missing = sorted(set(own) - set(ckpt.state_dict))
    unexpected = sorted(set(ckpt.state_dict) - set(own))
    shapes = [k for k in own if k in ckpt.state_dict and own[k].shape != ckpt.state_dict[k].shape]
    same = f"set the model.* options to those in {folder}/config.yaml"
    if unexpected or shapes:
        raise CheckpointError(f"train.init={folder!r} does not fit this model (the checkpoint "
                              f"has {len(unexpected)} tensors the model lacks, e.g. "
                              f"{unexpected[:2]}; {len(shapes)} of another shape, e.g. "
                              f"{shapes[:2]}): {same}")
    growable = tuple(f"{name}." for name, m in model.named_modules()
                     if name and getattr(m, "grows_as_identity", False))
    foreign = [k for k in missing if not k.startswith(growable)]  # all of them if none grow
    if missing and (strict or foreign):
        grow = ("; to grow a trained model by identity-initialised blocks set "
                "train.init_strict=false" if strict and not foreign else "")
        raise CheckpointError(f"train.init={folder!r} does not fit this model: the checkpoint "
                              f"lacks {len(missing)} of the model's tensors (e.g. "
                              f"{(foreign or missing)[:2]}){grow}; else {same}")
    model.load_state_dict(ckpt.state_dict, strict=False)
    return missing


@dataclass
class _Session:
    """What one training run holds from step to step."""

    accelerator: Any
    task: Any
    model: Any  # as accelerate prepared it (wrapped for several processes)
    raw: Any  # the model itself
    optimizer: Any
    scheduler: Any  # stepped by hand once per optimizer step
    ema: Any
    out: Path
    precision: str
    step: int = 0

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class Trainer:
    cfg: DictConfig

    def run(self) -> Path:
        cfg, loop = self.cfg, self.cfg.train
        start = resolve_resume(Path(cfg.out), cfg.resume, cfg.stage)  # before writing anything
        out = writable_dir(cfg.out, "choose a writable out=FOLDER")
        if loop.threads:
            torch.set_num_threads(loop.threads)
        s = self._setup(out, fresh=start is None)
        if start is not None:
            self._resume(s, start)
        self._announce(s)
        if loop.init and start is None and loop.val_every:
            # the starting point of a fine-tuning curve: the train.init weights, validated
            self._validate(s.accelerator, s.task, s.raw, s.ema, 0)
        bar = tqdm(total=loop.steps, initial=s.step, desc=f"train {cfg.stage}",
                   disable=not s.main, dynamic_ncols=True)
        nonfinite, t_last, seen = 0, time.perf_counter(), 0
        # Clip at train.grad_clip, or only measure (max_norm=inf scales by exactly 1): a
        # non-finite gradient norm skips the step like a non-finite loss. (fp16's scaler
        # handles overflow itself.)
        clip = loop.grad_clip if loop.grad_clip > 0 else math.inf
        s.model.train()
        while s.step < loop.steps:
            logs, skipped = self._step(s, clip)
            seen += loop.batch_size * loop.grad_accum
            if skipped:
                nonfinite += 1
                self._skip(s, nonfinite, bar)
            else:
                nonfinite = 0
                s.ema.step(s.raw.parameters())
            s.scheduler.step()
            s.step += 1
            bar.update()
            if s.main and (s.step % loop.log_every == 0 or s.step == loop.steps):
                dt = time.perf_counter() - t_last
                logs.update(lr=s.scheduler.get_last_lr()[0], samples_per_s=seen / max(dt, 1e-9))
                t_last, seen = time.perf_counter(), 0
                s.accelerator.log(logs, step=s.step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "lr")})
            if loop.val_every and (s.step % loop.val_every == 0 or s.step == loop.steps):
                self._validate(s.accelerator, s.task, s.raw, s.ema, s.step)
            if s.step % loop.ckpt_every == 0 or s.step == loop.steps:
                self._checkpoint(s.accelerator, s.raw, s.ema, s.step)
        bar.close()
        s.accelerator.end_training()
        return out / "model"

    def _setup(self, out: Path, fresh: bool) -> _Session:
        """Processes, seed, model (``train.init`` weights for a fresh run), optimizer,
        schedule and EMA, prepared by accelerate."""
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from diffusers.training_utils import EMAModel

        cfg, loop = self.cfg, self.cfg.train
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
        if loop.init and fresh:  # a resumed run has its own weights
            fresh_names = init_weights(model, loop.init, cfg.stage, loop.init_strict)
            if main:
                blocks = sorted({n.rsplit(".", 2)[0] for n in fresh_names})  # module prefixes
                grown = (f"; {len(fresh_names)} new tensors start fresh as identities "
                         f"({', '.join(blocks)})" if fresh_names else "")
                print(f"train: weights from {loop.init} (train.init){grown}", file=sys.stderr)
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
        return _Session(accelerator, task, model, raw, optimizer, scheduler, ema, out, mp)

    def _resume(self, s: _Session, start: Path) -> None:
        """Continue from the checkpoint folder ``start``: weights, optimizer, schedule, EMA
        and the step count."""
        state = json.loads((start / STATE_FILE).read_text())
        try:
            s.accelerator.load_state(str(start))
        except (RuntimeError, KeyError, ValueError, OSError, EOFError) as e:
            raise CheckpointError(f"cannot resume from {start}: {str(e).splitlines()[0]}; "
                                  "use the config it was trained with, or resume=none")
        s.step = int(state["step"])
        if s.main:
            was = state.get("processes", s.accelerator.num_processes)
            print(f"train: resumed from {start} at step {s.step}"
                  + (f" (written by {was} processes)" if was != s.accelerator.num_processes
                     else ""), file=sys.stderr)

    def _announce(self, s: _Session) -> None:
        """The run's config beside it, the trackers, and one line on what trains how."""
        cfg, loop, acc = self.cfg, self.cfg.train, s.accelerator
        if s.main:
            save_config(cfg, s.out / "config.yaml")
        acc.init_trackers(cfg.stage, config=_flat_scalars(cfg))
        n_params = sum(p.numel() for p in s.raw.parameters())
        if s.main:
            eff = loop.batch_size * loop.grad_accum * acc.num_processes
            print(f"train: stage={cfg.stage} params={n_params:,} device={acc.device} "
                  f"precision={s.precision} processes={acc.num_processes} "
                  f"batch={loop.batch_size}x{loop.grad_accum} accum -> effective {eff}",
                  file=sys.stderr)
            acc.log({"effective_batch_size": eff, "grad_accum": loop.grad_accum}, step=s.step)

    def _step(self, s: _Session, clip: float) -> tuple[dict[str, float], bool]:
        """One optimizer step over ``grad_accum`` micro-batches: (the logs, whether it was
        skipped for a non-finite loss or gradient norm)."""
        acc, loop = s.accelerator, self.cfg.train
        logs: dict[str, float] = {}
        skipped = False
        for micro in range(loop.grad_accum):
            batch = s.task.batch(s.step, micro, acc.process_index, acc.device)
            with acc.accumulate(s.model), acc.autocast():
                loss, logs = s.task.loss(s.model, batch)
                if not _all_finite(acc, loss):
                    skipped = True
                else:
                    acc.backward(loss)
                    if acc.sync_gradients:
                        norm = float(acc.clip_grad_norm_(s.model.parameters(), clip))
                        logs["grad_norm"] = norm
                        if not math.isfinite(norm) and acc.scaler is None:
                            skipped = True
                    if not skipped:
                        s.optimizer.step()
                    s.optimizer.zero_grad(set_to_none=True)
        return logs, skipped

    def _skip(self, s: _Session, nonfinite: int, bar) -> None:
        """A skipped step: warn; stop after ``max_nonfinite`` in a row."""
        loop = self.cfg.train
        s.optimizer.zero_grad(set_to_none=True)
        warnings.warn(f"step {s.step + 1}: non-finite loss or gradient, step skipped "
                      f"({nonfinite}/{loop.max_nonfinite} in a row)", stacklevel=1)
        if nonfinite >= loop.max_nonfinite:
            # Skipped steps leave the weights as they were, so every checkpoint
            # written so far holds finite weights; none is removed.
            bar.close()
            s.accelerator.end_training()
            last = list_checkpoints(s.out)
            where = f"{last[-1][1]} (resume=auto continues from it)" if last else "none"
            raise CascadeError(f"training stopped at step {s.step + 1}: {nonfinite} "
                               f"non-finite losses in a row; last good checkpoint: "
                               f"{where}; lower train.lr or check the data")

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
        write_checkpoint(accelerator, raw, ema, step, self.cfg)


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
