"""Perception metrics with pretrained backbones: LPIPS per image, FID and KID per set.

* ``lpips``: the ``lpips`` package (Zhang et al. 2018), AlexNet trunk by default (``net="vgg"``
  for VGG16), inputs on the uint8 grid scaled to [-1, 1]; one value per image, or the spatial
  map (:func:`lpips_map`).
* ``fid`` / ``kid``: ``torch-fidelity`` on fixed-size patches (``patch`` x ``patch``, a
  non-overlapping grid, the same positions in sr and hr) of uint8 images held in memory, so a
  test set of five images still gives a hundred samples; KID's subset size is fitted to the
  number of patches, and both figures carry the number of patches behind them.

Offline: the trunks' ImageNet weights are not in the packages (LPIPS ships only its linear
layers). Like torchvision and torch-fidelity, they are read from
``$TORCH_HOME/hub/checkpoints/<file>`` or fetched there on first use. When a file is missing
and cannot be fetched, the metric says once which file to put where (or which option points
to it) and gives None, recorded as null and shown as "n/a": never a number from random weights.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cascade.errors import CascadeError
from cascade.metrics import METRICS
from cascade.metrics.fidelity import check_pair, uint8_values

# The trunks' files, named as torchvision / torch-fidelity cache them (the hex part of the
# name is the start of the file's sha256, checked when we fetch it).
LPIPS_TRUNKS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
}
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION = "inception-v3-compat"  # torch-fidelity's TF-compatible InceptionV3 (FID's own)

_reported: set[str] = set()  # messages already printed (each is said once per process)
_fetch_failed: set[str] = set()  # URLs that could not be fetched (tried once per process)


def _report_once(message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` (temp file + rename), checking the sha256 prefix in its name."""
    m = torch.hub.HASH_REGEX.search(dest.name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dest), hash_prefix=m.group(1) if m else None,
                                   progress=False)
    _report_once(f"downloaded {url} to {dest}")


def hub_file(url: str) -> Path:
    """Where torch hub caches ``url``: ``$TORCH_HOME/hub/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def backbone_file(url: str, path: str | os.PathLike | None, *, metric: str,
                  option: str) -> Path | None:
    """The pretrained backbone file: ``path`` if given, else torch hub's cache, fetched once.

    None, with a one-time message that names the file, the folder and ``option``, when the
    file is missing and cannot be fetched. A given ``path`` that does not exist is an error.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise CascadeError(f"{metric}: backbone weights {str(p)!r} not found; pass the path "
                               f"of {os.path.basename(url)} to {option}")
        return p
    dest = hub_file(url)
    if dest.is_file():
        return dest
    if url not in _fetch_failed:
        try:
            _fetch(url, dest)
            return dest
        except Exception:  # no network, proxy, HTTP error, bad hash: all mean "not here"
            _fetch_failed.add(url)
    _report_once(f"{metric}: pretrained weights {dest.name} are missing and cannot be "
                 f"downloaded; put {url} at {dest} (or pass {option} PATH); {metric} is "
                 "recorded as n/a")
    return None


# -- LPIPS ----------------------------------------------------------------------------------

def _check_net(net: str) -> None:
    if net not in LPIPS_TRUNKS:
        raise CascadeError(f"lpips: unknown net {net!r}; use one of {', '.join(LPIPS_TRUNKS)}")


def lpips_trunk_file(net: str = "alex", weights: str | None = None) -> Path | None:
    """The ImageNet trunk file LPIPS needs (None, reported once, when unavailable)."""
    _check_net(net)
    return backbone_file(LPIPS_TRUNKS[net], weights, metric="lpips", option="--lpips-weights")


@functools.lru_cache(maxsize=4)
def _lpips_model(net: str, trunk_file: str, spatial: bool):
    """``lpips.LPIPS`` with its shipped linear layers and the trunk read from ``trunk_file``.

    Built with ``pnet_rand=True, pretrained=False`` so the package fetches nothing, then both
    parts are loaded strictly: a missing or misnamed tensor is an error, never a random layer.
    """
    import lpips

    model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, spatial=spatial,
                        verbose=False)
    lin_file = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    lin = torch.load(lin_file, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(lin, strict=False)
    # ``lins.N`` are the same modules as ``linN``, so only the latter must all be loaded.
    if unexpected or any(re.match(r"lin\d", k) for k in missing):
        raise CascadeError(f"lpips: {lin_file} does not hold LPIPS {net} linear layers; "
                           "reinstall the lpips package")
    trunk = torch.load(trunk_file, map_location="cpu", weights_only=True)
    # lpips keeps torchvision's layer indices under its slices: slice2.3.weight = features.3.weight
    try:
        state = {k: trunk[f"features.{k.split('.', 1)[1]}"] for k in model.net.state_dict()}
        model.net.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError):
        raise CascadeError(f"lpips: {trunk_file} is not torchvision's {net} ImageNet state dict "
                           f"({os.path.basename(LPIPS_TRUNKS[net])})") from None
    return model.eval().requires_grad_(False)


