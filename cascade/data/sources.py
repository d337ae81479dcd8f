"""Command-line inputs -> image files: paths, folders, globs, or a named dataset.

``builtin`` (the built-in test photos), ``builtin:train``, ``photos:SPLIT`` (the prepared
photo corpus, ``photos`` alone = the held-out ``photos:val``), ``set5``, ``set14`` and
``bsd68`` name datasets; anything else is a file, folder (recursive) or glob.
"""

from __future__ import annotations

from pathlib import Path

NAMED = ("set5", "set14", "bsd68")


def expand_inputs(items: list[str], failures: list[str] | None = None) -> list[Path]:
    """Files for ``items``. With a ``failures`` list, an item that names nothing is recorded
    there (``"item: reason"``) and skipped; without one, it raises its ImageError."""
    from cascade.data.datasets import builtin_photos, photos_folder, resolve_dataset
    from cascade.data.io import list_images
    from cascade.errors import CascadeError

    files: list[Path] = []
    for item in items:
        if failures is not None:
            try:
                files += expand_inputs([item])
            except CascadeError as e:
                failures.append(f"{item}: {e}")
            continue
        name, _, split = str(item).partition(":")
        if name == "builtin":
            files += [Path(p) for _, p in builtin_photos(split or "test")]
        elif name == "photos" and not Path(item).exists():
            files += list_images(photos_folder(split or "val"))
        elif name.lower() in NAMED and not Path(item).exists():
            files += list(resolve_dataset(name.lower()).paths)
        else:
            files += list_images(item)
    return files
