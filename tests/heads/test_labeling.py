import numpy as np
import pytest

from rcnn.heads import IGNORE, NEGATIVE, POSITIVE, Matcher, class_labels, label_proposals

GT = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
BOXES = np.array(
    [
        [0, 0, 10, 10],  # IoU 1.0 with gt 0
        [0, 0, 10, 8],  # 0.8 with gt 0
        [0, 0, 10, 4],  # 0.4 with gt 0: grey zone
        [0, 0, 10, 2],  # 0.2 with gt 0: negative
        [20, 20, 30, 26],  # 0.6 with gt 1
        [50, 50, 60, 60],  # nothing
    ],
    np.float32,
)


def test_matcher_bins_follow_thresholds_and_labels():
    m = Matcher([0.3, 0.5], [NEGATIVE, IGNORE, POSITIVE])
    iou = np.array([[0.0, 0.29], [0.3, 0.1], [0.49, 0.2], [0.1, 0.5], [1.0, 0.0]], np.float32)
    matches, labels = m(iou)
    assert matches.tolist() == [1, 0, 0, 1, 0]
    assert labels.tolist() == [0, -1, -1, 1, 1]


def test_matcher_without_ground_truth_gives_the_lowest_bin():
    matches, labels = Matcher()(np.zeros((3, 0), np.float32))
    assert matches.tolist() == [-1, -1, -1] and labels.tolist() == [0, 0, 0]


def test_matcher_rejects_bad_thresholds():
    with pytest.raises(ValueError):
        Matcher([0.5, 0.3], [0, -1, 1])
    with pytest.raises(ValueError):
        Matcher([0.5], [0, -1, 1])


def test_label_proposals_gives_classes_background_and_iou():
    labels, max_iou, gt_index = label_proposals(BOXES, GT, [3, 2])
    assert labels.tolist() == [3, 3, 0, 0, 2, 0]
    np.testing.assert_allclose(max_iou, [1.0, 0.8, 0.4, 0.2, 0.6, 0.0], atol=1e-6)
    assert gt_index[:5].tolist() == [0, 0, 0, 0, 1]


def test_label_proposals_with_grey_zone():
    labels, _, _ = label_proposals(BOXES, GT, [3, 2], matcher=Matcher([0.3, 0.5], [0, -1, 1]))
    assert labels.tolist() == [3, 3, -1, 0, 2, 0]


def test_difficult_ground_truth_makes_ignored_not_positive_nor_negative():
    labels, max_iou, _ = label_proposals(BOXES, GT, [3, 2], gt_difficult=[False, True])
    assert labels.tolist() == [3, 3, 0, 0, -1, 0]
    assert max_iou[4] == 0  # IoU is over non-difficult ground truth only
    labels, _, gt_index = label_proposals(BOXES, GT, [3, 2], gt_difficult=[True, True])
    assert labels.tolist() == [-1, -1, 0, 0, -1, 0]
    assert (gt_index == -1).all()


def test_difficult_box_does_not_hide_a_positive_of_an_easy_one():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 9]], np.float32)  # easy and difficult, overlapping
    labels, _, _ = label_proposals(BOXES[:2], gt, [1, 1], gt_difficult=[False, True])
    assert labels.tolist() == [1, 1]


def test_class_labels_match_each_class_separately():
    out = class_labels(BOXES, GT, [1, 2], num_classes=3)
    assert out.dtype == np.int8 and out.shape == (6, 3)
    assert out[:, 0].tolist() == [1, 1, -1, 0, 0, 0]
    assert out[:, 1].tolist() == [0, 0, 0, 0, 1, 0]
    assert out[:, 2].tolist() == [0] * 6  # no gt of class 3: everything is a negative


def test_class_labels_gt_only_positives_and_difficult():
    gt_only = Matcher([0.3, 0.999], [0, -1, 1])
    out = class_labels(BOXES, GT, [1, 2], 2, gt_difficult=[False, True], matcher=gt_only)
    assert out[:, 0].tolist() == [1, -1, -1, 0, 0, 0]
    assert out[:, 1].tolist() == [0, 0, 0, 0, -1, 0]  # difficult: its near boxes ignored


def test_labels_accept_tensors():
    torch = pytest.importorskip("torch")
    labels, _, _ = label_proposals(torch.from_numpy(BOXES), torch.from_numpy(GT), torch.tensor([3, 2]))
    assert labels.tolist() == [3, 3, 0, 0, 2, 0]
