"""cascade.data.datasets: built-in photos, named/path datasets and the random-scale sampler."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.data.datasets import (
    BUILTIN_SPLITS,
    ImageFolder,
    RandomScalePatches,
    builtin_photos,
    data_root,
    resolve_dataset,
)
from cascade.data.degrade import imresize
from cascade.data.io import load_image, quantize
from cascade.errors import CascadeError, ImageError
from cascade.paths import REPO_ROOT

TEST_NAMES = ["chelsea", "coffee", "flower", "grace_hopper"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny tensor ops: on a busy 2-core machine OpenMP workers only add waiting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# ----------------------------------------------------------------------- built-in photos


def test_builtin_test_split():
    photos = builtin_photos("test")
    assert [n for n, _ in photos] == TEST_NAMES
    assert builtin_photos() == photos  # 'test' is the default
    for _, p in photos:
        assert p.is_file() and p.stat().st_size > 1000


def test_builtin_train_disjoint_and_all():
    test = {n for n, _ in builtin_photos("test")}
    train = [n for n, _ in builtin_photos("train")]
    assert len(train) == len(set(train)) >= 10
    assert test.isdisjoint(train)
    everything = builtin_photos("all")
    assert [n for n, _ in everything] == TEST_NAMES + train
    assert len({p for _, p in everything}) == len(everything)  # distinct files
    assert all(p.is_file() for _, p in everything)


@pytest.mark.parametrize("bad", ["val", "TEST", "", "builtin"])
def test_builtin_unknown_split(bad):
    with pytest.raises(CascadeError, match="split"):
        builtin_photos(bad)


def test_resolve_builtin():
    ds = resolve_dataset("builtin")
    assert ds.name == "builtin" and ds.names == TEST_NAMES and len(ds) == 4
    item = ds[0]
    assert item["name"] == "chelsea"
    assert item["image"].shape == (3, 300, 451) and item["image"].dtype == torch.float32
    tr = resolve_dataset("builtin:train")
    assert tr.name == "builtin:train" and tr.names == list(BUILTIN_SPLITS["train"])
    with pytest.raises(CascadeError):
        resolve_dataset("builtin:val")


@pytest.mark.slow
def test_all_builtin_photos_load():
    gray = {"camera", "brick", "grass", "gravel", "moon", "coins"}
    for name, p in builtin_photos("all"):
        im = load_image(p)
        assert im.ndim == 3 and im.shape[0] == 3 and min(im.shape[1:]) >= 200, name
        assert float(im.min()) >= 0 and float(im.max()) <= 1
        if name in gray:
            assert torch.equal(im[0], im[1]) and torch.equal(im[1], im[2]), name


# --------------------------------------------------------------------- resolve_dataset


def write_png(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    root = tmp_path / "data"
    arrs = {"baby": write_png(root / "Set5" / "baby.png", 12, 10, 1),
            "bird": write_png(root / "Set5" / "bird.png", 8, 6, 2)}
    monkeypatch.setenv("CASCADE_DATA", str(root))
    cwd = tmp_path / "cwd"  # so that a folder named 'set5' in the cwd cannot interfere
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return root, arrs


def test_set5_from_cascade_data(data_dir):
    root, arrs = data_dir
    assert data_root() == root
    ds = resolve_dataset("set5")
    assert isinstance(ds, ImageFolder)
    assert ds.name == "set5" and len(ds) == 2 and ds.names == ["baby", "bird"]
    assert [p.parent for p in ds.paths] == [root / "Set5"] * 2
    for i, name in enumerate(ds.names):
        item = ds[i]
        assert item["name"] == name
        im = item["image"]
        assert im.dtype == torch.float32 and im.shape == (3, *arrs[name].shape[:2])
        want = torch.from_numpy(arrs[name].astype(np.float32) / np.float32(255))
        assert torch.equal(im, want.permute(2, 0, 1))
    assert resolve_dataset("Set5").names == ["baby", "bird"]  # case-insensitive name
    assert "2 images" in repr(ds)


def test_missing_set5_mentions_cascade_data(tmp_path, monkeypatch):
    monkeypatch.setenv("CASCADE_DATA", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CascadeError) as ei:
        resolve_dataset("set5")
    msg = str(ei.value)
    assert "CASCADE_DATA" in msg and str(tmp_path / "Set5") in msg
    with pytest.raises(CascadeError, match="CASCADE_DATA"):
        resolve_dataset("bsd68")


def test_data_root_default_and_expanduser(tmp_path, monkeypatch):
    monkeypatch.delenv("CASCADE_DATA", raising=False)
    assert data_root() == REPO_ROOT.parent / "shared" / "data"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CASCADE_DATA", "~/sr")
    assert data_root() == tmp_path / "sr"


def test_path_dataset_relative_names(tmp_path):
    root = tmp_path / "mine"
    for rel in ["b.png", "a.png", "sub/c.png", "sub/deeper/d.png", "other/a.png"]:
        write_png(root / rel, 5, 4)
    (root / "notes.txt").write_text("x")
    ds = resolve_dataset(str(root))
    assert ds.name == "mine"
    assert ds.names == ["a", "b", os.path.join("other", "a"), os.path.join("sub", "c"),
                        os.path.join("sub", "deeper", "d")]
    assert len(set(ds.names)) == len(ds)
    assert [root / (n + ".png") for n in ds.names] == ds.paths
    assert ds[3]["image"].shape == (3, 5, 4)
    # a single file
    one = resolve_dataset(str(root / "sub" / "c.png"))
    assert one.names == ["c"] and len(one) == 1


def test_glob_dataset_names_unique(tmp_path):
    write_png(tmp_path / "x" / "img.png", 4, 4)
    write_png(tmp_path / "y" / "img.png", 4, 4)
    ds = resolve_dataset(str(tmp_path / "*" / "img.png"))
    assert len(ds) == 2 and len(set(ds.names)) == 2


def test_bad_file_fails_on_access(tmp_path):
    write_png(tmp_path / "good.png", 4, 4)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    ds = resolve_dataset(str(tmp_path))  # listing does not read the files
    assert ds.names == ["bad", "good"]
    assert ds[1]["image"].shape == (3, 4, 4)
    with pytest.raises(ImageError, match="bad.png"):
        ds[0]


def test_empty_folder_dataset(tmp_path):
    with pytest.raises(ImageError):
        resolve_dataset(str(tmp_path))


# --------------------------------------------------------------------- RandomScalePatches

S_IMG = 200
P = 16  # a small lr_patch for the value checks (fast); the shape test uses the default 48
S_POS = 80  # >= P * 4


def position_image(seed: int = 0, n: int = S_POS) -> torch.Tensor:
    """(3, n, n): channel 0 = row / 256, channel 1 = col / 256 (exact in float32),
    channel 2 random, so every sampled HR pixel says where it came from."""
    r = torch.arange(n, dtype=torch.float32)
    img = torch.empty(3, n, n)
    img[0] = (r[:, None] / 256).expand(n, n)
    img[1] = (r[None] / 256).expand(n, n)
    img[2] = torch.rand(n, n, generator=torch.Generator().manual_seed(seed))
    return img


def random_images(n=3, seed=0, size=S_IMG):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sample_batch_shapes():
    ds = RandomScalePatches(random_images())
    b = ds.sample_batch(4, gen(0))
    assert set(b) == {"lr", "coord", "cell", "rgb", "scale"}
    assert b["lr"].shape == (4, 3, 48, 48) and b["lr"].dtype == torch.float32
    Q = b["coord"].shape[1]
    assert Q == 1024  # default queries (fewer than the >= 48 * 48 HR pixels)
    assert b["coord"].shape == (4, Q, 2) and b["cell"].shape == (4, Q, 2)
    assert b["rgb"].shape == (4, Q, 3)
    assert isinstance(b["scale"], float) and 1.0 <= b["scale"] <= 4.0
    S = round(b["scale"] * 48)
    assert abs(S / 48 - b["scale"]) < 1e-12
    assert torch.allclose(b["cell"], torch.full_like(b["cell"], 2 / S))
    assert float(b["coord"].abs().max()) <= 1
    k = b["lr"] * 255
    assert torch.allclose(k, k.round(), atol=1e-4)  # LR on the uint8 grid
    assert float(b["lr"].min()) >= 0 and float(b["lr"].max()) <= 1


def test_scales_cover_the_range():
    ds = RandomScalePatches(random_images(1, size=S_POS), lr_patch=P, queries=16)
    scales = [ds.sample_batch(1, gen(s))["scale"] for s in range(40)]
    assert all(abs(s * P - round(s * P)) < 1e-9 for s in scales)
    assert all(1 <= s <= 4 for s in scales)
    assert min(scales) < 1.5 and max(scales) > 3.5
    fixed = RandomScalePatches(random_images(1), scale_min=2.5, scale_max=2.5, queries=8)
    assert fixed.sample_batch(2, gen(0))["scale"] == 2.5


def test_same_seed_same_batch_different_seed_different():
    ds = RandomScalePatches(random_images())
    a, b, c = (ds.sample_batch(4, gen(s)) for s in (0, 0, 1))
    for k in ("lr", "coord", "cell", "rgb"):
        assert torch.equal(a[k], b[k]), k
    assert a["scale"] == b["scale"]
    assert a["scale"] != c["scale"] or not torch.equal(a["lr"], c["lr"])
    assert a["lr"].shape == c["lr"].shape
    # the generator is what matters, not the global RNG
    torch.manual_seed(123)
    d = ds.sample_batch(4, gen(0))
    assert torch.equal(a["rgb"], d["rgb"]) and torch.equal(a["coord"], d["coord"])


def pixel_index(coord: torch.Tensor, S: int) -> torch.Tensor:
    """Continuous pixel index of a coordinate: i where coord = -1 + (2i + 1) / S."""
    return ((coord.double() + 1) * S - 1) / 2


def origin(rgb: torch.Tensor) -> torch.Tensor:
    """(.., 3) sampled pixels of position_image -> (.., 2) their (row, col) in the image."""
    return (rgb[..., :2].double() * 256).round()


def test_all_pixels_at_their_centres_no_augment():
    img = position_image()
    ds = RandomScalePatches([img], lr_patch=P, queries=None, jitter=0, augment=False)
    for seed in (0, 1, 2):
        b = ds.sample_batch(2, gen(seed))
        S = round(b["scale"] * P)
        Q = b["coord"].shape[1]
        assert Q == S * S
        for k in range(2):
            ij = pixel_index(b["coord"][k], S)
            # coordinates are exactly pixel centres -1 + (2i + 1) / S ...
            assert float((ij - ij.round()).abs().max()) < 1e-4
            ij = ij.round().long()
            assert int(ij.min()) == 0 and int(ij.max()) == S - 1
            # ... each HR pixel exactly once, in random order
            flat = ij[:, 0] * S + ij[:, 1]
            assert torch.equal(flat.sort().values, torch.arange(S * S))
            assert not torch.equal(flat, torch.arange(S * S))
            # rgb is the HR crop's pixel at that coordinate: origin = (top + i, left + j)
            rc = origin(b["rgb"][k]).long()
            top_left = rc - ij
            assert torch.equal(top_left, top_left[:1].expand_as(top_left))
            top, left = (int(v) for v in top_left[0])
            assert 0 <= top <= S_POS - S and 0 <= left <= S_POS - S
            crop = img[:, top:top + S, left:left + S]
            # the 3rd channel too: rgb == crop[:, i, j]
            assert torch.equal(b["rgb"][k], crop[:, ij[:, 0], ij[:, 1]].T)
            # LR = D(crop), rounded to uint8
            lr_ref = quantize(imresize(crop, size=(P, P)))
            assert torch.allclose(b["lr"][k], lr_ref, atol=1e-6)


DIHEDRAL = [
    lambda a: a, lambda a: a.flip(-1), lambda a: a.flip(-2), lambda a: a.flip(-1).flip(-2),
    lambda a: a.transpose(-1, -2), lambda a: a.flip(-1).transpose(-1, -2),
    lambda a: a.flip(-2).transpose(-1, -2), lambda a: a.flip(-1).flip(-2).transpose(-1, -2),
]


def test_augment_is_a_dihedral_transform_of_a_crop():
    img = position_image(1)
    ds = RandomScalePatches([img], lr_patch=P, queries=None, jitter=0, augment=True)
    seen = set()
    for seed in range(6):
        b = ds.sample_batch(2, gen(seed))
        S = round(b["scale"] * P)
        for k in range(2):
            ij = pixel_index(b["coord"][k], S).round().long()
            patch = torch.empty(3, S, S)
            patch[:, ij[:, 0], ij[:, 1]] = b["rgb"][k].T
            rc = origin(b["rgb"][k]).long()
            top, left = int(rc[:, 0].min()), int(rc[:, 1].min())
            crop = img[:, top:top + S, left:left + S]
            hits = [t for t, f in enumerate(DIHEDRAL) if torch.equal(f(crop), patch)]
            assert hits, "the patch is not a flipped/transposed crop"
            seen.add(hits[0])
            assert torch.allclose(b["lr"][k], quantize(imresize(patch, size=(P, P))),
                                  atol=1e-6)
    assert len(seen) >= 3  # augmentation does happen


def test_jitter_within_half_a_cell_and_random():
    img = position_image(2)
    ds = RandomScalePatches([img], lr_patch=P, scale_min=2, queries=500, jitter=0.5,
                            augment=False)  # S >= 32: 500 of >= 1024 pixels
    b1, b2 = ds.sample_batch(3, gen(0)), ds.sample_batch(3, gen(1))
    offs = []
    for b in (b1, b2):
        S = round(b["scale"] * P)
        assert b["coord"].shape == (3, 500, 2)
        for k in range(3):
            # index(coord) = i + off with |off| <= 1/2 (pixels); origin = top_left + i
            d = origin(b["rgb"][k]) - pixel_index(b["coord"][k], S)  # top_left - off
            t = d.median(dim=0).values.round()
            off = t - d  # in pixels = in cells
            assert float(off.abs().max()) <= 0.5 + 1e-4
            # the same thing in coordinate units: within half a cell of the centre
            centre = -1 + (2 * (origin(b["rgb"][k]) - t) + 1) / S
            err = (b["coord"][k].double() - centre).abs()
            assert float((err - 0.5 * b["cell"][k].double()).max()) <= 1e-5
            offs.append(off)
        # jitter is not zero and spreads over the cell
        o = torch.cat(offs[-3:])
        assert float(o.abs().max()) > 0.45 and float(o.abs().mean()) > 0.15
        assert abs(float(o.mean())) < 0.05
    # new jitter for a different generator (compare offsets, not positions)
    assert not torch.allclose(torch.cat(offs[:3]), torch.cat(offs[3:]))


def test_queries_capped_at_hr_pixels():
    ds = RandomScalePatches([position_image()], lr_patch=P, scale_min=1, scale_max=1,
                            queries=500, jitter=0, augment=False)
    b = ds.sample_batch(2, gen(0))
    assert b["scale"] == 1.0 and b["coord"].shape == (2, P * P, 2)
    assert b["rgb"].shape == (2, P * P, 3) and b["cell"].shape == (2, P * P, 2)
    # scale 1: LR is the crop itself, rounded to uint8
    ij = pixel_index(b["coord"][0], P).round().long()
    patch = torch.empty(3, P, P)
    patch[:, ij[:, 0], ij[:, 1]] = b["rgb"][0].T
    assert torch.allclose(b["lr"][0], quantize(patch), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 150, 200), (3, 200, 191)])
def test_images_too_small(shape):
    imgs = random_images(2) + [torch.rand(*shape)]
    with pytest.raises(CascadeError, match="smaller than 192"):
        RandomScalePatches(imgs)
    RandomScalePatches(imgs, scale_max=3.0)  # 144 <= 150: fine
    RandomScalePatches([torch.rand(3, 192, 192)])  # exactly lr_patch * scale_max


def test_bad_sampler_settings():
    with pytest.raises(CascadeError):
        RandomScalePatches(random_images(1), scale_min=3, scale_max=2)
    with pytest.raises(CascadeError):
        RandomScalePatches(random_images(1), scale_min=0.5)
    with pytest.raises(CascadeError):
        RandomScalePatches([])
