"""Offline realism measures (SWD, high-frequency ratio) and the power spectrum they rest on."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats
from skimage import data

from cascade.metrics import hf_energy, hf_ratio, radial_power_spectrum, swd, swd_sets
from cascade.metrics.realism import _sliced_w1, laplacian_pyramid, num_levels


def photo(name: str = "astronaut", size: int = 96, top: int = 100, left: int = 150) -> torch.Tensor:
    arr = getattr(data, name)()[top:top + size, left:left + size]
    return torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Independent blur (scipy), per channel."""
    out = ndimage.gaussian_filter(x[0].double().numpy(), (0, sigma, sigma), mode="reflect")
    return torch.from_numpy(out).float()[None]


def noise(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


# ---- spectrum ------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [(0, 10), (6, 8), (20, 0), (3, 4)])
def test_sinusoid_peaks_in_its_bin(k):
    n = 64
    ky, kx = k
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    wave = 0.5 + 0.4 * torch.cos(2 * math.pi * (ky * yy + kx * xx) / n)
    freqs, power = radial_power_spectrum(wave.expand(3, n, n))
    assert freqs.shape == power.shape == (n // 2 + 1,)
    assert freqs[0] == 0 and freqs[-1] == pytest.approx(0.5)
    f0 = math.hypot(ky, kx) / n
    assert freqs[power.argmax()].item() == pytest.approx(f0, abs=0.5 / n)


def test_power_spectrum_is_variance_normalized():
    # Parseval: mean power over all bins = variance (the windowed one; white noise has no
    # spatial structure for the window to change).
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 128, 128, generator=g)
    total = hf_energy(x, cutoff=-1.0)
    assert total.item() == pytest.approx(x.var().item(), rel=0.05)
    # White noise: flat spectrum, so energy above radius r is the area outside the circle.
    r = 0.25
    expected = 1 - math.pi * r**2
    assert (hf_energy(x, r) / total).item() == pytest.approx(expected, abs=0.03)


def test_hf_energy_of_sinusoid_sits_on_its_side_of_the_cutoff():
    n = 64
    xx = torch.arange(n).expand(n, n)
    wave = (0.5 + 0.4 * torch.cos(2 * math.pi * 12 * xx / n)).expand(1, 3, n, n)  # f = 0.1875
    total = hf_energy(wave, -1.0)
    assert (hf_energy(wave, 0.15) / total).item() > 0.99
    assert (hf_energy(wave, 0.25) / total).item() < 0.01
    assert hf_energy(wave[0], 0.15).shape == (1,)


def test_radial_spectrum_of_batch_is_mean_of_images():
    x = torch.cat([photo("astronaut", 32), photo("coffee", 32)])
    _, p_batch = radial_power_spectrum(x)
    _, p0 = radial_power_spectrum(x[0])
    _, p1 = radial_power_spectrum(x[1])
    torch.testing.assert_close(p_batch, (p0 + p1) / 2)


# ---- hf_ratio ------------------------------------------------------------------------------

def test_hf_ratio_orders_blur_and_noise():
    hr = photo()
    assert hf_ratio(hr, hr, scale=4).item() == pytest.approx(1.0)
    r_blur = hf_ratio(gaussian_blur(hr, 1.0), hr, scale=4).item()
    r_noise = hf_ratio(noise(hr, 0.05), hr, scale=4).item()
    assert r_blur < 0.5 < 1.0 < r_noise
    batch = hf_ratio(torch.cat([hr, gaussian_blur(hr, 1.0)]), torch.cat([hr, hr]), scale=4)
    assert batch.shape == (2,) and batch[1].item() == pytest.approx(r_blur)


def test_hf_ratio_of_bicubic_upsampling_is_well_below_one():
    degrade = pytest.importorskip("cascade.data.degrade")
    hr = photo(size=128)
    lr = degrade.imresize(hr, scale=0.25)
    up = degrade.imresize(lr, size=(128, 128))
    assert hf_ratio(up, hr, scale=4).item() < 0.3


def test_hf_ratio_rejects_bad_input():
    x = photo(size=16)
    with pytest.raises(ValueError, match="shapes differ"):
        hf_ratio(x, x[..., 1:], scale=2)
    with pytest.raises(ValueError, match="scale"):
        hf_ratio(x, x, scale=0)


# ---- SWD -----------------------------------------------------------------------------------

def test_num_levels():
    assert num_levels(128, 128) == 4  # 128, 64, 32, 16
    assert num_levels(96, 200) == 3  # 96, 48, 24
    assert num_levels(31, 31) == 2  # 31 -> 16 (odd sizes round up, as cv2.pyrDown)
    assert num_levels(32, 40) == 2
    assert num_levels(12, 12) == 1


def _pyramid_reference(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """ProGAN's numpy pyramid (scipy.ndimage.convolve, mode 'mirror'), even sizes."""
    k = np.float64([[1, 4, 6, 4, 1]])
    k = (k.T @ k / 256.0)[None, None]

    def down(a):
        return ndimage.convolve(a, k, mode="mirror")[:, :, ::2, ::2]

    def up(a):
        s = a.shape
        res = np.zeros((s[0], s[1], 2 * s[2], 2 * s[3]))
        res[:, :, ::2, ::2] = a
        return ndimage.convolve(res, k * 4.0, mode="mirror")

    pyr = [x.astype(np.float64)]
    for _ in range(1, levels):
        pyr.append(down(pyr[-1]))
        pyr[-2] = pyr[-2] - up(pyr[-1])
    return pyr


def test_laplacian_pyramid_matches_progan_reference():
    x = photo(size=64).double()
    ours = laplacian_pyramid(x, 3)
    ref = _pyramid_reference(x.numpy(), 3)
    assert [tuple(p.shape[-2:]) for p in ours] == [(64, 64), (32, 32), (16, 16)]
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-12)


def test_sliced_w1_matches_scipy_wasserstein():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64)
    b = 2 * torch.randn(50, 4, generator=g, dtype=torch.float64) + 1
    dirs = torch.randn(4, 3, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=0)
    ref = np.mean([stats.wasserstein_distance((a @ d).numpy(), (b @ d).numpy()) for d in dirs.T])
    assert _sliced_w1(a, b, dirs).item() == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("normalize", ["reference", "each"])
