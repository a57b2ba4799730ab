"""Reading images as 3-channel 8-bit RGB, with errors that name the file.

Two rules hold for every image `rcnn` opens, whether it reads only the header (`read_header`,
used by the dataset readers' check) or the pixels (`read_image`), so a bad image is found at
load time (and skipped with ``--skip-bad``) rather than mid-run:

- Size limit: an image of more than `MAX_PIXELS` pixels (PIL's decompression-bomb limit,
  about 89 Mpixels) is refused with an `ImageError` naming the file and its size.
- Orientation: pixels are used as stored. An EXIF orientation tag is *not* applied (OpenCV's
  ``IMREAD_UNCHANGED`` ignores it), so an image's size is its stored width x height, the size
  PIL's header reports; annotations must be in that frame. When an annotated size differs
  and the tag explains it, the error says so.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import cv2
import numpy as np

from rcnn.cache import check_readable
from rcnn.errors import ImageError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}  # what counts as an image file
MAX_PIXELS = 89_478_485  # PIL's Image.MAX_IMAGE_PIXELS; larger images are refused (see the module docstring)
EXIF_ORIENTATION = 0x0112
ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height for display


class ImageTooLarge(ImageError):
    """An image over `MAX_PIXELS`."""


def _amount(pixels: int) -> str:
    return f"{pixels / 1e6:.0f} Mpixels" if pixels >= 1e6 else f"{pixels} pixels"


def _limit() -> str:
    return f"over the {_amount(MAX_PIXELS)[:-1]} limit (rcnn.datasets.images.MAX_PIXELS)"


def pixel_limit_message(width: int, height: int) -> str | None:
    """The error message for an image of ``width x height`` over `MAX_PIXELS` (else None)."""
    if width * height <= MAX_PIXELS:
        return None
    return f"image is {width}x{height} = {_amount(width * height)}, {_limit()}"


def read_header(source, path=None, orientation: bool = True) -> tuple[int, int, int]:
    """``(width, height, EXIF orientation)`` from an image's header, without decoding it
    (orientation 1, upright, when the file has no tag or `orientation` is false).

    `source` is a path or the file's bytes (`path` then names it in errors). Raises
    `ImageError` for a missing file or one PIL cannot identify, `ImageTooLarge` for one
    over `MAX_PIXELS`.
    """
    from PIL import Image, UnidentifiedImageError

    path = source if path is None else path
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    tag = 1
    try:
        if fp is source:
            check_readable(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            with Image.open(fp) as im:
                width, height = im.size
                if orientation:
                    tag = im.getexif().get(EXIF_ORIENTATION, 1)
    except Image.DecompressionBombError as e:  # over twice PIL's limit: PIL gives only the count
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        size = _amount(int(pixels.group(1))) if pixels else "too large"
        raise ImageTooLarge(path, f"image is {size}, {_limit()}") from None
    except FileNotFoundError:
        raise ImageError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageError(path, f"not a readable image: {e}") from None
    message = pixel_limit_message(width, height)
    if message:
        raise ImageTooLarge(path, message)
    return width, height, tag if isinstance(tag, int) else 1


def read_image(path) -> np.ndarray:
    """The image at `path` as ``uint8 [H, W, 3]`` RGB, pixels as stored (EXIF orientation is
    not applied: see the module docstring).

    Grayscale, RGBA / grey+alpha (alpha dropped), palette and 16-bit images are converted.
    A missing, empty, truncated or undecodable file, or one over `MAX_PIXELS` (checked from
    the header before decoding), raises `ImageError` naming it.
    """
    path = Path(path)
    try:
        check_readable(path)  # a FIFO or /dev/zero named like an image would block or never end
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise ImageError(path, f"cannot read image: {getattr(e, 'strerror', None) or e}") from None
    if data.size == 0:
        raise ImageError(path, "image file is empty")
    try:
        read_header(memoryview(data), path, orientation=False)  # refuse over-limit images before decoding
    except ImageTooLarge:
        raise
    except ImageError:
        pass  # a header PIL cannot read: OpenCV may still decode it; decoding decides
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if _is_truncated(path, data):
        raise ImageError(path, "image file is truncated")
    if image is None:
        raise ImageError(path, "not a readable image (corrupt or unsupported format)")
    message = pixel_limit_message(image.shape[1], image.shape[0])
    if message:
        raise ImageTooLarge(path, message)
    return to_rgb8(image, path)


def to_rgb8(image: np.ndarray, path=None) -> np.ndarray:
    """Convert a decoded OpenCV image (BGR/BGRA/grey, 8/16-bit or float) to ``uint8`` RGB."""
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
    elif image.dtype in (np.float32, np.float64):
        image = np.clip(image * (255.0 if image.max() <= 1.0 else 1.0), 0, 255).round()
    elif image.dtype != np.uint8:
        raise ImageError(path, f"unsupported pixel type {image.dtype}")
    image = image.astype(np.uint8, copy=False)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # grey + alpha
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageError(path, f"unsupported number of channels: {channels}")


def _is_truncated(path: Path, data: np.ndarray) -> bool:
    """OpenCV decodes a truncated JPEG or PNG silently (grey fill); catch it by the end marker.

    JPEG: the last scan (after the last SOS marker) must be followed by EOI; trailing bytes
    after EOI (some cameras append data) are fine. PNG: the IEND chunk must be present.
    """
    del path
    raw = data.tobytes()
    if raw[:2] == b"\xff\xd8":
        sos = raw.rfind(b"\xff\xda")
        return sos < 0 or raw.find(b"\xff\xd9", sos) < 0
    if raw[:8] == b"\x89PNG\r\n\x1a\n":
        return raw.rfind(b"IEND\xaeB`\x82") < 0
    return False
