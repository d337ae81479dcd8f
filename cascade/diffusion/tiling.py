"""Tiled denoising: the network evaluated on overlapping tiles of the full-image state.

The sampler keeps the whole image (its noise field, its x0 estimate, the scheduler's
state); only the network sees tiles. At every step ``TiledDenoiser`` cuts the noisy
residual and the conditioning into overlapping tiles, runs the network on batches of them,
and blends the outputs with a smooth window (a raised-cosine ramp across each overlap,
flat inside and at the image border), normalised by the summed weights. Because every
tile sees the same noise field and the scheduler steps on the blended whole, tiles agree
where they overlap and there is no seam; memory is bounded by the tile batch, not by the
image.

Tile origins are multiples of the UNet's down-sampling factor, so a tile sees the same
pixel phase as the whole image (a convolutional UNet is shift-equivariant only for shifts
that are multiples of its down-sampling factor).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from cascade.progress import nested_bar

__all__ = ["GlobalGroupNorm", "TileConfig", "TiledDenoiser", "auto_tiling", "blend_window",
           "border_lines", "fit_tile", "layout", "seam_ratio", "tile_starts"]


@dataclass
class TileConfig:
    """Diffusion tiling (sizes in the stage's output pixels)."""

    tile: int = 0  # tile side; 0 = auto (256 on a CPU, 768 on a GPU); -1 = never tile
    overlap: int = 0  # overlap between neighbouring tiles; 0 = auto (tile / 8, >= 16)
    batch: int = 4  # tiles per network call
    # A network call of at most this many megapixels (samples x pixels) is not tiled;
    # 0 = auto (0.5 on a CPU, 4 on a GPU); negative: always tile (beyond one tile).
    untiled: float = 0.0
    # Tiles normalise with whole-image GroupNorm statistics (one more network pass per
    # step, over at most ``norm_tiles`` tiles); False: each tile with its own (faster, but
    # tiles then differ in gain).
    global_norm: bool = True
    norm_tiles: int = 32  # tiles the statistics are gathered on (evenly spread; 0 = all)


def auto_tiling(cfg: TileConfig, device: torch.device, multiple: int) -> tuple[int, int, int]:
    """(tile, overlap, untiled pixels) for ``cfg`` on ``device``, the sizes rounded to
    ``multiple``; tile 0 = never tile.

    CPU defaults: tiles of 256 with a 32 px overlap cost about what the whole image costs
    (the network is faster on smaller squares, docs/architecture.md) and bound the memory;
    calls up to 0.5 MP (an output of about 700 x 700 per sample) run whole, where no tiling
    effect can arise at all.
    """
    if cfg.tile < 0:
        return 0, 0, 0
    gpu = device.type == "cuda"
    tile = cfg.tile or (768 if gpu else 256)
    tile = max(multiple, tile - tile % multiple)
    overlap = cfg.overlap or max(16, tile // 8)
    overlap = min(overlap + (-overlap) % multiple, tile // 2 - (tile // 2) % multiple)
    untiled = 0.0 if cfg.untiled < 0 else cfg.untiled or (4.0 if gpu else 0.5)
    return tile, max(overlap, 0), int(untiled * 1e6)


def fit_tile(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile side (a multiple of ``multiple``, at most ``tile``) that covers
    ``length`` with as few tiles as ``tile`` needs: 288 px with tiles of 256 and an overlap
    of 32 takes two tiles either way, so two of 160 rather than two of 256."""
    if tile >= length:
        return length
    n = math.ceil((length - overlap) / (tile - overlap))
    side = math.ceil((length + (n - 1) * overlap) / n)
    return min(tile, side + (-side) % multiple)


def tile_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Origins of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px
    of overlap, spread evenly, each a multiple of ``multiple``; the last ends at ``length``.
    ``length`` and ``tile`` must be multiples of ``multiple``."""
    if tile >= length:
        return [0]
    if tile % multiple or length % multiple:
        raise ValueError(f"tile {tile} and length {length} must be multiples of {multiple}")
    stride = tile - overlap
    if stride < multiple:
        raise ValueError(f"overlap {overlap} leaves no stride in a tile of {tile}")
    n = math.ceil((length - overlap) / stride)
    last = length - tile
    starts = sorted({round(k * last / (n - 1) / multiple) * multiple for k in range(n)})
    return starts


def _ramp(n: int, device, dtype) -> Tensor:
    """n weights rising smoothly from near 0 to near 1 (raised cosine at pixel centres)."""
    k = (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
    return 0.5 - 0.5 * torch.cos(math.pi * k)


def blend_window(size: tuple[int, int], ramps: tuple[int, int, int, int], device=None,
                 dtype=torch.float32) -> Tensor:
    """(1, 1, h, w) weights of one tile: ramps of (top, bottom, left, right) pixels (0 on a
    side at the image border), 1 elsewhere; every weight is > 0."""
    h, w = size
    top, bottom, left, right = ramps
    wy = torch.ones(h, device=device, dtype=dtype)
    wx = torch.ones(w, device=device, dtype=dtype)
    if top:
        wy[:top] = _ramp(top, device, dtype)
    if bottom:
        wy[h - bottom:] = torch.minimum(wy[h - bottom:], _ramp(bottom, device, dtype).flip(0))
    if left:
        wx[:left] = _ramp(left, device, dtype)
    if right:
        wx[w - right:] = torch.minimum(wx[w - right:], _ramp(right, device, dtype).flip(0))
    return (wy[:, None] * wx[None, :])[None, None]


@dataclass(frozen=True)
class Tile:
    y: int
    x: int
    h: int
    w: int
    ramps: tuple[int, int, int, int]  # (top, bottom, left, right) ramp widths
    # The part of the image this tile alone stands for (tile coordinates y0, y1, x0, x1):
    # the tiles' owned parts partition the image (cut at the middle of each overlap).
    own: tuple[int, int, int, int] = (0, 0, 0, 0)


def layout(H: int, W: int, tile: int, overlap: int, multiple: int) -> list[Tile]:
    """The tiles covering an (H, W) image (each side shrunk by ``fit_tile``); a ramp spans
    the overlap with each neighbour."""
    th, tw = fit_tile(H, tile, overlap, multiple), fit_tile(W, tile, overlap, multiple)
    ys, xs = tile_starts(H, th, overlap, multiple), tile_starts(W, tw, overlap, multiple)

    def ramps(starts: list[int], i: int, size: int) -> tuple[int, int]:
        before = starts[i - 1] + size - starts[i] if i > 0 else 0
        after = starts[i] + size - starts[i + 1] if i + 1 < len(starts) else 0
        return before, after

    def owned(starts: list[int], i: int, size: int, length: int) -> tuple[int, int]:
        def cut(j: int) -> int:  # the middle of the overlap of tiles j and j+1, on the grid
            mid = (starts[j + 1] + starts[j] + size) / 2
            return int(round(mid / multiple)) * multiple
        lo = cut(i - 1) if i > 0 else 0
        hi = cut(i) if i + 1 < len(starts) else length
        return lo - starts[i], hi - starts[i]

    tiles = []
    for i, y in enumerate(ys):
        top, bottom = ramps(ys, i, th)
        for j, x in enumerate(xs):
            left, right = ramps(xs, j, tw)
            tiles.append(Tile(y, x, th, tw, (top, bottom, left, right),
                              (*owned(ys, i, th, H), *owned(xs, j, tw, W))))
    return tiles


class GlobalGroupNorm:
    """Makes every ``nn.GroupNorm`` of a network normalise with whole-image statistics while
    the network runs on tiles (a context manager around the tiled passes).

    A UNet's GroupNorm layers normalise over the whole spatial extent they see, so a tile
    normalised by its own statistics gets a different gain from its neighbours (measured: the
    per-pixel std of 8 samples differed by up to 18% between two tiles of one image, a block
    pattern in the std map). Pass ``collect`` runs the tiles with their own statistics and
    adds, per layer, row and group, the sums over the pixels each tile owns (``Tile.own``:
    the owned parts partition the image, at every resolution of the UNet); pass ``apply``
    runs them again normalising with the totals, i.e. with the statistics of the whole image
    as the collect pass saw it (its later layers saw tiles normalised locally: close, not
    exact). Costs one more network pass per step.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.norms = [m for m in module.modules() if isinstance(m, torch.nn.GroupNorm)]
        self.mode: str | None = None  # None (plain GroupNorm) | collect | apply
        self.rows = 1  # rows per tile in a network call (tiles are concatenated on dim 0)
        self.tiles: list[Tile] = []  # the tiles of the current call, in batch order
        self.sums: dict[int, list[Tensor]] = {}

    def __enter__(self) -> GlobalGroupNorm:
        for m in self.norms:
            m.forward = (lambda x, m=m: self._forward(m, x))  # instance attribute
        self.sums = {}
        return self

    def __exit__(self, *exc) -> None:
        for m in self.norms:
            del m.forward  # back to the class's forward
        self.mode, self.sums = None, {}

    def _forward(self, norm: torch.nn.GroupNorm, x: Tensor) -> Tensor:
        F = torch.nn.functional
        if self.mode is None:
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        shape = x.shape
        if x.ndim == 3:  # (N, C, L): an attention block's tokens, row-major over (h, w)
            t0 = self.tiles[0]
            f = math.isqrt(t0.h * t0.w // shape[-1])
            x = x.reshape(shape[0], shape[1], t0.h // f, t0.w // f)
        N, C, h, w = x.shape
        G, R = norm.num_groups, self.rows
        xg = x.reshape(N, G, C // G, h, w)
        if self.mode == "collect":
            acc = self.sums.setdefault(id(norm), [torch.zeros(R, G, dtype=torch.float64,
                                                              device=x.device)
                                                  for _ in range(2)] + [0])
            for i, t in enumerate(self.tiles):
                sy, sx = t.h // h, t.w // w  # this layer's down-sampling
                y0, y1, x0, x1 = t.own
                part = xg[i * R:(i + 1) * R, :, :, y0 // sy:y1 // sy, x0 // sx:x1 // sx].double()
                acc[0] += part.sum((2, 3, 4))
                acc[1] += part.square().sum((2, 3, 4))
                acc[2] += part[0, 0].numel()  # values per (row, group) this tile adds
            return F.group_norm(x, G, norm.weight, norm.bias, norm.eps).reshape(shape)
        s, ss, n = self.sums[id(norm)]
        mean = s / n
        var = (ss / n - mean.square()).clamp_min(0)
        k = N // R
        mean = mean.repeat(k, 1).to(x.dtype)[:, :, None, None, None]
        std = (var.repeat(k, 1) + norm.eps).sqrt().to(x.dtype)[:, :, None, None, None]
        y = ((xg - mean) / std).reshape(N, C, h, w)
        if norm.affine:
            y = y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]
        return y.reshape(shape)


class TiledDenoiser:
    """``denoise_fn(r_t, cond_in, t, level)`` for ``cascade.diffusion.sampling.sample`` that
    evaluates ``unet`` on overlapping tiles and blends them (a single call when the image
    fits in one tile). ``global_norm``: tiles normalise with whole-image GroupNorm
    statistics (``GlobalGroupNorm``; one more pass per step)."""

    def __init__(self, unet, tile: int, overlap: int, batch: int = 4,
                 progress: bool = False, global_norm: bool = True,
                 untiled_pixels: int = 0, norm_tiles: int = 0, min_rows: int = 1) -> None:
        if tile and tile < 2 * overlap:
            raise ValueError(f"tile {tile} must be at least twice the overlap {overlap}")
        self.unet = unet
        self.tile, self.overlap, self.batch = tile, overlap, max(1, batch)
        self.multiple = getattr(unet, "downsample_factor", 1)
        self.progress = progress
        self.global_norm = global_norm
        self.untiled_pixels = untiled_pixels
        self.norm_tiles = norm_tiles
        # Whether to tile is decided for at least this many rows (a run's batch), so a
        # smaller last batch is tiled like the others and sample i does not depend on N.
        self.min_rows = max(1, min_rows)
        self.calls = 0  # network calls so far (tests, benchmarks)
        self._cache: dict[tuple, tuple[list[Tile], Tensor]] = {}

    def tiles_for(self, H: int, W: int, rows: int = 1) -> list[Tile]:
        """The tiles of an (H, W) image drawn ``rows`` samples at a time."""
        whole = max(rows, self.min_rows) * H * W <= self.untiled_pixels
        if not self.tile or whole or (H <= self.tile and W <= self.tile):
            return [Tile(0, 0, H, W, (0, 0, 0, 0), (0, H, 0, W))]
        return layout(H, W, self.tile, self.overlap, self.multiple)

    def _plan(self, H: int, W: int, rows: int, device, dtype) -> tuple[list[Tile], Tensor]:
        key = (H, W, rows, str(device), dtype)
        if key not in self._cache:
            tiles = self.tiles_for(H, W, rows)
            total = torch.zeros(1, 1, H, W, device=device, dtype=dtype)
            for tl in tiles:
                total[..., tl.y:tl.y + tl.h, tl.x:tl.x + tl.w] += blend_window(
                    (tl.h, tl.w), tl.ramps, device, dtype)
            self._cache = {key: (tiles, total)}  # one size at a time
        return self._cache[key]

    def __call__(self, r_t: Tensor, cond_in: Tensor, t: Tensor, level: Tensor) -> Tensor:
        B, _, H, W = r_t.shape
        tiles, total = self._plan(H, W, B, r_t.device, r_t.dtype)
        if len(tiles) == 1:
            self.calls += 1
            return self.unet(r_t, cond_in, t, level)
        # Rows x tiles in network batches of about ``batch`` tiles of ``B`` rows ... or fewer.
        per_call = max(1, self.batch // B)
        passes = [("collect", self._sampled(tiles)), ("apply", tiles)] if self.global_norm \
            else [(None, tiles)]
        out = torch.zeros_like(r_t)  # (B, 3, H, W): blended network output
        bar = nested_bar(total=sum(len(ts) for _, ts in passes), desc="tiles", unit="tile",
                         disable=not self.progress)
        with bar, GlobalGroupNorm(self.unet) if self.global_norm else nullcontext() as norm:
            for mode, todo in passes:
                if norm is not None:
                    norm.mode, norm.rows = mode, B
                for group in (todo[i:i + per_call] for i in range(0, len(todo), per_call)):
                    xs = torch.cat([r_t[..., g.y:g.y + g.h, g.x:g.x + g.w] for g in group])
                    cs = torch.cat([cond_in[..., g.y:g.y + g.h, g.x:g.x + g.w] for g in group])
                    k = len(group)
                    if norm is not None:
                        norm.tiles = group
                    y = self.unet(xs, cs, t.repeat(k), level.repeat(k)).to(out.dtype)
                    self.calls += 1
                    bar.update(k)
                    if mode == "collect":
                        continue  # statistics only
                    for i, g in enumerate(group):
                        win = blend_window((g.h, g.w), g.ramps, out.device, out.dtype)
                        out[..., g.y:g.y + g.h, g.x:g.x + g.w] += y[i * B:(i + 1) * B] * win
        return out / total

    def _sampled(self, tiles: list[Tile]) -> list[Tile]:
        """The tiles the GroupNorm statistics are gathered on: all, or ``norm_tiles`` of them
        evenly spread (their owned parts then sample the image instead of covering it)."""
        n = self.norm_tiles
        if not n or len(tiles) <= n:
            return tiles
        return [tiles[round(i * (len(tiles) - 1) / (n - 1))] for i in range(n)]


def border_lines(tiles: list[Tile], H: int, W: int) -> tuple[list[int], list[int]]:
    """Interior rows and columns where a tile starts or ends (where a seam would show):
    the index i of each boundary between pixel i-1 and pixel i."""
    ys = sorted({v for t in tiles for v in (t.y, t.y + t.h) if 0 < v < H})
    xs = sorted({v for t in tiles for v in (t.x, t.x + t.w) if 0 < v < W})
    return ys, xs


def seam_ratio(img: Tensor, rows: list[int], cols: list[int], band: int = 1) -> float:
    """Mean |gradient| near the given tile borders over the mean |gradient| everywhere else
    in ``img`` (..., H, W): ~1 means no seam, > 1 a visible line.

    A border at index i lies between pixels i-1 and i; "near" means the vertical (for rows)
    or horizontal (for cols) steps within ``band`` steps of it: ``band=1`` is the step across
    the border alone; a wider band also sees lines a few pixels inside the tiles (a network's
    border effect darkening both sides alike)."""
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs()  # step k: between rows k and k+1
    dx = (img[..., :, 1:] - img[..., :, :-1]).abs()
    my = torch.zeros(dy.shape[-2], dtype=torch.bool)
    mx = torch.zeros(dx.shape[-1], dtype=torch.bool)
    for r in rows:
        my[max(0, r - band):r + band - 1] = True
    for c in cols:
        mx[max(0, c - band):c + band - 1] = True
    on = torch.cat([dy[..., my, :].reshape(-1), dx[..., :, mx].reshape(-1)])
    off = torch.cat([dy[..., ~my, :].reshape(-1), dx[..., :, ~mx].reshape(-1)])
    if on.numel() == 0:
        return 1.0
    return float(on.double().mean() / off.double().mean())
