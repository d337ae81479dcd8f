"""Registered metric functions, one small module per family.

Every registered metric has the same call signature, so an evaluation loop can call them
all alike; each ignores the arguments it does not need::

    fn(sr, hr, *, lr=None, scale=1.0, crop_border=None, y_channel=True) -> Tensor (B,)

``sr``/``hr`` are (B, 3, H, W) RGB in [0, 1]; the result is float64, one value per image.
``crop_border=None`` means ``ceil(scale)`` (0 for ``lr_psnr``).
"""

from cascade.registry import Registry

METRICS: Registry = Registry("metric")

# Imported for their registrations; after METRICS exists, which they import.
from cascade.metrics import fidelity, realism, spectrum  # noqa: E402,F401
from cascade.metrics.fidelity import lr_psnr, psnr, rgb_to_y, ssim  # noqa: E402
from cascade.metrics.realism import hf_ratio, swd, swd_sets  # noqa: E402
from cascade.metrics.spectrum import hf_energy, radial_power_spectrum  # noqa: E402

__all__ = ["METRICS", "hf_energy", "hf_ratio", "lr_psnr", "psnr", "radial_power_spectrum",
           "rgb_to_y", "ssim", "swd", "swd_sets"]
