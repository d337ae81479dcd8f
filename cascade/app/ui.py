"""The page of ``cascade app`` (Gradio): layout and wiring only; the work is in ``core``.

Offline by construction: analytics off (``GRADIO_ANALYTICS_ENABLED=False``, set before
gradio is imported), no share link, a theme of system fonts (nothing fetched from a font
host), no server-side rendering (no Node), and the API page, the MCP server and the PWA
manifest off. One job at a time: the queue runs ``run`` with concurrency 1 and the
``Engine`` holds a lock besides.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cascade.app.core import (
    MAP_KINDS,
    STAGE_CHOICES,
    Cancelled,
    Engine,
    Result,
    builtin_input,
    builtin_names,
    input_summary,
    message,
    overlay,
    parse_request,
)
from cascade.errors import CascadeError

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr  # noqa: E402  (after the analytics switch)

SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
SYSTEM_MONO = ["ui-monospace", "Consolas", "monospace"]
CSS = """
#result img, #compare img, #overlay img, #samples img { image-rendering: pixelated; }
#result img, #overlay img { width: 100%; height: 100%; object-fit: contain; }
#status { min-height: 1.5em; font-weight: 600; }
"""
IMAGE_BUTTONS = ["download", "fullscreen"]  # no "share" (it uploads to a hub)
VIEW_HEIGHT = 440  # px: small outputs are enlarged to this, pixels kept sharp


def theme() -> gr.themes.Base:
    """Gradio's default look with local system fonts only."""
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO)


def build(engine: Engine) -> gr.Blocks:
    """The page, wired to ``engine``."""
    with gr.Blocks(title="cascade: super-resolution with uncertainty",
                   analytics_enabled=False) as page:
        result_state = gr.State(None)
        gr.Markdown("## cascade: upscale to any scale, N samples, where the detail is invented")
        with gr.Row():
            ins = _input_column()
            outs = _output_column()
        _wire(engine, ins, outs, result_state)
    return page


def _input_column() -> SimpleNamespace:
    """The left column: the image, the scale or size, the settings, Upscale and Stop."""
    with gr.Column(scale=1, min_width=320):
        upload = gr.File(label="image (drop a PNG, JPEG, TIFF, WebP ...)",
                         type="filepath", elem_id="upload")
        photo = gr.Dropdown(builtin_names(), value=None, label="or a built-in photo "
                            "(256x256 centre crop, downscaled x4)", elem_id="photo")
        preview = gr.Image(label="input", interactive=False, height=120,
                           format="png", buttons=IMAGE_BUTTONS, elem_id="preview")
        with gr.Row():
            scale = gr.Number(2, label="scale (any real >= 1)", minimum=1,
                              elem_id="scale")
            size = gr.Textbox("", label="or exact size WIDTHxHEIGHT",
                              placeholder="e.g. 640x480 (overrides the scale)",
                              elem_id="size")
        stages = gr.Radio(list(STAGE_CHOICES), value="auto", label="stages "
                          "(auto: every x2 stage; inr: LAINR only)", elem_id="stages")
        with gr.Row():
            samples = gr.Slider(1, 16, value=4, step=1, label="samples N",
                                elem_id="samples")
            steps = gr.Slider(0, 50, value=0, step=1,
                              label="steps (0: each stage's default)",
                              elem_id="steps")
        seed = gr.Number(0, label="seed (sample i uses (seed, i))", precision=0,
                         minimum=0, elem_id="seed")
        with gr.Row():
            go = gr.Button("Upscale", variant="primary", elem_id="run")
            stop = gr.Button("Stop", variant="stop", elem_id="stop")
    return SimpleNamespace(upload=upload, photo=photo, preview=preview, scale=scale, size=size,
                           stages=stages, samples=samples, steps=steps, seed=seed, go=go,
                           stop=stop)


def _output_column() -> SimpleNamespace:
    """The right column: status, the result, the comparison slider, the samples, the
    uncertainty maps, the plan and the files to download."""
    with gr.Column(scale=2, min_width=480):
        status = gr.Markdown("", elem_id="status")
        with gr.Tab("result"):
            result = gr.Image(label="result (mean of the samples)", type="filepath",
                              format="png", interactive=False, buttons=IMAGE_BUTTONS,
                              height=VIEW_HEIGHT, elem_id="result")
        with gr.Tab("compare"):
            against = gr.Radio(["bicubic", "LAINR"], value="bicubic",
                               label="left of the slider", elem_id="against")
            compare = gr.ImageSlider(label="before | after (drag the slider)",
                                     type="filepath", format="png", height=VIEW_HEIGHT,
                                     max_height=VIEW_HEIGHT, buttons=IMAGE_BUTTONS,
                                     elem_id="compare")
        with gr.Tab("samples"):
            gallery = gr.Gallery(label="the samples, one by one", columns=4,
                                 height=VIEW_HEIGHT,
                                 preview=True, format="png", elem_id="samples",
                                 buttons=["download", "download_all", "fullscreen"])
        with gr.Tab("uncertainty"):
            with gr.Row():
                which = gr.Radio(list(MAP_KINDS), value="std", label="map",
                                 elem_id="map")
                opacity = gr.Slider(0, 1, value=0.6, step=0.05, label="opacity",
                                    elem_id="opacity")
            shown = gr.Image(label="map over the result", format="png",
                             interactive=False, buttons=IMAGE_BUTTONS,
                             height=VIEW_HEIGHT, elem_id="overlay")
            map_note = gr.Markdown("")
        plan = gr.Markdown("", elem_id="plan")
        files = gr.File(label="download: PNGs, samples, maps (float32 TIFF), run.json",
                        file_count="multiple", interactive=False, elem_id="files")
    return SimpleNamespace(status=status, result=result, against=against, compare=compare,
                           gallery=gallery, which=which, opacity=opacity, shown=shown,
                           map_note=map_note, plan=plan, files=files)


