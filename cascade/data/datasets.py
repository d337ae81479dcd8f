"""Datasets: image folders, the built-in photos, the standard SR test sets, and the
random-scale patch sampler that trains the INR stage.

Built-in photos (shipped inside scikit-image, scikit-learn and matplotlib, so every machine
that installs cascade has them). The split is by image and fixed:

* ``test`` (held out, for demos and evaluation): chelsea, coffee, flower, grace_hopper
* ``train``: astronaut, rocket, hubble_deep_field, retina, motorcycle_left, motorcycle_right,
  ihc, china, camera, brick, grass, gravel, moon, coins (the last six are grayscale and
  are read as gray RGB)

``set5``, ``set14``, ``bsd68`` are read from ``$CASCADE_DATA/{Set5,Set14,BSD68}``, or from
``../shared/data`` beside the repository when ``CASCADE_DATA`` is unset. They are for
evaluation only: never train on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cascade.data.coords import make_cell, make_coord
from cascade.data.degrade import imresize
from cascade.data.io import list_images, load_image
from cascade.errors import CascadeError, ImageError
from cascade.paths import REPO_ROOT

# name -> (package, path inside the package's data folder)
_BUILTIN_FILES = {
    "chelsea": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "flower": ("sklearn", "flower.jpg"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "astronaut": ("skimage", "astronaut.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "retina": ("skimage", "retina.jpg"),
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "ihc": ("skimage", "ihc.png"),
    "china": ("sklearn", "china.jpg"),
    "camera": ("skimage", "camera.png"),
    "brick": ("skimage", "brick.png"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
    "moon": ("skimage", "moon.png"),
    "coins": ("skimage", "coins.png"),
}
BUILTIN_SPLITS = {
    "test": ("chelsea", "coffee", "flower", "grace_hopper"),
    "train": ("astronaut", "rocket", "hubble_deep_field", "retina", "motorcycle_left",
              "motorcycle_right", "ihc", "china", "camera", "brick", "grass", "gravel",
              "moon", "coins"),
}
STANDARD_SETS = {"set5": "Set5", "set14": "Set14", "bsd68": "BSD68"}
# photos:SPLIT -> the folder of the prepared corpus (cascade data photos) it reads
PHOTO_SPLITS = ("train", "val", "unseen", "saturated", "colour")


def _package_data_dir(package: str) -> Path:
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    if package == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images"
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise KeyError(package)


def builtin_photos(split: str = "test") -> list[tuple[str, Path]]:
    """(name, file) of the built-in photos of ``split`` ('test', 'train' or 'all')."""
    if split == "all":
        names = BUILTIN_SPLITS["test"] + BUILTIN_SPLITS["train"]
    elif split in BUILTIN_SPLITS:
        names = BUILTIN_SPLITS[split]
    else:
        raise CascadeError(f"unknown split {split!r} of the built-in photos; use test, train or all")
    out = []
    for name in names:
        pkg, rel = _BUILTIN_FILES[name]
        path = _package_data_dir(pkg) / rel
        if not path.is_file():
            raise ImageError(f"built-in photo {name!r} is missing ({path}); reinstall {pkg}")
        out.append((name, path))
    return out


def data_root() -> Path:
    """Where set5/set14/bsd68 live: $CASCADE_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("CASCADE_DATA")
    return Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "data"


def photos_root() -> Path:
    """The prepared photo corpus: $CASCADE_PHOTOS, else data/photos in the repository."""
    env = os.environ.get("CASCADE_PHOTOS")
    return Path(env).expanduser() if env else REPO_ROOT / "data" / "photos"


def photos_folder(split: str) -> Path:
    """``photos:SPLIT`` (train, val, unseen, saturated, colour) as a folder, checked."""
    split = split or "train"
    if split not in PHOTO_SPLITS:
        raise CascadeError(f"unknown split photos:{split}; use one of {', '.join(PHOTO_SPLITS)}")
    folder = photos_root() / split
    if not folder.is_dir() or not any(folder.iterdir()):
        raise CascadeError(f"photos:{split} not found at {folder}; run 'cascade data photos' "
                           "(or set CASCADE_PHOTOS to the folder it prepared)")
    return folder


