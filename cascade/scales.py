"""How a scale is written in file names, folder names and tables."""

from __future__ import annotations

__all__ = ["format_scale"]


def format_scale(scale: float) -> str:
    """2.0 -> '2', 2.5 -> '2.5' (file names and tables)."""
    return f"{scale:g}"
