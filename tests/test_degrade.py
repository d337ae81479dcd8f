"""cascade.data.degrade: MATLAB-compatible bicubic imresize, the crop rule and degrade().

Two independent references:

* ``resize_right`` (numpy, float64, ``pad_mode='symmetric'``, cubic, antialiasing), which
  implements MATLAB's ``imresize``;
* ``matlab_imresize`` below: a plain-Python loop transcription of MATLAB's documented
  ``contributions`` algorithm (no torch, no vectorized weights).
"""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from resize_right import interp_methods
from resize_right import resize as rr_resize

from cascade.data.degrade import (
    check_scale,
    crop_to_scale,
    degrade,
    imresize,
    lr_size_for,
    upscale_bicubic,
)
from cascade.errors import CascadeError, ScaleError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny tensor ops (gradcheck above all): on a busy 2-core machine each
    OpenMP parallel region waits for a descheduled worker (gradcheck 0.5 s -> 9 s)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------- loop-based MATLAB reference


def keys_cubic(x: float) -> float:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def contributions(in_len: int, out_len: int, scale: float, antialias: bool = True):
    """MATLAB imresize's ``contributions``: per output pixel, (input indices, weights)."""
    kernel_width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        kernel_width /= scale
    # symmetric boundary: aux = [1:in_len, in_len:-1:1] (0-based here), edge repeated
    aux = list(range(in_len)) + list(range(in_len - 1, -1, -1))
    out = []
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - kernel_width / 2)
        taps = math.ceil(kernel_width) + 2
        idx, w = [], []
        for p in range(taps):
            j = left + p  # 1-based, may be out of range
            d = u - j
            w.append(scale * keys_cubic(scale * d) if shrink else keys_cubic(d))
            idx.append(aux[(j - 1) % (2 * in_len)])
        total = sum(w)
        out.append((idx, [wi / total for wi in w]))
    return out


