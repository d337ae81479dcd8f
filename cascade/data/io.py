"""Image files <-> float32 RGB tensors in [0, 1], with one clear error per bad file.

``load_image`` reads any file Pillow reads: gray, palette, RGBA/LA (alpha composited on a
background colour or dropped), 16-bit grayscale PNG (full precision; Pillow reads 16-bit
*RGB* PNGs at 8 bits), CMYK JPEG; EXIF orientation is applied. ``save_image`` writes PNG
atomically (temp file + rename), rounding to uint8; ``save_map`` / ``load_map`` write and
read a per-pixel map (H, W) as float32 TIFF (the std and interval maps as data).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cascade.atomic import atomic_write
from cascade.errors import ImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _to_array(img: Image.Image, alpha: str, background: float) -> np.ndarray:
    """A Pillow image of any mode -> (H, W, 3) float32 in [0, 1]."""
    if img.mode == "P":  # palette: keep transparency if the palette has it
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("I", "F"):  # 32-bit int (Pillow's 16-bit PNG on some versions) or float
        a = np.asarray(img, dtype=np.float64)
        a = a / (65535.0 if a.max(initial=0) > 255 else 255.0) if img.mode == "I" else a
        return np.repeat(np.clip(a, 0, 1).astype(np.float32)[..., None], 3, axis=2)
    if img.mode == "1":
        img = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        rgb, a = rgba[..., :3], rgba[..., 3:]
        if alpha == "drop":
            return rgb
        return rgb * a + background * (1.0 - a)
    if img.mode != "RGB":  # L, CMYK, YCbCr, LAB, HSV
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def load_image(path: str | os.PathLike, *, alpha: str = "composite",
               background: float = 1.0) -> torch.Tensor:
    """Read an image file -> (3, H, W) float32 RGB in [0, 1].

    ``alpha='composite'`` blends transparent pixels onto ``background`` (1.0 = white);
    ``alpha='drop'`` discards the alpha channel. Raises :class:`ImageError` naming the file
    for missing, empty, truncated or non-image files.
    """
    if alpha not in ("composite", "drop"):
        raise ValueError(f"alpha must be 'composite' or 'drop', got {alpha!r}")
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}; check the path")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file; pass a file "
                         "(folders are accepted where a list of images is expected)")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    if not data:
        raise ImageError(f"image file is empty (0 bytes): {path}; re-copy or re-export it")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now so truncation is caught here
            img = ImageOps.exif_transpose(img)
            arr = _to_array(img, alpha, background)
    except UnidentifiedImageError:
        raise ImageError(f"not an image file (Pillow cannot identify it): {path}; "
                         "use PNG, JPEG, BMP, TIFF or WebP") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path} has more pixels than Pillow's safety limit "
                         f"({Image.MAX_IMAGE_PIXELS:,} x 2); split it into tiles first") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"truncated or corrupt image: {path} ({e}); re-export the file") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 (rounded, clipped)."""
    if img.ndim == 4:
        if img.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {img.shape[0]}")
        img = img[0]
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(img.shape)}")
    a = (img.detach().to(torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    a = a.expand(3, -1, -1) if a.shape[0] == 1 else a
    return a.permute(1, 2, 0).cpu().numpy()


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid (what a saved PNG holds), staying float in [0, 1]."""
    return (img.clamp(0, 1) * 255).round() / 255


def save_image(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write (3, H, W) in [0, 1] as an 8-bit PNG, atomically. Returns the path."""
    path = Path(path)
    buf = io.BytesIO()
    Image.fromarray(to_uint8(img), "RGB").save(buf, format="PNG")
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


def save_map(value: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a per-pixel map (H, W) as a one-channel float32 TIFF, atomically: the values
    themselves (no colour scale), pixel-aligned with the image it describes."""
    path = Path(path)
    if value.ndim != 2:
        raise ValueError(f"expected a map (H, W), got shape {tuple(value.shape)}")
    buf = io.BytesIO()
    arr = np.ascontiguousarray(value.detach().to("cpu", torch.float32).numpy())
    Image.fromarray(arr, "F").save(buf, format="TIFF")
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return path


def load_map(path: str | os.PathLike) -> torch.Tensor:
    """Read a map written by ``save_map`` -> (H, W) float32."""
    try:
        with Image.open(path) as img:
            if img.mode != "F":
                raise ImageError(f"{path} is not a float32 map (mode {img.mode}); it must be "
                                 "a one-channel float TIFF as cascade upscale writes")
            return torch.from_numpy(np.array(img, dtype=np.float32))
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"cannot read the map {path} ({e}); rerun cascade upscale") from None


def list_images(root: str | os.PathLike) -> list[Path]:
    """Image files under a folder (recursive, sorted), a single file, or a glob pattern."""
    root_s = str(root)
    if any(c in root_s for c in "*?["):
        import glob

        files = sorted(Path(p) for p in glob.glob(root_s, recursive=True)
                       if Path(p).suffix.lower() in IMAGE_SUFFIXES and Path(p).is_file())
        if not files:
            raise ImageError(f"no images match {root_s}; check the pattern")
        return files
    p = Path(root)
    if not p.exists():
        raise ImageError(f"no such file or folder: {p}; check the path")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in f.relative_to(p).parts))
    if not files:
        raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {p}")
    return files
