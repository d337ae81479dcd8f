"""The values a cascade setting can take, in one place and without heavy imports (the
command line builds its parser from them before loading torch)."""

from __future__ import annotations

__all__ = ["OUTPUTS", "SAMPLERS", "STAGE_CHOICES"]

# --stages: auto (every stage the pipeline has) | inr (LAINR only) | inr+1 / inr+2 (LAINR
# and one / two x2 diffusion stages) | bicubic (the baseline)
STAGE_CHOICES = ("auto", "inr", "inr+1", "inr+2", "bicubic")
# the diffusion stages' samplers; dpm_karras: DPM-Solver++ 2M on Karras et al.'s noise levels
SAMPLERS = ("ddpm", "ddim", "dpm", "dpm_karras")
OUTPUTS = ("mean", "sample")  # what NAME_x{S}.png holds
