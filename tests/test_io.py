"""cascade.data.io: image files of every Pillow mode <-> float RGB tensors, with errors.

Every file is built in ``tmp_path`` with Pillow, so expected values are known exactly.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.data.io import list_images, load_image, quantize, save_image, to_uint8
from cascade.errors import CascadeError, ImageError


def hwc(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) float64 numpy."""
    assert t.ndim == 3 and t.shape[0] == 3
    return t.permute(1, 2, 0).double().numpy()


@pytest.fixture
def rgb_u8() -> np.ndarray:
    """A random non-square (5, 7, 3) uint8 image covering 0 and 255."""
    a = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    a[0, 0] = (0, 0, 0)
    a[0, 1] = (255, 255, 255)
    return a


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- load_image


def test_rgb_png_round_trip_exact(tmp_path, rgb_u8):
    p = tmp_path / "a.png"
    Image.fromarray(rgb_u8, "RGB").save(p)
    t = load_image(p)
    assert t.dtype == torch.float32 and t.shape == (3, 5, 7)
    assert t.is_contiguous()
    want = torch.from_numpy(rgb_u8.astype(np.float32) / np.float32(255)).permute(2, 0, 1)
    assert torch.equal(t, want)  # exactly v / 255 in float32
    assert float(t.min()) == 0.0 and float(t.max()) == 1.0
    np.testing.assert_array_equal(to_uint8(t), rgb_u8)
    # str path works too
    assert torch.equal(load_image(str(p)), t)


def test_gray_L_gives_three_equal_channels(tmp_path):
    g = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    p = tmp_path / "g.png"
    Image.fromarray(g, "L").save(p)
    t = load_image(p)
    assert t.shape == (3, 4, 6)
    for c in range(3):
        np.testing.assert_array_equal(t[c].numpy(), g.astype(np.float32) / np.float32(255))


def test_mode_1_bilevel(tmp_path):
    b = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    p = tmp_path / "b.png"
    Image.fromarray(b).convert("1").save(p)
    assert Image.open(p).mode == "1"
    t = load_image(p)
    np.testing.assert_array_equal(t.numpy(), np.repeat(b[None].astype(np.float32), 3, 0))


RGBA_PIX = (200, 100, 50, 128)  # a half-transparent pixel


@pytest.fixture
def rgba_file(tmp_path):
    a = np.zeros((2, 3, 4), dtype=np.uint8)
    a[0, 0] = RGBA_PIX
    a[0, 1] = (10, 20, 30, 255)  # opaque
    a[0, 2] = (10, 20, 30, 0)  # fully transparent
    a[1] = (90, 180, 270 % 256, 64)
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    return p, a


def test_rgba_composited_on_white(tmp_path, rgba_file):
    p, a = rgba_file
    t = load_image(p)
    assert t.shape == (3, 2, 3)
    rgb, alpha = a[..., :3] / 255.0, a[..., 3:] / 255.0
    expected = rgb * alpha + 1.0 * (1 - alpha)
    np.testing.assert_allclose(hwc(t), expected, atol=1e-6)
    # the half-transparent pixel by the formula, written out
    r, g, b, al = RGBA_PIX
    for c, v in enumerate((r, g, b)):
        want = v / 255 * al / 255 + (1 - al / 255)
        assert abs(float(t[c, 0, 0]) - want) < 1e-6
    assert torch.allclose(t[:, 0, 2], torch.ones(3))  # transparent -> background
    np.testing.assert_allclose(t[:, 0, 1].numpy() * 255, [10, 20, 30], atol=1e-4)


