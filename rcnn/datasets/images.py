"""Reading images as 3-channel 8-bit RGB, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from rcnn.errors import ImageError

cv2.setNumThreads(1)


def read_image(path) -> np.ndarray:
    """The image at `path` as ``uint8 [H, W, 3]`` RGB.

    Grayscale, RGBA / grey+alpha (alpha dropped), palette and 16-bit images are converted.
    A missing, empty, truncated or undecodable file raises `ImageError` naming it.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(path, f"cannot read image: {e.strerror or e}") from None
    if data.size == 0:
        raise ImageError(path, "image file is empty")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if _is_truncated(path, data):
        raise ImageError(path, "image file is truncated")
    if image is None:
        raise ImageError(path, "not a readable image (corrupt or unsupported format)")
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


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` of an image, read from the decoded image (raises `ImageError`)."""
    h, w = read_image(path).shape[:2]
    return w, h


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
