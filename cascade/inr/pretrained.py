"""Load a trained LAINR stage from an inference checkpoint folder."""

from __future__ import annotations

import os

from cascade.checkpoint import load_checkpoint
from cascade.errors import CheckpointError
from cascade.paths import resolve_repo_path


def load_lainr(folder: str | os.PathLike = "checkpoints/lainr"):
    """-> LAINR in eval mode (float32, CPU; move it with ``.to``)."""
    from omegaconf import OmegaConf

    from cascade.inr.model import LAINR

    ckpt = load_checkpoint(resolve_repo_path(folder), stage="lainr")
    model = LAINR(**OmegaConf.to_container(ckpt.config.model, resolve=True))
    missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {str(ckpt.path)!r} does not fit this LAINR model "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}); "
                              "it was made by another version: retrain or use a matching one")
    return model.eval()
