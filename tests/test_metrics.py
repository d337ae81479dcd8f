"""Fidelity metrics against scikit-image and hand-computed values (BasicSR protocol)."""

import math

import numpy as np
import pytest
import torch
from skimage import color, data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import cascade.metrics as M
from cascade.metrics import METRICS, lr_psnr, psnr, rgb_to_y, ssim
from cascade.metrics.fidelity import uint8_values as quantize


def photo(name: str, size: int = 64, top: int = 100, left: int = 150) -> torch.Tensor:
    """A (1, 3, size, size) crop of a scikit-image sample photo, RGB in [0, 1]."""
    arr = getattr(data, name)()[top:top + size, left:left + size]
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def y_numpy(x: torch.Tensor) -> np.ndarray:
    """Independent Y channel: skimage's BT.601 rgb2ycbcr of the uint8-rounded image."""
    u8 = quantize(x)[0].permute(1, 2, 0).numpy().astype(np.uint8)
    return color.rgb2ycbcr(u8)[..., 0]


def sk_ssim(a: np.ndarray, b: np.ndarray, **kw) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255, **kw)


@pytest.fixture
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    hr = photo("astronaut")
    g = torch.Generator().manual_seed(0)
    sr = (hr + 0.04 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return sr, hr


def test_registry_has_uniform_metrics():
    assert {"psnr", "ssim", "lr_psnr", "swd", "hf_ratio"} <= set(METRICS.names())
    sr, hr = photo("coffee", 48), photo("chelsea", 48)
    lr = sr[..., ::2, ::2]
    pytest.importorskip("cascade.data.degrade")
    for name in METRICS.names():
        if name == "lpips":  # needs pretrained weights: tests/test_perceptual.py
            continue
        v = METRICS.get(name)(sr, hr, lr=lr, scale=2.0, crop_border=None, y_channel=True)
        assert v.shape == (1,) and v.dtype == torch.float64, name


def test_rgb_to_y_matches_skimage():
    x = photo("coffee", 32)
    ours = rgb_to_y(x)[0, 0].numpy()
    ref = color.rgb2ycbcr(x[0].permute(1, 2, 0).double().numpy())[..., 0]
    np.testing.assert_allclose(ours, ref, atol=1e-9)
    assert rgb_to_y(x).dtype == torch.float64
    assert rgb_to_y(torch.zeros(1, 3, 2, 2)).unique().item() == pytest.approx(16.0)
    assert rgb_to_y(torch.ones(1, 3, 2, 2)).unique().item() == pytest.approx(235.0)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_psnr_ssim_match_skimage_on_photos(name):
    hr = photo(name)
    sr = hr.flip(-1) * 0.5 + hr * 0.5  # a structured, not noise-like, error
    a, b = y_numpy(sr), y_numpy(hr)
    assert psnr(sr, hr, crop_border=0).item() == pytest.approx(
        peak_signal_noise_ratio(b, a, data_range=255), abs=1e-6)
    assert ssim(sr, hr, crop_border=0).item() == pytest.approx(sk_ssim(a, b), abs=1e-4)


def test_psnr_ssim_match_skimage_on_random(pair):
    sr, hr = pair
    a, b = y_numpy(sr), y_numpy(hr)
    assert psnr(sr, hr, crop_border=0).item() == pytest.approx(
        peak_signal_noise_ratio(b, a, data_range=255), abs=1e-6)
    assert ssim(sr, hr, crop_border=0).item() == pytest.approx(sk_ssim(a, b), abs=1e-4)


def test_rgb_variants_match_skimage(pair):
    sr, hr = pair
    a = quantize(sr)[0].permute(1, 2, 0).numpy()
    b = quantize(hr)[0].permute(1, 2, 0).numpy()
    # RGB PSNR: one MSE over all channels; RGB SSIM: mean of per-channel SSIMs.
    assert psnr(sr, hr, crop_border=0, y_channel=False).item() == pytest.approx(
        peak_signal_noise_ratio(b, a, data_range=255), abs=1e-6)
    assert ssim(sr, hr, crop_border=0, y_channel=False).item() == pytest.approx(
        sk_ssim(a, b, channel_axis=-1), abs=1e-4)


def test_inputs_are_rounded_to_uint8():
    hr = photo("astronaut", 32)  # on the uint8 grid already
    g = torch.Generator().manual_seed(3)
    nudged = hr + 0.3 / 255 * torch.sign(torch.randn(hr.shape, generator=g))  # same uint8 levels
    assert psnr(nudged, hr).item() == math.inf
    assert ssim(nudged, hr).item() == pytest.approx(1.0, abs=1e-12)
    assert psnr(hr + 0.6 / 255, hr).item() < math.inf  # rounds to the next level
    assert psnr(hr * 0 - 0.5, hr * 0).item() == math.inf  # clamped to [0, 1] first


def test_identical_images():
    x = photo("astronaut", 32)
    assert psnr(x, x).item() == math.inf
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, x, y_channel=False).item() == pytest.approx(1.0, abs=1e-12)


