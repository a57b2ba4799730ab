"""rcnn.boxes: area, IoU (plain, +1 inclusive, crowd, matched pairs), NMS, clip, small boxes,
scaling, conversions and the R-CNN BoxCoder, on hand-computed cases and against torchvision's
ops (and pycocotools' IoU for crowd regions)."""

import math

import numpy as np
import pytest
import torch
from torchvision import ops
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

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
    np.testing.assert_allclose(iou, ops.box_iou(torch.as_tensor(a), torch.as_tensor(b)).numpy(), rtol=1e-6)


def test_iou_continuous_pixels_no_plus_one():
    """Widths are x2 - x1: a one-pixel box [0, 1) overlapping [0, 2) has IoU 1/2, not 2/3."""
    assert B.box_iou(np.array([[0, 0, 1, 1]], np.float32), np.array([[0, 0, 2, 1]], np.float32))[0, 0] == pytest.approx(
        0.5
    )


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
    assert B.batched_nms(empty, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5).shape == (0,)


def test_nms_keeps_best_and_suppresses_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.5, 0.9, 0.8, 0.1], np.float32)
    one = np.zeros(4, np.int64)  # one label: plain NMS
    # box 1 (best) suppresses box 0 (IoU 9/11) and box 3 (IoU 9/11.5 > .5); box 2 is apart
    keep = B.batched_nms(boxes, scores, one, 0.5)
    assert isinstance(keep, np.ndarray) and keep.dtype == np.int64 and keep.tolist() == [1, 2]
    # IoU must be strictly above the threshold to suppress
    assert B.batched_nms(boxes[:2], scores[:2], one[:2], 9 / 11).tolist() == [1, 0]
    # at 0.9 box 0 survives box 1 (9/11) but suppresses box 3 (IoU 100/105)
    assert B.batched_nms(boxes, scores, one, 0.9).tolist() == [1, 2, 0]
    assert B.batched_nms(boxes, scores, one, 0.96).tolist() == [1, 2, 0, 3]
    # per class: overlapping boxes of different labels both stay
    keep = B.batched_nms(boxes, scores, np.array([1, 2, 1, 1]), 0.5)
    assert keep.tolist() == [1, 2, 0]


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
    assert B.xyxy_to_xywh([[1, 2, 3, 4]]).tolist() == [[1, 2, 2, 2]]  # lists give float32 arrays


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
    decoded = coder.decode(proposals.astype(np.float64), deltas.astype(np.float64))  # float64 in: float32 out
    assert decoded.dtype == np.float32 and np.allclose(decoded, targets, atol=2e-3)
    assert coder.encode(proposals[:0], targets[:0]).shape == (0, 4)


def test_box_coder_clamps_wild_deltas():
    coder = B.BoxCoder()
    out = coder.decode(np.array([[0, 0, 16, 16]], np.float32), np.array([[0, 0, 100, 100]], np.float32))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, 2] - out[0, 0], 1000, rtol=1e-5)  # 16 * exp(log(1000 / 16))


def _random_boxes(n, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 200, (n, 2))], 1).astype(dtype)


def test_box_area_hand_computed_inclusive_and_torchvision():
    boxes = np.array([[0, 0, 10, 10], [1, 2, 4, 8], [0, 0, 9, 9], [5, 5, 5, 7]], np.float32)
    np.testing.assert_array_equal(B.box_area(boxes), [100, 18, 81, 0])
    # the devkit's +1: inclusive corners 0..9 are 10 pixels wide; a point [5, 5, 5, 7] is 1 x 3
    np.testing.assert_array_equal(B.box_area(boxes, inclusive=True), [121, 28, 100, 3])
    assert B.box_area(boxes).dtype == np.float32 and B.box_area(boxes.astype(np.float64)).dtype == np.float64
    assert B.box_area(boxes[None]).shape == (1, 4)  # any [..., 4]
    b = _random_boxes(500, 1)
    np.testing.assert_array_equal(B.box_area(b), ops.box_area(torch.from_numpy(b)).numpy())


