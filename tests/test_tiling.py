"""Tiled denoising (cascade.diffusion.tiling): layout, blending, and no seams."""

from __future__ import annotations

import pytest
import torch

from cascade.diffusion.process import ProcessConfig, make_train_scheduler
from cascade.diffusion.sampling import SamplingConfig
from cascade.diffusion.stage import SR3Stage
from cascade.diffusion.tiling import (
    TileConfig,
    TiledDenoiser,
    auto_tiling,
    blend_window,
    border_lines,
    fit_tile,
    layout,
    seam_ratio,
    tile_starts,
)
from cascade.diffusion.unet import ConditionalUNet
from cascade.seeding import generator_for
from conftest import TINY_UNET



@pytest.mark.parametrize("length,tile,overlap,multiple", [(288, 256, 32, 4), (1024, 256, 32, 4),
                                                          (100, 40, 8, 2), (64, 64, 16, 4),
                                                          (4096, 256, 32, 4)])
def test_layout_covers_every_pixel_with_the_overlap_on_the_phase_grid(length, tile, overlap,
                                                                      multiple):
    side = fit_tile(length, tile, overlap, multiple)
    assert side <= tile and side % multiple == 0 or side == length
    starts = tile_starts(length, side, overlap, multiple)
    assert starts[0] == 0 and starts[-1] + side == length
    assert all(s % multiple == 0 for s in starts)
    for a, b in zip(starts, starts[1:]):
        assert a + side - b >= overlap  # neighbours overlap by at least the overlap
    # no more tiles than the requested size would need
    assert len(starts) == len(tile_starts(length, min(tile, length), overlap, multiple))


def test_fit_tile_shrinks_tiles_to_the_image():
    assert fit_tile(288, 256, 32, 4) == 160  # two tiles either way: 2 x 160, not 2 x 256
    assert fit_tile(200, 256, 32, 4) == 200  # one tile: the image
    assert fit_tile(2048, 256, 32, 4) == 256


def test_blend_windows_are_positive_and_sum_to_one_across_an_overlap():
    w = blend_window((8, 10), (0, 4, 4, 0))[0, 0]
    assert float(w.min()) > 0 and float(w.max()) == 1.0
    assert torch.equal(w[:4, 4:], torch.ones(4, 6))  # flat away from the ramps
    left = blend_window((1, 8), (0, 0, 0, 4))[0, 0, 0, 4:]  # a falling ramp ...
    right = blend_window((1, 8), (0, 0, 4, 0))[0, 0, 0, :4]  # ... meets a rising one
    torch.testing.assert_close(left + right, torch.ones(4))


class _Pointwise(torch.nn.Module):
    """A network without spatial context: tiling must reproduce it exactly."""

    downsample_factor = 4

    def forward(self, x, c, t, a):
        return 2 * x + c * (t.view(-1, 1, 1, 1) / 1000) + a.view(-1, 1, 1, 1)


def test_tiled_output_equals_the_whole_for_a_pointwise_network():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(3, 3, 72, 100, generator=g), torch.rand(3, 3, 72, 100, generator=g)
    t, a = torch.tensor([10, 500, 999]), torch.tensor([0.0, 0.01, 0.02])
    net = _Pointwise()
    tiled = TiledDenoiser(net, tile=32, overlap=8, batch=5, global_norm=False)
    assert len(tiled.tiles_for(72, 100)) > 4
    torch.testing.assert_close(tiled(x, c, t, a), net(x, c, t, a), atol=1e-6, rtol=1e-6)
    whole = TiledDenoiser(net, tile=128, overlap=16)
    torch.testing.assert_close(whole(x, c, t, a), net(x, c, t, a), atol=0, rtol=0)
    assert whole.calls == 1


def test_auto_tiling():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_tiling(TileConfig(), cpu, 4) == (256, 32, 500_000)
    assert auto_tiling(TileConfig(), cuda, 4)[::2] == (768, 4_000_000)
    assert auto_tiling(TileConfig(tile=-1), cpu, 4) == (0, 0, 0)
    assert auto_tiling(TileConfig(tile=130, overlap=10, untiled=-1), cpu, 4) == (128, 12, 0)
    # a call of rows x pixels up to the untiled size runs whole, a larger one is tiled
    den = TiledDenoiser(_Pointwise(), 64, 16, untiled_pixels=128 * 128)
    assert len(den.tiles_for(128, 128, rows=1)) == 1 and len(den.tiles_for(128, 128, 2)) == 9


