import numpy as np
import pytest
import torch

from rcnn.boxes import BoxCoder, box_iou
from rcnn.config import from_dict
from rcnn.errors import ConfigError, ModelError
from rcnn.heads import BoxRegressor, ImageData, RegressionConfig

DIM = 16
MIX = np.random.default_rng(123).normal(0, 1, (2, 4, DIM)).astype(np.float32)  # class -> 4 x D


def _images(n_images, seed=0):
    """Per image one gt box of class 1 or 2 and jittered proposals whose features encode, linearly
    (a class-specific 4 x D mix), the R-CNN deltas that take them to the gt; plus far boxes."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        c = 1 + i % 2
        x1, y1 = rng.uniform(0, 200, 2)
        w, h = rng.uniform(40, 120, 2)
        gt = np.array([[x1, y1, x1 + w, y1 + h]], np.float32)
        jitter = rng.normal(0, 0.08, (30, 4)) * np.array([w, h, w, h])
        boxes = np.concatenate([gt + jitter.astype(np.float32), [[500, 500, 540, 560]]]).astype(np.float32)
        t = BoxCoder().encode(boxes, np.repeat(gt, len(boxes), 0))
        feats = (t @ MIX[c - 1] + rng.normal(0, 0.001, (len(boxes), DIM))).astype(np.float32)
        images.append(ImageData(feats, boxes, gt, np.array([c]), np.array([False])))
    return images


def test_regression_recovers_boxes_from_features_that_encode_the_offsets():
    train, test = _images(40), _images(10, seed=1)
    reg = BoxRegressor(2, RegressionConfig(alpha=1e-3, feature_norm=None)).fit(train)
    assert (reg.num_pairs_ > 100).all()
    for im in test:
        near = box_iou(im.boxes, im.gt_boxes)[:, 0] > 0.6
        out = reg.predict(im.features[near], im.boxes[near], np.full(near.sum(), im.gt_labels[0]))
        np.testing.assert_allclose(out, np.repeat(im.gt_boxes, near.sum(), 0), atol=0.5)


def test_regressor_is_class_specific_and_background_keeps_boxes():
    train, test = _images(40), _images(4, seed=1)
    reg = BoxRegressor(2, RegressionConfig(alpha=1e-3, feature_norm=None)).fit(train)
    im = test[0]  # class 1
    wrong = reg.predict(im.features[:10], im.boxes[:10], np.full(10, 2))
    right = reg.predict(im.features[:10], im.boxes[:10], np.full(10, 1))
    err = lambda b: np.abs(b - im.gt_boxes).mean()  # noqa: E731
    assert err(right) < 0.5 < err(wrong)
    np.testing.assert_array_equal(reg.predict(im.features[:10], im.boxes[:10], np.zeros(10, int)), im.boxes[:10])


def test_only_pairs_above_min_iou_train_and_targets_are_normalised():
    train = _images(20)
    reg = BoxRegressor(2, RegressionConfig(min_iou=0.6)).fit(train)
    expected = [0, 0]
    for im in train:
        expected[im.gt_labels[0] - 1] += int((box_iou(im.boxes, im.gt_boxes)[:, 0] > 0.6).sum())
    assert reg.num_pairs_.tolist() == expected
    deltas = []
    for im in train[::2]:
        sel = box_iou(im.boxes, im.gt_boxes)[:, 0] > 0.6
        deltas.append(BoxCoder().encode(im.boxes[sel], np.repeat(im.gt_boxes, sel.sum(), 0)))
    deltas = np.concatenate(deltas)
    np.testing.assert_allclose(reg.target_means_[0], deltas.mean(0), atol=1e-5)
    np.testing.assert_allclose(reg.target_stds_[0], deltas.std(0), rtol=1e-4)


def test_class_without_pairs_leaves_boxes_alone():
    train = [im for im in _images(20) if im.gt_labels[0] == 1]
    reg = BoxRegressor(3).fit(train)
    assert reg.num_pairs_[1] == reg.num_pairs_[2] == 0
    im = train[0]
    np.testing.assert_allclose(reg.predict(im.features, im.boxes, np.full(len(im.boxes), 3)), im.boxes, atol=1e-4)


def test_state_dict_round_trip_and_torch_boxes(tmp_path):
    train = _images(20)
    reg = BoxRegressor(2).fit(train)
    torch.save(reg.state_dict(), tmp_path / "reg.pt")
    loaded = BoxRegressor.from_state_dict(torch.load(tmp_path / "reg.pt", weights_only=True))
    im = train[3]
    labels = np.full(len(im.boxes), im.gt_labels[0])
    np.testing.assert_array_equal(
        loaded.predict(im.features, im.boxes, labels), reg.predict(im.features, im.boxes, labels)
    )
    out = loaded.predict(torch.from_numpy(im.features), torch.from_numpy(im.boxes), labels)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), reg.predict(im.features, im.boxes, labels), atol=1e-4)
    with pytest.raises(ModelError):
        BoxRegressor.from_state_dict({k: v for k, v in reg.state_dict().items() if k != "bias"})


def test_config_and_label_validation():
    assert from_dict(RegressionConfig, {"alpha": 10}).alpha == 10
    with pytest.raises(ConfigError):
        from_dict(RegressionConfig, {"min_iou": 1.5})
    train = _images(4)
    reg = BoxRegressor(2).fit(train)
    with pytest.raises(ValueError):
        reg.predict(train[0].features, train[0].boxes, np.full(len(train[0].boxes), 3))