def test_box_iou_equals_torchvision():
    a, b = _random_boxes(300, 2), _random_boxes(40, 3)
    ours = B.box_iou(a, b)
    assert ours.dtype == np.float32 and ours.shape == (300, 40) and (ours > 0).sum() > 100
    np.testing.assert_allclose(ours, ops.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), rtol=1e-6, atol=0)
    # float64 in, float64 out, the same numbers to float32 precision
    ours64 = B.box_iou(a.astype(np.float64), b.astype(np.float64))
    assert ours64.dtype == np.float64
    np.testing.assert_allclose(ours64, ours, rtol=1e-6, atol=1e-7)


def test_box_iou_inclusive_plus_one():
    a = np.array([[0, 0, 9, 9]], np.float64)  # inclusive corners: 10 x 10 pixels
    b = np.array([[5, 0, 14, 9], [9, 0, 18, 9], [10, 0, 19, 9], [0, 0, 9, 9]], np.float64)
    # overlap 5 x 10 = 50 of 150; touching corners share a 1-pixel column: 10 of 190; apart; same
    np.testing.assert_allclose(B.box_iou(a, b, inclusive=True)[0], [50 / 150, 10 / 190, 0, 1], rtol=1e-12)
    # the same boxes as continuous coordinates: 4 x 9 = 36 of 81 + 81 - 36; touching gives 0
    np.testing.assert_allclose(B.box_iou(a, b)[0], [36 / 126, 0, 0, 1], rtol=1e-12)
    np.testing.assert_allclose(B.matched_box_iou(a, b, inclusive=True), [50 / 150, 10 / 190, 0, 1], rtol=1e-12)


def test_box_iou_crowd_is_intersection_over_detection_area():
    det = np.array([[0, 0, 10, 10], [100, 100, 110, 110]], np.float64)
    gt = np.array([[5, 0, 25, 10], [2, 2, 4, 4]], np.float64)  # 200 px, and 4 px inside the first detection
    crowd = np.array([True, True])
    np.testing.assert_allclose(B.box_iou(det, gt, crowd=crowd), [[50 / 100, 4 / 100], [0, 0]], rtol=1e-12)
    np.testing.assert_allclose(B.box_iou(det, gt), [[50 / 250, 4 / 100], [0, 0]], rtol=1e-12)
    mixed = B.box_iou(det, gt, crowd=np.array([False, True]))
    np.testing.assert_allclose(mixed[0], [50 / 250, 4 / 100], rtol=1e-12)


def test_box_iou_crowd_equals_pycocotools():
    mask = pytest.importorskip("pycocotools.mask")
    d, g = _random_boxes(60, 4, np.float64), _random_boxes(30, 5, np.float64)
    g[:10] = d[:10] + np.random.default_rng(6).normal(0, 10, (10, 4))  # some overlaps
    g[:, 2:] = np.maximum(g[:, 2:], g[:, :2] + 1)
    crowd = np.arange(30) % 3 == 0
    ref = mask.iou(B.xyxy_to_xywh(d).tolist(), B.xyxy_to_xywh(g).tolist(), crowd.astype(np.uint8).tolist())
    ours = B.box_iou(d, g, crowd=crowd)
    assert (ours > 0).sum() > 10 and crowd[np.flatnonzero((ours > 0).any(0))].any()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_matched_box_iou_pairs_and_broadcasting():
    a, b = _random_boxes(50, 7, np.float64), _random_boxes(50, 8, np.float64)
    b[::2] = a[::2] + 3  # some overlap
    full = B.box_iou(a, b)
    pairs = B.matched_box_iou(a, b)
    assert pairs.shape == (50,) and pairs.dtype == np.float64
    np.testing.assert_array_equal(pairs, np.diag(full))
    # [N, 1, 4] against [N, G, 4]: each detection with its own group of boxes (COCO's use)
    groups = np.stack([b[:5], b[5:10], b[10:15]])  # [3, 5, 4]
    rows = B.matched_box_iou(a[:3, None], groups, crowd=np.zeros((3, 5), bool))
    np.testing.assert_array_equal(rows, np.stack([full[0, :5], full[1, 5:10], full[2, 10:15]]))
    zero = np.array([[5, 5, 5, 5]], np.float32)
    assert B.matched_box_iou(zero, zero).tolist() == [0.0]  # never NaN
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        B.matched_box_iou(np.zeros((2, 3)), np.zeros((2, 3)))