def _wire(engine: Engine, i: SimpleNamespace, o: SimpleNamespace, result_state) -> None:
    """What the controls do: preview an input, run a job (one at a time), stop it, and
    redraw the comparison and the map when their controls change."""
    i.upload.change(input_summary, i.upload, [i.preview, o.status], queue=False)
    i.photo.change(lambda name: _builtin(engine, name), i.photo, i.upload, queue=False)

    def run(path, sc, sz, st, n, k, sd, versus, kind, alpha, request: gr.Request,
            progress=gr.Progress()):
        try:
            req = parse_request(path, sc, sz, n, k, st, sd)
            res = engine.run(req, report=lambda f, text: progress(f, desc=text),
                             owner=_owner(request))
        except Cancelled as e:
            return (gr.skip(),) * 8 + (f"stopped: {e}",)
        except CascadeError as e:
            return (gr.skip(),) * 8 + (message(e, path),)
        view, note = _overlay(res, kind, alpha)
        files_out = [str(p) for p in (res.archive, res.run_json, res.output) if p]
        return (res, str(res.output), _pair(res, versus), [str(p) for p in res.samples],
                view, note, res.summary(), files_out,
                f"done: {res.out_size[1]}x{res.out_size[0]} in {res.seconds:.1f} s")

    def halt(request: gr.Request) -> str:
        stopped = engine.cancel(_owner(request))
        return "stopping at the next step ..." if stopped else "nothing of yours is running"

    i.go.click(run, [i.upload, i.scale, i.size, i.stages, i.samples, i.steps, i.seed,
                     o.against, o.which, o.opacity],
               [result_state, o.result, o.compare, o.gallery, o.shown, o.map_note, o.plan,
                o.files, o.status],
               concurrency_limit=1, concurrency_id="upscale", show_progress="full")
    i.stop.click(halt, None, o.status, queue=False)
    o.against.change(lambda res, v: _pair(res, v) if res else None, [result_state, o.against],
                     o.compare, queue=False)
    for control in (o.which, o.opacity):
        control.change(lambda res, k, a: _overlay(res, k, a),
                       [result_state, o.which, o.opacity], [o.shown, o.map_note], queue=False)


def _owner(request: Any) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def _builtin(engine: Engine, name: str | None) -> str | None:
    if not name:
        return None
    return str(builtin_input(name, engine.out_root / "builtin"))


def _pair(res: Result | None, versus: str) -> tuple[str, str] | None:
    if res is None:
        return None
    left = res.bicubic if versus == "bicubic" else res.lainr
    return str(left), str(res.output)


def _overlay(res: Result | None, kind: str, alpha: float):
    """The chosen map over the result, and a line saying what it shows."""
    if res is None:
        return None, ""
    if kind not in res.maps:
        why = ("LAINR alone is deterministic: its samples do not differ" if not res.maps
               else "the samples were too many to keep for the quantile map (run.json)")
        return None, f"no {kind} map: {why}."
    from cascade.data.io import load_map

    value = load_map(res.maps[kind])
    what = ("per-pixel std of the samples (mean of R, G, B)" if kind == "std" else
            "width of the samples' 90% quantile interval (mean of R, G, B)")
    note = (f"{what}; colour scale 0 (dark) to its 99.5th percentile (bright); "
            f"data: `{res.maps[kind].name}` (float32, {value.shape[1]}x{value.shape[0]})")
    return overlay(res.output, value, alpha), note


def serve(engine: Engine, host: str = "127.0.0.1", port: int | None = None,
          block: bool = True) -> tuple[Any, str]:
    """Start the page on ``host:port`` (None: the first free port from 7860); returns
    (the Blocks, its local URL). ``block`` False returns at once (tests)."""
    page = build(engine)
    page.queue(default_concurrency_limit=1, max_size=16)
    _, url, _ = page.launch(server_name=host, server_port=port, share=False,
                            prevent_thread_lock=True, inbrowser=False, quiet=True,
                            show_error=True, ssr_mode=False, pwa=False, mcp_server=False,
                            enable_monitoring=False, footer_links=[],
                            allowed_paths=[str(Path(engine.out_root).resolve())],
                            theme=theme(), css=CSS)
    print(f"cascade app: serving on {url} (Ctrl+C to stop); job files in "
          f"{engine.out_root}/", flush=True)
    if block:
        page.block_thread()
    return page, url
