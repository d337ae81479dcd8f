"""Listen to the pipeline's progress bars: progress for the page, and a place to stop.

The pipeline reports its work through tqdm bars (the LAINR decode chunks, the samples, each
diffusion stage's sampler steps) and has no other callback inside a sample. ``listen``
routes every bar update made *in the calling thread* to a function, which may raise to stop
the run at that point (``cascade app``'s Stop button raises ``Cancelled`` there, so a job
ends within one sampler step). It works by wrapping ``tqdm.std.tqdm.update`` and
``__iter__`` once per process; bars in other threads, or with no listener, behave as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# listener(desc, done, total): desc is the bar's label, done the items finished so far,
# total the bar's length (None when unknown)
Listener = Callable[[str, int, "int | None"], None]

_local = threading.local()
_install_lock = threading.Lock()
_installed = False


def _notify(bar, done: int) -> None:
    listener = getattr(_local, "listener", None)
    if listener is not None:
        listener(str(getattr(bar, "desc", "") or ""), int(done), getattr(bar, "total", None))


def _install() -> None:
    """Wrap tqdm's update and iteration (once): each reports to the thread's listener."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from tqdm.std import tqdm

        update, iterate = tqdm.update, tqdm.__iter__

        def update_and_notify(self, n=1):
            out = update(self, n)
            _notify(self, self.n)
            return out

        def iterate_and_notify(self):
            for done, item in enumerate(iterate(self), 1):
                yield item
                _notify(self, done)  # after the loop body of item `done` has run

        tqdm.update = update_and_notify
        tqdm.__iter__ = iterate_and_notify
        _installed = True


@contextmanager
def listen(listener: Listener) -> Iterator[None]:
    """Call ``listener(desc, done, total)`` on every tqdm bar update in this thread while
    the block runs; an exception it raises propagates out of the bar's loop."""
    _install()
    before = getattr(_local, "listener", None)
    _local.listener = listener
    try:
        yield
    finally:
        _local.listener = before