def _lpips_forward(sr: torch.Tensor, hr: torch.Tensor, net: str, weights: str | None,
                   spatial: bool) -> torch.Tensor | None:
    check_pair(sr, hr, "lpips")
    trunk = lpips_trunk_file(net, weights)
    if trunk is None:
        return None
    model = _lpips_model(net, str(trunk), spatial).to(sr.device)
    # On the uint8 grid (the saved PNG), then [0, 1] -> [-1, 1] as LPIPS expects.
    a, b = (uint8_values(x).float() / 127.5 - 1.0 for x in (sr, hr))
    with torch.no_grad():
        return model(a, b).to(torch.float64)  # (B, 1, 1, 1) or (B, 1, H, W)


@METRICS.register("lpips")
def lpips(sr: torch.Tensor, hr: torch.Tensor, *, lr: torch.Tensor | None = None,
          scale: float = 1.0, crop_border: int | None = None, y_channel: bool = True,
          net: str = "alex", weights: str | None = None) -> torch.Tensor | None:
    """LPIPS per image (B,), lower is closer; None when the trunk's weights are unavailable.

    RGB on the whole image (``y_channel`` and ``lr`` are ignored; ``crop_border`` defaults
    to 0). ``weights``: the trunk's torchvision file (default: torch hub's cache).
    """
    border = 0 if crop_border is None else int(crop_border)
    if border:
        sr, hr = (x[..., border:-border, border:-border] for x in (sr, hr))
    d = _lpips_forward(sr, hr, net, weights, spatial=False)
    return None if d is None else d.flatten()


def lpips_map(sr: torch.Tensor, hr: torch.Tensor, *, net: str = "alex",
              weights: str | None = None) -> torch.Tensor | None:
    """The spatial LPIPS map (B, 1, H, W) (its mean is close to, not equal to, ``lpips``)."""
    return _lpips_forward(sr, hr, net, weights, spatial=True)


# -- FID / KID on patches ---------------------------------------------------------------------

SET_METRICS = ("fid", "kid")  # computed over all patches of a set, not per image


def patches(images: Sequence[torch.Tensor], size: int = 64) -> torch.Tensor:
    """uint8 (N, 3, size, size): the non-overlapping size x size grid of every image.

    Items are (3, H, W) or (1, 3, H, W) in [0, 1]; the grid starts at the top-left corner
    and drops the remainder, so two images of the same size give patches at the same places.
    """
    if size < 1:
        raise ValueError(f"patch size must be >= 1, got {size}")
    out = []
    for im in images:
        q = uint8_values(im if im.ndim == 4 else im[None]).to(torch.uint8)  # (1, 3, H, W)
        n_y, n_x = q.shape[-2] // size, q.shape[-1] // size
        grid = q[..., : n_y * size, : n_x * size].reshape(3, n_y, size, n_x, size)
        out.append(grid.permute(1, 3, 0, 2, 4).reshape(-1, 3, size, size))
    return torch.cat(out) if out else torch.empty(0, 3, size, size, dtype=torch.uint8)


class PatchDataset(torch.utils.data.Dataset):
    """uint8 (N, 3, P, P) as the Dataset torch-fidelity reads (one (3, P, P) tensor per item)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def inception_file(weights: str | None = None) -> Path | None:
    """torch-fidelity's InceptionV3 file (None, reported once, when unavailable)."""
    return backbone_file(INCEPTION_URL, weights, metric="fid/kid", option="--inception-weights")


@functools.lru_cache(maxsize=2)
def _extractor(name: str, weights_file: str | None, cuda: bool):
    from torch_fidelity.utils import create_feature_extractor, resolve_feature_layer_for_metric

    layer = resolve_feature_layer_for_metric("fid", feature_extractor=name)
    kwargs: dict[str, Any] = {"verbose": False}
    if weights_file is not None:
        kwargs["feature_extractor_weights_path"] = weights_file
    return create_feature_extractor(name, [layer], cuda=cuda, **kwargs), layer


