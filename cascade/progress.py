"""Progress bars that stay clean in logs.

In a terminal, bars inside other bars (the samples of an upscale, a sampler's steps, the
tiles of a step, LAINR's decode chunks) are drawn below the outer one and cleared when
done (``leave=False``). Written to a log file, nested bars become lines of cursor-movement
escapes (``ESC[A``); there ``nested_bar`` draws nothing while another bar is showing, so a
log shows one bar per level: the outermost one. The bar still counts (``cascade app``
listens to every bar's updates, ``cascade.app.progress``).
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

__all__ = ["nested_bar"]


class _Nowhere:
    """A file that drops what is written to it."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _in_terminal() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def nested_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)``, drawing nothing when
    stderr is not a terminal and another bar is open (see the module docstring)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    if not kwargs.get("disable") and not _in_terminal() and len(tqdm._instances) > 0:
        kwargs["file"] = _Nowhere()
    return tqdm(iterable, **kwargs)