def test_constant_offset_gives_analytic_psnr():
    hr = torch.full((1, 3, 16, 16), 100 / 255)
    sr = hr + 10 / 255
    # A uniform +10 on R, G, B moves Y by 10 * (65.481 + 128.553 + 24.966) / 255 = 10 * 219 / 255.
    dy = 10 * 219 / 255
    assert psnr(sr, hr).item() == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)
    assert psnr(sr, hr, y_channel=False).item() == pytest.approx(
        20 * math.log10(255 / 10), abs=1e-9)


def test_crop_border_is_honoured():
    hr = photo("coffee", 32)
    sr = hr.clone()
    sr[..., 2, 10] = 1 - sr[..., 2, 10]  # a difference in row 2 only
    assert psnr(sr, hr, crop_border=3).item() == math.inf
    assert psnr(sr, hr, scale=2.5).item() == math.inf  # default ceil(2.5) = 3
    assert math.isfinite(psnr(sr, hr, scale=2.0).item())
    assert math.isfinite(psnr(sr, hr, crop_border=0).item())
    assert ssim(sr, hr, crop_border=3).item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(sr, hr, crop_border=2).item() < 1.0
    # Cropping matches cropping by hand.
    s2 = ssim(sr[..., 4:-4, 4:-4], hr[..., 4:-4, 4:-4], crop_border=0)
    assert ssim(sr, hr, crop_border=4).item() == pytest.approx(s2.item(), abs=1e-12)


def test_batched_equals_per_image(pair):
    sr, hr = pair
    sr_b = torch.cat([sr, hr, sr.flip(-2)])
    hr_b = torch.cat([hr, hr, hr])
    for fn in (psnr, ssim):
        batched = fn(sr_b, hr_b, scale=2)
        assert batched.shape == (3,) and batched.dtype == torch.float64
        singles = torch.cat([fn(sr_b[i:i + 1], hr_b[i:i + 1], scale=2) for i in range(3)])
        torch.testing.assert_close(batched, singles, rtol=0, atol=1e-12)
    assert psnr(sr_b, hr_b)[1].item() == math.inf


def test_errors_are_clear():
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 18)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b)
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(a, b)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        psnr(a[0], a[0])
    with pytest.raises(ValueError, match="crop_border"):
        psnr(a, a, crop_border=8)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a, a, crop_border=3)
    with pytest.raises(ValueError, match="3 channels"):
        psnr(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match="lr="):
        lr_psnr(a, a)


def test_lr_psnr_is_psnr_of_downscaled_sr():
    degrade = pytest.importorskip("cascade.data.degrade")
    hr = photo("astronaut", 48)
    lr = degrade.imresize(hr, scale=0.5).clamp(0, 1)
    assert lr.shape[-2:] == (24, 24)
    # The ground truth is consistent with its own LR by construction.
    assert lr_psnr(hr, hr, lr=lr, scale=2).item() == math.inf
    g = torch.Generator().manual_seed(1)
    noisy = (hr + 0.1 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    expected = psnr(degrade.imresize(noisy, size=(24, 24)), lr, crop_border=0)
    torch.testing.assert_close(lr_psnr(noisy, hr, lr=lr, scale=2), expected, rtol=0, atol=1e-12)
    # Downscaling averages noise away, so LR-consistency beats HR fidelity here.
    assert lr_psnr(noisy, hr, lr=lr, scale=2).item() > psnr(noisy, hr, scale=2).item()
    batch = lr_psnr(torch.cat([noisy, hr]), None, lr=torch.cat([lr, lr]), scale=2)
    assert batch.shape == (2,) and batch[1].item() == math.inf
    with pytest.raises(ValueError, match="same B"):
        lr_psnr(torch.cat([noisy, hr]), None, lr=lr)


def test_package_exports():
    assert M.psnr is psnr and METRICS.get("psnr") is psnr