def resize_axis0(a: np.ndarray, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    res = np.zeros((out_len,) + a.shape[1:])
    for i, (idx, w) in enumerate(contributions(a.shape[0], out_len, scale, antialias)):
        for j, wj in zip(idx, w):
            res[i] += wj * a[j]
    return res


def matlab_imresize(img: np.ndarray, size=None, scale=None, antialias=True) -> np.ndarray:
    """imresize(img, scale | [h w], 'bicubic') on a 2-D float64 array."""
    H, W = img.shape
    if size is not None:
        (oh, ow), (sh, sw) = size, (size[0] / H, size[1] / W)
    else:
        oh, ow, sh, sw = math.ceil(H * scale), math.ceil(W * scale), scale, scale
    a = resize_axis0(img, oh, sh, antialias)
    return resize_axis0(a.T, ow, sw, antialias).T


def rr(img: np.ndarray, size, pad_mode="symmetric") -> np.ndarray:
    return rr_resize(img, out_shape=size, interp_method=interp_methods.cubic,
                     antialiasing=True, pad_mode=pad_mode)


def rand64(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def ours(x: np.ndarray, **kw) -> np.ndarray:
    return imresize(torch.from_numpy(x), **kw).numpy()


# ----------------------------------------------------------- against resize_right (MATLAB)


@pytest.mark.parametrize("s", [2, 3, 4])
def test_downscale_matches_resize_right(s):
    x = rand64(24, 36, seed=s)
    size = (24 // s, 36 // s)
    ref = rr(x, size)
    got = ours(x, size=size)
    assert got.shape == ref.shape == size
    assert np.abs(got - ref).max() < 1e-6
    # the boundary rows/columns too (the padding convention lives there)
    edge = np.r_[0, size[0] - 1]
    assert np.abs(got[edge] - ref[edge]).max() < 1e-6
    assert np.abs(got[:, [0, -1]] - ref[:, [0, -1]]).max() < 1e-6
    # the scale= form (kernel from the scale) gives the same for integer factors
    assert np.abs(ours(x, scale=1 / s) - ref).max() < 1e-6


@pytest.mark.parametrize("s", [2, 3])
def test_upscale_matches_resize_right(s):
    x = rand64(8, 10, seed=10 + s)
    size = (8 * s, 10 * s)
    ref = rr(x, size)
    got = ours(x, size=size)
    assert got.shape == size
    assert np.abs(got - ref).max() < 1e-6
    assert np.abs(ours(x, scale=s) - ref).max() < 1e-6
    assert np.abs(upscale_bicubic(torch.from_numpy(x), size).numpy() - ref).max() < 1e-6


@pytest.mark.parametrize("size", [(12, 18), (16, 12), (48, 72)])
def test_boundary_convention_is_symmetric(size):
    """The test above can tell padding conventions apart: only 'symmetric' (edge pixel
    repeated, MATLAB) matches at the border; numpy 'reflect' (edge not repeated) and
    zero padding differ there while agreeing in the interior."""
    x = rand64(24, 36, seed=7)
    got = ours(x, size=size)
    for mode in ("reflect", "constant"):
        other = rr(x, size, pad_mode=mode)
        assert np.abs(got[4:-4, 4:-4] - other[4:-4, 4:-4]).max() < 1e-6
        assert np.abs(got - other).max() > 1e-3


# ----------------------------------------------------------- against the loop reference


@pytest.mark.parametrize("shape, size", [((7, 9), (3, 4)), ((10, 10), (25, 25)),
                                         ((24, 36), (8, 12)), ((5, 6), (13, 4)),
                                         ((9, 9), (2, 1))])
def test_size_matches_loop_reference(shape, size):
    x = rand64(*shape, seed=sum(shape))
    ref = matlab_imresize(x, size=size)
    got = ours(x, size=size)
    assert got.shape == ref.shape == size
    assert np.abs(got - ref).max() < 1e-9
    assert np.abs(rr(x, size) - ref).max() < 1e-9  # the two references agree


@pytest.mark.parametrize("scale", [0.37, 0.5, 1.7, 2.5])
def test_scale_matches_loop_reference(scale):
    x = rand64(7, 9, seed=3)
    ref = matlab_imresize(x, scale=scale)
    got = ours(x, scale=scale)
    assert got.shape == (math.ceil(7 * scale), math.ceil(9 * scale))
    assert np.abs(got - ref).max() < 1e-9


def test_scale_and_size_use_different_kernels():
    # 7x9 at scale 0.37 -> 3x4 (ceil), but the kernel is 0.37's, not 3/7 and 4/9
    x = rand64(7, 9, seed=4)
    a, b = ours(x, scale=0.37), ours(x, size=(3, 4))
    assert a.shape == b.shape == (3, 4)
    assert np.abs(a - b).max() > 1e-3


def test_no_antialias_matches_loop_reference():
    x = rand64(12, 16, seed=5)
    ref = matlab_imresize(x, size=(5, 7), antialias=False)
    got = imresize(torch.from_numpy(x), size=(5, 7), antialias=False).numpy()
    assert np.abs(got - ref).max() < 1e-9
    assert np.abs(got - ours(x, size=(5, 7))).max() > 1e-3  # antialiasing does something


# ------------------------------------------------------------------------- properties


@pytest.mark.parametrize("kw", [dict(size=(5, 7)), dict(size=(31, 40)), dict(scale=0.4),
                                dict(scale=2.7), dict(size=(13, 3)), dict(size=(1, 1))])
def test_constant_stays_constant(kw):
    x = torch.full((2, 13, 17), 0.3, dtype=torch.float64)
    y = imresize(x, **kw)
    assert torch.allclose(y, torch.full_like(y, 0.3), atol=1e-12, rtol=0)


def smooth(n: int = 64) -> torch.Tensor:
    """Low-frequency cosines of pixel-centre coordinates (even about the borders)."""
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64) + 0.5,
                          torch.arange(n, dtype=torch.float64) + 0.5, indexing="ij")
    return (0.5 + 0.3 * torch.cos(math.pi * y / n) * torch.cos(2 * math.pi * x / n)
            + 0.1 * torch.cos(3 * math.pi * y / n))


@pytest.mark.parametrize("s, tol", [(2, 2e-4), (4, 2e-3)])
def test_down_then_up_smooth_is_close(s, tol):
    x = smooth()
    lr = imresize(x, size=(64 // s, 64 // s))
    back = imresize(lr, size=(64, 64))
    assert back.shape == x.shape
    assert float((back - x).abs().max()) < tol
    # a high-frequency image is not recovered (the test can fail)
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None]).remainder(2).double()
    back_c = imresize(imresize(checker, size=(64 // s, 64 // s)), size=(64, 64))
    assert float((back_c - checker).abs().max()) > 0.4


def test_batched_and_leading_dims():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 15, generator=g, dtype=torch.float64)
    y = imresize(x, size=(5, 6))
    assert y.shape == (2, 3, 5, 6)
    for b in range(2):
        for c in range(3):
            assert torch.allclose(y[b, c], imresize(x[b, c], size=(5, 6)), atol=1e-12)
            ref = matlab_imresize(x[b, c].numpy(), size=(5, 6))
            assert np.abs(y[b, c].numpy() - ref).max() < 1e-9
    x5 = torch.rand(2, 2, 3, 8, 8, generator=g, dtype=torch.float64)
    y5 = imresize(x5, scale=2.5)
    assert y5.shape == (2, 2, 3, 20, 20)
    assert torch.allclose(y5[1, 0, 2], imresize(x5[1, 0, 2], scale=2.5), atol=1e-12)
    # a non-contiguous input
    xt = x.transpose(-1, -2)
    assert torch.allclose(imresize(xt, size=(6, 5)), imresize(xt.contiguous(), size=(6, 5)))


def test_gradcheck():
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: imresize(t, size=(3, 4)), (x,))
    assert torch.autograd.gradcheck(lambda t: imresize(t, size=(9, 11)), (x,))
    y = imresize(x, scale=0.5)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0


def test_dtypes():
    x64 = torch.rand(3, 10, 14, dtype=torch.float64)
    x32 = x64.float()
    y32 = imresize(x32, size=(4, 6))
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), imresize(x64, size=(4, 6)), atol=1e-5)
    assert imresize(x64, scale=2).dtype == torch.float64
    u8 = (x64 * 255).round().to(torch.uint8)
    yu = imresize(u8, size=(4, 6))
    assert yu.dtype == torch.float32
    assert torch.allclose(yu, imresize(u8.float(), size=(4, 6)))