class ImageFolder:
    """Images as a dataset: ``ds[i] -> {"image": (3, H, W) float32, "name": str}``.

    Files are listed recursively and sorted; names are paths relative to the root without
    suffix (unique inside the dataset). Images are read on access, so a bad file fails
    with its own :class:`ImageError` when it is reached.
    """

    def __init__(self, paths: list[Path], name: str, names: list[str] | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.name = name
        self.names = names or [p.stem for p in self.paths]

    @classmethod
    def from_path(cls, root: str | os.PathLike, name: str | None = None) -> ImageFolder:
        files = list_images(root)
        base = Path(root)
        if base.is_dir():
            names = [str(f.relative_to(base).with_suffix("")) for f in files]
        else:
            names = [f.stem for f in files]
            if len(set(names)) < len(names):  # glob over several folders
                names = [str(f.with_suffix("")).replace(os.sep, "_") for f in files]
        return cls(files, name or (base.name if base.is_dir() else base.stem), names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": load_image(self.paths[i]), "name": self.names[i]}

    def __repr__(self) -> str:
        return f"ImageFolder({self.name!r}, {len(self)} images)"


def resolve_dataset(name: str, split: str = "test") -> ImageFolder:
    """A dataset by name (builtin, builtin:train, photos, photos:val, set5, set14, bsd68) or
    by path/glob. Without a ``:split``, ``builtin`` and ``photos`` take ``split`` ('test' ->
    photos:val)."""
    key, _, sub = str(name).partition(":")
    if key == "builtin":
        split = sub or split
        photos = builtin_photos(split)
        return ImageFolder([p for _, p in photos], "builtin" if split == "test"
                           else f"builtin:{split}", [n for n, _ in photos])
    if key == "photos" and not Path(name).exists():
        split = sub or ("train" if split == "train" else "val")
        return ImageFolder.from_path(photos_folder(split), f"photos:{split}")
    if key.lower() in STANDARD_SETS and not Path(name).exists():
        folder = data_root() / STANDARD_SETS[key.lower()]
        if not folder.is_dir():
            raise CascadeError(
                f"dataset {key} not found at {folder}; set CASCADE_DATA to the folder that "
                f"holds {STANDARD_SETS[key.lower()]}/ (or pass the image folder's path)")
        return ImageFolder.from_path(folder, key.lower())
    return ImageFolder.from_path(name)


def centre_crop(img: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre ``crop`` x ``crop`` of (..., H, W) (each side capped at the image's); 0: all."""
    if crop <= 0:
        return img
    H, W = img.shape[-2:]
    c_h, c_w = min(crop, H), min(crop, W)
    y, x = (H - c_h) // 2, (W - c_w) // 2
    return img[..., y:y + c_h, x:x + c_w]


def apply_flips(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Horizontal flip, vertical flip, transpose of (..., H, W), each where ``flips`` (3 bools)
    says: the 8 symmetries of the square, for crop augmentation."""
    if flips[0]:
        x = x.flip(-1)
    if flips[1]:
        x = x.flip(-2)
    if flips[2]:
        x = x.transpose(-1, -2)
    return x


@dataclass
class RandomScalePatches:
    """LIIF-style random-scale training batches for an INR.

    For each batch: one scale s ~ U(scale_min, scale_max); for each item a random HR crop
    of ``round(lr_patch * s)`` pixels (random flips / transpose), LR = D(crop) to
    ``lr_patch`` x ``lr_patch`` rounded to uint8, and ``queries`` random HR pixels. Their
    coordinates are the pixel centres of the HR crop in the convention of
    :mod:`cascade.data.coords`, moved by a jitter drawn anew for every query of every batch,
    uniform in +-``jitter`` cells (0.5 = anywhere inside the pixel's cell). The effective
    scale is ``round(lr_patch * s) / lr_patch``.

    ``sample_batch`` returns ``lr (B, 3, p, p)``, ``coord (B, Q, 2)``, ``cell (B, Q, 2)``,
    ``rgb (B, Q, 3)`` and ``scale`` (float).
    """

    images: list[torch.Tensor]
    lr_patch: int = 48
    scale_min: float = 1.0
    scale_max: float = 4.0
    queries: int | None = 1024
    jitter: float = 0.5
    augment: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.scale_min <= self.scale_max:
            raise CascadeError(f"need 1 <= scale_min <= scale_max, got {self.scale_min}, "
                               f"{self.scale_max}")
        need = round(self.lr_patch * self.scale_max)
        small = [i for i, im in enumerate(self.images) if min(im.shape[-2:]) < need]
        if small:
            raise CascadeError(f"{len(small)} training images are smaller than {need} pixels "
                               f"(lr_patch * scale_max); lower data.scale_max or data.lr_patch")
        if not self.images:
            raise CascadeError("no training images")

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> dict:
        g = generator
        s = self.scale_min + (self.scale_max - self.scale_min) * float(torch.rand((), generator=g))
        hr_size = round(self.lr_patch * s)
        crops = []
        for _ in range(batch_size):
            img = self.images[int(torch.randint(len(self.images), (), generator=g))]
            H, W = img.shape[-2:]
            top = int(torch.randint(H - hr_size + 1, (), generator=g))
            left = int(torch.randint(W - hr_size + 1, (), generator=g))
            crop = img[:, top:top + hr_size, left:left + hr_size]
            if self.augment:
                crop = apply_flips(crop, torch.rand(3, generator=g) < 0.5)
            crops.append(crop)
        hr = torch.stack(crops)  # (B, 3, S, S)
        lr = imresize(hr, size=(self.lr_patch, self.lr_patch))
        lr = (lr.clamp(0, 1) * 255).round() / 255
        coord = make_coord((hr_size, hr_size))  # (S*S, 2)
        rgb = hr.flatten(2).transpose(1, 2)  # (B, S*S, 3)
        n = hr_size * hr_size
        q = n if not self.queries else min(self.queries, n)
        idx = torch.stack([torch.randperm(n, generator=g)[:q] for _ in range(batch_size)])
        coord = coord[idx]  # (B, Q, 2)
        rgb = torch.gather(rgb, 1, idx[..., None].expand(-1, -1, 3))  # (B, Q, 3)
        cell = make_cell((hr_size, hr_size), q).expand(batch_size, q, 2).clone()
        if self.jitter:
            coord = coord + (torch.rand(coord.shape, generator=g) * 2 - 1) * self.jitter * cell
        return {"lr": lr, "coord": coord, "cell": cell, "rgb": rgb,
                "scale": hr_size / self.lr_patch}
