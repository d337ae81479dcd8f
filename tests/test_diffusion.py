"""The diffusion stage: process algebra, consistency loss, augmentation path, samplers, training."""

from __future__ import annotations

import pytest
import torch

from cascade.data.degrade import imresize, upscale_bicubic
from cascade.diffusion.objective import (
    ObjectiveConfig,
    consistency_error,
    diffusion_loss,
    draw_noise_and_levels,
)
from cascade.diffusion.process import (
    ProcessConfig,
    augment_condition,
    gaussian_blur,
    make_train_scheduler,
    predict_x0,
    training_target,
)
from cascade.diffusion.sampling import SamplingConfig, make_sampler, project, sample
from cascade.diffusion.stage import SR3Stage
from cascade.diffusion.unet import AUG_EMBED_SCALE, ConditionalUNet
from cascade.errors import CheckpointError, ConfigError
from cascade.seeding import generator_for
from conftest import TINY_SR3 as TINY
from conftest import TINY_UNET



def _photo_pair(size: int = 32):
    """A real HR crop, its LR (D, uint8) and bicubic conditioning."""
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import degrade

    img = resolve_dataset("builtin")[0]["image"]  # chelsea
    hr, lr = degrade(img[None, :, 100:100 + size, 200:200 + size], 2.0)
    return hr, lr, upscale_bicubic(lr, tuple(hr.shape[-2:]))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_predict_x0_inverts_the_training_target(ptype):
    proc = ProcessConfig(prediction_type=ptype)
    ac = make_train_scheduler(proc).alphas_cumprod
    g = torch.Generator().manual_seed(0)
    r0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a = ac[t].view(-1, 1, 1, 1)
    r_t = a.sqrt() * r0 + (1 - a).sqrt() * noise
    # diffusers' own forward process agrees with ours
    torch.testing.assert_close(make_train_scheduler(proc).add_noise(r0, noise, t), r_t)
    target = training_target(r0, noise, t, ac, ptype)
    torch.testing.assert_close(predict_x0(target, r_t, t, ac, ptype), r0, atol=2e-4, rtol=1e-4)
    if ptype == "v_prediction":
        torch.testing.assert_close(target, make_train_scheduler(proc).get_velocity(r0, noise, t))


def _loss_inputs(lam: float, seed: int = 0):
    hr, lr, cond = _photo_pair()
    batch = {"hr": hr.repeat(2, 1, 1, 1), "lr": lr.repeat(2, 1, 1, 1),
             "cond": cond.repeat(2, 1, 1, 1)}
    ocfg = ObjectiveConfig(consistency_weight=lam, consistency_weighting="uniform")
    draws = draw_noise_and_levels(batch, ocfg, 1000, torch.Generator().manual_seed(seed))
    return batch, draws, ocfg


def test_consistency_term_is_on_the_implied_x0_and_changes_the_gradient():
    torch.manual_seed(0)
    unet = ConditionalUNet(**TINY_UNET)
    proc = ProcessConfig()
    ac = make_train_scheduler(proc).alphas_cumprod
    batch, draws, ocfg = _loss_inputs(lam=5.0)
    loss, logs = diffusion_loss(unet, batch, draws, proc, ocfg, ac)
    # Recompute the term by hand from the network's x0 estimate.
    rs = proc.residual_scale
    r0 = (batch["hr"] - batch["cond"]) * rs
    a = ac[draws["t"]].view(-1, 1, 1, 1)
    r_t = a.sqrt() * r0 + (1 - a).sqrt() * draws["noise"]
    cond_in = augment_condition(batch["cond"], draws["aug_level"], draws["lr_noise"])
    with torch.no_grad():
        out = unet(r_t, cond_in, draws["t"], draws["aug_level"])
    x0 = batch["cond"] + predict_x0(out, r_t, draws["t"], ac, proc.prediction_type) / rs
    manual = float(((imresize(x0, size=lr_size(batch)) - batch["lr"]) ** 2).mean() * rs**2)
    assert logs["loss_consistency"] == pytest.approx(manual, rel=1e-4)
    assert logs["loss"] == pytest.approx(logs["loss_denoise"] + 5.0 * manual, rel=1e-4)
    loss.backward()
    g_with = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad()
    batch0, draws0, ocfg0 = _loss_inputs(lam=0.0)
    diffusion_loss(unet, batch0, draws0, proc, ocfg0, ac)[0].backward()
    diff = sum(float((a - p.grad).abs().sum()) for a, p in zip(g_with, unet.parameters()))
    assert diff > 1e-3


def lr_size(batch):
    return tuple(batch["lr"].shape[-2:])


