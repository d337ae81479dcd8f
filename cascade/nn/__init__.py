"""Shared layers: Mamba (fast path / pure-PyTorch path) and its selective scan."""

from cascade.nn.mamba import BiMamba, Mamba
from cascade.nn.scan import scan_, selective_scan, selective_scan_ref

__all__ = ["BiMamba", "Mamba", "scan_", "selective_scan", "selective_scan_ref"]
