"""The photo corpus: large, freely licensed photographs from Debian's wallpaper packages,
prepared the way DIV2K is prepared (``cascade data photos``).

1. **Fetch.** ``apt-get download`` the packages named in ``photos.json`` into ``OUT/debs``
   (skipped when the ``.deb`` files are there already; put them there by hand where there is
   no apt-get).
2. **Extract.** Read each ``.deb`` in Python (an ``ar`` archive holding ``data.tar.*``) and
   take only the photographs the manifest lists, checking each file's sha256, to
   ``OUT/originals/NAME.EXT``. The packages also hold illustrations and abstract renders;
   the manifest leaves those out.
3. **Prepare.** Downscale each original (Lanczos) so that its longer side is at most
   ``max_side`` pixels (averaging pixels removes the sensor noise and JPEG blocks of the
   big originals), then
   * ``train`` photos: cut HR sub-images of ``sub_size`` pixels with a ``stride`` (the last
     row and column snapped to the border) into ``OUT/train/NAME_RRR_CCC.png``;
   * ``val`` photos (held out by name, never trained on): whole, into ``OUT/val/NAME.png``,
     and the generalization sets of ``configs/eval/unseen.yaml`` are cut from them
     (:func:`make_unseen_sets`).

Any folder of images (DIV2K / Flickr2K layout) is prepared the same way with ``--from``:
step 3 only, every image a training photo unless named in ``--val``.

Every step is idempotent and resumable: ``OUT/prepared.json`` records the settings and the
photos done so far (written atomically after each photo), and a rerun with the same settings
only does what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import shutil
import subprocess
import sys
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cascade.atomic import atomic_write, atomic_write_text
from cascade.errors import CascadeError

MANIFEST = Path(__file__).with_name("photos.json")
SPLITS = ("train", "val")


@dataclass
class PhotosConfig:
    out: str = "data/photos"
    source: str | None = None  # a folder of images instead of the Debian packages
    val: list[str] = field(default_factory=list)  # held-out names for --from folders
    max_side: int = 1280  # downscale originals to at most this longer side (0: keep)
    sub_size: int = 480  # HR sub-image side (DIV2K: 480)
    stride: int = 480  # sub-image stride (DIV2K: 240; our 64-px training crops need no overlap)


def load_manifest() -> dict:
    return json.loads(MANIFEST.read_text())


# -- fetch and extract ------------------------------------------------------------------------

def fetch_debs(packages: list[str], folder: Path) -> dict[str, Path]:
    """``{package: .deb file}`` in ``folder``, downloading the missing ones with apt-get."""
    folder.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(folder.glob(f"{p}_*.deb"))]
    if missing:
        if shutil.which("apt-get") is None:
            raise CascadeError(
                f"apt-get not found: download the Debian packages {', '.join(missing)} "
                f"(.deb) into {folder} and rerun, or prepare your own photos with --from FOLDER")
        print(f"photos: apt-get download {' '.join(missing)}", file=sys.stderr)
        r = subprocess.run(["apt-get", "download", *missing], cwd=folder, capture_output=True,
                           text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise CascadeError(f"apt-get download failed ({last}); run 'apt-get update' or put "
                               f"the .deb files into {folder} by hand")
    return {p: sorted(folder.glob(f"{p}_*.deb"))[-1] for p in packages}


def deb_data_tar(deb: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a .deb (an ``ar`` archive), opened as a tar file."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise CascadeError(f"{deb} is not a Debian package (.deb); delete it and rerun")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos:pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48:pos + 58].decode().strip())
        body = raw[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise CascadeError(f"{deb}: zstd-compressed packages are not supported; "
                                   "extract it with dpkg-deb -x and pass --from the folder")
            if name.endswith(".xz"):
                body = lzma.decompress(body)
            return tarfile.open(fileobj=io.BytesIO(body), mode="r:*")
        pos += 60 + size + (size % 2)
    raise CascadeError(f"{deb} holds no data.tar; delete it and rerun")


def extract_originals(manifest: dict, debs: dict[str, Path], folder: Path) -> dict[str, Path]:
    """``{name: original}`` for every photo of the manifest, checked against its sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    todo: dict[str, list[dict]] = {}
    for row in manifest["photos"]:
        dest = folder / f"{row['name']}{Path(row['path']).suffix.lower()}"
        out[row["name"]] = dest
        if not (dest.is_file() and _sha256(dest.read_bytes()) == row["sha256"]):
            todo.setdefault(row["package"], []).append(row)
    for package, rows in todo.items():
        with deb_data_tar(debs[package]) as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers()}
            for row in rows:
                member = members.get(row["path"])
                if member is None:
                    raise CascadeError(f"{debs[package].name} has no {row['path']}; the package "
                                       f"changed (manifest: {manifest['packages'][package]})")
                data = tar.extractfile(member).read()
                if _sha256(data) != row["sha256"]:
                    raise CascadeError(
                        f"{row['path']} in {debs[package].name} differs from the manifest "
                        f"(sha256); the corpus would not be the shipped one: use the package "
                        f"version {manifest['packages'][package]}")
                _write_bytes(out[row["name"]], data)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