def features(images: torch.Tensor, *, extractor: str = INCEPTION, weights: str | None = None,
             device: torch.device | str = "cpu", batch_size: int = 64) -> torch.Tensor | None:
    """(N, D) float32 features of uint8 (N, 3, P, P) images by a torch-fidelity extractor.

    The default is InceptionV3's 2048-d pool features (FID's and KID's layer); None when its
    weights are unavailable. Another registered extractor (``extractor``) needs no file.
    """
    from torch_fidelity.utils import get_featuresdict_from_dataset

    file = None
    if extractor == INCEPTION:
        file = inception_file(weights)
        if file is None:
            return None
    cuda = torch.device(device).type == "cuda"
    fe, layer = _extractor(extractor, None if file is None else str(file), cuda)
    with torch.cuda.device(torch.device(device)) if cuda else contextlib.nullcontext():
        feats = get_featuresdict_from_dataset(PatchDataset(images), fe, batch_size, cuda,
                                              save_cpu_ram=True, verbose=False)
    return feats[layer]


def fid_from_features(feats_sr: torch.Tensor, feats_hr: torch.Tensor) -> dict[str, Any]:
    """{"fid", "patches"}: torch-fidelity's Frechet distance of two (N, D) feature sets."""
    from torch_fidelity.metric_fid import (KEY_METRIC_FID, fid_features_to_statistics,
                                           fid_statistics_to_metric)

    n = min(len(feats_sr), len(feats_hr))
    if n < 2:
        return {"fid": None, "patches": n}
    stats = [fid_features_to_statistics(f) for f in (feats_sr, feats_hr)]
    return {"fid": fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID],
            "patches": n}


def kid_from_features(feats_sr: torch.Tensor, feats_hr: torch.Tensor, *,
                      subset_size: int = 1000, subsets: int = 100) -> dict[str, Any]:
    """{"kid", "kid_std", "kid_subset", "patches"}: torch-fidelity's KID (polynomial kernel).

    The subset size is ``min(subset_size, number of patches)``, so small sets still get a
    figure; ``kid_std`` is the spread over the ``subsets`` random subsets.
    """
    from torch_fidelity.metric_kid import (KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD,
                                           kid_features_to_metric)

    n = min(len(feats_sr), len(feats_hr))
    k = min(subset_size, n)
    if k < 2:
        return {"kid": None, "kid_std": None, "kid_subset": k, "patches": n}
    out = kid_features_to_metric(feats_sr, feats_hr, kid_subset_size=k, kid_subsets=subsets,
                                 verbose=False)  # torch-fidelity's other defaults (seed 2020)
    return {"kid": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD],
            "kid_subset": k, "patches": n}


def set_scores(sr_patches: torch.Tensor, hr_patches: torch.Tensor,
               metrics: Sequence[str] = SET_METRICS, *, hr_features: torch.Tensor | None = None,
               extractor: str = INCEPTION, weights: str | None = None,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """FID and/or KID of two uint8 patch sets, with ``patches`` (and KID's subset size).

    Values are None when the backbone is unavailable. ``hr_features`` reuses the reference
    set's features (the same for every method compared on one dataset and scale).
    """
    unknown = [m for m in metrics if m not in SET_METRICS]
    if unknown:
        raise CascadeError(f"unknown set metric {unknown[0]!r}; use {' or '.join(SET_METRICS)}")
    f_sr = features(sr_patches, extractor=extractor, weights=weights, device=device)
    f_hr = hr_features
    if f_sr is not None and f_hr is None:
        f_hr = features(hr_patches, extractor=extractor, weights=weights, device=device)
    out: dict[str, Any] = {"patches": len(sr_patches)}
    if "fid" in metrics:
        out.update({"fid": None} if f_sr is None else fid_from_features(f_sr, f_hr))
    if "kid" in metrics:
        out.update({"kid": None, "kid_std": None} if f_sr is None
                   else kid_from_features(f_sr, f_hr))
    return out


def weights_available(metric: str, *, lpips_net: str = "alex", lpips_weights: str | None = None,
                      inception_weights: str | None = None) -> bool:
    """Whether ``metric`` can give a number here (reports the missing file once if not)."""
    if metric == "lpips":
        return lpips_trunk_file(lpips_net, lpips_weights) is not None
    if metric in SET_METRICS:
        return inception_file(inception_weights) is not None
    return True