@pytest.mark.slow
def test_consistency_loss_lowers_the_lr_error_of_x0_in_a_tiny_run():
    """Same init, same batch, 30 Adam steps: with lambda > 0 the x0 the model implies explains
    the LR input better (||D(x0_hat) - x_lr||^2 measured with the same probe)."""
    proc = ProcessConfig()
    ac = make_train_scheduler(proc).alphas_cumprod
    batch, draws, _ = _loss_inputs(0.0, seed=0)
    probe = ObjectiveConfig(consistency_weight=1e-9, consistency_weighting="uniform")
    errs = {}
    for lam in (0.0, 5.0):
        torch.manual_seed(0)
        unet = ConditionalUNet(**TINY_UNET)
        opt = torch.optim.Adam(unet.parameters(), lr=2e-3)
        cfg = ObjectiveConfig(consistency_weight=lam, consistency_weighting="uniform")
        for _ in range(30):
            loss, _ = diffusion_loss(unet, batch, draws, proc, cfg, ac)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            errs[lam] = diffusion_loss(unet, batch, draws, proc, probe, ac)[1]["loss_consistency"]
    assert errs[5.0] < 0.8 * errs[0.0], errs


def test_conditioning_augmentation_reaches_the_unet_only_through_the_documented_path():
    hr, lr, cond = _photo_pair()
    seen = {}

    def spy(r_t, cond_in, t, level):
        seen.setdefault("cond_in", cond_in.clone())
        seen.setdefault("level", level.clone())
        return torch.zeros_like(r_t)

    proc = ProcessConfig()
    ac = make_train_scheduler(proc).alphas_cumprod
    for a in (0.0, 0.04):
        seen.clear()
        sample(None, cond, lr, process=proc, alphas_cumprod=ac, generators=[generator_for(7, 0)],
               sampler="ddim", steps=2, aug_level=a, projection=0.0, denoise_fn=spy)
        n_lr = torch.randn(tuple(lr.shape[1:]), generator=generator_for(7, 0))[None]
        expected = cond + upscale_bicubic(a * n_lr, tuple(cond.shape[-2:])) if a else cond
        torch.testing.assert_close(seen["cond_in"], expected)
        assert seen["level"].tolist() == pytest.approx([a])
    # In the network, the level enters through the class embedding alone.
    torch.manual_seed(0)
    unet = ConditionalUNet(**TINY_UNET).eval()
    x = torch.randn(1, 3, 16, 16)
    c = torch.rand(1, 3, 16, 16)
    t = torch.tensor([500])
    calls = []
    hook = unet.unet.class_embedding.register_forward_hook(lambda m, i, o: calls.append(i[0]))
    with torch.no_grad():
        y0, y1 = unet(x, c, t, torch.tensor([0.0])), unet(x, c, t, torch.tensor([0.05]))
    hook.remove()
    assert not torch.allclose(y0, y1)
    assert len(calls) == 2
    # the embedding's input is the sinusoidal projection of aug * AUG_EMBED_SCALE
    proj = unet.unet.time_proj(torch.tensor([0.05 * AUG_EMBED_SCALE]))
    torch.testing.assert_close(calls[1], proj)


def test_gaussian_blur_identity_at_zero_and_keeps_constants():
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(2)), x)
    y = gaussian_blur(torch.full((2, 3, 12, 12), 0.3), torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(y, torch.full_like(y, 0.3))
    b = gaussian_blur(x, torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(b[0], x[0])
    assert b[1].std() < x[1].std()


def test_projection_pulls_the_low_frequencies_onto_the_input():
    hr, lr, cond = _photo_pair(48)
    noisy = (hr + 0.1 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0)))

    def err(x):
        return float(consistency_error(x, lr))

    assert err(project(noisy, lr, 1.0)) < 0.2 * err(noisy)
    assert err(project(noisy, lr, 0.5)) < err(noisy)
    torch.testing.assert_close(project(noisy, lr, 0.0), noisy)


def _tiny_stage():
    torch.manual_seed(0)
    return SR3Stage(ConditionalUNet(**TINY_UNET), ProcessConfig(), SamplingConfig(), scale=2.0)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 4, 0.0), ("ddim", 3, 1.0), ("dpm", 3, 0.0),
                                               ("dpm_karras", 3, 0.0)])
def test_samplers_are_reproducible_per_sample_seed(sampler, steps, eta):
    _, lr, cond = _photo_pair()
    stage = _tiny_stage()
    kw = dict(cond=cond, sampler=sampler, steps=steps, eta=eta, projection=0.5)
    a = stage(lr, num_samples=3, seed=5, **kw)
    b = stage(lr, num_samples=3, seed=5, **kw)
    assert a.shape == (1, 3, 3, 32, 32)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # sample i depends on (seed, i) only: not on N or on the batch it is drawn in
    c = stage(lr, num_samples=1, seed=5, max_batch=1, **kw)
    torch.testing.assert_close(c[:, 0], a[:, 0], atol=1e-5, rtol=0)
    assert (a[0, 0] - a[0, 1]).abs().max() > 1e-3
    d = stage(lr, num_samples=1, seed=6, **kw)
    assert (d[0, 0] - a[0, 0]).abs().max() > 1e-3


