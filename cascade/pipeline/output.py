"""``CascadeOutput``: what one run of the cascade returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from cascade.errors import CascadeError
from cascade.pipeline.plan import Plan
from cascade.uncertainty import quantile_interval, std_interval

__all__ = ["CascadeOutput"]


@dataclass
class CascadeOutput:
    """What ``pipe(image, ...)`` returns. Tensors are float32 on the CPU, in [0, 1]."""

    plan: Plan
    mean: Tensor  # (3, H, W) per-pixel mean of the N samples
    std: Tensor  # (3, H, W) per-pixel std (N - 1 in the denominator; zeros for N = 1)
    first: Tensor  # (3, H, W) sample 0
    samples: Tensor | None  # (N, 3, H, W), None when the run did not keep them
    num_samples: int
    settings: dict[str, Any]
    timings: dict[str, float]
    calibration: dict[str, Any] | None = None  # the conformal factor this run's intervals use

    @property
    def image(self) -> Tensor:
        """The output image the settings ask for: the mean or the first sample."""
        return self.first if self.settings.get("output") == "sample" else self.mean

    def quantiles(self, alpha: float = 0.1) -> tuple[Tensor, Tensor]:
        """Empirical (alpha/2, 1 - alpha/2) quantiles over the samples: (3, H, W) each."""
        if self.samples is None:
            raise CascadeError("this run did not keep its samples; call the pipeline with "
                               "keep_samples=True for quantile intervals")
        return quantile_interval(self.samples, alpha)

    def interval(self) -> tuple[Tensor, Tensor]:
        """Calibrated interval ``mean +- factor * max(std, floor)`` (``cascade calibrate``)."""
        if self.calibration is None:
            raise CascadeError("this pipeline is not calibrated for these stages; run "
                               "'cascade calibrate --data DIR --scale S' first")
        c = self.calibration
        return std_interval(self.mean, self.std, c["factor"], c["std_floor"])
