"""LAINR: a Mamba encoder and a locality-aware decoder for arbitrary-scale resampling."""

from cascade.inr.decoder import PIXELS_PER_UNIT, LocalityAwareDecoder
from cascade.inr.encoder import Latents, MambaEncoder
from cascade.inr.model import LAINR, LAINRConfig, bicubic_at

__all__ = [
    "LAINR",
    "LAINRConfig",
    "Latents",
    "LocalityAwareDecoder",
    "MambaEncoder",
    "PIXELS_PER_UNIT",
    "bicubic_at",
]
