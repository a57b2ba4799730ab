"""rcnn.boxes: IoU, NMS, clip, conversions and the R-CNN BoxCoder, on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from rcnn import boxes as B


def test_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array(
        [
            [0, 0, 10, 10],  # same: 1
            [5, 0, 15, 10],  # half shifted: 50 / 150
            [2, 2, 8, 8],  # inside: 36 / 100
            [10, 0, 20, 10],  # touching edge: 0
            [20, 20, 30, 30],  # apart: 0
            [5, 5, 15, 15],  # corner: 25 / 175
        ],
        np.float32,
    )
    iou = B.box_iou(a, b)
    assert isinstance(iou, np.ndarray) and iou.dtype == np.float32 and iou.shape == (1, 6)
    np.testing.assert_allclose(iou[0], [1, 1 / 3, 0.36, 0, 0, 1 / 7], rtol=1e-6)
    np.testing.assert_allclose(B.box_iou(b, a)[:, 0], iou[0], rtol=1e-6)  # symmetric
    t = B.box_iou(torch.as_tensor(a), torch.as_tensor(b))
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.as_tensor(iou))


def test_iou_continuous_pixels_no_plus_one():
    """Widths are x2 - x1: a one-pixel box [0, 1) overlapping [0, 2) has IoU 1/2, not 2/3."""
    assert B.box_iou(np.array([[0, 0, 1, 1]], np.float32), np.array([[0, 0, 2, 1]], np.float32))[0, 0] == pytest.approx(0.5)


def test_degenerate_boxes():
    zero = np.array([[5, 5, 5, 5], [3, 0, 3, 10]], np.float32)  # a point, a vertical line
    iou = B.box_iou(zero, zero)
    assert not np.isnan(iou).any() and (iou == 0).all()
    assert (B.box_iou(zero, np.array([[0, 0, 10, 10]], np.float32)) == 0).all()
    inverted = np.array([[10, 0, 0, 10], [0, 10, 10, 0]], np.float32)
    np.testing.assert_array_equal(B.box_area(inverted), [0, 0])
    np.testing.assert_array_equal(B.box_area(np.array([[1, 2, 4, 8]], np.float32)), [18])
    empty = np.zeros((0, 4), np.float32)
    assert B.box_iou(empty, zero).shape == (0, 2)
    assert B.nms(empty, np.zeros(0, np.float32), 0.5).shape == (0,)


def test_nms_keeps_best_and_suppresses_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.1], np.float32)
    # box 1 (best) suppresses box 0 (IoU 9/11) and box 3 (IoU 9/11.5 > .5); box 2 is apart
    keep = B.nms(boxes, scores, 0.5)
    assert isinstance(keep, np.ndarray) and keep.tolist() == [1, 2]
    # IoU must be strictly above the threshold to suppress
    assert B.nms(boxes[:2], scores[:2], 9 / 11).tolist() == [1, 0]
    # at 0.9 box 0 survives box 1 (9/11) but suppresses box 3 (IoU 100/105)
    assert B.nms(boxes, scores, 0.9).tolist() == [1, 2, 0]
    assert B.nms(boxes, scores, 0.96).tolist() == [1, 2, 0, 3]
    # per class: overlapping boxes of different labels both stay
    keep = B.batched_nms(boxes, scores, np.array([1, 2, 1, 1]), 0.5)
    assert keep.tolist() == [1, 2, 0]
    keep_t = B.batched_nms(torch.as_tensor(boxes), torch.as_tensor(scores), torch.tensor([1, 2, 1, 1]), 0.5)
    assert isinstance(keep_t, torch.Tensor) and keep_t.tolist() == [1, 2, 0]


def test_clip_uses_height_width():
    boxes = np.array([[-5, -5, 50, 50], [10, 20, 30, 40]], np.float32)
    clipped = B.clip_boxes(boxes, (20, 40))  # height 20, width 40
    np.testing.assert_array_equal(clipped, [[0, 0, 40, 20], [10, 20, 30, 20]])


def test_remove_small_boxes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 2, 10], [0, 0, 10, 3], [0, 0, 3, 3]], np.float32)
    assert B.remove_small_boxes(boxes, 3).tolist() == [0, 2, 3]  # >= min_size is kept
    assert B.remove_small_boxes(boxes, 3.5).tolist() == [0]


def test_conversions_round_trip():
    xyxy = np.array([[1, 2, 11, 6], [0, 0, 0, 0], [-3.5, 4, 2.5, 10]], np.float32)
    np.testing.assert_array_equal(B.xyxy_to_xywh(xyxy), [[1, 2, 10, 4], [0, 0, 0, 0], [-3.5, 4, 6, 6]])
    np.testing.assert_array_equal(B.xyxy_to_cxcywh(xyxy), [[6, 4, 10, 4], [0, 0, 0, 0], [-0.5, 7, 6, 6]])
    np.testing.assert_allclose(B.xywh_to_xyxy(B.xyxy_to_xywh(xyxy)), xyxy)
    np.testing.assert_allclose(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(xyxy)), xyxy)
    assert B.xyxy_to_xywh(xyxy).dtype == np.float32
    assert B.xyxy_to_xywh([[1, 2, 3, 4]]).tolist() == [[1, 2, 2, 2]]  # lists give tensors


def test_box_coder_hand_computed():
    coder = B.BoxCoder()
    p = np.array([[0, 0, 10, 20]], np.float32)  # centre (5, 10), size 10 x 20
    g = np.array([[5, 0, 25, 20]], np.float32)  # centre (15, 10), size 20 x 20
    np.testing.assert_allclose(coder.encode(p, g), [[1.0, 0.0, math.log(2), 0.0]], rtol=1e-6)
    np.testing.assert_allclose(coder.decode(p, [[1.0, 0.0, math.log(2), 0.0]]), g, atol=1e-5)
    scaled = B.BoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    np.testing.assert_allclose(scaled.encode(p, g), [[10.0, 0.0, math.log(2) / 0.2, 0.0]], rtol=1e-5)


@pytest.mark.parametrize("means, stds", [((0, 0, 0, 0), (1, 1, 1, 1)), ((0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2))])
def test_box_coder_decode_inverts_encode(means, stds):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, (200, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(4, 300, (200, 2))], 1).astype(np.float32)
    xy = rng.uniform(0, 400, (200, 2))
    targets = np.concatenate([xy, xy + rng.uniform(4, 300, (200, 2))], 1).astype(np.float32)
    coder = B.BoxCoder(means, stds)
    deltas = coder.encode(proposals, targets)
    assert isinstance(deltas, np.ndarray) and deltas.dtype == np.float32 and deltas.shape == (200, 4)
    np.testing.assert_allclose(coder.decode(proposals, deltas), targets, atol=2e-3)
    t = coder.decode(torch.as_tensor(proposals), torch.as_tensor(deltas))
    assert isinstance(t, torch.Tensor) and torch.allclose(t, torch.as_tensor(targets), atol=2e-3)
    assert coder.encode(proposals[:0], targets[:0]).shape == (0, 4)


def test_box_coder_clamps_wild_deltas():
    coder = B.BoxCoder()
    out = coder.decode(np.array([[0, 0, 16, 16]], np.float32), np.array([[0, 0, 100, 100]], np.float32))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000, rtol=1e-5)  # 16 * exp(log(1000 / 16))
