"""Registered metric functions, one small module per family.

Every registered metric has the same call signature, so an evaluation loop can call them
all alike; each ignores the arguments it does not need::

    fn(sr, hr, *, lr=None, scale=1.0, crop_border=None, y_channel=True) -> Tensor (B,)

``sr``/``hr`` are (B, 3, H, W) RGB in [0, 1]; the result is float64, one value per image.
``crop_border=None`` means ``ceil(scale)`` (0 for ``lr_psnr`` and ``lpips``). A metric whose
pretrained backbone is unavailable returns None (recorded as null, shown as "n/a").

``fid`` and ``kid`` (``SET_METRICS``) compare whole sets, not image pairs:
``set_scores(sr_patches, hr_patches)`` in :mod:`cascade.metrics.perceptual`.
"""

from cascade.registry import Registry

METRICS: Registry = Registry("metric")

# Imported for their registrations; after METRICS exists, which they import.
from cascade.metrics import fidelity, perceptual, realism, spectrum  # noqa: E402,F401
from cascade.metrics.fidelity import lr_psnr, psnr, rgb_to_y, ssim  # noqa: E402
from cascade.metrics.perceptual import SET_METRICS, lpips, lpips_map, set_scores  # noqa: E402
from cascade.metrics.realism import hf_ratio, swd, swd_sets  # noqa: E402
from cascade.metrics.spectrum import hf_energy, radial_power_spectrum  # noqa: E402

__all__ = ["METRICS", "SET_METRICS", "hf_energy", "hf_ratio", "lpips", "lpips_map", "lr_psnr",
           "psnr", "radial_power_spectrum", "rgb_to_y", "set_scores", "ssim", "swd", "swd_sets"]
