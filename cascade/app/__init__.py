"""``cascade app``: a local web page for the cascade (optional extra: ``pip install -e .[app]``).

``core`` holds the logic as plain functions (no gradio); ``ui`` is the Gradio page;
``serve`` checks that gradio is installed, loads the pipeline once and starts the page on
127.0.0.1 unless told otherwise. docs/app.md describes the page.
"""

from __future__ import annotations

from pathlib import Path

from cascade.errors import CascadeError

INSTALL_HINT = "cascade app needs gradio: pip install -e '.[app]' (or pip install gradio)"


def require_gradio() -> None:
    """Raise a one-line CascadeError saying what to install when gradio is missing."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise CascadeError(INSTALL_HINT)


def serve(pipeline: str | Path = "checkpoints", host: str = "127.0.0.1",
          port: int | None = None, device: str = "cpu", out: str | Path = "outputs/app",
          max_megapixels: float | None = None, block: bool = True):
    """Load the pipeline and serve the page (blocks until interrupted unless ``block`` is
    False); returns (the Gradio Blocks, the local URL)."""
    require_gradio()
    from cascade.app.core import Engine

    engine = Engine.load(pipeline, device=device, out_root=out, max_megapixels=max_megapixels)
    from cascade.app import ui

    return ui.serve(engine, host=host, port=port, block=block)
