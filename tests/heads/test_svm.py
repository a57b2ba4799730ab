import numpy as np
import pytest
import torch

from rcnn.config import from_dict
from rcnn.errors import ConfigError, ModelError
from rcnn.heads import ImageData, SVMConfig, SVMHead


def _toy_images(n_images=20, n_hard=3, n_easy=200, seed=0):
    """One class in 2-D. Per image: one gt box (feature near (3, 0)), `n_hard` far boxes whose
    features sit near (1.5, 0) (hard negatives) and `n_easy` far boxes near (-3, 0)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        gt = np.array([[10, 10, 50, 50]], np.float32)
        far = np.tile(np.array([[100, 100, 140, 140]], np.float32), (n_hard + n_easy, 1))
        boxes = np.concatenate([gt, far])
        feats = np.concatenate(
            [
                rng.normal([3, 0], 0.3, (1, 2)),
                rng.normal([1.5, 0], 0.3, (n_hard, 2)),
                rng.normal([-3, 0], 0.3, (n_easy, 2)),
            ]
        ).astype(np.float32)
        images.append(ImageData(feats, boxes, gt, np.array([1])))
    return images


def _cluster_images(n_images, num_classes=3, dim=32, seed=0):
    """Several classes: each gt's feature is its class centre plus noise; proposals that
    overlap nothing carry background features; boxes in the grey zone carry a blend."""
    centres = np.random.default_rng(0).normal(0, 1, (num_classes + 1, dim)).astype(np.float32) * 3
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n_images):
        c = 1 + i % num_classes
        gt = np.array([[20, 20, 60, 60]], np.float32)
        grey = np.array([[20, 20, 60, 35]], np.float32)  # IoU 0.375: ignored
        bg = rng.uniform(100, 200, (40, 2)).astype(np.float32)
        bg = np.concatenate([bg, bg + 30], axis=1)
        boxes = np.concatenate([gt, grey, bg])
        feats = np.concatenate(
            [
                centres[c] + rng.normal(0, 0.5, (1, dim)),
                0.5 * (centres[c] + centres[0]) + rng.normal(0, 0.5, (1, dim)),
                centres[0] + rng.normal(0, 0.5, (40, dim)),
            ]
        ).astype(np.float32)
        images.append(ImageData(feats, boxes, gt, np.array([c]), np.array([False])))
    return images, centres


def test_hard_negative_mining_adds_hard_negatives_and_separates_them():
    images = _toy_images()
    cfg = dict(C=1.0, feature_norm=None, negatives_per_image=1, rounds=0, seed=0)
    before = SVMHead(1, SVMConfig(**cfg)).fit(images)
    after = SVMHead(1, SVMConfig(**{**cfg, "rounds": 3})).fit(images)

    neg = np.concatenate([im.features[1:] for im in images])
    hard = np.concatenate([im.features[1:4] for im in images])
    in_margin = int((before.decision_function(neg)[:, 0] > -1).sum())
    added = after.history_[1]["added"][0]
    # every negative inside the margin is added, less those the random start already held
    assert in_margin - len(images) <= added <= in_margin
    assert added >= 40
    assert sum(h["added"][0] for h in after.history_[2:]) < added  # later rounds add fewer
    # before mining, most hard negatives lie inside the margin; after, few do and none is
    # on the positive side
    hard_before, hard_after = before.decision_function(hard)[:, 0], after.decision_function(hard)[:, 0]
    assert (hard_before > -1).mean() > 0.8
    assert (hard_after > -1).mean() < 0.2 and (hard_after > 0).sum() == 0
    pos = np.stack([im.features[0] for im in images])
    assert (after.decision_function(pos)[:, 0] > 0).all()


def test_mining_evicts_easy_negatives_and_respects_the_cache_size():
    images = _toy_images()
    head = SVMHead(1, SVMConfig(C=1.0, feature_norm=None, negatives_per_image=50, max_negatives=300, rounds=2))
    head.fit(images)
    assert head.history_[0]["negatives"] == [300]  # 20 x 50 sampled, 300 kept
    assert head.history_[1]["evicted"][0] > 0  # easy ones (-3, 0) leave the cache
    assert all(h["negatives"][0] <= 300 for h in head.history_)


def test_svms_separate_feature_clusters_per_class():
    train, centres = _cluster_images(60)
    test, _ = _cluster_images(30, seed=1)
    test = [ImageData(t.features, t.boxes, t.gt_boxes, t.gt_labels) for t in test]
    head = SVMHead(3, SVMConfig()).fit(train)  # R-CNN defaults
    assert head.weights_.shape == (32, 3) and head.bias_.shape == (3,)
    # scale: the mean norm of training features becomes 20
    norms = np.concatenate([np.linalg.norm(t.features, axis=1) for t in train])
    assert head.scale_ * norms.mean() == pytest.approx(20.0, rel=1e-4)
    for t in test:
        scores = head.decision_function(t.features)
        c = t.gt_labels[0]
        assert scores[0].argmax() == c - 1 and scores[0, c - 1] > 0  # the object
        assert (scores[2:] < 0).all()  # background


def test_decision_function_is_one_matrix_product_for_numpy_and_torch():
    train, _ = _cluster_images(30)
    head = SVMHead(3).fit(train)
    x = train[0].features
    expected = (x.astype(np.float64) * head.scale_) @ head.weights_ + head.bias_
    np.testing.assert_allclose(head.decision_function(x), expected, rtol=1e-4, atol=1e-4)
    out = head.decision_function(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_state_dict_round_trip_through_torch_file(tmp_path):
    train, _ = _cluster_images(30)
    head = SVMHead(3, SVMConfig(loss="squared_hinge", positive_iou=0.7)).fit(train)
    torch.save(head.state_dict(), tmp_path / "svm.pt")
    loaded = SVMHead.from_state_dict(torch.load(tmp_path / "svm.pt", weights_only=True))
    assert loaded.config == head.config
    x = np.concatenate([t.features for t in train[:5]])
    np.testing.assert_array_equal(loaded.decision_function(x), head.decision_function(x))
    with pytest.raises(ModelError):
        SVMHead.from_state_dict({**head.state_dict(), "num_classes": 4})


def test_same_config_gives_same_numbers():
    train, _ = _cluster_images(30)
    a = SVMHead(3, SVMConfig(negatives_per_image=5)).fit(train)
    b = SVMHead(3, SVMConfig(negatives_per_image=5)).fit(train)
    np.testing.assert_array_equal(a.weights_, b.weights_)


def test_class_without_examples_scores_a_constant_and_warns():
    train, _ = _cluster_images(20, num_classes=2)
    with pytest.warns(UserWarning, match=r"\[3\]"):
        head = SVMHead(3).fit(train)
    assert head.empty_classes_ == [3]
    assert (head.decision_function(train[0].features)[:, 2] == -10).all()


def test_config_from_toml_dict_and_validation():
    cfg = from_dict(SVMConfig, {"C": 0.01, "loss": "squared_hinge", "rounds": 1})
    assert cfg.C == 0.01 and cfg.rounds == 1
    with pytest.raises(ConfigError):
        from_dict(SVMConfig, {"loss": "log"})
    with pytest.raises(ConfigError):
        from_dict(SVMConfig, {"neg_iou": 0.6, "positive_iou": 0.5})
    with pytest.raises(ConfigError):
        from_dict(SVMConfig, {"margin": 1})


def test_mismatched_image_data_is_an_error():
    bad = ImageData(np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32), np.zeros((0, 4)), np.zeros(0))
    with pytest.raises(ValueError, match="image 0"):
        SVMHead(1).fit([bad])
