"""read_image: every pixel format becomes uint8 RGB; bad files raise ImageError naming them."""

import re
import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from rcnn.datasets import read_image
from rcnn.errors import ImageError

RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)


def test_rgb_png_and_jpeg(tmp_path):
    Image.fromarray(RGB).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), RGB)
    y, x = np.mgrid[0:20, 0:30]
    smooth = np.dstack([x * 8, y * 12, np.full_like(x, 200)]).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    im = read_image(tmp_path / "a.jpg")
    assert im.shape == (20, 30, 3) and im.dtype == np.uint8
    assert np.abs(im.astype(int) - smooth).max() < 8  # lossy, but the same picture in RGB order


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("grey.png", lambda p: Image.fromarray(RGB[:, :, 0]).save(p), np.repeat(RGB[:, :, :1], 3, 2)),
        ("rgba.png", lambda p: Image.fromarray(np.dstack([RGB, np.full((20, 30), 7, np.uint8)])).save(p), RGB),
        (
            "la.png",
            lambda p: Image.fromarray(np.dstack([RGB[:, :, 0], RGB[:, :, 1]]), "LA").save(p),
            np.repeat(RGB[:, :, :1], 3, 2),
        ),
        (
            "grey16.png",
            lambda p: cv2.imwrite(str(p), RGB[:, :, 0].astype(np.uint16) * 257),
            np.repeat(RGB[:, :, :1], 3, 2),
        ),
        ("rgb16.png", lambda p: cv2.imwrite(str(p), RGB[:, :, ::-1].astype(np.uint16) * 257), RGB),
    ],
)
def test_other_pixel_formats_become_rgb8(tmp_path, name, write, expected):
    write(tmp_path / name)
    im = read_image(tmp_path / name)
    assert im.dtype == np.uint8 and im.shape == (20, 30, 3)
    np.testing.assert_array_equal(im, expected)


def test_palette_png(tmp_path):
    Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(
        read_image(tmp_path / "p.png"), np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    )


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_files(tmp_path, suffix):
    big = cv2.resize(RGB, (300, 200), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(tmp_path / f"whole{suffix}"), big)
    data = (tmp_path / f"whole{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) * 2 // 3])
    assert read_image(tmp_path / f"whole{suffix}").shape == (200, 300, 3)
    with pytest.raises(ImageError, match="truncated") as e:
        read_image(tmp_path / f"cut{suffix}")
    assert e.value.path == str(tmp_path / f"cut{suffix}")


def test_jpeg_with_bytes_after_the_end_is_fine(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), RGB)
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.jpg").read_bytes() + b"\x00trailer" * 40)
    np.testing.assert_array_equal(read_image(tmp_path / "b.jpg"), read_image(tmp_path / "a.jpg"))


def test_missing_empty_and_corrupt_files(tmp_path):
    with pytest.raises(ImageError, match="cannot read image"):
        read_image(tmp_path / "none.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.png").write_bytes(b"this is not a picture at all")
    with pytest.raises(ImageError, match="not a readable image") as e:
        read_image(tmp_path / "junk.png")
    assert str(tmp_path / "junk.png") in str(e.value)


def _png_header_only(path, width, height):
    """A PNG whose header says `width x height` (no pixel data): enough for a header read."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def test_over_the_pixel_limit_the_header_check_and_read_image_agree(tmp_path, monkeypatch):
    from rcnn.datasets import images
    from rcnn.datasets.rules import check_image

    Image.fromarray(RGB).save(tmp_path / "a.png")  # 30 x 20 = 600 pixels
    monkeypatch.setattr(images, "MAX_PIXELS", 599)
    message = "image is 30x20 = 600 pixels, over the 599 pixel limit (rcnn.datasets.images.MAX_PIXELS)"
    with pytest.raises(ImageError, match=re.escape(message)) as e:
        read_image(tmp_path / "a.png")
    assert e.value.path == str(tmp_path / "a.png")
    for decode in (False, True):
        size, problems = check_image(tmp_path / "a.png", decode)
        assert size is None and [p.message for p in problems] == [message] and problems[0].image
    monkeypatch.setattr(images, "MAX_PIXELS", 600)
    assert read_image(tmp_path / "a.png").shape == (20, 30, 3)
    assert check_image(tmp_path / "a.png") == ((30, 20), [])


def test_a_decompression_bomb_is_an_image_error_not_a_pil_traceback(tmp_path):
    from rcnn.datasets.rules import check_image

    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 10000)  # 200 Mpixels: PIL itself refuses to open it
    with pytest.raises(ImageError, match=r"image is 200 Mpixels, over the 89 Mpixel limit") as e:
        read_image(bomb)
    assert e.value.path == str(bomb)
    size, problems = check_image(bomb)
    assert size is None and "over the 89 Mpixel limit" in problems[0].message
    big = _png_header_only(tmp_path / "big.png", 10000, 9000)  # 90 Mpixels: PIL only warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        size, problems = check_image(big)
    assert [p.message for p in problems] == [
        "image is 10000x9000 = 90 Mpixels, over the 89 Mpixel limit (rcnn.datasets.images.MAX_PIXELS)"
    ]


def test_exif_orientation_is_not_applied_by_read_image_nor_the_header_check(tmp_path):
    from rcnn.datasets.images import read_header
    from rcnn.datasets.rules import check_image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees for display
    Image.fromarray(RGB).save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "r.jpg").shape == (20, 30, 3)  # as stored, 30 wide
    assert read_header(tmp_path / "r.jpg") == (30, 20, 6)
    assert check_image(tmp_path / "r.jpg") == ((30, 20), []) == check_image(tmp_path / "r.jpg", decode=True)