def test_identity_size():
    x = torch.rand(3, 7, 9, dtype=torch.float64)
    assert torch.equal(imresize(x, size=(7, 9)), x)
    assert torch.equal(imresize(x, scale=1), x)


def test_imresize_argument_errors():
    x = torch.rand(3, 8, 8)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, scale=2, size=(16, 16))
    with pytest.raises(ValueError):
        imresize(torch.rand(8), scale=2)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ScaleError):
            imresize(x, scale=bad)
    with pytest.raises(ScaleError):
        imresize(x, size=(0, 4))


# ------------------------------------------------------------------ crop rule, degrade


def brute_lr_side(H: int, s: float) -> int:
    """Largest h <= H / s with h * s an integer (exact rational arithmetic)."""
    fs = Fraction(s).limit_denominator(1000)
    best = 0
    for h in range(1, H + 1):
        hs = h * fs
        if hs <= H and hs.denominator == 1:
            best = h
    return best


@pytest.mark.parametrize("s", [1, 1.25, 1.5, 2, 2.5, 3, 10 / 3, 4, 3.2])
@pytest.mark.parametrize("hw", [(101, 103), (64, 50), (37, 41)])
def test_lr_size_for_is_the_largest_valid(s, hw):
    h, w = lr_size_for(hw, s)
    assert (h, w) == (brute_lr_side(hw[0], s), brute_lr_side(hw[1], s))
    for side, hr in zip((h, w), hw):
        assert side * s <= hr + 1e-9
        assert abs(side * s - round(side * s)) < 1e-9


def test_scale_2_5_on_101x103():
    hr = torch.rand(3, 101, 103, generator=torch.Generator().manual_seed(0))
    assert lr_size_for((101, 103), 2.5) == (40, 40)  # 41 is odd: 41 * 2.5 not an integer
    c = crop_to_scale(hr, 2.5)
    assert c.shape == (3, 100, 100)
    assert torch.equal(c, hr[:, :100, :100])  # top-left corner
    hr_c, lr = degrade(hr, 2.5)
    assert hr_c.shape == (3, 100, 100) and lr.shape == (3, 40, 40)
    assert torch.equal(hr_c, hr[:, :100, :100])


@pytest.mark.parametrize("s", [2, 3, 4, 2.5, 1.5])
def test_degrade_values(s):
    g = torch.Generator().manual_seed(1)
    hr = torch.rand(2, 3, 31, 26, generator=g)
    hr_c, lr = degrade(hr, s)
    h, w = lr_size_for((31, 26), s)
    assert lr.shape == (2, 3, h, w) and lr.dtype == torch.float32
    assert hr_c.shape == (2, 3, round(h * s), round(w * s))
    k = lr * 255
    assert torch.equal(k, k.round()) or torch.allclose(k, k.round(), atol=1e-4)
    assert float(lr.min()) >= 0 and float(lr.max()) <= 1
    raw = imresize(hr_c, size=(h, w))
    assert float((lr - raw.clamp(0, 1)).abs().max()) <= 0.5 / 255 + 1e-6
    _, lr_raw = degrade(hr, s, quantize=False)
    assert torch.equal(lr_raw, raw)
    # against the independent reference, on one channel
    ref = matlab_imresize(hr_c[1, 2].double().numpy(), size=(h, w))
    assert np.abs(lr_raw[1, 2].double().numpy() - ref).max() < 1e-5


def test_degrade_uint8_grid_exact():
    hr = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(2))
    _, lr = degrade(hr, 4)
    assert lr.shape == (3, 10, 10)
    u = (lr * 255).round()
    assert torch.equal(u / 255, lr)  # exactly k / 255


@pytest.mark.parametrize("bad", [0.5, 0, -2, 0.999, float("nan"), float("inf"),
                                 float("-inf"), "abc", None])
def test_check_scale_rejects(bad):
    with pytest.raises(ScaleError) as ei:
        check_scale(bad)
    assert isinstance(ei.value, CascadeError)
    with pytest.raises(ScaleError):
        lr_size_for((100, 100), bad)
    with pytest.raises(ScaleError):
        degrade(torch.rand(3, 16, 16), bad)


def test_check_scale_accepts():
    assert check_scale(1) == 1.0
    assert check_scale("2.5") == 2.5
    assert check_scale(np.float32(4)) == 4.0


@pytest.mark.parametrize("hw, s", [((3, 3), 4), ((2, 100), 3), ((4, 4), 2.5), ((100, 1), 1.5)])
def test_too_small_raises(hw, s):
    with pytest.raises(ScaleError, match="too small"):
        lr_size_for(hw, s)
    with pytest.raises(ScaleError):
        degrade(torch.rand(3, *hw), s)


def test_irrational_scale_raises():
    with pytest.raises(ScaleError):
        lr_size_for((100, 100), math.pi)
