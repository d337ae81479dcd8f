"""Uncertainty functions against hand computations (cascade.uncertainty)."""

from __future__ import annotations

import math

import pytest
import torch

from cascade.errors import ConfigError
from cascade.uncertainty import (
    RunningMoments,
    ause,
    conformal_factor,
    coverage,
    mean_width,
    normalized_scores,
    quantile_interval,
    rankdata,
    sample_std,
    sparsification,
    spearman,
    std_interval,
)


def test_running_moments_match_the_batch_formulas_in_any_batching():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 3, 5, 4, generator=g) * 0.3 + 0.5
    m = RunningMoments()
    for chunk in (x[:1], x[1:4], x[4:]):
        m.update(chunk)
    assert m.count == 7
    torch.testing.assert_close(m.mean, x.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(m.std(), x.std(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(sample_std(x), x.std(0))
    one = RunningMoments()
    one.update(x[:1])
    assert float(one.std().abs().max()) == 0 and float(sample_std(x[:1]).abs().max()) == 0


def test_std_by_hand():
    m = RunningMoments()
    m.update(torch.tensor([[1.0], [2.0], [4.0]]))  # mean 7/3, var (16/9+1/9+25/9)/2 = 7/3
    assert float(m.mean) == pytest.approx(7 / 3)
    assert float(m.std()) == pytest.approx(math.sqrt(7 / 3))


def test_quantile_interval_by_hand():
    s = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]).view(5, 1)
    lo, hi = quantile_interval(s, alpha=0.5)  # quantiles 0.25, 0.75 of 0..4: 1 and 3
    assert float(lo) == pytest.approx(1.0) and float(hi) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="alpha"):
        quantile_interval(s, alpha=1.5)


def test_conformal_factor_is_the_adjusted_order_statistic():
    scores = torch.arange(1, 11, dtype=torch.float32)  # 1..10
    # n = 10, alpha = 0.2: k = ceil(11 * 0.8) = 9 -> the 9th smallest score, 9
    assert conformal_factor(scores, 0.2) == 9.0
    # alpha = 0.05: k = ceil(11 * 0.95) = 11 > n: no finite factor guarantees the level
    assert conformal_factor(scores, 0.05) == math.inf


def test_conformal_intervals_cover_new_data_at_the_level():
    """Gaussian 'truth' around a mean with a known, varying std, and a std estimate that is
    off by a factor 3: calibration on one half fixes the coverage on the other."""
    g = torch.Generator().manual_seed(1)
    n = 200_000
    std_true = torch.rand(n, generator=g) * 0.1 + 0.01
    mean = torch.rand(n, generator=g)
    y = mean + std_true * torch.randn(n, generator=g)
    est = std_true / 3
    fit, test = slice(0, n // 2), slice(n // 2, n)
    lam = conformal_factor(normalized_scores(mean[fit], est[fit], y[fit], 1e-4), 0.1)
    assert lam == pytest.approx(3 * 1.645, rel=0.03)  # the Gaussian 90% quantile, times 3
    lo, hi = std_interval(mean[test], est[test], lam, 1e-4)
    assert coverage(lo, hi, y[test]) == pytest.approx(0.9, abs=0.005)
    assert mean_width(lo, hi) == pytest.approx(float((2 * lam * est[test]).mean()), rel=1e-6)


def test_std_floor_bounds_the_scores():
    s = normalized_scores(torch.zeros(2), torch.tensor([0.0, 0.5]), torch.tensor([0.1, 0.1]), 0.01)
    torch.testing.assert_close(s, torch.tensor([10.0, 0.2]))


def test_rankdata_averages_ties():
    r = rankdata(torch.tensor([10.0, 20.0, 10.0, 30.0, 20.0, 20.0]))
    assert r.tolist() == [1.5, 4.0, 1.5, 6.0, 4.0, 4.0]


def test_spearman_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(a, a**3) == pytest.approx(1.0)  # monotone: 1 whatever the shape
    assert spearman(a, -a) == pytest.approx(-1.0)
    # ranks (1..5) vs (2,1,4,3,5): d = (1,1,1,1,0), rho = 1 - 6*4/(5*24) = 0.8
    assert spearman(a, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)
    assert math.isnan(spearman(a, torch.ones(5)))


def test_sparsification_and_ause_by_hand():
    err = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # perfect ranking: the curve is the oracle, AUSE 0
    f, curve, oracle = sparsification(err, err, steps=4)
    assert f.tolist() == [0, 0.25, 0.5, 0.75]
    torch.testing.assert_close(oracle, torch.tensor([1.0, 0.8, 0.6, 0.4], dtype=torch.float64))
    torch.testing.assert_close(curve, oracle)
    assert ause(err, err, steps=4) == pytest.approx(0.0)
    # reversed ranking: kept means 2.5, 3, 3.5, 4 (/2.5) vs oracle 2.5, 2, 1.5, 1 (/2.5);
    # differences 0, .4, .8, 1.2; trapezoids of width .25: .25 * (.2 + .6 + 1.0) = .45
    worst = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert ause(worst, err, steps=4) == pytest.approx(0.45)
    # a constant uncertainty removes pixels at their average error: the curve stays at 1
    _, flat, _ = sparsification(torch.zeros(4), err, steps=4)
    torch.testing.assert_close(flat, torch.ones(4, dtype=torch.float64))


def test_informative_uncertainty_beats_random_uncertainty():
    g = torch.Generator().manual_seed(2)
    sigma = torch.rand(50_000, generator=g)
    err = (sigma * torch.randn(50_000, generator=g)).abs()
    assert spearman(sigma, err) > 0.3
    assert ause(sigma, err) < ause(torch.rand(50_000, generator=g), err)


def test_block_detail_is_the_local_std_of_the_luma():
    from cascade.metrics.fidelity import rgb_to_y
    from cascade.uncertainty import block_detail

    img = torch.rand(3, 17, 12, generator=torch.Generator().manual_seed(4))
    d = block_detail(img, 4)
    assert d.shape == (4, 3)  # the 17th row is left out
    y = rgb_to_y(img[None].double())[0, 0]
    assert float(d[1, 2]) == pytest.approx(float(y[4:8, 8:12].std(correction=0)), abs=1e-9)


def test_detail_contrast_prefers_maps_that_follow_the_detail():
    from cascade.uncertainty import detail_contrast

    g = torch.Generator().manual_seed(5)
    ref = torch.full((3, 32, 32), 0.5)
    ref[:, :, 16:] += 0.3 * torch.rand(3, 32, 16, generator=g)  # textured right half
    follows = torch.zeros(32, 32)
    follows[:, 16:] = 0.02
    follows[:, :16] = 0.01
    assert detail_contrast(follows, ref) == pytest.approx(2.0)
    assert detail_contrast(torch.full((32, 32), 0.01), ref) == pytest.approx(1.0)
    assert detail_contrast(follows.flip(1), ref) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="differ in size"):
        detail_contrast(follows[:8], ref)
