"""Deterministic random streams keyed by integers (steps, ranks, sample indices)."""

from __future__ import annotations

import numpy as np
import torch


def generator_for(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator whose stream depends only on ``keys`` (e.g. seed, step, micro, rank).

    numpy's SeedSequence mixes the keys, so neighbouring steps get unrelated streams.
    """
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(seed % 2**63)