# -- prepare ------------------------------------------------------------------------------------

def downscale(img: Image.Image, max_side: int) -> Image.Image:
    """``img`` (RGB) with its longer side at most ``max_side`` (Lanczos; 0 keeps it)."""
    w, h = img.size
    if max_side <= 0 or max(w, h) <= max_side:
        return img
    f = max_side / max(w, h)
    return img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.LANCZOS)


def sub_image_offsets(length: int, size: int, stride: int) -> list[int]:
    """Top-left offsets of sub-images of ``size`` along a side of ``length``: every
    ``stride``, plus one snapped to the far border when the stride leaves a strip."""
    if length <= size:
        return [0]
    offs = list(range(0, length - size + 1, stride))
    if offs[-1] != length - size:
        offs.append(length - size)
    return offs


def _open_rgb(path: Path) -> Image.Image:
    """Any image file as an 8-bit RGB Pillow image (through ``load_image``'s checks)."""
    from cascade.data.io import load_image, to_uint8

    return Image.fromarray(to_uint8(load_image(path)), "RGB")


def _save_png(img: Image.Image, path: Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    _write_bytes(path, buf.getvalue())


def prepare_photo(src: Path, name: str, split: str, cfg: PhotosConfig, out: Path) -> list[Path]:
    """Downscale one original and write its sub-images (train) or itself (val)."""
    img = downscale(_open_rgb(src), cfg.max_side)
    if split == "val":
        dest = out / "val" / f"{name}.png"
        _save_png(img, dest)
        return [dest]
    w, h = img.size
    files = []
    for top in sub_image_offsets(h, cfg.sub_size, cfg.stride):
        for left in sub_image_offsets(w, cfg.sub_size, cfg.stride):
            box = (left, top, min(w, left + cfg.sub_size), min(h, top + cfg.sub_size))
            dest = out / "train" / f"{name}_{top:04d}_{left:04d}.png"
            _save_png(img.crop(box), dest)
            files.append(dest)
    return files


def prepare(cfg: PhotosConfig, progress: bool = True) -> dict:
    """Fetch, extract and prepare the corpus into ``cfg.out``; returns the record it keeps in
    ``OUT/prepared.json`` (settings, photos done, files per split)."""
    from tqdm.auto import tqdm

    if cfg.sub_size < 64 or not 0 < cfg.stride <= cfg.sub_size:
        raise CascadeError(f"need sub_size >= 64 and 0 < stride <= sub_size, got {cfg.sub_size}, "
                           f"{cfg.stride}")
    out = Path(cfg.out)
    photos = _source_photos(cfg, out)  # [(name, split, original)]
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out",)}
    record_path = out / "prepared.json"
    record = _read_record(record_path)
    if record.get("settings") != settings:  # new settings: start over
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
        record = {"settings": settings, "done": {}}
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    todo = [p for p in photos if p[0] not in record["done"]]
    bar = tqdm(todo, desc="preparing photos", disable=not progress or not todo,
               dynamic_ncols=True, file=sys.stderr)
    try:
        for name, split, src in bar:
            files = prepare_photo(src, name, split, cfg, out)
            record["done"][name] = {"split": split, "files": len(files)}
            atomic_write_text(record_path, json.dumps(record, indent=1) + "\n")
    finally:
        bar.close()
    if cfg.source is None or any(s == "val" for _, s, _ in photos):
        make_unseen_sets(out)
    return {**record, "made": len(todo)}


def _source_photos(cfg: PhotosConfig, out: Path) -> list[tuple[str, str, Path]]:
    if cfg.source is None:
        manifest = load_manifest()
        debs = fetch_debs(sorted(manifest["packages"]), out / "debs")
        originals = extract_originals(manifest, debs, out / "originals")
        return [(r["name"], r["split"], originals[r["name"]]) for r in manifest["photos"]]
    from cascade.data.io import list_images

    src = Path(cfg.source)
    if not src.is_dir():
        raise CascadeError(f"--from {src}: not a folder; pass a folder of images")
    files = list_images(src)
    names = [f.stem for f in files]
    if len(set(names)) < len(names):
        raise CascadeError(f"--from {src}: two images share a name; give them unique names")
    unknown = sorted(set(cfg.val) - set(names))
    if unknown:
        raise CascadeError(f"--val names no image of {src}: {', '.join(unknown)}")
    return [(f.stem, "val" if f.stem in cfg.val else "train", f) for f in files]


def _read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- the generalization sets (configs/eval/unseen.yaml) ---------------------------------------

UNSEEN_CROP = 384  # HR side of the held-out crops (divisible by 2, 3, 4, 8)


def colour_variants(img: np.ndarray) -> dict[str, np.ndarray]:
    """``{suffix: image}``: the 5 non-trivial channel permutations and hue rotations by
    90, 180 and 270 degrees (about the gray axis, clipped to [0, 1]) of an (H, W, 3) image."""
    from itertools import permutations

    from cascade.data.augment import hue_rotation_matrix

    out = {}
    for perm in permutations(range(3)):
        if perm != (0, 1, 2):
            out["perm" + "".join("rgb"[i] for i in perm)] = img[..., list(perm)]
    for deg in (90, 180, 270):
        m = hue_rotation_matrix(deg).numpy()
        out[f"hue{deg}"] = np.clip(img @ m.T, 0, 1)
    return out


def saturation(img: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an (H, W, 3) image in [0, 1]."""
    mx, mn = img.max(-1), img.min(-1)
    return (mx - mn) / np.maximum(mx, 1e-6)


def make_unseen_sets(out: Path, crop: int = UNSEEN_CROP) -> None:
    """Cut the generalization sets from the held-out photos in ``OUT/val``:

    * ``unseen/``: the centre crop and the most detailed crop of every held-out photo;
    * ``saturated/``: per photo the crop of highest mean saturation (where it differs from
      the two above, else the next best);
    * ``colour/``: one crop (fallen_leaf's centre, or the first photo's) and its channel
      permutations and hue rotations (:func:`colour_variants`).
    """
    val = sorted((out / "val").glob("*.png"))
    if not val:
        return
    for sub in ("unseen", "saturated", "colour"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for path in val:
        img = np.asarray(_open_rgb(path), dtype=np.float32) / 255
        H, W = img.shape[:2]
        c = min(crop, H, W)
        grid = [(t, l) for t in sub_image_offsets(H, c, c // 2) for l in sub_image_offsets(W, c, c // 2)]
        centre = ((H - c) // 2, (W - c) // 2)
        detail = max(grid, key=lambda o: _detail(img[o[0]:o[0] + c, o[1]:o[1] + c]))
        sat_order = sorted(grid, key=lambda o: -float(saturation(img[o[0]:o[0] + c,
                                                                      o[1]:o[1] + c]).mean()))
        sat = next((o for o in sat_order if o not in (centre, detail)), sat_order[0])
        for folder, tag, (t, l) in (("unseen", "centre", centre), ("unseen", "detail", detail),
                                    ("saturated", "sat", sat)):
            _save_array(img[t:t + c, l:l + c], out / folder / f"{path.stem}_{tag}.png")
    base = next((p for p in val if p.stem == "fallen_leaf"), val[0])
    ref = np.asarray(Image.open(out / "unseen" / f"{base.stem}_centre.png").convert("RGB"),
                     dtype=np.float32) / 255
    _save_array(ref, out / "colour" / f"{base.stem}_orig.png")
    for suffix, im in colour_variants(ref).items():
        _save_array(im, out / "colour" / f"{base.stem}_{suffix}.png")


def _detail(img: np.ndarray) -> float:
    y = img.mean(-1)
    return float(np.abs(np.diff(y, axis=0)).mean() + np.abs(np.diff(y, axis=1)).mean())


def _save_array(img: np.ndarray, path: Path) -> None:
    if path.is_file():
        return
    _save_png(Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)), path)
