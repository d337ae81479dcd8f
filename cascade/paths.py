"""Where the repository's own files are, wherever the command is run from."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_repo_path(path: str | os.PathLike) -> Path:
    """``path`` as given if it exists, else relative to the repository (shipped checkpoints)."""
    p = Path(path).expanduser()
    if p.exists() or p.is_absolute():
        return p
    alt = REPO_ROOT / p
    return alt if alt.exists() else p
