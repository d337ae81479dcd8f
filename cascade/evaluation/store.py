"""The results store: ``results.jsonl``, one JSON object per method x settings x dataset x
scale x image, appended as each row finishes.

Appends hold an exclusive ``fcntl`` lock and end with fsync, so two evaluations writing the
same store at once lose nothing and a killed run leaves no torn line (a torn last line, if
the machine itself died mid-write, is skipped on reading with a warning, and the next
append starts a new line rather than gluing a good row onto it). The file is only
appended to: a row that gains a metric later is a second line with the same key, merged on
reading (:meth:`ResultsStore.merged`). Set-level scores (FID, KID) are rows whose ``image``
is ``SET_ROW``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX file locks; on other systems appends are still line-atomic in practice.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

KEY_FIELDS = ("method", "settings", "dataset", "scale", "image")
SET_ROW = "*"  # the ``image`` of a row that scores a whole set (FID, KID), not one image


def row_key(row: dict[str, Any]) -> tuple:
    """Identity of a row: re-running the same evaluation skips rows with a known key."""
    return (
        row["method"],
        json.dumps(row.get("settings") or {}, sort_keys=True),
        row["dataset"],
        float(row["scale"]),
        row["image"],
    )


def _jsonable(value: Any) -> Any:
    # JSON has no inf/nan: store them as strings that read back as floats.
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    return value


def _from_json(value: Any) -> Any:
    if value in ("inf", "-inf", "nan"):
        return float(value)
    return value


@contextlib.contextmanager
def _locked(f) -> Iterator[None]:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class ResultsStore:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, row: dict[str, Any]) -> None:
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=False) + "\n"
        data = line.encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f, _locked(f):
            end = f.seek(0, os.SEEK_END)
            if end:  # after a torn last line, start a new one rather than glue onto it
                f.seek(end - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
            f.write(data)  # appended whatever the position (a+ mode)
            f.flush()
            os.fsync(f.fileno())

    def extend(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.append(row)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    warnings.warn(f"{self.path}:{n}: skipping a torn line", stacklevel=2)
                    continue
                out.append({k: _from_json(v) for k, v in row.items()})
        return out

    def merged(self) -> list[dict[str, Any]]:
        """One row per key, in first-seen order; a later row with the same key updates the
        fields it holds (a rerun that adds a metric appends only the new fields)."""
        by_key: dict[tuple, dict[str, Any]] = {}
        for r in self.rows():
            by_key.setdefault(row_key(r), {}).update(r)
        return list(by_key.values())

    def keys(self) -> set[tuple]:
        return {row_key(r) for r in self.rows()}
