"""leaderboard.html: one self-contained page (no network, no files beside it).

Tables sort by any column on a click; the best value of each column is highlighted; the
perception-distortion plot and, per dataset x scale, a crop of one image by every method
(from the outputs ``cascade evaluate --save-images`` cached) are embedded as PNG data URIs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import torch

from cascade.errors import CascadeError
from cascade.evaluation.leaderboard import ARROWS, COLUMNS, Section, cell, columns_of
from cascade.scales import format_scale
from cascade.evaluation.sweep import variant_dir

CROP = 96  # HR pixels of the thumbnail crops (shown at 2x, pixelated)

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 16px}
th,td{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th{cursor:pointer;background:#f4f4f4;user-select:none}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
td.best{font-weight:bold;background:#e3f4e1}
.crops{display:flex;flex-wrap:wrap;gap:10px}
.crops figure{margin:0;text-align:center;font-size:11px;max-width:200px}
.crops img{width:192px;height:192px;image-rendering:pixelated;border:1px solid #ccc}
.note{color:#555;font-size:13px}
"""

_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click',
  () => {
    const body = th.closest('table').tBodies[0];
    const asc = th.dataset.asc !== '1';
    th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.asc);
    th.dataset.asc = asc ? '1' : '0';
    const key = r => { const v = r.cells[col].dataset.v;
      return v === undefined ? r.cells[col].textContent : (v === '' ? null : parseFloat(v)); };
    [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
      if (x === null) return 1; if (y === null) return -1;
      const c = typeof x === 'number' ? x - y : String(x).localeCompare(y);
      return asc ? c : -c; }).forEach(r => body.appendChild(r));
  }));
"""


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _crop_uri(img: torch.Tensor, y: int, x: int, c: int) -> str:
    from PIL import Image

    from cascade.data.io import to_uint8

    buf = io.BytesIO()
    Image.fromarray(to_uint8(img[:, y:y + c, x:x + c]), "RGB").save(buf, format="PNG")
    return png_data_uri(buf.getvalue())


def _ground_truth(results_dir: Path, dataset: str, name: str, scale: float):
    """The scored HR image (cropped to the scale), found from the run's config or the name."""
    from omegaconf import OmegaConf

    from cascade.data.datasets import resolve_dataset
    from cascade.data.degrade import crop_to_scale

    entries = [dataset]
    cfg = results_dir / "config.yaml"
    if cfg.is_file():
        entries = [str(d) for d in OmegaConf.load(cfg).get("data", [])] + entries
    for entry in entries:
        try:
            ds = resolve_dataset(entry)
        except CascadeError:
            continue
        if ds.name == dataset and name in ds.names:
            return crop_to_scale(ds[ds.names.index(name)]["image"], scale)
    return None


def _variant_path(results_dir: Path, e: dict) -> Path:
    """An entry's image folder; found by its settings digest when the readable part of the
    name was written with the settings in another order."""
    path = results_dir / "images" / variant_dir(e["method"], json.loads(e["settings"]))
    if not path.is_dir() and "-" in path.name:
        digest = path.name.rsplit("-", 1)[1]
        found = sorted(path.parent.glob(f"*-{digest}"))
        if found:
            return found[0]
    return path


def thumbnails(sec: Section, results_dir: Path, image: str | None = None) -> str:
    """HTML figures: the same crop of one image, ground truth then each entry's output."""
    from cascade.data.io import load_image
    from cascade.evaluation.figures import detailed_window

    sub = Path(sec.dataset) / f"x{format_scale(sec.scale)}"
    dirs = [_variant_path(results_dir, e) / sub for e in sec.entries]
    names = [{p.stem for p in d.glob("*.png")} for d in dirs]
    have = [i for i, n in enumerate(names) if n]
    if not have:
        return ('<p class="note">No cached outputs for crops: run cascade evaluate with '
                "--save-images.</p>")
    common = set.intersection(*(names[i] for i in have))
    if image is not None and image in common:
        name = image
    elif common:
        name = sorted(common)[0]
    else:
        return '<p class="note">No image has cached outputs of every method.</p>'
    outputs = {i: load_image(dirs[i] / f"{name}.png") for i in have}
    gt = _ground_truth(results_dir, sec.dataset, name, sec.scale)
    ref = gt if gt is not None else outputs[have[0]]
    y, x = detailed_window(ref, CROP)
    c = min(CROP, *ref.shape[-2:])
    figs = []
    if gt is not None:
        figs.append(("ground truth", _crop_uri(gt, y, x, c)))
    figs += [(sec.entries[i]["label"], _crop_uri(outputs[i], y, x, c)) for i in have]
    items = "".join(f'<figure><img src="{uri}" alt="{html.escape(t)}">'
                    f"<figcaption>{html.escape(t)}</figcaption></figure>" for t, uri in figs)
    return (f'<p class="note">{html.escape(name)}: {c}x{c} crop at y={y}, x={x}, '
            f'shown at 2x.</p><div class="crops">{items}</div>')


def _table(sec: Section) -> str:
    cols = columns_of(sec.entries)
    head = "<tr><th>#</th><th>method</th>" + "".join(
        f"<th>{html.escape(c.header + ARROWS[c.better])}</th>" for c in cols) + "</tr>"
    rows = []
    for i, e in enumerate(sec.entries):
        tds = [f'<td data-v="{i + 1}">{i + 1}</td>', f"<td>{html.escape(e['label'])}</td>"]
        for c in cols:
            v: Any = e.get(c.key)
            num = "" if not isinstance(v, (int, float)) else repr(float(v))
            cls = ' class="best"' if i in sec.best[c.key] else ""
            tds.append(f'<td data-v="{num}"{cls}>{html.escape(cell(e, c.key))}</td>')
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return (f'<table class="sortable"><thead>{head}</thead><tbody>{"".join(rows)}'
            "</tbody></table>")


def html_page(secs: list[Section], results_dir: Path, plot: Path | None, *, sort: str,
              note: str, image: str | None = None) -> str:
    header = next(c.header for c in COLUMNS if c.key == sort)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>cascade leaderboard"
             f"</title><style>{_STYLE}</style></head><body><h1>Leaderboard</h1>",
             f'<p class="note">From {html.escape(str(results_dir))}/results.jsonl, ranked by '
             f"{html.escape(header)} per dataset and scale; click a column header to sort. "
             f"{html.escape(note)}</p>"]
    if plot is not None:
        parts.append(f'<img alt="perception-distortion plot" style="max-width:100%" '
                     f'src="{png_data_uri(plot.read_bytes())}">')
    for s in secs:
        n = max(e["images"] for e in s.entries)
        parts.append(f"<h2>{html.escape(s.title)} ({n} images)</h2>")
        parts.append(_table(s))
        parts.append(thumbnails(s, results_dir, image))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)
