"""LAINR: Fourier features, local attention, encoder, locality-aware decoder, model."""

from __future__ import annotations

import dataclasses
import math

import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from cascade.data.coords import make_coord
from cascade.errors import ConfigError, ScaleError
from cascade.inr import LAINR, LAINRConfig, Latents
from cascade.inr.decoder import PIXELS_PER_UNIT, window_indices
from cascade.inr.encoder import pad_to_multiple
from cascade.nn.attention import LocalCrossAttention, local_attention
from cascade.nn.fourier import FourierFeatures, log_frequencies
from cascade.registry import MODELS

TINY = dict(dim=16, depth=1, d_state=4, expand=1, hidden=16, heads=2, n_freq_q=4, n_freq_l=4,
            patch_size=2, latent_stride=2)  # P = 4 LR pixels per latent token


def tiny(seed: int = 0, trained: bool = True, **kw) -> LAINR:
    """A tiny model; ``trained`` randomises all weights (incl. the zero RGB heads)."""
    torch.manual_seed(seed)
    model = LAINR(**{**TINY, **kw})
    if trained:
        with torch.no_grad():
            for p in model.decoder.band_out.parameters():
                p.normal_(0, 0.3)
    return model.eval()


def queries(B: int, Q: int, scale: float, lr_size: tuple[int, int], seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    coord = torch.rand(B, Q, 2, generator=g) * 2 - 1
    cell = torch.tensor([2 / (lr_size[0] * scale), 2 / (lr_size[1] * scale)]).expand(B, Q, 2)
    return coord, cell


# ---------------------------------------------------------------- Fourier features


def test_fourier_features_match_formula():
    ff = FourierFeatures(2, 5, sigma=32.0)
    x = torch.tensor([[0.3, -0.7], [1.5, 0.0]])
    w = np.logspace(0, np.log10(32.0), 5)
    ref = []
    for p in x.numpy().astype(np.float64):
        ref.append(np.concatenate([np.concatenate([np.sin(np.pi * w * c), np.cos(np.pi * w * c)])
                                   for c in p]))
    assert ff.out_dim == 20
    np.testing.assert_allclose(ff(x).numpy(), np.array(ref), atol=1e-5)
    f = log_frequencies(128.0, 3)
    np.testing.assert_allclose(f.numpy(), [1.0, math.sqrt(128.0), 128.0], rtol=1e-6)
    with pytest.raises(ValueError):
        ff(torch.zeros(3, 3))


# ---------------------------------------------------------------- local attention


def test_local_attention_matches_sdpa_and_ignores_masked_keys():
    torch.manual_seed(0)
    B, Q, K, H, D = 2, 5, 9, 2, 8
    q, k, v = torch.randn(B, Q, D), torch.randn(B, Q, K, D), torch.randn(B, Q, K, D)
    mask = torch.rand(B, Q, K) > 0.3
    mask[..., 0] = True
    out = local_attention(q, k, v, H, mask)  # (B, Q, D)
    # reference: one SDPA call per query with its own keys, heads as batch
    for b in range(B):
        for i in range(Q):
            qh = q[b, i].view(H, 1, D // H)
            kh = k[b, i].view(K, H, D // H).transpose(0, 1)
            vh = v[b, i].view(K, H, D // H).transpose(0, 1)
            ref = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[b, i].expand(H, 1, K))
            torch.testing.assert_close(out[b, i], ref.reshape(D), atol=1e-5, rtol=1e-5)
    v2 = torch.where(mask.unsqueeze(-1), v, torch.randn_like(v) * 100)
    torch.testing.assert_close(local_attention(q, k, v2, H, mask), out)
    attn = LocalCrossAttention(3, D, 4, H)
    assert attn(torch.randn(B, Q, 3), k, v, mask).shape == (B, Q, 4)


# ---------------------------------------------------------------- windows and padding


def test_window_indices_nearest_shifted_and_masked():
    u = torch.tensor([9.0, 1.0, 23.5])  # LR pixels; tokens centred at 2, 6, 10, 14, 18, 22
    idx, ok = window_indices(u, pixels=4, grid=6, n=3)
    assert idx.tolist() == [[1, 2, 3], [0, 1, 2], [3, 4, 5]]  # shifted at both borders
    assert ok.all()
    idx, ok = window_indices(torch.tensor([5.0]), pixels=4, grid=6, n=2)
    assert idx.tolist() == [[0, 1]]  # centres 2 and 6 are the two nearest to 5
    idx, ok = window_indices(torch.tensor([3.0]), pixels=4, grid=2, n=3)  # grid smaller than n
    assert idx.tolist() == [[0, 1, 1]] and ok.tolist() == [[True, True, False]]


def test_pad_to_multiple_reflects_and_handles_tiny_images():
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    y = pad_to_multiple(x, 4)
    assert y.shape == (1, 1, 4, 8)
    assert y[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]  # reflection, no repeated edge
    assert pad_to_multiple(torch.rand(1, 3, 1, 2), 4).shape == (1, 3, 4, 4)  # replicate fallback


# ---------------------------------------------------------------- model


@pytest.mark.parametrize("lr_size,scale", [((37, 53), 2.37), ((13, 10), 1.0), ((5, 7), 3.5),
                                           ((1, 2), 4.0)])
def test_shapes_odd_sizes_non_integer_scales(lr_size, scale):
    model = tiny()
    lr = torch.rand(2, 3, *lr_size)
    size = (round(lr_size[0] * scale), round(lr_size[1] * scale))
    out = model.upscale(lr, size)
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()
    lat = model.encode(lr)
    P = 4
    gh, gw = -(-lr_size[0] // P), -(-lr_size[1] // P)  # padded to a multiple of P
    assert lat.tokens.shape == (2, gh, gw, TINY["dim"]) and lat.centres.shape == (gh, gw, 2)
    # latent 0 covers LR pixels [0, P): its centre is at P/2 in the [-1, 1] frame
    first = torch.tensor([P / lr_size[0] - 1, P / lr_size[1] - 1])
    torch.testing.assert_close(lat.centres[0, 0], first)
    coord, cell = queries(2, 17, scale, lr_size)
    assert model(lr, coord, cell).shape == (2, 17, 3)


def test_local_pixel_path_gathers_the_right_neighbours():
    from cascade.inr.decoder import gather_local

    # Feature = the pixel's own (row, col): every gathered value says where it came from.
    h, w = 5, 7
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w),
                                indexing="ij")
    x = torch.stack([rows, cols]).float()[None]  # (1, 2, h, w)
    u = torch.tensor([[[0.2, 0.9], [2.5, 3.7], [4.99, 6.5]]])  # LR pixels, (y, x)
    vals, off = gather_local(x, u, 3)
    vals = vals.view(1, 3, 9, 2)  # (B, Q, k*k, C)
    assert vals[0, 1].tolist() == [[r, c] for r in (1, 2, 3) for c in (2, 3, 4)]
    # borders replicate
    assert vals[0, 0, 0].tolist() == [0, 0] and vals[0, 2, 8].tolist() == [4, 6]
    torch.testing.assert_close(off[0, 1], torch.tensor([0.0, 0.2]))
    assert off.abs().max() <= 0.5


def test_local_path_settings_are_checked():
    with pytest.raises(ConfigError, match="local_pixels"):
        LAINR(local_pixels=2)
    with pytest.raises(ConfigError, match="stem"):
        LAINR(stem_channels=-1)
    with pytest.raises(ConfigError, match="stem_blocks"):
        LAINR(stem_blocks=-1)
    with pytest.raises(ConfigError, match="stem_channels > 0"):
        LAINR(stem_channels=0, stem_blocks=2)  # blocks without a stem would be ignored
    plain = LAINR(**{**TINY, "stem_channels": 0})  # the pure latent-token decoder still works
    lr = torch.rand(1, 3, 12, 12)
    assert plain.upscale(lr, (30, 30)).shape == (1, 3, 30, 30)


def test_kernel_cache_key_tells_cpus_apart():
    """A -march=native build is keyed by the CPU: x86's model and flags, ARM's part and
    features (an ARM /proc/cpuinfo has no "flags" line), RISC-V's isa, and any other
    cpuinfo whole but for its clock."""
    from cascade.inr.native import _cpu_key

    arm = "processor\t: 0\nFeatures\t: fp asimd {}\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n"
    assert _cpu_key(arm.format("sve")) != _cpu_key(arm.format(""))
    assert _cpu_key(arm.format("sve").replace("0xd0c", "0xd40")) != _cpu_key(arm.format("sve"))
    x86 = "model name\t: Xeon\nflags\t\t: fpu avx2 {}\nbogomips\t: {}\n"
    assert _cpu_key(x86.format("avx512f", 1)) != _cpu_key(x86.format("", 1))
    assert _cpu_key(x86.format("", 1)) == _cpu_key(x86.format("", 2))  # not what varies
    rv = "processor\t: 0\nisa\t\t: rv64imafdc{}\nuarch\t\t: sifive,u74-mc\n"
    assert _cpu_key(rv.format("v")) != _cpu_key(rv.format(""))
    odd = "processor : 0\nvendor : Acme {}\ncpu MHz : {}\n"  # no known key: all but the clock
    assert _cpu_key(odd.format("A", 1)) != _cpu_key(odd.format("B", 1))
    assert _cpu_key(odd.format("A", 1)) == _cpu_key(odd.format("A", 2))


def test_new_stem_blocks_leave_a_trained_model_unchanged():
    """Residual stem blocks start as identities: a model grown from trained weights
    (train.init_strict=false) upscales exactly as before until the blocks learn; once they
    have, they change the output and widen what it depends on."""
    small = tiny()
    grown = tiny(seed=1, stem_blocks=2)
    missing = grown.load_state_dict(small.state_dict(), strict=False).missing_keys
    assert missing and all(".stem." in k for k in missing)
    lr = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(grown.upscale(lr, (50, 50)), small.upscale(lr, (50, 50)),
                                   rtol=0, atol=0)
        for block in grown.encoder.stem[-2:]:
            block.conv2.weight.normal_(0, 0.1)
        far = lr.clone()
        far[..., :, 10:] = torch.rand(1, 3, 20, 10)  # only columns >= 10 change
        # 3 stem convs reach 3 px to each side, each block 2 more: column 5 reaches column
        # 12, columns 0-2 no further than column 9
        a, b = grown.encode(lr).pixel_features, grown.encode(far).pixel_features
        assert not torch.allclose(a[..., :, 5], b[..., :, 5])
        torch.testing.assert_close(a[..., :, :3], b[..., :, :3], rtol=0, atol=0)


def test_default_config_shapes():
    model = LAINR()
    assert model.config == LAINRConfig()
    lr = torch.rand(1, 3, 48, 48)
    coord, cell = queries(1, 64, 2.0, (48, 48))
    assert model(lr, coord, cell).shape == (1, 64, 3)


def test_untrained_model_is_exactly_bicubic():
    model = tiny(trained=False, head_init_std=0.0)  # zero heads: nothing added to the base
    lr = torch.rand(2, 3, 11, 14)
    size = (26, 33)  # x2.36
    out = model.upscale(lr, size)
    grid = make_coord(size).flip(-1).view(1, *size, 2).expand(2, -1, -1, -1)  # (x, y) order
    base = F.grid_sample(lr, grid, mode="bicubic", padding_mode="border", align_corners=False)
    assert torch.equal(out, base)
    # grid_sample at pixel centres is the usual bicubic resize (an independent reference)
    ref = F.interpolate(lr, size=size, mode="bicubic", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_chunked_upscale_equals_unchunked():
    model = tiny()
    lr = torch.rand(2, 3, 9, 13)
    size = (21, 30)
    full = model.upscale(lr, size, chunk=10**6)
    for chunk in (1000, 97):
        torch.testing.assert_close(model.upscale(lr, size, chunk=chunk), full, atol=1e-6, rtol=0)
    bicubic = F.interpolate(lr, size=size, mode="bicubic", align_corners=False)
    assert not torch.allclose(full, bicubic, atol=1e-3)  # the decoder does contribute


def test_decoder_is_local():
    """With fixed latents, a query reads only its n x n window (and the 4x4 bicubic taps)."""
    model = tiny(neighbourhood=3)
    lr = torch.rand(1, 3, 40, 40)  # a 10 x 10 latent grid, P = 4
    lat = model.encode(lr)
    coord = torch.tensor([[[-0.5, -0.5]]])  # LR pixel (10, 10): latent (2, 2), window rows 1..3
    cell = torch.full((1, 1, 2), 2 / 80)
    out = model.decode(lat, coord, cell)

    far = lat.tokens.clone()
    far[:, 4:, :] += 10.0  # every token outside rows/cols 1..3
    far[:, :, 4:] += 10.0
    far[:, 0, :] += 10.0
    far[:, :, 0] += 10.0
    lr_far = lr.clone()
    lr_far[..., 20:, 20:] = 1 - lr_far[..., 20:, 20:]  # pixels far from (10, 10)
    moved = dataclasses.replace(lat, tokens=far, lr=lr_far)
    assert torch.equal(model.decode(moved, coord, cell), out)

    near = lat.tokens.clone()
    near[:, 3, 1] += 1.0  # inside the window
    assert not torch.allclose(model.decode(dataclasses.replace(lat, tokens=near), coord, cell), out)


def test_decoder_offsets_are_in_lr_pixels():
    """The same token content at the same pixel offset gives the same residual, whatever the
    image size: the decoder sees pixel units, not the image's normalised frame."""
    model = tiny()
    torch.manual_seed(3)
    tok = torch.randn(1, 3, 3, TINY["dim"])
    outs = []
    for n_tok in (3, 3 * 7):  # 12 and 84 LR pixels per side, same 3x3 tokens around the query
        h = 4 * n_tok
        grid = torch.zeros(1, n_tok, n_tok, TINY["dim"])
        grid[:, :3, :3] = tok
        centres = make_coord((n_tok, n_tok)).view(n_tok, n_tok, 2)  # P = 4 pixels each
        lat = Latents(tokens=grid, centres=centres, lr=torch.zeros(1, 3, h, h), pixels=4,
                      pixel_features=torch.zeros(1, model.config.stem_channels, h, h))
        coord = torch.tensor([[[-1 + 2 * 5.3 / h, -1 + 2 * 6.1 / h]]])  # LR pixel (5.3, 6.1)
        outs.append(model.decoder(lat, coord, torch.full((1, 1, 2), 0.5 * 2 / h)))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    assert PIXELS_PER_UNIT == 16.0


def test_cell_is_used_only_with_use_cell():
    lr = torch.rand(1, 3, 12, 12)
    coord, cell = queries(1, 20, 2.0, (12, 12))
    model = tiny(use_cell=True)
    assert not torch.allclose(model(lr, coord, cell), model(lr, coord, cell * 3))
    with pytest.raises(ValueError, match="cell"):
        model(lr, coord)
    model = tiny(use_cell=False)
    torch.testing.assert_close(model(lr, coord, cell), model(lr, coord, None))


def test_gradients_reach_every_parameter_after_one_step():
    model = tiny(trained=False).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lr = torch.rand(2, 3, 12, 16)
    coord, cell = queries(2, 64, 2.5, (12, 16))
    target = torch.rand(2, 64, 3)
    for step in range(2):
        opt.zero_grad()
        loss = (model(lr, coord, cell) - target).abs().mean()
        loss.backward()
        if step == 0:  # zero RGB heads: only they get gradient before the first update
            opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_state_dict_round_trip(tmp_path):
    model = tiny()
    path = tmp_path / "lainr.safetensors"
    save_file(model.state_dict(), str(path))
    other = LAINR.from_config(LAINRConfig(**TINY)).eval()
    other.load_state_dict(load_file(str(path)))
    lr = torch.rand(1, 3, 10, 9)
    assert torch.equal(other.upscale(lr, (17, 19)), model.upscale(lr, (17, 19)))


def test_registry_config_and_errors():
    model = MODELS.make({"name": "lainr", "args": TINY})
    assert isinstance(model, LAINR) and model.config.dim == 16
    cfg = OmegaConf.merge(OmegaConf.structured(LAINRConfig), {"dim": 16, "sigma_l": [64, 16, 4]})
    model = LAINR.from_config(cfg)
    assert model.config.sigma_l == (64.0, 16.0, 4.0) and len(model.decoder.band_out) == 3
    with pytest.raises(ConfigError, match="unknown LAINR option"):
        LAINR(dimm=3)
    with pytest.raises(ConfigError, match="divisible"):
        LAINR(hidden=30, heads=4)
    with pytest.raises(ScaleError):
        tiny().upscale(torch.rand(1, 3, 8, 8), (0, 5))
    with pytest.raises(ValueError, match="lr must be"):
        tiny().encode(torch.rand(1, 1, 8, 8))


# ------------------------------------------------------------------ the lattice decoder


@pytest.fixture(params=["torch", "native"])
def lattice_path(request, monkeypatch):
    """Runs a test once with the PyTorch lattice decoder and once with the fused C one
    (``cascade.inr.native``), which then must decode every lattice the test decodes."""
    import cascade.inr.lattice as lattice
    import cascade.inr.native as native

    if request.param == "torch":
        monkeypatch.setattr(native, "load_kernel", lambda: None)
        yield "torch"
        return
    if os.environ.get("CASCADE_NATIVE") == "0":
        pytest.skip("the fused decoder is turned off (CASCADE_NATIVE=0)")
    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler here: the fused decoder is not built")
    assert native.load_kernel() is not None, "a C compiler is here, yet the kernel did not build"
    decodes, used = [], []
    real_terms, real = lattice.lattice_terms, native.decode_native

    def count(*args, **kwargs):
        decodes.append(1)
        return real_terms(*args, **kwargs)

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        used.append(out is not None)
        return out

    monkeypatch.setattr(lattice, "lattice_terms", count)
    monkeypatch.setattr(native, "decode_native", spy)
    yield "native"
    assert len(used) == len(decodes) and all(used), "the fused decoder did not decode them all"


@pytest.mark.parametrize("kw,lr_hw,size", [
    ({}, (9, 13), (21, 30)),  # x2.3, non-square
    ({}, (5, 6), (30, 33)),  # a 2 x 2 latent grid: windows with masked repeats
    ({}, (1, 1), (3, 4)),
    ({}, (12, 12), (8, 7)),  # downscaling
    ({"use_cell": False, "local_pixels": 0}, (10, 11), (25, 17)),
    ({"neighbourhood": 2, "sigma_l": [64.0, 16.0, 4.0]}, (16, 10), (33, 40)),
    ({"neighbourhood": 5, "local_pixels": 5}, (14, 12), (40, 37)),
])
def test_lattice_decoder_matches_the_reference(kw, lr_hw, size, lattice_path):
    model = tiny(**kw)
    lr = torch.rand(2, 3, *lr_hw, generator=torch.Generator().manual_seed(3))
    if lattice_path == "native" and min(model.encode(lr).tokens.shape[1:3]) < \
            model.config.neighbourhood:
        pytest.skip("a latent grid under the window: the PyTorch decoder's case")
    ref = model.upscale_reference(lr, size)
    torch.testing.assert_close(model.upscale(lr, size), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.upscale(lr, size, chunk=7), ref, atol=1e-5, rtol=0)


def test_lattice_decoder_on_a_virtual_lattice(lattice_path):
    """The pipeline's LAINR step decodes the first rows/columns of a finer grid."""
    from cascade.inr.lattice import lattice_axes

    model = tiny()
    lr = torch.rand(1, 3, 13, 15, generator=torch.Generator().manual_seed(4))  # 4 x 4 tokens
    ys, xs, cell = lattice_axes((13, 17), (12.5, 16.25))
    out = model.decode_grid(model.encode(lr), ys, xs, cell, chunk=40)  # (1, 3, 13, 17)
    coord = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(1, -1, 2)
    ref = model.decode(model.encode(lr), coord, cell.expand(1, coord.shape[1], 2))
    torch.testing.assert_close(out, ref.transpose(1, 2).reshape(1, 3, 13, 17), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="chunk"):
        model.decode_grid(model.encode(lr), ys, xs, cell, chunk=0)


def test_lattice_groups_share_a_window_and_pad_little():
    from cascade.inr.lattice import _groups

    start = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    pos, valid = _groups(start, cap=8)
    # interior runs have 2 positions: the longer border runs are split into pieces of 2
    assert pos.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 10]]
    assert valid.tolist() == [[True, True]] * 5 + [[True, False]]
    assert all(len(set(start[p].tolist())) == 1 for p in pos)  # one window per group
    assert pos[valid].tolist() == list(range(len(start)))  # every position once, in order
    one = _groups(torch.tensor([4]), cap=8)
    assert one[0].tolist() == [[0]] and one[1].tolist() == [[True]]
    # a tiny latent grid: every row in one run; the cap bounds the group (and the memory)
    pos, valid = _groups(torch.zeros(10, dtype=torch.long), cap=4)
    assert pos.shape == (3, 4) and pos[valid].tolist() == list(range(10))


def test_block_diagonal_gives_every_heads_scores_in_one_matmul():
    from cascade.inr.lattice import _block_diagonal

    g = torch.Generator().manual_seed(0)
    heads, K, D = 4, 9, 32
    k, q = torch.randn(2, K, D, generator=g), torch.randn(2, 5, D, generator=g)
    s = (q @ _block_diagonal(k, heads)).view(2, 5, K, heads)
    ref = torch.einsum("bqhd,bkhd->bqkh", q.view(2, 5, heads, -1), k.view(2, K, heads, -1))
    torch.testing.assert_close(s, ref)


def test_lattice_decoder_on_a_larger_lattice_with_uneven_groups(lattice_path):
    """Many blocks, groups of 13 and 14 rows (x3.4), a batch of 2: still the reference."""
    model = tiny()
    lr = torch.rand(2, 3, 40, 46, generator=torch.Generator().manual_seed(5))
    size = (136, 157)
    ref = model.upscale_reference(lr, size)
    torch.testing.assert_close(model.upscale(lr, size), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.upscale(lr, size, chunk=300), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("once", [True, False])
def test_fused_decoder_matches_the_pytorch_one_on_the_shipped_shape(once, monkeypatch):
    """The shipped LAINR's widths (hidden 64, 4 heads, 3 x 3 window, two bands), a batch
    of 2, integer and fractional scales, rows in reverse order: the fused decoder equals
    the PyTorch one (1e-5), with the local path and the folded tokens computed for the whole
    input or per band of rows."""
    import cascade.inr.native as native
    from cascade.inr.lattice import decode_lattice, lattice_axes

    if native.load_kernel() is None:
        pytest.skip("no C compiler here: the fused decoder is not built")
    if not once:
        monkeypatch.setattr(native, "ONCE_BYTES", 0)
    model = tiny(dim=32, hidden=64, heads=4, n_freq_q=8, n_freq_l=16, stem_channels=8)
    lr = torch.rand(2, 3, 23, 19, generator=torch.Generator().manual_seed(6))
    latents = model.encode(lr)
    for size, flip in [((92, 76), False), ((57, 41), False), ((140, 30), False),
                       ((140, 30), True)]:  # x4, x2.5, more rows than a band, reversed
        ys, xs, cell = lattice_axes(size, size)
        ys = ys.flip(0) if flip else ys
        ref = decode_lattice(model.decoder, latents, ys, xs, cell, native=False)
        out = decode_lattice(model.decoder, latents, ys, xs, cell, native=True)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_fused_decoder_says_why_it_does_not_apply():
    from cascade.inr.lattice import decode_lattice, lattice_axes

    model = tiny()
    ys, xs, cell = lattice_axes((12, 12), (12, 12))
    small = model.encode(torch.rand(1, 3, 5, 6))  # a 2 x 2 latent grid under the 3 x 3 window
    with pytest.raises(RuntimeError, match="smaller than the decoder's window"):
        decode_lattice(model.decoder, small, ys, xs, cell, native=True)
    odd = tiny(hidden=12, heads=2)
    with pytest.raises(RuntimeError, match="not a multiple of 8"):
        decode_lattice(odd.decoder, odd.encode(torch.rand(1, 3, 16, 16)), ys, xs, cell,
                       native=True)


def test_without_a_compiler_lainr_warns_once_and_decodes_with_pytorch(monkeypatch, tmp_path):
    import cascade.inr.native as native

    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("CASCADE_CACHE", str(tmp_path))
    monkeypatch.delenv("CASCADE_NATIVE", raising=False)
    native.load_kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler.*decoding with PyTorch"):
            assert native.load_kernel() is None
        model = tiny()
        lr = torch.rand(1, 3, 9, 13, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(model.upscale(lr, (21, 30)),
                                   model.upscale_reference(lr, (21, 30)), atol=1e-5, rtol=0)
        monkeypatch.setenv("CASCADE_NATIVE", "0")  # off on purpose: no warning
        native.load_kernel.cache_clear()
        assert native.load_kernel() is None
    finally:
        native.load_kernel.cache_clear()


def test_fused_decoder_is_built_once_into_the_cache(monkeypatch, tmp_path):
    import cascade.inr.native as native

    if shutil.which(os.environ.get("CC") or "cc") is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("CASCADE_CACHE", str(tmp_path))
    monkeypatch.delenv("CASCADE_NATIVE", raising=False)
    native.load_kernel.cache_clear()
    try:
        assert native.load_kernel() is not None
        built = list(tmp_path.glob("lattice_kernel-*.so"))
        assert len(built) == 1 and list(tmp_path.iterdir()) == built  # no temporary left
        stamp = built[0].stat().st_mtime_ns
        native.load_kernel.cache_clear()
        assert native.load_kernel() is not None  # a second process: loaded, not rebuilt
        assert built[0].stat().st_mtime_ns == stamp
    finally:
        native.load_kernel.cache_clear()