def test_swd_is_zero_for_identical_and_deterministic(normalize):
    hr = photo(size=48)
    assert swd(hr, hr, normalize=normalize).item() == 0.0
    sr = noise(hr, 0.05)
    first = swd(sr, hr, normalize=normalize)
    assert first.shape == (1,) and first.dtype == torch.float64 and first.item() > 0
    assert swd(sr, hr, normalize=normalize).item() == first.item()
    assert swd(sr, hr, normalize=normalize, seed=1).item() != first.item()


def test_swd_grows_with_blur_on_a_photo():
    hr = photo(size=128)
    values = [swd(gaussian_blur(hr, s), hr).item() for s in (0.5, 1.0, 2.0)]
    assert 0 < values[0] < values[1] < values[2]


def test_swd_batched_equals_per_image_and_sets():
    hr = torch.cat([photo("astronaut", 32), photo("coffee", 32)])
    sr = torch.cat([gaussian_blur(hr[:1], 1.0), noise(hr[1:], 0.1)])
    batched = swd(sr, hr)
    singles = torch.cat([swd(sr[i:i + 1], hr[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-9)
    torch.testing.assert_close(swd_sets([sr[1]], [hr[1]]), singles[1], rtol=0, atol=1e-9)


def test_swd_sets():
    hr = [photo("astronaut", 48), photo("coffee", 40)[0], photo("chelsea", 64)]
    assert swd_sets(hr, hr).item() == 0.0
    mild = swd_sets([gaussian_blur(x if x.ndim == 4 else x[None], 0.7) for x in hr], hr)
    strong = swd_sets([gaussian_blur(x if x.ndim == 4 else x[None], 2.0) for x in hr], hr)
    assert mild.ndim == 0 and 0 < mild.item() < strong.item()
    with pytest.raises(ValueError, match="equal size"):
        swd_sets(hr, hr[:2])


def test_swd_rejects_bad_input():
    x = photo(size=16)
    with pytest.raises(ValueError, match="shapes differ"):
        swd(x, x[..., 1:])
    with pytest.raises(ValueError, match="7x7"):
        swd(x[..., :6, :6], x[..., :6, :6])
    with pytest.raises(ValueError, match="normalize"):
        swd(x, x, normalize="both")


def test_laplacian_pyramid_reconstructs_odd_sizes():
    from cascade.metrics.realism import _pyr_up

    x = torch.rand(2, 3, 45, 37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pyr = laplacian_pyramid(x, 3)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(45, 37), (23, 19), (12, 10)]
    rec = pyr[-1]
    for band in reversed(pyr[:-1]):
        rec = band + _pyr_up(rec, tuple(band.shape[-2:]))
    torch.testing.assert_close(rec, x, rtol=0, atol=1e-12)
