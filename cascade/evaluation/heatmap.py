"""Moved to ``cascade.heatmap`` (upscale and the app draw maps too); kept for old imports."""

from cascade.heatmap import display_map, map_vmax, save_heatmap

__all__ = ["display_map", "map_vmax", "save_heatmap"]
