"""cascade.data.augment: colour maps (permutation, hue rotation, saturation) and their use
on the diffusion stage's aligned training crops."""

import math

import numpy as np
import pytest
import torch

from cascade.data import augment as A
from cascade.data.degrade import imresize
from cascade.errors import ConfigError
from cascade.data.photos import colour_variants, saturation


def test_hue_rotation_is_a_rotation_about_gray():
    for deg in (0, 37, 90, 200):
        R = A.hue_rotation_matrix(deg).double()
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-6)
        assert math.isclose(float(torch.linalg.det(R)), 1.0, abs_tol=1e-6)
        assert torch.allclose(R @ torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(A.hue_rotation_matrix(0), torch.eye(3), atol=1e-7)


def test_hue_rotation_by_120_cycles_the_channels():
    # A rotation by 120 degrees about (1,1,1) maps the R axis to G, G to B, B to R.
    R = A.hue_rotation_matrix(120)
    assert torch.allclose(R, A.permutation_matrix((2, 0, 1)), atol=1e-6)
    x = torch.tensor([0.9, 0.2, 0.1])
    assert torch.allclose(R @ x, torch.tensor([0.1, 0.9, 0.2]), atol=1e-6)


def test_permutation_and_saturation_matrices():
    x = torch.tensor([0.9, 0.2, 0.1])
    assert torch.equal(A.permutation_matrix((1, 0, 2)) @ x, torch.tensor([0.2, 0.9, 0.1]))
    g = x.mean()
    assert torch.allclose(A.saturation_matrix(0.0) @ x, g.expand(3))
    assert torch.allclose(A.saturation_matrix(1.0) @ x, x)
    assert torch.allclose(A.saturation_matrix(2.0) @ x, g + 2 * (x - g))


def test_colour_map_commutes_with_the_degradation():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 32, 32, generator=g) * 0.5 + 0.25
    M = A.hue_rotation_matrix(50) @ A.saturation_matrix(1.2)
    a = imresize(A.apply_colour(hr, M, clip=False), scale=0.5)
    b = A.apply_colour(imresize(hr, scale=0.5), M, clip=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_apply_colour_clips_unless_told():
    x = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    y = A.apply_colour(x, A.saturation_matrix(2.0), clip=False)
    assert float(y.min()) < 0 and float(y.max()) > 1
    z = A.apply_colour(x, A.saturation_matrix(2.0))
    assert float(z.min()) == 0 and float(z.max()) == 1


def test_draw_colour_matrix_off_on_and_reproducible():
    off = A.ColourAugConfig()
    assert not A.colour_active(off) and A.colour_active(A.ColourAugConfig(sat_prob=0.1))
    assert torch.equal(A.draw_colour_matrix(off, torch.Generator().manual_seed(0)), torch.eye(3))
    on = A.ColourAugConfig(perm_prob=1.0)
    Ms = [A.draw_colour_matrix(on, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(not torch.equal(M, torch.eye(3)) for M in Ms)  # never the identity
    assert all(torch.equal(M.sum(0), torch.ones(3)) for M in Ms)  # permutations
    assert len({tuple(M.flatten().tolist()) for M in Ms}) == 5
    # the same number of draws whatever is applied: the stream after it is the same
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    A.draw_colour_matrix(on, g1)
    A.draw_colour_matrix(A.ColourAugConfig(hue_prob=1.0, sat_prob=1.0), g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_colour_variants_and_saturation():
    rng = np.random.default_rng(0)
    img = rng.random((8, 8, 3)).astype(np.float32)
    v = colour_variants(img)
    assert sorted(v) == sorted(["permrbg", "permgrb", "permgbr", "permbrg", "permbgr",
                                "hue90", "hue180", "hue270"])
    np.testing.assert_array_equal(v["permbgr"], img[..., ::-1])
    gray = np.full((2, 2, 3), 0.4, np.float32)
    np.testing.assert_allclose(colour_variants(gray)["hue90"], gray, atol=1e-6)
    assert float(saturation(gray).max()) == 0
    assert saturation(np.array([[[1.0, 0.0, 0.0]]]))[0, 0] == 1


def _tiny_task(overrides: list[str], hr: torch.Tensor, cond=lambda x: x.clone()):
    """An x2 SR3 task (16 px HR crops, bicubic conditioning, nothing cached) over one image
    ``hr`` (1, 3, H, W), its conditioning ``cond`` of the cropped HR; the network is never
    built."""
    from cascade.config import load_config
    from cascade.data.degrade import degrade
    from cascade.diffusion.task import SR3Task, SR3TrainConfig

    cfg = load_config(SR3TrainConfig, None, [
        "model.block_out_channels=[8,16]", "model.down_block_types=[DownBlock2D,DownBlock2D]",
        "model.norm_num_groups=4", "data.hr_patch=16", "data.cache=false",
        "conditioning.upsampler=bicubic", *overrides])
    task = SR3Task.__new__(SR3Task)
    task.cfg, task.s = cfg, 2
    hr_c, lr = degrade(hr, 2.0)
    task.images = [{"hr": hr_c[0], "lr": lr[0], "cond": cond(hr_c[0])}]
    return task


def test_sr3_crops_keep_lr_consistent_under_colour():
    """With colour augmentation the crops stay aligned: LR = D(HR) where nothing clips."""
    from omegaconf import OmegaConf

    g = torch.Generator().manual_seed(0)
    hr = 0.3 + 0.4 * torch.rand(1, 3, 48, 48, generator=g)  # mid-tones: nothing clips
    task = _tiny_task(["data.colour.hue_prob=1.0", "data.colour.sat_prob=1.0",
                       "data.colour.sat_min=0.5", "data.colour.sat_max=0.9"], hr)
    cfg, hr_c = task.cfg, task.images[0]["hr"][None]
    b = task.sample_crops(4, torch.Generator().manual_seed(1))
    assert b["hr"].shape == (4, 3, 16, 16) and b["lr"].shape == (4, 3, 8, 8)
    # the maps change colours ...
    assert not torch.allclose(b["hr"].mean((2, 3)), hr_c.mean((2, 3)).expand(4, 3), atol=0.01)
    # ... and keep D(HR) = LR up to the uint8 rounding of the original LR (inside: at the
    # crop's border D of the crop pads where D of the photo saw its neighbours)
    d = imresize(b["hr"], size=(8, 8))
    assert float((d - b["lr"])[..., 2:-2, 2:-2].abs().max()) < 1 / 255
    assert OmegaConf.to_container(cfg.data.colour)["hue_prob"] == 1.0


def test_disc_kernel_is_a_normalised_disc():
    k = A.disc_kernel(1.0)
    assert k.shape == (3, 3) and abs(float(k.sum()) - 1) < 1e-6
    assert torch.allclose(k, k.T) and torch.allclose(k, k.flip(0))  # symmetric
    # the centre pixel lies wholly inside, the corners mostly outside
    assert float(k[1, 1]) > float(k[0, 1]) > float(k[0, 0]) > 0
    big = A.disc_kernel(5.3)
    assert big.shape == (13, 13)
    # its support is the disc: the area of the weights' footprint is pi r^2 pixels
    area = float((big / big.max()).sum())
    assert abs(area - 3.14159 * 5.3**2) < 0.5
    assert float(big[0, 0]) == 0  # a corner of the square lies outside the disc


def _whole(x: torch.Tensor, radius: float) -> torch.Tensor:
    """A square (C, N, N) image defocused as one crop: borders replicated all round."""
    return A.defocus_crop(x, 0, 0, x.shape[-1], A.disc_kernel(radius))


def test_defocus_blurs_and_keeps_flat_and_mean():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 32, 32, generator=g)
    y = _whole(x, 3.0)
    assert y.shape == x.shape
    assert float(y.std()) < 0.5 * float(x.std())  # noise is averaged away
    flat = torch.full((3, 16, 16), 0.37)
    assert torch.allclose(_whole(flat, 4.5), flat, atol=1e-6)  # replicated borders
    # away from the border, a blur keeps the local mean of a linear ramp exactly
    ramp = torch.linspace(0, 1, 32).expand(1, 32, 32)
    assert torch.allclose(_whole(ramp, 2.5)[..., 4:-4, 4:-4], ramp[..., 4:-4, 4:-4], atol=1e-5)


def test_defocus_crop_blurs_with_the_surroundings():
    """Inside the image a crop is blurred with its neighbours (no streaked edges); at the
    image's own border the edge pixels are replicated."""
    g = torch.Generator().manual_seed(1)
    img = torch.rand(3, 40, 48, generator=g)
    k = A.disc_kernel(4.2)  # 11 x 11
    R = 5
    full = torch.nn.functional.pad(img[None], (R, R, R, R), mode="replicate")
    ref = torch.nn.functional.conv2d(full, k.expand(3, 1, 11, 11), groups=3)[0]  # (3, 40, 48)
    for top, left in [(10, 12), (0, 0), (24, 32), (3, 40)]:
        size = min(16, 48 - left, 40 - top)
        got = A.defocus_crop(img, top, left, size, k)
        assert got.shape == (3, size, size)
        assert torch.allclose(got, ref[:, top:top + size, left:left + size], atol=1e-5)
    # a crop blurred on its own (the border replicated) differs at its edges
    inner = A.defocus_crop(img, 10, 12, 16, k)
    alone = _whole(img[:, 10:26, 12:28], 4.2)
    assert float((inner - alone)[..., 0, :].abs().max()) > 0.02


def test_draw_defocus_radius():
    off = A.DefocusAugConfig()
    assert not A.defocus_active(off)
    on = A.DefocusAugConfig(prob=1.0, radius_min=2.0, radius_max=3.0)
    rs = [A.draw_defocus_radius(on, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(2.0 <= r <= 3.0 for r in rs) and len(set(rs)) == 20
    never = A.DefocusAugConfig(prob=1e-9)
    assert A.draw_defocus_radius(never, torch.Generator().manual_seed(0)) is None
    # two draws whether or not the crop is defocused
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    A.draw_defocus_radius(on, g1)
    A.draw_defocus_radius(never, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


@pytest.mark.parametrize("bad, match", [
    ({"prob": 2.0}, "probability"), ({"prob": -0.1}, "probability"),
    ({"prob": 0.5, "radius_min": 0.01}, "radius_min"),  # a disc under half a pixel: no blur
    ({"prob": 0.5, "radius_min": 3.0, "radius_max": 2.0}, "radius_min <= radius_max"),
    ({"prob": 0.5, "radius_max": float("inf")}, "64"),
    ({"prob": 0.5, "radius_max": float("nan")}, "radius_max")])
def test_bad_defocus_settings_fail_before_training(bad, match):
    from cascade.config import load_config
    from cascade.diffusion.task import SR3Task, SR3TrainConfig

    A.check_defocus(A.DefocusAugConfig(prob=1.0, radius_min=0.5, radius_max=64.0))  # the range
    with pytest.raises(ConfigError, match=match):
        A.check_defocus(A.DefocusAugConfig(**bad))
    # the stage refuses them when it is built, before it conditions any photo
    cfg = load_config(SR3TrainConfig, None, ["data.train=[no_such_dataset]"] + [
        f"data.defocus.{k}={v}" for k, v in bad.items()])
    with pytest.raises(ConfigError, match=match):
        SR3Task(cfg)


def test_sr3_crops_defocused_stay_aligned():
    """A defocused crop: HR and conditioning blurred alike, LR = D(blurred HR)."""
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(1, 3, 48, 48, generator=g)
    task = _tiny_task(["data.defocus.prob=1.0", "data.defocus.radius_min=2.0",
                       "data.defocus.radius_max=4.0"], hr,
                      cond=lambda x: x * 0.9 + 0.05)  # any image aligned with the HR
    b = task.sample_crops(4, torch.Generator().manual_seed(1))
    assert b["hr"].shape == (4, 3, 16, 16) and b["lr"].shape == (4, 3, 8, 8)
    assert float(b["hr"].std()) < 0.6 * float(hr.std())  # blurred
    d = imresize(b["hr"], size=(8, 8))
    assert float((d - b["lr"]).abs().max()) <= 0.5 / 255 + 1e-6  # LR made from the blurred HR
    # the same blur on both: the conditioning is still 0.9 HR + 0.05 (a linear map commutes)
    assert torch.allclose(b["cond"], b["hr"] * 0.9 + 0.05, atol=1e-5)


def test_crops_with_defocus_off_replay_the_runs_from_before_it():
    """Sums of the crops of a fixed seed, and the generator's next draw, as the code before
    defocus existed gave them (commit 577a5dc): an old run resumes on the same batches."""
    hr = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    task = _tiny_task(["data.colour.hue_prob=0.5"], hr, cond=lambda x: x * 0.5)
    gen = torch.Generator().manual_seed(7)
    b = task.sample_crops(6, gen)
    assert float(b["hr"].sum()) == pytest.approx(2304.96435546875, abs=1e-3)
    assert float(b["lr"].sum()) == pytest.approx(577.4548950195312, abs=1e-3)
    assert float(b["cond"].sum()) == pytest.approx(1153.528076171875, abs=1e-3)
    assert float(torch.rand((), generator=gen)) == pytest.approx(0.7737615704536438)


def test_a_mixed_batch_defocuses_some_crops_and_keeps_colour():
    """prob 0.5: some crops blurred, some sharp (LR = D(HR) in both); with a colour map the
    blurred conditioning is still the same map of the blurred HR."""
    hr = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(0))
    task = _tiny_task(["data.defocus.prob=0.5", "data.defocus.radius_min=3.0",
                       "data.defocus.radius_max=4.0", "data.colour.perm_prob=1.0"], hr)
    b = task.sample_crops(16, torch.Generator().manual_seed(2))
    # sharp crops keep the uniform noise's spread; blurred ones lose most of it
    spread = b["hr"].std(dim=(1, 2, 3))
    blurred = spread < 0.15
    assert 0 < int(blurred.sum()) < 16 and float(spread[~blurred].min()) > 0.25
    d = imresize(b["hr"], size=(8, 8))
    assert float((d - b["lr"])[blurred].abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.allclose(b["cond"], b["hr"], atol=1e-5)  # cond = HR here, permuted alike