def test_dpm_karras_reaches_the_clean_end_where_dpm_stops_at_sigma_one_third():
    proc = ProcessConfig()
    even, karras = make_sampler("dpm", proc, 10), make_sampler("dpm_karras", proc, 10)
    assert len(even.timesteps) == len(karras.timesteps) == 10
    assert int(even.timesteps[-1]) == 99 and float(even.sigmas[-2]) == pytest.approx(0.34, abs=0.01)
    assert int(karras.timesteps[0]) == 999 and int(karras.timesteps[-1]) == 0
    assert float(karras.sigmas[-2]) == pytest.approx(0.01, abs=0.001)


@pytest.mark.parametrize("sampler,kept", [("dpm", (0.4, 0.6)), ("dpm_karras", (0.9, 1.1))])
def test_fine_detail_survives_only_a_sampler_that_ends_near_sigma_zero(sampler, kept):
    """Residuals drawn from N(0, v) with v = 0.04 (faint detail) and the exact denoiser for
    that prior: the ODE sampler's output should have std sqrt(v). ``dpm``'s last call, at
    sigma 0.34, returns the posterior mean, which keeps about half of it (the cause of the
    shipped stages' low HF ratio); ``dpm_karras`` keeps it all."""
    proc = ProcessConfig(prediction_type="epsilon")
    abar_all = make_train_scheduler(proc).alphas_cumprod
    v = 0.04

    def oracle(r_t, cond_in, t, level):  # eps = (r_t - sqrt(abar) E[r_0 | r_t]) / sqrt(1 - abar)
        a = abar_all[t].view(-1, 1, 1, 1)
        r0 = a.sqrt() * v / (a * v + 1 - a) * r_t
        return (r_t - a.sqrt() * r0) / (1 - a).sqrt()

    cond = torch.full((1, 3, 64, 64), 0.5)
    lr = torch.full((1, 3, 32, 32), 0.5)
    x = sample(None, cond, lr, process=proc, alphas_cumprod=abar_all, generators=[generator_for(0, 0)],
               sampler=sampler, steps=10, projection=0.0, clip=False, denoise_fn=oracle)
    std = float(((x - cond) * proc.residual_scale).std())
    assert kept[0] < std / v ** 0.5 < kept[1]


def test_full_projection_makes_samples_lr_consistent():
    from cascade.metrics import lr_psnr

    _, lr, cond = _photo_pair()
    stage = _tiny_stage()  # untrained: its raw samples are noise around the conditioning
    free = stage(lr, cond=cond, sampler="ddim", steps=3, projection=0.0)[:, 0]
    tied = stage(lr, cond=cond, sampler="ddim", steps=3, projection=1.0)[:, 0]
    assert float(lr_psnr(tied, lr=lr, scale=2)) > float(lr_psnr(free, lr=lr, scale=2)) + 5


def test_odd_sizes_are_padded_and_cropped_back():
    _, lr, _ = _photo_pair()
    stage = _tiny_stage()
    stage.upsampler = __import__("cascade.upsamplers", fromlist=["x"]).BicubicUpsampler()
    x = stage(lr[..., :13, :11], sampler="ddim", steps=2)
    assert x.shape == (1, 1, 3, 26, 22) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_bad_sampler_settings_are_refused():
    proc = ProcessConfig()
    with pytest.raises(ConfigError, match="unknown sampler"):
        make_sampler("euler", proc, 10)
    with pytest.raises(ConfigError, match="steps"):
        make_sampler("ddim", proc, 0)
    stage = _tiny_stage()
    _, lr, cond = _photo_pair()
    with pytest.raises(ConfigError, match="projection"):
        stage(lr, cond=cond, projection=1.5, steps=2)
    with pytest.raises(ConfigError, match="num_samples"):
        stage(lr, cond=cond, num_samples=0)
    with pytest.raises(ConfigError, match="unknown sampling option"):
        stage(lr, cond=cond, stepz=3)