def test_rgba_other_background_and_drop(rgba_file):
    p, a = rgba_file
    rgb, alpha = a[..., :3] / 255.0, a[..., 3:] / 255.0
    black = load_image(p, background=0.0)
    np.testing.assert_allclose(hwc(black), rgb * alpha, atol=1e-6)
    dropped = load_image(p, alpha="drop")
    np.testing.assert_allclose(hwc(dropped), rgb, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        load_image(p, alpha="keep")


def test_la_composite_and_drop(tmp_path):
    la = np.array([[[100, 255], [100, 128]], [[0, 0], [255, 64]]], dtype=np.uint8)  # (2,2,2)
    p = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(p)
    assert Image.open(p).mode == "LA"
    t = load_image(p)
    assert t.shape == (3, 2, 2)
    lum, alpha = la[..., 0] / 255.0, la[..., 1] / 255.0
    want = lum * alpha + (1 - alpha)
    for c in range(3):
        np.testing.assert_allclose(t[c].numpy(), want, atol=1e-6)
    d = load_image(p, alpha="drop")
    for c in range(3):
        np.testing.assert_allclose(d[c].numpy(), lum, atol=1e-6)


PALETTE = [10, 20, 30, 200, 100, 50, 0, 255, 0]


def palette_image() -> Image.Image:
    im = Image.new("P", (3, 2))
    im.putpalette(PALETTE + [0] * (768 - len(PALETTE)))
    im.putdata([0, 1, 2, 1, 0, 2])
    return im


def test_palette_without_transparency(tmp_path):
    p = tmp_path / "p.png"
    palette_image().save(p)
    assert Image.open(p).mode == "P"
    t = load_image(p)
    idx = np.array([[0, 1, 2], [1, 0, 2]])
    colours = np.array(PALETTE, dtype=np.float64).reshape(3, 3)
    np.testing.assert_array_equal(np.round(hwc(t) * 255), colours[idx])


def test_palette_with_transparency(tmp_path):
    p = tmp_path / "pt.png"
    palette_image().save(p, transparency=0)  # index 0 is transparent
    with Image.open(p) as im:
        assert im.mode == "P" and "transparency" in im.info
    idx = np.array([[0, 1, 2], [1, 0, 2]])
    colours = np.array(PALETTE, dtype=np.float64).reshape(3, 3) / 255
    t = load_image(p)
    want = np.where((idx == 0)[..., None], 1.0, colours[idx])
    np.testing.assert_allclose(hwc(t), want, atol=1e-6)
    t0 = load_image(p, background=0.0)
    np.testing.assert_allclose(hwc(t0), np.where((idx == 0)[..., None], 0.0, colours[idx]),
                               atol=1e-6)
    td = load_image(p, alpha="drop")  # palette colour of the transparent index
    np.testing.assert_allclose(hwc(td), colours[idx], atol=1e-6)


def test_16bit_gray_png_keeps_full_precision(tmp_path):
    a = np.array([[1000, 65535, 0], [12345, 257, 65534]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    t = load_image(p)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    want = a.astype(np.float64) / 65535
    for c in range(3):
        np.testing.assert_allclose(t[c].double().numpy(), want, rtol=0, atol=1e-7)
    # 1000/65535 is not on the 8-bit grid: an 8-bit round trip would lose it
    v = float(t[0, 0, 0])
    assert abs(v * 255 - round(v * 255)) > 0.1
    assert abs(v - 1000 / 65535) < 1e-7
    # 65534 and 65535 are distinct (they are the same 8-bit value)
    assert float(t[0, 1, 2]) < float(t[0, 0, 1]) == 1.0


def test_cmyk_jpeg(tmp_path):
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    rgb[:, :12] = (200, 60, 120)
    rgb[:, 12:] = (30, 180, 90)
    cmyk = Image.fromarray(rgb, "RGB").convert("CMYK")
    p = tmp_path / "c.jpg"
    cmyk.save(p, quality=95)
    with Image.open(p) as im:
        assert im.mode == "CMYK"
    t = load_image(p)
    assert t.shape == (3, 16, 24)
    got = hwc(t) * 255
    # away from the colour edge (JPEG ringing), colours within a few levels
    np.testing.assert_allclose(got[:, :8], rgb[:, :8], atol=6)
    np.testing.assert_allclose(got[:, 16:], rgb[:, 16:], atol=6)


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_applied(tmp_path, rgb_u8, orientation, k):
    # EXIF 6: display = stored rotated 90 deg clockwise (np.rot90 k=-1); 8: counter-clockwise
    im = Image.fromarray(rgb_u8, "RGB")  # 5 x 7 (H x W)
    exif = im.getexif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    im.save(p, exif=exif)
    t = load_image(p)
    want = np.rot90(rgb_u8, k)
    assert t.shape == (3, *want.shape[:2])
    np.testing.assert_array_equal(to_uint8(t), want)


def test_exif_orientation_jpeg_shape(tmp_path, rgb_u8):
    im = Image.fromarray(rgb_u8, "RGB")
    exif = im.getexif()
    exif[0x0112] = 6
    p = tmp_path / "o6.jpg"
    im.save(p, exif=exif, quality=95)
    assert load_image(p).shape == (3, 7, 5)


# ----------------------------------------------------------------------------- errors


def assert_image_error(path, match=None):
    with pytest.raises(ImageError) as ei:
        load_image(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "\n" not in msg
    if match:
        assert match in msg
    assert isinstance(ei.value, CascadeError) and isinstance(ei.value, ValueError)


def test_missing_file(tmp_path):
    assert_image_error(tmp_path / "nope.png", "not found")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert_image_error(p, "empty")


def test_truncated_png(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png_bytes(big)
    p = tmp_path / "trunc.png"
    p.write_bytes(data[: len(data) // 2])
    assert_image_error(p)


def test_text_file_named_png(tmp_path):
    p = tmp_path / "text.png"
    p.write_text("this is not an image\n" * 10)
    assert_image_error(p, "not an image")


def test_directory(tmp_path):
    d = tmp_path / "folder.png"
    d.mkdir()
    assert_image_error(d, "folder")


# ------------------------------------------------------------------ to_uint8 / quantize


def test_to_uint8_rounds_clips_and_shapes():
    vals = torch.tensor([-0.5, 0.0, 0.49 / 255, 0.51 / 255, 127.5 / 255 - 1e-4, 1.0, 2.0])
    img = vals.view(1, 1, -1).expand(3, 1, -1)
    u = to_uint8(img)
    assert u.dtype == np.uint8 and u.shape == (1, 7, 3)
    np.testing.assert_array_equal(u[0, :, 0], [0, 0, 0, 1, 127, 255, 255])
    # (1, 3, H, W) accepted, same result; one channel is broadcast to three
    np.testing.assert_array_equal(to_uint8(img[None]), u)
    np.testing.assert_array_equal(to_uint8(img[:1]), u)
    # float64 and requires_grad inputs work
    np.testing.assert_array_equal(to_uint8(img.double().requires_grad_()), u)
    with pytest.raises(ValueError, match="batch"):
        to_uint8(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(4, 4))
    with pytest.raises(ValueError):
        to_uint8(torch.zeros(2, 4, 4))


def test_quantize_matches_uint8_grid():
    x = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    q = quantize(x)
    assert q.dtype == x.dtype and q.shape == x.shape
    assert float(q.min()) >= 0 and float(q.max()) <= 1
    k = q * 255
    assert torch.allclose(k, k.round(), atol=1e-4)
    np.testing.assert_allclose(hwc(q) * 255, to_uint8(x).astype(np.float64), atol=1e-4)
    assert float((q - x.clamp(0, 1)).abs().max()) <= 0.5 / 255 + 1e-6
    assert torch.equal(quantize(q), q)  # idempotent


# --------------------------------------------------------------------------- save_image


def test_save_image_round_trip_and_atomic(tmp_path):
    x = torch.rand(3, 6, 10, generator=torch.Generator().manual_seed(1))
    p = tmp_path / "sub" / "out.png"  # parent created
    assert save_image(x, p) == p
    assert p.is_file()
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (10, 6)
        np.testing.assert_array_equal(np.asarray(im), to_uint8(x))
    y = load_image(p)
    assert y.dtype == torch.float32
    assert torch.equal(y, quantize(x))
    assert not list(p.parent.glob(".*.tmp")) and not list(p.parent.glob("*.tmp"))
    assert sorted(f.name for f in p.parent.iterdir()) == ["out.png"]
    # an existing file is replaced
    z = torch.zeros(3, 2, 3)
    save_image(z, p)
    assert torch.equal(load_image(p), z)
    assert sorted(f.name for f in p.parent.iterdir()) == ["out.png"]
    # (1, 3, H, W) accepted
    save_image(x[None], p)
    assert torch.equal(load_image(p), quantize(x))


def test_save_image_bad_input_leaves_old_file(tmp_path):
    p = tmp_path / "keep.png"
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(2))
    save_image(x, p)
    before = p.read_bytes()
    with pytest.raises(ValueError):
        save_image(torch.zeros(2, 3, 4, 4), p)
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["keep.png"]


# -------------------------------------------------------------------------- list_images


@pytest.fixture
def tree(tmp_path):
    a = np.zeros((2, 2, 3), dtype=np.uint8)
    files = ["b.png", "a.JPG", "sub/c.png", "sub/deeper/d.bmp", "sub/e.webp", "z.tiff"]
    for rel in files:
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(f)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub" / "data.npy").write_bytes(b"x")
    (tmp_path / "noext").write_bytes(b"x")
    (tmp_path / "dir.png").mkdir()  # a folder with an image suffix is not a file
    return tmp_path, files


def test_list_images_recursive_sorted_filtered(tree):
    root, files = tree
    got = list_images(root)
    assert got == sorted(got)
    assert [str(f.relative_to(root)) for f in got] == sorted(files)
    assert all(f.is_file() for f in got)


def test_list_images_skips_hidden(tree):
    root, files = tree
    (root / ".hidden").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / ".hidden" / "h.png")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / ".dot.png")
    assert [str(f.relative_to(root)) for f in list_images(root)] == sorted(files)


def test_list_images_glob_and_single_file(tree):
    root, _ = tree
    got = list_images(str(root / "**" / "*.png"))
    assert [str(f.relative_to(root)) for f in got] == ["b.png", "sub/c.png"]
    got = list_images(str(root / "sub" / "*"))
    assert [f.name for f in got] == ["c.png", "e.webp"]
    assert list_images(root / "b.png") == [root / "b.png"]
    with pytest.raises(ImageError, match="no images match"):
        list_images(str(root / "*.gif"))


def test_list_images_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ImageError) as ei:
        list_images(empty)
    assert str(empty) in str(ei.value)
    with pytest.raises(ImageError) as ei:
        list_images(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(ei.value)


def test_atomic_writes_get_the_mode_a_plain_open_gives(tmp_path):
    import os
    import stat

    from cascade.atomic import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_image(torch.zeros(3, 2, 2), tmp_path / "b.png")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE((tmp_path / n).stat().st_mode) for n in ("a.txt", "b.png",
                                                                      "plain.txt")}
    assert modes == {"a.txt": 0o640, "b.png": 0o640, "plain.txt": 0o640}  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.png", "plain.txt"]