def test_seam_ratio_by_hand():
    ramp = torch.arange(16.0).repeat(16, 1)[None]  # (1, 16, 16): every x-step 1, y-step 0
    # border: the 16 x-steps at column 8 (all 1); elsewhere 14 x 16 x-steps of 1 and
    # 15 x 16 y-steps of 0: mean 224 / 464, ratio 464 / 224
    assert seam_ratio(ramp, [], [8]) == pytest.approx(464 / 224)
    texture = torch.rand(1, 256, 256, generator=torch.Generator().manual_seed(0))
    assert seam_ratio(texture, [128], [128]) == pytest.approx(1.0, abs=0.1)
    seam = texture.clone()
    seam[..., 128:] += 0.5  # a step edge at column 128
    assert seam_ratio(seam, [], [128]) > 1.4  # E|d + 0.5| = 0.54 vs E|d| = 1/3
    smooth = torch.arange(256.0).repeat(256, 1)[None] / 256
    line = smooth.clone()
    line[..., 126:130] *= 0.5  # a dark line on both sides of the border: no step across it
    assert seam_ratio(line, [], [128]) < 1.1 * seam_ratio(smooth, [], [128])  # band 1 misses it
    assert seam_ratio(line, [], [128], band=4) > 10 * seam_ratio(smooth, [], [128], band=4)


def _sample(stage, lr, cond, tile, overlap, seed=0):
    k = stage.knobs(sampler="dpm", steps=4, projection=0.0)
    den = TiledDenoiser(stage.unet, tile, overlap) if tile else None
    return stage.draw(lr, cond, [generator_for(seed, 0)], k, denoise_fn=den)


def test_tiled_sampling_matches_untiled_and_has_no_seam():
    """A tiny UNet on a real photo crop: with blending at every step the tiled sample stays
    close to the untiled one and its tile borders are no sharper than anywhere else; cutting
    the same tiles without overlap (no blending) leaves seams the measure sees."""
    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import imresize, upscale_bicubic

    torch.manual_seed(0)
    stage = SR3Stage(ConditionalUNet(**TINY_UNET), ProcessConfig(), SamplingConfig(), scale=2.0)
    hr = resolve_dataset("builtin")[0]["image"][None, :, 100:196, 150:246]  # (1, 3, 96, 96)
    lr = imresize(hr, size=(48, 48))
    cond = upscale_bicubic(lr, (96, 96))
    whole = _sample(stage, lr, cond, 0, 0)
    tiled = _sample(stage, lr, cond, 48, 16)
    tiles = TiledDenoiser(stage.unet, 48, 16).tiles_for(96, 96)
    assert len(tiles) == 9
    rows, cols = border_lines(tiles, 96, 96)
    assert (tiled - whole).abs().mean() < 0.2 * (whole - cond).abs().mean()
    assert seam_ratio(tiled, rows, cols) == pytest.approx(seam_ratio(whole, rows, cols), rel=0.1)


class _ZeroPaddedBlur(torch.nn.Module):
    """A network with a strong border effect: a 7x7 box blur with zero padding darkens the
    3 pixels along every edge of whatever it is given."""

    downsample_factor = 4

    def forward(self, x, c, t, a):
        k = torch.full((3, 1, 7, 7), 1 / 49)
        return torch.nn.functional.conv2d(x + c, k, padding=3, groups=3)


def test_blending_hides_the_border_effects_that_abutting_tiles_show():
    g = torch.Generator().manual_seed(0)
    x, c = torch.rand(1, 3, 96, 96, generator=g), torch.rand(1, 3, 96, 96, generator=g)
    t, a = torch.tensor([500]), torch.tensor([0.0])
    net = _ZeroPaddedBlur()
    whole = net(x, c, t, a)
    blended = TiledDenoiser(net, tile=48, overlap=24)
    out = blended(x, c, t, a)
    rows, cols = border_lines(blended.tiles_for(96, 96), 96, 96)
    for band in (1, 4):
        assert seam_ratio(out, rows, cols, band) == pytest.approx(
            seam_ratio(whole, rows, cols, band), rel=0.1)
    abutting = TiledDenoiser(net, tile=32, overlap=0)(x, c, t, a)
    edges = [32, 64]
    assert seam_ratio(abutting, edges, edges, 4) > 1.5 * seam_ratio(whole, edges, edges, 4)