def test_batched_nms_equals_torchvision():
    b = _random_boxes(2000, 9)
    scores = np.random.default_rng(10).random(2000).astype(np.float32)
    labels = np.random.default_rng(11).integers(1, 4, 2000)
    bt, st = torch.from_numpy(b), torch.from_numpy(scores)
    np.testing.assert_array_equal(B.batched_nms(b, scores, np.zeros(2000, np.int64), 0.3), ops.nms(bt, st, 0.3).numpy())
    np.testing.assert_array_equal(
        B.batched_nms(b, scores, labels, 0.3), ops.batched_nms(bt, st, torch.from_numpy(labels), 0.3).numpy()
    )
    ro = b.copy()
    ro.setflags(write=False)  # read-only input (e.g. a memory-mapped cache) works, untouched
    np.testing.assert_array_equal(B.batched_nms(ro, scores, labels, 0.3), B.batched_nms(b, scores, labels, 0.3))


def test_clip_and_remove_small_equal_torchvision():
    rng = np.random.default_rng(12)
    b = np.sort(rng.uniform(-50, 450, (300, 2, 2)), axis=1).transpose(0, 2, 1).reshape(-1, 4).astype(np.float32)
    b = b[:, [0, 2, 1, 3]]  # x1 y1 x2 y2 with x1 <= x2, y1 <= y2
    np.testing.assert_array_equal(
        B.clip_boxes(b, (300, 400)), ops.clip_boxes_to_image(torch.from_numpy(b), (300, 400)).numpy()
    )
    original = b.copy()
    B.clip_boxes(b, (300, 400))
    np.testing.assert_array_equal(b, original)  # a new array; the input is not clipped in place
    for m in (0.0, 1.0, 30.0):
        np.testing.assert_array_equal(
            B.remove_small_boxes(b, m), ops.remove_small_boxes(torch.from_numpy(b), m).numpy()
        )
    assert B.remove_small_boxes(b, 30.0).dtype == np.int64


def test_scale_boxes_about_centres():
    boxes = np.array([[0, 0, 10, 20], [4, 4, 6, 6], [10, 0, 0, 10]], np.float32)  # last: inverted width
    np.testing.assert_array_equal(B.scale_boxes(boxes, 2.0), [[-5, -10, 15, 30], [3, 3, 7, 7], [5, -5, 5, 15]])
    np.testing.assert_array_equal(B.scale_boxes(boxes[:2], 1.0), boxes[:2])
    assert B.scale_boxes(boxes, 1.5).dtype == np.float32


def test_conversions_equal_torchvision_and_keep_float64():
    b = _random_boxes(200, 13)
    t = torch.from_numpy(b)
    for fn, src, dst in [
        (B.xyxy_to_xywh, "xyxy", "xywh"),
        (B.xywh_to_xyxy, "xywh", "xyxy"),
        (B.xyxy_to_cxcywh, "xyxy", "cxcywh"),
        (B.cxcywh_to_xyxy, "cxcywh", "xyxy"),
    ]:
        np.testing.assert_array_equal(fn(b), ops.box_convert(t, src, dst).numpy())
        assert fn(b).dtype == np.float32 and fn(b.astype(np.float64)).dtype == np.float64


def test_box_coder_equals_torchvision_box_coder():
    """torchvision's BoxCoder with weights ``1 / stds`` (means 0) is the same parameterisation."""
    p, g = _random_boxes(300, 14), _random_boxes(300, 15)
    stds = (0.1, 0.1, 0.2, 0.2)
    ours = B.BoxCoder(stds=stds)
    theirs = TorchvisionBoxCoder(tuple(1 / s for s in stds))
    deltas = ours.encode(p, g)
    np.testing.assert_allclose(
        deltas, theirs.encode_single(torch.from_numpy(g), torch.from_numpy(p)).numpy(), rtol=1e-4, atol=1e-4
    )
    wild = np.random.default_rng(16).normal(0, 3, (300, 4)).astype(np.float32)
    np.testing.assert_allclose(
        ours.decode(p, wild),
        theirs.decode_single(torch.from_numpy(wild), torch.from_numpy(p)).numpy(),
        rtol=1e-5,
        atol=1e-2,
    )
