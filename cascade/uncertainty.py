"""Uncertainty from N samples: spread, intervals, conformal calibration and its scores.

Pure functions on tensors (docs/pipeline.md, "Uncertainty and calibration"), used by the pipeline and by
``cascade calibrate``:

* ``RunningMoments``: the per-pixel mean and std of samples as they arrive (Welford), so
  N samples of a large image never have to be held at once;
* ``quantile_interval``: the empirical [alpha/2, 1 - alpha/2] quantiles over the samples;
* ``std_interval`` / ``normalized_scores`` / ``conformal_factor``: split conformal
  calibration (Angelopoulos and Bates, "A Gentle Introduction to Conformal Prediction",
  2021) of the interval ``mean +- lambda * max(std, floor)``: the score of a pixel is
  ``|y - mean| / max(std, floor)`` and ``lambda`` is the ceil((n+1)(1-alpha))-th smallest
  score on held-out pixels, so a new pixel is covered with probability >= 1 - alpha;
* ``coverage``, ``mean_width``, ``spearman`` (rank correlation, average ranks for ties) and
  ``sparsification`` / ``ause`` (Ilg et al. 2018: remove the most uncertain pixels first and
  compare the remaining mean error with the oracle that removes the largest errors first);
* ``detail_contrast``: the map's mean on the most detailed blocks of a reference image over
  its mean on the flattest ones (does the std light up on edges and textures?).

Every function reduces over all the elements it is given (pixels x channels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RunningMoments", "ause", "block_detail", "conformal_factor", "coverage",
           "detail_contrast", "mean_width",
           "normalized_scores", "quantile_interval", "rankdata", "sample_std", "sparsification",
           "spearman", "std_interval"]


class RunningMoments:
    """Per-element mean and variance of samples added in batches (Welford's update).

    ``update(x)`` takes (R, ...) rows; ``mean`` and ``std()`` have the shape of one row.
    Float32 accumulators on the CPU: two copies of one sample, whatever N is.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self._m2: Tensor | None = None

    def update(self, x: Tensor) -> None:
        for row in x.detach().to("cpu", torch.float32):
            self.count += 1
            if self.mean is None:
                self.mean, self._m2 = row.clone(), torch.zeros_like(row)
                continue
            delta = row - self.mean
            self.mean += delta / self.count
            self._m2 += delta * (row - self.mean)

    def std(self, ddof: int = 1) -> Tensor:
        """Standard deviation over the samples so far (zeros while count <= ddof)."""
        if self.mean is None or self._m2 is None:
            raise ValueError("no samples yet")
        if self.count <= ddof:
            return torch.zeros_like(self.mean)
        return (self._m2.clamp_min(0) / (self.count - ddof)).sqrt()


def sample_std(samples: Tensor, ddof: int = 1) -> Tensor:
    """Std over dim 0 of (N, ...) samples; zeros for a single sample."""
    if samples.shape[0] <= ddof:
        return torch.zeros_like(samples[0])
    return samples.std(0, correction=ddof)


def quantile_interval(samples: Tensor, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
    """The empirical alpha/2 and 1 - alpha/2 quantiles over dim 0 of (N, ...) samples
    (linear interpolation between order statistics, numpy's default)."""
    _check_alpha(alpha)
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=samples.dtype, device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=0)
    return lo, hi


def normalized_scores(mean: Tensor, std: Tensor, target: Tensor, floor: float) -> Tensor:
    """Conformal scores ``|target - mean| / max(std, floor)``, same shape as ``mean``."""
    return (target - mean).abs() / std.clamp_min(floor)


def conformal_factor(scores: Tensor, alpha: float) -> float:
    """Split-conformal quantile: the ceil((n+1)(1-alpha))-th smallest of n scores (inf when
    n is too small for that level). Intervals ``mean +- factor * max(std, floor)`` then cover
    an exchangeable new element with probability >= 1 - alpha."""
    _check_alpha(alpha)
    flat = scores.detach().reshape(-1).to("cpu", torch.float64)
    n = flat.numel()
    k = math.ceil((n + 1) * (1 - alpha))
    if n == 0 or k > n:
        return math.inf
    return float(torch.kthvalue(flat, k).values)


def std_interval(mean: Tensor, std: Tensor, factor: float, floor: float
                 ) -> tuple[Tensor, Tensor]:
    """``mean -+ factor * max(std, floor)``."""
    half = factor * std.clamp_min(floor)
    return mean - half, mean + half


def coverage(lo: Tensor, hi: Tensor, target: Tensor) -> float:
    """Fraction of elements with lo <= target <= hi."""
    return float(((target >= lo) & (target <= hi)).double().mean())


def mean_width(lo: Tensor, hi: Tensor) -> float:
    return float((hi - lo).double().mean())


def rankdata(x: Tensor) -> Tensor:
    """Ranks 1..n of the flattened ``x`` (float64), ties sharing their average rank."""
    flat = x.detach().reshape(-1).to("cpu", torch.float64)
    n = flat.numel()
    order = torch.argsort(flat, stable=True)
    sorted_x = flat[order]
    _, counts = torch.unique_consecutive(sorted_x, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # 1-based rank of each tie group's last element
    avg = ends - (counts.double() - 1) / 2  # average of ranks end-count+1 .. end
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(avg, counts)
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two equally sized tensors (nan if one is constant)."""
    if a.numel() != b.numel():
        raise ValueError(f"spearman: {a.numel()} vs {b.numel()} elements")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float((ra.square().sum() * rb.square().sum()).sqrt())
    return float((ra * rb).sum()) / denom if denom > 0 else math.nan


def _kept_mean_error(order_key: Tensor, error: Tensor, steps: int) -> Tensor:
    """Mean error of what is left after removing the k*n/steps elements with the largest
    ``order_key`` (k = 0..steps-1); elements tied in the key are removed at their average
    error, so the order inside a tie does not matter."""
    key = order_key.reshape(-1).to("cpu", torch.float64)
    err = error.reshape(-1).to("cpu", torch.float64)
    n = key.numel()
    order = torch.argsort(key, descending=True, stable=True)
    k_sorted, e_sorted = key[order], err[order]
    _, counts = torch.unique_consecutive(k_sorted, return_counts=True)
    ends = torch.cumsum(counts, 0)
    starts = ends - counts
    group_sum = torch.zeros(len(counts), dtype=torch.float64).index_add_(
        0, torch.repeat_interleave(torch.arange(len(counts)), counts), e_sorted)
    cum_at_start = torch.cumsum(group_sum, 0) - group_sum  # error removed before each group
    total = float(err.sum())
    removed_n = torch.tensor([(k * n) // steps for k in range(steps)], dtype=torch.long)
    g = torch.searchsorted(ends, removed_n, right=True).clamp(max=len(counts) - 1)
    inside = (removed_n - starts[g]).double()
    removed = cum_at_start[g] + inside * group_sum[g] / counts[g].double()
    return (total - removed) / (n - removed_n).double()


def sparsification(uncertainty: Tensor, error: Tensor, steps: int = 50
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(fractions removed, curve, oracle): the mean error of the elements left after removing
    the most uncertain (curve) or the largest-error (oracle) fraction, for fractions
    0, 1/steps, ..., (steps-1)/steps, both divided by the mean error of all elements."""
    if uncertainty.numel() != error.numel() or error.numel() == 0:
        raise ValueError("sparsification: uncertainty and error need the same, non-zero size")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    curve = _kept_mean_error(uncertainty, error, steps)
    oracle = _kept_mean_error(error, error, steps)
    base = float(curve[0]) or 1.0
    fractions = torch.arange(steps, dtype=torch.float64) / steps
    return fractions, curve / base, oracle / base


def ause(uncertainty: Tensor, error: Tensor, steps: int = 50) -> float:
    """Area between the sparsification curve and its oracle (trapezoids over the fractions):
    0 when the uncertainty ranks the errors perfectly; larger is worse."""
    fractions, curve, oracle = sparsification(uncertainty, error, steps)
    return float(torch.trapezoid(curve - oracle, fractions))


def block_detail(image: Tensor, block: int = 8) -> Tensor:
    """Std of the luma (BT.601) in each ``block`` x ``block`` block of ``image`` (3, H, W):
    (H // block, W // block); the part past the last whole block is left out."""
    from cascade.metrics.fidelity import rgb_to_y

    H, W = image.shape[-2] // block * block, image.shape[-1] // block * block
    y = rgb_to_y(image[None, :, :H, :W].double())
    m = F.avg_pool2d(y, block)
    return (F.avg_pool2d(y * y, block) - m * m).clamp_min(0).sqrt()[0, 0]


def detail_contrast(std_map: Tensor, reference: Tensor, block: int = 8,
                    share: float = 0.2, floor: float = 1e-3) -> float:
    """Does an uncertainty map (H, W) light up on detail? Its mean on the ``share`` most
    detailed ``block``-pixel blocks of ``reference`` (3, H, W; detail = local std of the luma)
    over its mean on the ``share`` flattest blocks: 1 = no preference, > 1 = edges and
    textures. Both means count as at least ``floor`` (a quarter of a grey level), so a map
    that is exactly 0 on flat blocks gives a large finite ratio, not 1e12."""
    if std_map.shape[-2:] != reference.shape[-2:]:
        raise ValueError(f"detail_contrast: map {tuple(std_map.shape)} and reference "
                         f"{tuple(reference.shape)} differ in size")
    detail = block_detail(reference, block).flatten()
    H, W = reference.shape[-2] // block * block, reference.shape[-1] // block * block
    if detail.numel() < 2:
        raise ValueError(f"detail_contrast needs at least two {block}x{block} blocks")
    s = F.avg_pool2d(std_map[None, None, :H, :W].double(), block).flatten()
    order = torch.argsort(detail, stable=True)
    n = max(1, int(share * order.numel()))
    return float(s[order[-n:]].mean().clamp_min(floor) / s[order[:n]].mean().clamp_min(floor))


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        from cascade.errors import ConfigError

        raise ConfigError(f"alpha={alpha} is outside (0, 1); use e.g. 0.1 for 90% intervals")
