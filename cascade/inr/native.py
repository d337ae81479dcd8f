"""The fused LAINR lattice decoder: ``lattice_kernel.c``, built on first use, run on threads.

The PyTorch lattice decoder (:func:`cascade.inr.lattice.decode_lattice`) spends most of
its time writing per-query tensors to memory and reading them back (scores, weights, the
64- and 128-wide activations) between small matmuls. The C kernel computes each query
from start to end in registers and the L1 cache, with every linear map folded beforehand:

* the query projection into the keys: head h's score is ``[x, 1] . [w_q,h^T k_h,
  b_q,h . k_h]`` for the query input x (``_fold_keys``);
* the bands' modulation (after the attention's output projection) into the values
  (``_fold_values``): the weights give the bands' pre-activations directly;
* the bands' per-row and per-column Fourier terms into the row and column values: a
  query's weights sum to 1 per head, so a term spread evenly over every head's keys comes
  out exactly once.

It is built with the system's C compiler (``$CC``, else ``cc``) into a cache folder
(``$CASCADE_CACHE``, else ``~/.cache/cascade``) under a name that holds the source's and
the CPU's hash, written atomically; a second process reuses it. Each image's lattice rows
are split over ``torch.get_num_threads()`` threads (ctypes releases the GIL). Without a
compiler, or with ``CASCADE_NATIVE=0``, LAINR uses the PyTorch decoder and says so once.
``tests/test_inr.py`` holds this decoder to the per-query reference (1e-5).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.inr.decoder import LocalityAwareDecoder
from cascade.inr.encoder import Latents
from cascade.progress import nested_bar

__all__ = ["decode_native", "fold_keys", "fold_values", "kernel_flops", "load_kernel"]

SOURCE = Path(__file__).with_name("lattice_kernel.c")
# the local path's per-LR-pixel projection (64 floats per LR pixel) and the folded tokens
# (~3 KB per token of 4 x 4 LR pixels) are computed for the whole input at once up to this
# size (about a 400^2 input), per band of rows above it
ONCE_BYTES = 64 << 20
FLAGS = ["-O3", "-march=native", "-std=gnu99", "-ffp-contract=fast", "-fPIC", "-shared"]


def fold_keys(k: Tensor, w_q: Tensor, b_q: Tensor, heads: int) -> Tensor:
    """Keys with the query projection folded in: (..., hid) -> (..., hid + 1, heads).

    Head h's score of a query input ``x`` (hid,) against a key ``k`` is
    ``(w_q x + b_q)_h . k_h = [x, 1] . [w_q,h^T k_h, b_q,h . k_h]``: with a constant 1
    appended to every query input, each score is one dot product of hid + 1 numbers."""
    kh = k.unflatten(-1, (heads, -1))  # (..., H, dh)
    lin = torch.einsum("hdi,...hd->...ih", w_q.unflatten(0, (heads, -1)), kh)  # (..., hid, H)
    bias = torch.einsum("hd,...hd->...h", b_q.unflatten(0, (heads, -1)), kh)  # (..., H)
    return torch.cat([lin, bias.unsqueeze(-2)], dim=-2)


def fold_values(v: Tensor, w_fold: Tensor, heads: int) -> Tensor:
    """Values with the bands' modulation folded in: (..., hid) -> (..., heads, P).

    The bands read the attention output through ``w_fold`` (P, hid), so head h's share of
    them is ``w_fold[:, h] v_h``: the attention weights then give the bands'
    pre-activations directly."""
    return torch.einsum("phd,...hd->...hp", w_fold.unflatten(1, (heads, -1)),
                        v.unflatten(-1, (heads, -1)))


def kernel_flops(dec: LocalityAwareDecoder, queries: int) -> float:
    """Floating-point operations the kernel executes for ``queries`` queries (2 per
    multiply-add, the vector padding included; the exp, ReLUs and sums not counted):
    ``torch.utils.flop_counter`` cannot see inside it."""
    hid, heads, n = dec.to_query[0].out_features, dec.attn.heads, dec.neighbourhood
    HK, HN, P = heads * n * n, heads * n, hid * len(dec.band_out)
    pad8 = lambda v: -(-v // 8) * 8  # noqa: E731
    per_query = ((hid + 1) * (pad8(HK) + 2 * pad8(HN)) + (HK + 2 * HN) * P + P * 8
                 + (hid * hid if dec.pixel_in is not None else 0))
    return 2.0 * per_query * queries


def _cpu_key(info: str | None = None) -> str:
    """What a -march=native binary depends on: the CPU's model and flags (x86 names them
    ``model name``/``flags``, ARM ``CPU implementer``/``CPU part``/``Features``, RISC-V
    ``isa``/``uarch``, POWER ``cpu``, s390x ``features``). A /proc/cpuinfo with none of
    these keys is used whole, less the lines that change while it runs (clock, bogomips)."""
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text() if info is None else info
    except OSError:
        return platform.machine() + " " + platform.processor()
    keys = ("model name", "flags", "CPU implementer", "CPU architecture", "CPU variant",
            "CPU part", "Features", "features", "isa", "uarch", "cpu\t", "cpu :")
    lines = [ln for ln in info.splitlines() if ln.startswith(keys)]
    if not lines:
        lines = [ln for ln in info.splitlines() if "MHz" not in ln and "bogo" not in ln.lower()]
    return platform.machine() + "\n" + "\n".join(sorted(set(lines)))


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *FLAGS, "-o", tmp, str(SOURCE), "-lm"], check=True,
                       capture_output=True, text=True, timeout=120)
        os.replace(tmp, target)  # atomic: another process sees all of it or nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@cache
def load_kernel():
    """The kernel's C functions (``decode_rows``, ``work_floats``), built if needed; None
    (with one warning) where they cannot be."""
    if os.environ.get("CASCADE_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or "cc"
    try:
        if shutil.which(cc) is None:
            raise RuntimeError(f"no C compiler ({cc!r} is not on PATH)")
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + cc.encode()
                             + _cpu_key().encode()).hexdigest()[:16]
        cache_dir = Path(os.environ.get("CASCADE_CACHE") or Path.home() / ".cache" / "cascade")
        lib = cache_dir / f"lattice_kernel-{key}.so"
        if not lib.exists():
            _build(cc, lib)
        dll = ctypes.CDLL(str(lib))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        lines = str(getattr(err, "stderr", None) or err).strip().splitlines() or [""]
        detail = next((ln for ln in lines if "error" in ln), lines[-1]).strip()[:160]
        warnings.warn(f"LAINR's fused decoder could not be built ({detail}); "
                      "decoding with PyTorch, up to 3x slower. Install a C compiler, or set "
                      "CASCADE_NATIVE=0 to silence this.", RuntimeWarning, stacklevel=2)
        return None
    fn = dll.lainr_decode_rows
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int64] * 7 + [ctypes.c_void_p] * 8 + [ctypes.c_int64] \
        + [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 9
    size = dll.lainr_work_floats
    size.restype = ctypes.c_int64
    size.argtypes = [ctypes.c_int64] * 4
    return SimpleNamespace(decode_rows=fn, work_floats=size)


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def decode_native(dec: LocalityAwareDecoder, latents: Latents, terms, chunk: int,
                  progress: bool, required: bool = False) -> Tensor | None:
    """The residual RGB (B, H, W, 3) on the lattice of ``terms``
    (:class:`cascade.inr.lattice.LatticeTerms`), or None where the kernel is not built or
    does not apply (not float32 on the CPU, a latent grid smaller than the window, widths
    not a multiple of 8): the caller then uses the PyTorch decoder. ``required``:
    raise instead of returning None."""
    t = terms
    tokens = latents.tokens
    hid = dec.to_query[0].out_features
    heads, n = dec.attn.heads, dec.neighbourhood
    P = t.w_rgb.shape[1]
    why = None
    if tokens.device.type != "cpu" or tokens.dtype != torch.float32:
        why = f"it runs on float32 CPU tensors, not {tokens.dtype} on {tokens.device.type}"
    elif not (bool(t.Y["ok"].all()) and bool(t.X["ok"].all())):
        why = "the latent grid is smaller than the decoder's window"
    elif hid % 8:
        why = f"its width ({hid}) is not a multiple of 8"
    lib = load_kernel() if why is None else None
    if lib is None:
        if required:
            raise RuntimeError(f"the fused LAINR decoder does not apply: {why or 'not built'}")
        return None

    B, (H, W) = tokens.shape[0], (t.q_y.shape[0], t.q_x.shape[0])
    n_bands = P // hid
    c = lambda x: x.float().contiguous()  # noqa: E731
    pad = -(heads * n) % 8

    def axis_keys(k: Tensor) -> Tensor:
        """(L, n, hid) -> (L, hid+1, HNp): ordered (head, token row or column), padded
        with zero columns to HNp = heads*n rounded up to 8."""
        return c(F.pad(fold_keys(k, t.w_q, t.b_q, heads).permute(0, 2, 3, 1).flatten(2),
                       (0, pad)))

    def axis_values(v: Tensor, bands: Tensor) -> Tensor:
        """(L, n, hid), the bands' terms (L, P) -> (L, heads*n, P), the terms spread evenly
        over the heads."""
        return c((fold_values(v, t.w_fold, heads) + bands[:, None, None] / heads)
                 .transpose(1, 2).flatten(1, 2))

    ky, kx = axis_keys(t.k_y), axis_keys(t.k_x)
    vy, vx = axis_values(t.v_y, t.b_y), axis_values(t.v_x, t.b_x)
    q_y, q_x, b_rgb = c(t.q_y), c(t.q_x), c(t.b_rgb)
    w_rgb = c(F.pad(t.w_rgb.T, (0, 5)))  # (P, 8)
    iy, ix = t.Y["idx"][:, 0].contiguous(), t.X["idx"][:, 0].contiguous()
    if t.local is not None:
        padded, py, px, o_y, o_x = t.local
        py, px, o_y, o_x = py.contiguous(), px.contiguous(), c(o_y), c(o_x)
        w_p = c(dec.pixel_in[2].weight.T)  # (in, out)
    else:
        py = px = o_y = o_x = w_p = None

    # Bands of rows: about ``chunk`` queries, and at least 32 rows so that the local path's
    # per-LR-pixel projection is computed about once per LR row. Each of ``threads`` workers
    # takes whole bands, the local path's projection (PyTorch, one thread) and the kernel;
    # PyTorch's own thread pool is held to one thread meanwhile, since its idle threads
    # spin and would take the cores from the kernel.
    threads = max(1, torch.get_num_threads())
    band = max(32, -(-chunk // W))
    bands = [(r0, min(r0 + band, H)) for r0 in range(0, H, band)]
    out = tokens.new_empty(B, H, W, 3)
    size = lib.work_floats(hid, heads, n, n_bands)
    local = threading.local()  # each worker's scratch
    from cascade.inr.lattice import _local_per_pixel  # (its home; imports this module)

    h, w = latents.size
    gh = tokens.shape[1]
    # The local path's projection of every LR pixel, and the folded keys and values of every
    # latent token (~3 KB each), computed once per image (all threads) while they fit in
    # ONCE_BYTES; above it, per band from the band's own rows (bounded memory for large
    # inputs, at the price of the rows bands share).
    per_image = (h * w * hid + tokens[0, ..., 0].numel() * (hid + 1 + P) * heads) * 4 * B
    whole = per_image <= ONCE_BYTES

    def fold(i: int, t0: int, t1: int) -> tuple[Tensor, Tensor]:
        """Token rows t0..t1-1 of image i: folded keys (rows, gw, hid+1, heads), values
        (rows, gw, heads, P)."""
        kv = dec.to_kv(tokens[i, t0:t1])  # (rows, gw, 2*hid)
        return (c(fold_keys(kv[..., :hid], t.w_q, t.b_q, heads)),
                c(fold_values(kv[..., hid:], t.w_fold, heads)))

    def local_path(i: int, r0: int, r1: int) -> Tensor:
        return _local_per_pixel(dec, padded[i:i + 1], (r0, r1), (0, w - 1))[0].contiguous()

    images = [(*fold(i, 0, gh), local_path(i, 0, h - 1) if py is not None else None)
              for i in range(B)] if whole else None

    def run_band(i: int, r0: int, r1: int) -> None:
        if getattr(local, "work", None) is None:
            local.work = torch.empty(size)
        if images is not None:
            (kt, vt, lp), t0, lp_row0 = images[i], 0, 0
        else:  # the rows of this band only (the lattice's rows need not be in order)
            t0, t1 = int(iy[r0:r1].min()), int(iy[r0:r1].max()) + n
            kt, vt = fold(i, t0, t1)
            lp, lp_row0 = None, 0
            if py is not None:
                lp_row0 = int(py[r0:r1].min())
                lp = local_path(i, lp_row0, int(py[r0:r1].max()))
        iy_band = iy - t0 if t0 else iy  # window rows relative to kt's first row
        status = lib.decode_rows(
            r0, r1, W, hid, heads, n, n_bands, _ptr(q_y), _ptr(q_x), _ptr(ky), _ptr(kx),
            _ptr(vy), _ptr(vx), _ptr(kt), _ptr(vt), kt.shape[1], _ptr(iy_band), _ptr(ix),
            _ptr(lp), w, lp_row0, _ptr(py), _ptr(px), _ptr(o_y), _ptr(o_x), _ptr(w_p),
            _ptr(w_rgb), _ptr(b_rgb), _ptr(local.work), _ptr(out[i]))
        if status != 0:
            raise RuntimeError("lattice_kernel.c refused the decoder's sizes")

    bar = nested_bar(total=B * len(bands), desc="lainr", unit="bands", delay=3,
                     disable=not progress or B * len(bands) < 2)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            jobs = [pool.submit(run_band, i, r0, r1) for i in range(B) for r0, r1 in bands]
            try:
                for job in as_completed(jobs):
                    job.result()
                    bar.update()
            except BaseException:
                for job in jobs:  # an error or Ctrl-C: do not start the bands still queued
                    job.cancel()
                raise
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return out
