"""The shared trainer on the tiny LAINR config: it learns, checkpoints, and resumes exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cascade.checkpoint import load_checkpoint
from cascade.errors import CascadeError, ConfigError
from cascade.train import list_checkpoints, load_train_config, lr_lambda, train

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "lainr.yaml"


def _run(out: Path, *overrides: str) -> Path:
    return train(TINY, [f"out={out}", "train.threads=0", *overrides])


def test_config_reads_stage_and_rejects_unknown_keys():
    cfg = load_train_config(TINY, ["train.steps=3"])
    assert cfg.stage == "lainr" and cfg.train.steps == 3 and cfg.data.lr_patch == 16
    with pytest.raises(ConfigError, match="train.stpes.*train.steps"):
        load_train_config(TINY, ["train.stpes=3"])


def test_lr_schedule_warmup_then_cosine():
    cfg = load_train_config(TINY, ["train.steps=100", "train.warmup=10",
                                   "train.min_lr_ratio=0.0"]).train
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) < 1e-9


def test_tiny_run_lowers_the_loss(tmp_path):
    """Fit one real 32x32 crop at x2 (every batch is a flip of it): the trained EMA model's
    loss must fall below the untrained model's, which is exactly the bicubic baseline."""
    from cascade.data.datasets import resolve_dataset
    from cascade.data.io import save_image
    from cascade.inr.pretrained import load_lainr
    from cascade.inr.task import LAINRTask

    chelsea = resolve_dataset("builtin")[0]["image"]
    save_image(chelsea[:, 100:132, 200:232], tmp_path / "data" / "crop.png")
    data = [f"data.train=[{tmp_path / 'data'}]", "data.scale_min=2", "data.scale_max=2",
            "data.queries=0", "data.jitter=0"]
    cfg = load_train_config(TINY, [f"out={tmp_path / 'run'}", *data])
    task = LAINRTask(cfg)
    batches = [task.batch(10_000 + i, 0, 0, torch.device("cpu")) for i in range(4)]

    def mean_loss(model):
        with torch.no_grad():
            return sum(float(task.loss(model, b)[0]) for b in batches) / len(batches)

    before = mean_loss(task.build_model())
    model_dir = _run(tmp_path / "run", *data, "train.steps=300", "train.val_every=0",
                     "train.ckpt_every=300", "train.ema_decay=0.5", "train.schedule=constant",
                     "train.warmup=0")
    after = mean_loss(load_lainr(model_dir))
    assert after < 0.98 * before, (before, after)


