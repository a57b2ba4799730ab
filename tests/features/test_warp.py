"""Warped crops: R-CNN's context padding, exact pixels, mean fill, cv2 vs roi_align."""

import numpy as np
import pytest
import torch

from rcnn.features.warp import MEAN_PIXEL, context_boxes, normalize, warp_crops, warp_normalized

A = (20, 220, 40)  # the object's colour
B = (200, 50, 90)  # the background's colour


def test_context_boxes_dilate_by_s_over_s_minus_2p():
    big = context_boxes(np.array([[10, 20, 110, 70]], np.float32), crop_size=224, padding=16)
    scale = 224 / 192
    np.testing.assert_allclose(big[0], [60 - 50 * scale, 45 - 25 * scale, 60 + 50 * scale, 45 + 25 * scale], rtol=1e-6)
    np.testing.assert_array_equal(context_boxes([[1, 2, 3, 4]], 64, 0), [[1, 2, 3, 4]])
    with pytest.raises(ValueError):
        context_boxes([[0, 0, 1, 1]], 64, 32)


@pytest.mark.parametrize("padding", [0, 8])
def test_crop_shows_the_box_and_p_pixels_of_context(padding):
    image = np.empty((200, 220, 3), np.uint8)
    image[:] = B
    image[40:120, 60:140] = A  # pixels 60..139 x 40..119: the box [60, 40, 140, 120]
    crop = warp_crops(image, np.array([[60, 40, 140, 120]], np.float32), crop_size=64, padding=padding)
    assert crop.shape == (1, 64, 64, 3) and crop.dtype == np.uint8
    expected = np.empty((64, 64, 3), np.uint8)
    expected[:] = B
    expected[padding : 64 - padding, padding : 64 - padding] = A
    np.testing.assert_array_equal(crop[0], expected)


def test_outside_the_image_is_filled_with_the_mean_pixel():
    image = np.empty((100, 120, 3), np.uint8)
    image[:] = A
    boxes = np.array([[0, 0, 50, 50], [70, 50, 120, 100]], np.float32)  # touch top-left, bottom-right
    crops = warp_crops(image, boxes, crop_size=64, padding=8)
    fill = np.empty((64, 64, 3), np.uint8)
    fill[:] = MEAN_PIXEL
    top_left = fill.copy()
    top_left[8:, 8:] = A
    bottom_right = fill.copy()
    bottom_right[:56, :56] = A
    np.testing.assert_array_equal(crops[0], top_left)
    np.testing.assert_array_equal(crops[1], bottom_right)
    # after normalisation the fill is (nearly) zero, as R-CNN's mean-subtracted padding
    for method in ("cv2", "roi_align"):
        x = warp_normalized(image, boxes, 64, 8, method)
        assert x.shape == (2, 3, 64, 64)
        assert x[0, :, :7, :7].abs().max() < 0.01
        assert x[1, :, 57:, 57:].abs().max() < 0.01


def test_normalize_matches_imagenet_mean_std_and_is_channels_last():
    crops = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    x = normalize(crops)
    assert x.shape == (3, 3, 16, 16) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = ((crops / 255.0 - mean) / std).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.numpy(), expected, atol=1e-5)


def test_cv2_and_roi_align_sample_the_same_points():
    yy, xx = np.mgrid[0:240, 0:320]
    image = np.stack([xx * 0.7, yy, (xx + yy) * 0.4], axis=-1).clip(0, 255).astype(np.uint8)  # smooth ramps
    rng = np.random.default_rng(1)
    xy = rng.uniform([30, 30], [200, 150], (40, 2))
    wh = rng.uniform(5, 80, (40, 2))  # small and large scale changes, both axes
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    a = warp_normalized(image, boxes, 48, 6, "cv2")
    b = warp_normalized(image, boxes, 48, 6, "roi_align")
    # cv2 rounds to uint8 and quantises coordinates to 1/32 px: a few grey levels at most
    assert (a - b).abs().max() < 4 / 255 / 0.224
    assert (a - b).abs().mean() < 0.5 / 255 / 0.224


def test_empty_boxes_give_empty_crops():
    image = np.zeros((10, 10, 3), np.uint8)
    assert warp_crops(image, np.zeros((0, 4), np.float32), 32, 4).shape == (0, 32, 32, 3)
    assert warp_normalized(image, np.zeros((0, 4), np.float32), 32, 4, "roi_align").shape == (0, 3, 32, 32)