def test_a_single_tile_is_the_untiled_sampler_exactly():
    torch.manual_seed(0)
    stage = SR3Stage(ConditionalUNet(**TINY_UNET), ProcessConfig(), SamplingConfig(), scale=2.0)
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    cond = torch.nn.functional.interpolate(lr, scale_factor=2, mode="bilinear")
    a = _sample(stage, lr, cond, 0, 0)
    b = _sample(stage, lr, cond, 64, 16)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert make_train_scheduler(ProcessConfig()).alphas_cumprod.shape[0] == 1000


def test_owned_parts_partition_the_image_at_every_resolution():
    tiles = layout(100, 140, 48, 16, 4)
    for f in (1, 2, 4):
        count = torch.zeros(100 // f, 140 // f)
        for t in tiles:
            y0, y1, x0, x1 = t.own
            assert y0 % f == 0 and y1 % f == 0 and x0 % f == 0 and x1 % f == 0
            count[(t.y + y0) // f:(t.y + y1) // f, (t.x + x0) // f:(t.x + x1) // f] += 1
        assert bool((count == 1).all())


class _NormNet(torch.nn.Module):
    """Pointwise but for its GroupNorm layers (one on pixels, one on an attention block's
    (N, C, L) tokens): tiles agree with the whole image only with global statistics."""

    downsample_factor = 4

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(2, 6)
        self.tokens = torch.nn.GroupNorm(3, 3)
        torch.nn.init.normal_(self.norm.weight, 1.0, 0.3, generator=None)

    def forward(self, x, c, t, a):
        h = self.norm(torch.cat([x, c], 1))[:, :3]  # (N, 3, H, W)
        N, C, H, W = x.shape
        # side by side, not in sequence: the collect pass sees both layers' true inputs
        return h + self.tokens(x.reshape(N, C, H * W)).reshape(N, C, H, W)


def test_global_group_norm_makes_tiles_agree_with_the_whole_image():
    torch.manual_seed(0)
    net = _NormNet()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 64, 96, generator=g)
    x[..., :40] = x[..., :40] * 3 + 1  # statistics that differ across the image
    c = torch.rand(2, 3, 64, 96, generator=g)
    t, a = torch.tensor([10, 900]), torch.tensor([0.0, 0.02])
    with torch.no_grad():
        whole = net(x, c, t, a)
        local = TiledDenoiser(net, 32, 8, batch=3, global_norm=False)(x, c, t, a)
        glob = TiledDenoiser(net, 32, 8, batch=3, global_norm=True)
        out = glob(x, c, t, a)
    assert float((local - whole).abs().mean()) > 0.05
    torch.testing.assert_close(out, whole, atol=1e-4, rtol=1e-4)
    assert glob.calls == 2 * -(-len(glob.tiles_for(64, 96)) // 1)  # two passes of 1 tile/call
    assert "forward" not in vars(net.norm)  # the layers are restored after the call


def test_statistics_from_a_spread_subset_of_tiles_cost_less_and_stay_close():
    torch.manual_seed(0)
    net = _NormNet()
    g = torch.Generator().manual_seed(4)
    x, c = torch.randn(1, 3, 128, 128, generator=g), torch.rand(1, 3, 128, 128, generator=g)
    t, a = torch.tensor([500]), torch.tensor([0.0])
    with torch.no_grad():
        whole = net(x, c, t, a)
        full = TiledDenoiser(net, 32, 8, batch=1)
        some = TiledDenoiser(net, 32, 8, batch=1, norm_tiles=8)
        a_full, a_some = full(x, c, t, a), some(x, c, t, a)
        local = TiledDenoiser(net, 32, 8, batch=1, global_norm=False)(x, c, t, a)
    n = len(full.tiles_for(128, 128))
    assert full.calls == 2 * n and some.calls == n + 8
    torch.testing.assert_close(a_full, whole, atol=1e-4, rtol=1e-4)
    # an estimate from half the image: 0.013 off, against 0.040 for per-tile statistics
    assert float((a_some - whole).abs().mean()) < 0.5 * float((local - whole).abs().mean())
