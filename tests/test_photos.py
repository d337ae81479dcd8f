"""cascade.data.photos: the photo corpus (fetch, .deb extraction, DIV2K-style preparation,
the generalization sets) and the photos:SPLIT datasets. Packages are built here, tiny."""

import hashlib
import io
import json
import lzma
import tarfile

import numpy as np
import pytest
from PIL import Image

from cascade.cli import main
from cascade.data import photos as P
from cascade.data.datasets import resolve_dataset
from cascade.data.sources import expand_inputs
from cascade.errors import CascadeError


def _png_bytes(h, w, seed):
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _ar_member(name: str, data: bytes) -> bytes:
    head = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
    assert len(head) == 60
    return head + data + (b"\n" if len(data) % 2 else b"")


def make_deb(path, files: dict[str, bytes]):
    """A minimal Debian package: ar(debian-binary, control.tar.xz, data.tar.xz)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = lzma.compress(buf.getvalue())
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
                     + _ar_member("control.tar.xz", lzma.compress(b""))
                     + _ar_member("data.tar.xz", data))


@pytest.fixture
def tiny_manifest(tmp_path, monkeypatch):
    """Two packages with three photos (one held out), and a manifest naming them."""
    files = {"usr/share/backgrounds/a.png": _png_bytes(300, 500, 0),
             "usr/share/backgrounds/drawing.png": _png_bytes(10, 10, 9),
             "usr/share/wallpapers/B/contents/images/600x400.png": _png_bytes(400, 600, 1)}
    other = {"usr/share/backgrounds/c.png": _png_bytes(200, 256, 2)}
    debs = tmp_path / "corpus" / "debs"
    debs.mkdir(parents=True)
    make_deb(debs / "pkg-one_1.0_all.deb", files)
    make_deb(debs / "pkg-two_2.0_all.deb", other)
    rows = [
        {"name": "a", "package": "pkg-one", "path": "usr/share/backgrounds/a.png", "split": "train"},
        {"name": "b", "package": "pkg-one",
         "path": "usr/share/wallpapers/B/contents/images/600x400.png", "split": "train"},
        {"name": "c", "package": "pkg-two", "path": "usr/share/backgrounds/c.png", "split": "val"},
    ]
    every = {**files, **other}
    for r in rows:
        r["sha256"] = hashlib.sha256(every[r["path"]]).hexdigest()
    manifest = tmp_path / "photos.json"
    manifest.write_text(json.dumps({"packages": {"pkg-one": "1.0", "pkg-two": "2.0"},
                                    "photos": rows}))
    monkeypatch.setattr(P, "MANIFEST", manifest)
    return tmp_path / "corpus"


def test_shipped_manifest_is_consistent():
    m = P.load_manifest()
    names = [r["name"] for r in m["photos"]]
    assert len(names) == len(set(names)) >= 20
    assert {r["package"] for r in m["photos"]} <= set(m["packages"])
    assert all(len(r["sha256"]) == 64 for r in m["photos"])
    val = {r["name"] for r in m["photos"] if r["split"] == "val"}
    assert len(val) >= 5 and {"fallen_leaf", "kite", "summer_1am"} <= val


@pytest.mark.parametrize("length,size,stride,want", [
    (480, 480, 480, [0]), (300, 480, 480, [0]), (1000, 480, 480, [0, 480, 520]),
    (960, 480, 480, [0, 480]), (1000, 480, 240, [0, 240, 480, 520])])
def test_sub_image_offsets(length, size, stride, want):
    assert P.sub_image_offsets(length, size, stride) == want


def test_downscale_keeps_aspect_and_small_images():
    img = Image.new("RGB", (2560, 1600))
    assert P.downscale(img, 1280).size == (1280, 800)
    assert P.downscale(img, 0).size == (2560, 1600)
    assert P.downscale(Image.new("RGB", (100, 50)), 1280).size == (100, 50)


def test_prepare_from_packages(tiny_manifest):
    cfg = P.PhotosConfig(out=str(tiny_manifest), max_side=400, sub_size=128, stride=128)
    rec = P.prepare(cfg, progress=False)
    assert rec["made"] == 3 and set(rec["done"]) == {"a", "b", "c"}
    out = tiny_manifest
    # a: 300x500 -> 240x400 -> offsets rows [0, 112], cols [0, 128, 256, 272]
    assert rec["done"]["a"]["files"] == 2 * 4
    assert len(list((out / "train").glob("a_*.png"))) == 8
    assert all(Image.open(f).size == (128, 128) for f in (out / "train").glob("*.png"))
    assert not list((out / "train").glob("c_*"))  # held out: never a training file
    assert Image.open(out / "val" / "c.png").size == (256, 200)
    assert not (out / "originals" / "drawing.png").exists()  # not in the manifest
    # the generalization sets, cut from the held-out photo
    assert sorted(f.name for f in (out / "unseen").iterdir()) == ["c_centre.png", "c_detail.png"]
    assert len(list((out / "colour").iterdir())) == 9
    # a second run does nothing; new settings start over
    assert P.prepare(cfg, progress=False)["made"] == 0
    cfg2 = P.PhotosConfig(out=str(out), max_side=400, sub_size=200, stride=200)
    assert P.prepare(cfg2, progress=False)["made"] == 3
    assert not list((out / "train").glob("a_0112_*.png"))  # old sub-images removed


def test_prepare_resumes_after_an_interruption(tiny_manifest, monkeypatch):
    cfg = P.PhotosConfig(out=str(tiny_manifest), max_side=400, sub_size=128, stride=128)
    real, calls = P.prepare_photo, []

    def dies_on_second(*a, **k):
        calls.append(a[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(P, "prepare_photo", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        P.prepare(cfg, progress=False)
    monkeypatch.setattr(P, "prepare_photo", real)
    rec = P.prepare(cfg, progress=False)
    assert rec["made"] == 2 and len(rec["done"]) == 3


def test_changed_package_is_refused(tiny_manifest):
    m = json.loads(P.MANIFEST.read_text())
    m["photos"][0]["sha256"] = "0" * 64
    P.MANIFEST.write_text(json.dumps(m))
    with pytest.raises(CascadeError, match="differs from the manifest"):
        P.prepare(P.PhotosConfig(out=str(tiny_manifest)), progress=False)


def test_not_a_deb(tmp_path):
    bad = tmp_path / "x_1_all.deb"
    bad.write_bytes(b"hello")
    with pytest.raises(CascadeError, match="not a Debian package"):
        P.deb_data_tar(bad)


def test_no_apt_get_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(P.shutil, "which", lambda name: None)
    with pytest.raises(CascadeError, match=r"apt-get not found: download .*pkg-x.* into"):
        P.fetch_debs(["pkg-x"], tmp_path / "debs")


def test_prepare_any_folder(tmp_path):
    src = tmp_path / "DIV2K_train_HR"
    src.mkdir()
    for i in range(3):
        (src / f"{i:04d}.png").write_bytes(_png_bytes(256, 320, i))
    cfg = P.PhotosConfig(out=str(tmp_path / "out"), source=str(src), val=["0002"], max_side=0,
                         sub_size=128, stride=96)
    rec = P.prepare(cfg, progress=False)
    assert {k: v["split"] for k, v in rec["done"].items()} == {
        "0000": "train", "0001": "train", "0002": "val"}
    assert rec["done"]["0000"]["files"] == 3 * 3  # rows 0, 96, 128; cols 0, 96, 192
    with pytest.raises(CascadeError, match="--val names no image"):
        P.prepare(P.PhotosConfig(out=str(tmp_path / "o2"), source=str(src), val=["nope"]),
                  progress=False)


def test_photos_datasets(tiny_manifest, monkeypatch):
    P.prepare(P.PhotosConfig(out=str(tiny_manifest), max_side=400, sub_size=128, stride=128),
              progress=False)
    monkeypatch.setenv("CASCADE_PHOTOS", str(tiny_manifest))
    assert len(resolve_dataset("photos", split="train")) == 8 + 12
    assert resolve_dataset("photos").names == ["c"]  # evaluation: the held-out photos
    assert resolve_dataset("photos:colour").name == "photos:colour"
    assert [p.name for p in expand_inputs(["photos"])] == ["c.png"]
    with pytest.raises(CascadeError, match="unknown split photos:nope"):
        resolve_dataset("photos:nope")


def test_missing_corpus_says_run_cascade_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CASCADE_PHOTOS", str(tmp_path / "none"))
    with pytest.raises(CascadeError, match="run 'cascade data photos'"):
        resolve_dataset("photos:val")


def test_cli_data_photos(tiny_manifest, capsys):
    args = ["data", "photos", "--out", str(tiny_manifest), "--max-side", "400",
            "--sub-size", "128", "--stride", "128"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 training photos -> 20 sub-images" in out and "1 held out" in out
    assert main(args) == 0
    assert "(0 prepared now, 3 already there)" in capsys.readouterr().out
    assert main(["data", "photos", "--out", str(tiny_manifest), "--stride", "0"]) == 2
    assert "stride" in capsys.readouterr().err
