"""The generalization gate on the shipped weights: a diffusion stage's sample of a photo in
colours the stage may never have met must stay near LAINR and keep a natural amount of
high-frequency energy (issue 13: the first stages, trained on 14 small photos, covered a
green-dominant crop in embossed noise, HF ratio 26 and 15 dB below LAINR).

A built-in test photo (never trained on) is recoloured by channel permutations and hue
rotations, downscaled x2 and upscaled by the first x2 stage, one sample, 10 steps of its own
sampler (DPM-Solver++ on Karras sigmas). The full measurement is
``configs/eval/unseen.yaml`` (docs/training.md).
"""

import pytest
import torch

from cascade.data.augment import apply_colour, hue_rotation_matrix, permutation_matrix
from cascade.data.datasets import builtin_photos
from cascade.data.degrade import degrade
from cascade.data.io import load_image
from cascade.metrics import hf_ratio, psnr
from cascade.paths import REPO_ROOT

COLOURS = {"original": torch.eye(3), "swap_rg": permutation_matrix((1, 0, 2)),
           "swap_rb": permutation_matrix((2, 1, 0)), "hue90": hue_rotation_matrix(90)}


@pytest.fixture(scope="module")
def pipe():
    from cascade.pipeline import CascadePipeline

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield CascadePipeline.from_pretrained(REPO_ROOT / "checkpoints", max_diffusion=1)
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def coffee():
    img = load_image(dict(builtin_photos("test"))["coffee"])
    H, W = img.shape[-2:]
    return img[:, H // 2 - 48:H // 2 + 48, W // 2 - 48:W // 2 + 48]  # (3, 96, 96)


@pytest.mark.parametrize("colour", list(COLOURS))
def test_first_stage_sample_holds_up_in_any_colour(pipe, coffee, colour):
    hr, lr = degrade(apply_colour(coffee, COLOURS[colour])[None], 2.0)
    sample = pipe(lr[0], scale=2, num_samples=1, steps=10, seed=0).samples[:1]
    lainr = pipe(lr[0], scale=2, stages="inr").image[None]
    p_sample, p_lainr = float(psnr(sample, hr, scale=2)), float(psnr(lainr, hr, scale=2))
    hf = float(hf_ratio(sample, hr, scale=2))
    assert p_sample >= p_lainr - 5.0, f"{colour}: sample {p_sample:.2f} dB, LAINR {p_lainr:.2f}"
    assert 0.3 <= hf <= 3.0, f"{colour}: HF ratio {hf:.2f}"