def test_task_batches_are_aligned_and_keyed_by_step_and_rank(tmp_path):
    from cascade.diffusion.task import SR3Task
    from cascade.train import load_train_config

    from cascade.data.datasets import resolve_dataset
    from cascade.data.io import save_image

    save_image(resolve_dataset("builtin")[1]["image"][:, :96, :128], tmp_path / "d" / "a.png")
    cfg = load_train_config(TINY, [f"out={tmp_path}", "data.hr_patch=32",
                                   f"data.train=[{tmp_path / 'd'}]"])
    task = SR3Task(cfg)
    b = task.batch(3, 0, 0, torch.device("cpu"))
    hr, lr, cond = b["batch"]["hr"], b["batch"]["lr"], b["batch"]["cond"]
    assert hr.shape == cond.shape == (2, 3, 32, 32) and lr.shape == (2, 3, 16, 16)
    # the LR crop is D of the HR crop (away from the crop border, where D saw outside pixels)
    d = imresize(hr, size=(16, 16))
    assert float((d - lr)[..., 3:-3, 3:-3].abs().max()) < 3 / 255
    # cond = U(lr) of the whole photo, cropped: equal to U(lr crop) away from the border
    torch.testing.assert_close(cond[..., 6:-6, 6:-6], upscale_bicubic(lr, (32, 32))[..., 6:-6, 6:-6],
                               atol=1e-5, rtol=0)
    again = task.batch(3, 0, 0, torch.device("cpu"))
    torch.testing.assert_close(again["draws"]["noise"], b["draws"]["noise"])
    other = task.batch(3, 0, 1, torch.device("cpu"))
    assert not torch.equal(other["batch"]["hr"], hr)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from cascade.train import train

    out = tmp_path_factory.mktemp("sr3") / "run"
    return train(TINY, [f"out={out}"])


@pytest.mark.slow
def test_tiny_training_run_exports_a_loadable_stage(tiny_checkpoint):
    from cascade.diffusion.pretrained import load_sr3
    from cascade.inr.pretrained import load_lainr

    assert (tiny_checkpoint.parent / "val" / "step_0000006.png").is_file()
    stage = load_sr3(tiny_checkpoint)
    _, lr, _ = _photo_pair()
    x = stage(lr, num_samples=2, seed=0, steps=2, sampler="ddim")
    assert x.shape == (1, 2, 3, 32, 32)
    with pytest.raises(CheckpointError, match="not 'lainr'"):
        load_lainr(tiny_checkpoint)
    with pytest.raises(CheckpointError, match="not 'sr3'"):
        load_sr3("checkpoints/lainr")


@pytest.mark.slow
def test_sr3_is_an_evaluation_method_at_x2_and_through_its_upsampler_at_x4(tiny_checkpoint):
    from cascade.errors import ScaleError
    from cascade.evaluation.methods import make_method

    hr, lr, _ = _photo_pair(64)
    m = make_method("sr3", {"checkpoint": str(tiny_checkpoint), "sampler": "ddim", "steps": 2,
                            "num_samples": 2, "projection": 1.0})
    assert m.settings["num_samples"] == 2 and m.settings["steps"] == 2 and m.num_params > 0
    x2 = m(lr, (64, 64))
    assert x2.shape == (1, 3, 64, 64)
    # the output is the mean of the two samples
    both = m.stage(lr, num_samples=2, seed=0, sampler="ddim", steps=2, projection=1.0)
    torch.testing.assert_close(x2, both.mean(1))
    lr4 = imresize(hr, size=(16, 16))
    assert m(lr4, (64, 64)).shape == (1, 3, 64, 64)
    with pytest.raises(ScaleError, match="multiples of 2"):
        m(lr, (63, 64))
    with pytest.raises(ConfigError, match="unknown setting 'stepz'.*did you mean 'steps'"):
        make_method("sr3", {"checkpoint": str(tiny_checkpoint), "stepz": 3})


def test_conditioning_cache_is_recomputed_when_the_lainr_weights_change(tmp_path):
    """The cache is keyed by the conditioning checkpoint's weights, not only its path: a
    LAINR retrained into the same folder must not reuse the old conditioning."""
    from cascade.checkpoint import save_checkpoint
    from cascade.data.datasets import resolve_dataset
    from cascade.data.io import save_image
    from cascade.diffusion.task import SR3Task
    from cascade.train import load_train_config

    from conftest import tiny_lainr

    save_image(resolve_dataset("builtin")[1]["image"][:, :64, :64], tmp_path / "d" / "a.png")
    ck = tmp_path / "lainr"
    cfg = load_train_config(TINY, [f"out={tmp_path / 'run'}", "data.hr_patch=32",
                                   f"data.train=[{tmp_path / 'd'}]",
                                   "data.cache=true", "conditioning.upsampler=lainr",
                                   f"conditioning.checkpoint={ck}"])
    conds = []
    for head in ("0", "0.05"):  # bicubic-exact heads, then random ones, saved at the same path
        lainr, lcfg = tiny_lainr((f"model.head_init_std={head}",))
        save_checkpoint(ck, lainr.state_dict(), lcfg, "lainr")
        conds.append(SR3Task(cfg).images[0]["cond"])
        assert (tmp_path / "run" / "conditioning.safetensors").is_file()
    assert float((conds[0] - conds[1]).abs().max()) > 1e-3
    torch.testing.assert_close(SR3Task(cfg).images[0]["cond"], conds[1])  # and reused when equal