def test_checkpoints_are_complete_and_resume_continues_the_same_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run(a)  # 6 steps, checkpoints at 3 and 6
    assert [s for s, _ in list_checkpoints(a)] == [3, 6]
    step6 = a / "checkpoints" / "step_0000006"
    for name in ("model.safetensors", "optimizer.bin", "trainer_state.json"):
        assert (step6 / name).is_file(), name
    assert load_checkpoint(a / "model", "lainr").meta["step"] == 6

    # An interrupted run: only the step-3 checkpoint survived. Resuming must redo steps
    # 4..6 exactly as the uninterrupted run did (same batches, optimizer and EMA state).
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "step_0000006")
    shutil.rmtree(b / "model")
    _run(b)
    wa = load_file(str(step6 / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_0000006" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6, msg=k)
    ea = load_file(str(a / "model" / "model.safetensors"))
    eb = load_file(str(b / "model" / "model.safetensors"))
    for k in ea:
        torch.testing.assert_close(eb[k], ea[k], rtol=0, atol=1e-6, msg=k)


def test_resume_from_a_bad_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CascadeError, match="not a training checkpoint"):
        _run(tmp_path / "x", f"resume={tmp_path}")


def test_cli_entry_point_reports_errors_in_one_line(tmp_path, capsys):
    from cascade.train import main

    assert main([str(TINY), f"out={tmp_path}", "train.lr=fast"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.lr" in err[0]


def test_init_starts_a_fresh_run_from_an_inference_checkpoint(tmp_path, capsys):
    """train.init loads the weights (here with lr=0 they must come out unchanged), validates
    them at step 0, is ignored when the run resumes, and a checkpoint of another shape is a
    one-line error."""
    from cascade.errors import CheckpointError

    a = _run(tmp_path / "a")
    frozen = ["train.lr=0.0", "train.schedule=constant", "train.warmup=0",
              f"train.init={a}", "train.steps=3", "train.val_every=0"]
    b = _run(tmp_path / "b", *frozen)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-7, msg=k)
    # a fine-tuning run validates its starting point at step 0; with lr = 0 the weights do
    # not move, so step 0 and step 2 agree (the EMA starts from the init weights too)
    capsys.readouterr()
    _run(tmp_path / "v", *frozen[:4], "train.steps=2", "train.val_every=2")
    vals = {line.split(":")[0]: line.split(":", 1)[1]
            for line in capsys.readouterr().out.splitlines() if line.startswith("val step")}
    assert set(vals) == {"val step 0", "val step 2"} and vals["val step 0"] == vals["val step 2"]
    fresh = load_file(str(_run(tmp_path / "c", *frozen[:3], "train.steps=3") / "model.safetensors"))
    assert any(not torch.equal(fresh[k], wa[k]) for k in wa)
    # resuming b with a broken init path does not touch it: the checkpoint wins
    capsys.readouterr()
    _run(tmp_path / "b", *frozen[:3], "train.init=/nonexistent", "train.steps=4",
         "train.val_every=4")
    out = capsys.readouterr().out  # a resumed run validates as it trains, not at step 0
    assert "val step 4" in out and "val step 0" not in out
    with pytest.raises(CheckpointError, match="does not fit this model"):
        _run(tmp_path / "d", f"train.init={a}", "model.dim=8")


def test_init_grows_a_model_only_when_asked(tmp_path):
    """A model with more stem blocks than its train.init checkpoint: an error that names
    train.init_strict; with train.init_strict=false the checkpoint's tensors load, the new
    blocks start as identities; a wider or deeper model is still refused."""
    from cascade.errors import CheckpointError
    from cascade.inr.model import LAINR

    a = _run(tmp_path / "a")
    with pytest.raises(CheckpointError, match="init_strict=false"):
        _run(tmp_path / "b", f"train.init={a}", "model.stem_blocks=1")
    frozen = ["train.lr=0.0", "train.schedule=constant", "train.warmup=0", "train.steps=2",
              "train.val_every=0", f"train.init={a}", "train.init_strict=false"]
    c = _run(tmp_path / "c", *frozen, "model.stem_blocks=1")
    wa, wc = load_file(str(a / "model.safetensors")), load_file(str(c / "model.safetensors"))
    assert set(wc) - set(wa) and all(".stem." in k for k in set(wc) - set(wa))
    for k in wa:
        torch.testing.assert_close(wc[k], wa[k], rtol=0, atol=1e-7, msg=k)
    cfg = load_train_config(TINY, ["model.stem_blocks=1"])
    grown = LAINR.from_config(cfg.model)
    grown.load_state_dict(wc)
    small = LAINR.from_config(load_train_config(TINY).model)
    small.load_state_dict(wa)
    lr = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(grown.upscale(lr, (40, 40)), small.upscale(lr, (40, 40)))
    with pytest.raises(CheckpointError, match="another shape"):
        _run(tmp_path / "d", *frozen, "model.dim=8")
    # A deeper stem is not an identity (its old last conv gains a ReLU): refused even when
    # growing is allowed, and the error does not suggest init_strict.
    with pytest.raises(CheckpointError, match=r"lacks 2 of the model's tensors.*config\.yaml") as err:
        _run(tmp_path / "e", *frozen, "model.stem_depth=4")
    assert "init_strict" not in str(err.value)


@pytest.mark.parametrize("name", ["lainr.yaml", "sr3_x2.yaml", "sr3_x2_b.yaml"])
def test_shipped_training_configs_load(name):
    root = Path(__file__).resolve().parents[1]
    cfg = load_train_config(root / "configs" / name)
    assert cfg.stage in ("lainr", "sr3") and cfg.train.steps > 0
    if cfg.train.init:  # fine-tuned from a shipped checkpoint (docs/training.md)
        assert (root / cfg.train.init / "model.safetensors").is_file()
        # and `train.init=` clears it: the same recipe from scratch
        assert not load_train_config(root / "configs" / name, ["train.init="]).train.init
    if name == "sr3_x2_b.yaml":  # the second x2 stage: stronger conditioning augmentation
        assert cfg.objective.aug_max > load_train_config(root / "configs" / "sr3_x2.yaml"
                                                         ).objective.aug_max
