"""The pipeline folder format: what ``from_pretrained`` reads and ``save_pretrained`` writes.

Two layouts load:

* a **pipeline folder** (``save_pretrained``): ``pipeline.json`` (format ``FORMAT``: the
  LAINR folder, the diffusion stages in cascade order with their conditioning, the
  settings), the stage checkpoints copied beside it, the LAINR checkpoints their
  conditioning uses, and ``calibration.json``;
* a **checkpoints folder**: ``lainr/`` and the x2 stages ``sr3_x2/`` (and ``sr3_x2_b/``),
  each conditioned by what its training config names; default settings.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade.atomic import atomic_write_text, recover_dir, replace_dir
from cascade.checkpoint import load_checkpoint
from cascade.diffusion.pretrained import load_sr3
from cascade.errors import CascadeError, CheckpointError
from cascade.paths import resolve_repo_path
from cascade.pipeline.config import PipelineConfig, config_from, settings_dict
from cascade.pipeline.stages import DiffusionStage
from cascade.upsamplers import make_upsampler

__all__ = ["DIFFUSION_FOLDERS", "FORMAT", "LAINR_FOLDER", "Folder", "fingerprint",
           "read_folder", "read_json", "save_folder"]

FORMAT = "cascade-pipeline-v1"
LAINR_FOLDER = "lainr"
# The x2 diffusion stages in cascade order: the first is trained on LAINR outputs of real
# LR images, the second at the first stage's output resolution (docs/pipeline.md).
DIFFUSION_FOLDERS = ("sr3_x2", "sr3_x2_b")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError
        return data
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupt (not a JSON object); re-save it") from None


@dataclass
class Folder:
    """What a folder holds: where the LAINR checkpoint is, the diffusion stages (name,
    folder, conditioning: None for the one its training config names, ``bicubic`` or a
    LAINR folder under ``root``) and the settings it was saved with."""

    root: Path
    lainr: Path
    entries: list[tuple[str, Path, str | None]] = field(default_factory=list)
    config: PipelineConfig = field(default_factory=PipelineConfig)

    def load_stages(self, max_diffusion: int | None = None) -> list[DiffusionStage]:
        """The first ``max_diffusion`` (None: all) diffusion stages, loaded."""
        entries = self.entries[:max_diffusion] if max_diffusion is not None else self.entries
        return [DiffusionStage(name, _load_stage(folder, cond, self.root), folder)
                for name, folder, cond in entries]


def _load_stage(folder: Path, cond: str | None, root: Path):
    if cond is None:  # the conditioning upsampler its training config names
        return load_sr3(folder)
    stage = load_sr3(folder, with_upsampler=False)
    stage.upsampler = make_upsampler(
        {"name": "bicubic"} if cond == "bicubic"
        else {"name": "lainr", "args": {"checkpoint": str(root / cond)}})
    return stage


def read_folder(path: str | Path, lainr: str | Path | None = None) -> Folder:
    """The layout of ``path`` (a pipeline or checkpoints folder; ``lainr`` replaces the
    LAINR checkpoint), checked; nothing is loaded yet."""
    root = resolve_repo_path(path)
    if root.is_file() and root.name == "pipeline.json":
        root = root.parent
    if not root.is_dir():
        raise CheckpointError(f"pipeline folder {str(path)!r} not found; pass a folder "
                              "written by save_pretrained or one holding lainr/ and sr3_x2/")
    if (root / "pipeline.json").is_file():
        found = _read_pipeline_json(root)
    else:
        found = _read_checkpoints(root, lainr is not None)
    if lainr is not None:
        found.lainr = resolve_repo_path(lainr)
    return found


def _read_pipeline_json(root: Path) -> Folder:
    meta = read_json(root / "pipeline.json")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{root / 'pipeline.json'} is not a {FORMAT} file; "
                              "re-save the pipeline with save_pretrained")
    entries = [(d["name"], root / d["path"], d.get("conditioning"))
               for d in meta.get("diffusion", [])]
    names = [name for name, _, _ in entries]
    if len(set(names)) < len(names):
        # settings, calibration and weight fingerprints are keyed by the stage's name
        twice = next(n for n in names if names.count(n) > 1)
        raise CheckpointError(f"{root / 'pipeline.json'} names the diffusion stage {twice!r} "
                              "twice; give each stage its own name (to reuse one, copy its "
                              "folder under another name)")
    return Folder(root, root / meta["lainr"], entries, config_from(meta.get("config", {})))


def _read_checkpoints(root: Path, lainr_given: bool) -> Folder:
    if not (root / LAINR_FOLDER).is_dir() and not lainr_given:
        raise CheckpointError(f"{str(root)!r} has neither pipeline.json nor lainr/; pass "
                              "a folder written by save_pretrained or one holding "
                              "lainr/ (and sr3_x2/, sr3_x2_b/)")
    entries = []
    for name in DIFFUSION_FOLDERS:  # in cascade order; stop at the first missing one
        if not (root / name / "checkpoint.json").is_file():
            break
        entries.append((name, root / name, None))
    return Folder(root, root / LAINR_FOLDER, entries)


def fingerprint(lainr_source: Path | None,
                diffusion: Sequence[DiffusionStage]) -> dict[str, str]:
    """The sha256 of each stage's weights (from its checkpoint.json), by stage name
    (``lainr`` for the LAINR stage); "in memory" for stages built without a folder."""
    def sha(folder: Path | None) -> str:
        if folder is None:
            return "in memory"
        try:
            return str(read_json(Path(folder) / "checkpoint.json").get("sha256"))
        except (CascadeError, OSError):
            return "unknown"

    return {LAINR_FOLDER: sha(lainr_source), **{d.name: sha(d.source) for d in diffusion}}


def save_folder(path: str | Path, write) -> Path:
    """``write(tmp)`` fills a new folder, which then replaces ``path``. Written under a
    temporary name and renamed into place (the folder it replaces is moved aside first
    and put back by the next save if a crash came in between)."""
    dest = Path(path)
    tmp = dest.with_name(f".{dest.name}.tmp")
    recover_dir(dest)  # a save cut off between its two renames
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dest)
    return dest


def write_folder(tmp: Path, lainr_source: Path, diffusion: Sequence[DiffusionStage],
                 config: PipelineConfig) -> None:
    """The stage checkpoints, the LAINR checkpoints their conditioning uses, and
    ``pipeline.json``, into the (new, empty) folder ``tmp``."""
    shutil.copytree(lainr_source, tmp / LAINR_FOLDER)
    copied = {load_checkpoint(lainr_source).meta["sha256"]: LAINR_FOLDER}
    entries = []
    for d in diffusion:
        shutil.copytree(d.source, tmp / d.name, dirs_exist_ok=True)
        spec = getattr(d.stage.upsampler, "spec", None) or {"name": "bicubic"}
        cond = "bicubic"
        if spec["name"] == "lainr":
            cond_dir = resolve_repo_path(Path(spec["args"]["checkpoint"]))
            sha = load_checkpoint(cond_dir).meta["sha256"]
            if sha not in copied:
                copied[sha] = f"{d.name}_conditioning"
                shutil.copytree(cond_dir, tmp / copied[sha])
            cond = copied[sha]
        entries.append({"name": d.name, "path": d.name, "conditioning": cond})
    meta = {"format": FORMAT, "lainr": LAINR_FOLDER, "diffusion": entries,
            "config": settings_dict(config)}
    atomic_write_text(tmp / "pipeline.json", json.dumps(meta, indent=2) + "\n")
