"""FeatureStore: cache hits, invalidation on any parameter or box, atomic resumable writes,
damaged entries recomputed, float16."""

import cv2
import numpy as np
import pytest

from rcnn.datasets import Dataset, Sample
from rcnn.errors import RcnnError
from rcnn.features import FeatureExtractor, FeatureStore


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(backbone="resnet18", weights="random", crop_size=48, padding=8, frozen=False)


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    samples, boxes = [], {}
    for i in range(3):
        path = tmp_path / "images" / f"im{i}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
        samples.append(Sample(f"im{i}", path, 80, 60))
        xy = rng.uniform(0, 50, (4 + i, 2))
        boxes[f"im{i}"] = np.concatenate([xy, xy + rng.uniform(5, 30, (4 + i, 2))], 1).astype(np.float32)
    return Dataset(["thing"], samples), boxes


def entries(root):
    return sorted(p.name for p in root.rglob("*.npz"))


def test_compute_then_load_then_hit(tmp_path, data, extractor):
    dataset, boxes = data
    store = FeatureStore(tmp_path / "cache", extractor)
    assert store.compute(dataset, boxes) == {"computed": 3, "cached": 0, "crops": 4 + 5 + 6, "damaged": 0}
    from rcnn.datasets import read_image

    for sample in dataset:
        feats = store.load(sample, boxes[sample.id])
        assert feats.dtype == np.float32 and feats.shape == (len(boxes[sample.id]), 512)
        direct = extractor.extract(read_image(sample.image_path), boxes[sample.id])
        np.testing.assert_allclose(feats, direct, rtol=1e-3, atol=1e-3 * np.abs(direct).max())
    # a second run computes nothing; a callable works as well as a dict
    assert store.compute(dataset, lambda s: boxes[s.id]) == {"computed": 0, "cached": 3, "crops": 0, "damaged": 0}
    assert len(entries(tmp_path / "cache")) == 3
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no partial files
    folder = store.folder
    assert (folder / "params.json").is_file() and folder.parent == tmp_path / "cache"


def test_float16_halves_the_file_and_float32_is_exact(tmp_path, data, extractor):
    dataset, boxes = data
    half = FeatureStore(tmp_path / "h", extractor)
    full = FeatureStore(tmp_path / "f", extractor, dtype="float32")
    half.compute(dataset, boxes)
    full.compute(dataset, boxes)
    s = dataset[2]
    size = lambda st: st.path(s, boxes[s.id]).stat().st_size  # noqa: E731
    assert size(half) < 0.6 * size(full)
    a, b = half.load(s, boxes[s.id]), full.load(s, boxes[s.id])
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()
    from rcnn.datasets import read_image

    np.testing.assert_array_equal(b, extractor.extract(read_image(s.image_path), boxes[s.id]))


def test_any_parameter_change_is_a_miss(tmp_path, data, extractor):
    dataset, boxes = data
    root = tmp_path / "cache"
    FeatureStore(root, extractor).compute(dataset, boxes)
    other_size = FeatureExtractor(extractor.config, crop_size=32)
    other_weights = FeatureExtractor(extractor.config, seed=1)
    tuned = FeatureExtractor(extractor.config)
    state = {k: v.clone() for k, v in tuned.module.state_dict().items()}
    state["layer4.1.bn2.bias"] += 1
    tuned.load_state_dict(state)
    moved = {**boxes, "im0": boxes["im0"] + np.float32([1, 0, 1, 0])}  # one box's x moved by a pixel
    for store, b in [
        (FeatureStore(root, extractor), moved),
        (FeatureStore(root, other_size), boxes),
        (FeatureStore(root, other_weights), boxes),
        (FeatureStore(root, tuned), boxes),
    ]:
        assert store.compute(dataset.subset(["im0"]), b)["computed"] == 1
    assert len(entries(root)) == 3 + 4
    # the image's content is part of the key: a rewritten image is a miss
    store = FeatureStore(root, extractor)
    cv2.imwrite(str(dataset[0].image_path), np.zeros((60, 80, 3), np.uint8))
    assert store.compute(dataset, boxes) == {"computed": 1, "cached": 2, "crops": 4, "damaged": 0}


def test_interrupted_compute_resumes_without_partial_files(tmp_path, data, extractor):
    dataset, boxes = data
    store = FeatureStore(tmp_path / "cache", extractor)

    def boxes_then_fail(sample):
        if sample.id == "im2":
            raise KeyboardInterrupt  # the user hits Ctrl-C while the list of work is built
        return boxes[sample.id]

    with pytest.raises(KeyboardInterrupt):
        store.compute(dataset, boxes_then_fail)
    store.compute(dataset.subset(["im0"]), boxes)

    class Flaky:  # an extractor that dies on the second image, as a killed process would
        params, calls = extractor.params, 0

        def extract(self, image, b):
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise KeyboardInterrupt
            return extractor.extract(image, b)

    with pytest.raises(KeyboardInterrupt):
        FeatureStore(tmp_path / "cache", Flaky()).compute(dataset, boxes)
    paths = [store.path(s, boxes[s.id]).name for s in dataset]
    assert entries(tmp_path / "cache") == sorted(paths[:2])
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    assert store.compute(dataset, boxes) == {"computed": 1, "cached": 2, "crops": 6, "damaged": 0}


def test_load_errors_name_the_problem(tmp_path, data, extractor):
    dataset, boxes = data
    store = FeatureStore(tmp_path / "cache", extractor)
    with pytest.raises(RcnnError, match="no cached features for sample 'im0'.*run FeatureStore.compute"):
        store.load(dataset[0], boxes["im0"])
    store.compute(dataset.subset(["im0"]), boxes)
    with pytest.raises(RcnnError, match="no cached features for sample 'im0' on these 2 boxes"):
        store.load(dataset[0], boxes["im0"][:2])
    with pytest.raises(ValueError):
        FeatureStore(tmp_path, extractor, dtype="int8")


def test_features_float16_cannot_hold_are_stored_as_float32(tmp_path, data):
    """Random MobileNetV2 weights give features near 1e-9, which float16 would flush to zero."""
    dataset, boxes = data
    tiny = FeatureExtractor(backbone="mobilenet_v2", weights="random", crop_size=32, padding=2, frozen=False)
    store = FeatureStore(tmp_path / "cache", tiny)
    store.compute(dataset, boxes)
    from rcnn.datasets import read_image

    s = dataset[0]
    direct = tiny.extract(read_image(s.image_path), boxes[s.id])
    assert 0 < np.abs(direct).max() < 1e-4  # the case at hand: under float16's normal range
    loaded = store.load(s, boxes[s.id])
    np.testing.assert_allclose(loaded, direct, rtol=0, atol=1e-3 * np.abs(direct).max())
    assert loaded.std(0).max() > 0  # the boxes still differ


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_entry_is_reported_and_recomputed(tmp_path, data, extractor, damage, capsys):
    """A cut-off, overwritten or empty entry is not a cache hit (compute) and not fatal (load):
    it is reported, counted and recomputed to the same features."""
    dataset, boxes = data
    store = FeatureStore(tmp_path / "cache", extractor)
    store.compute(dataset, boxes)
    s = dataset[1]
    expected = store.load(s, boxes[s.id])
    path = store.path(s, boxes[s.id])
    raw = path.read_bytes()
    path.write_bytes({"truncate": raw[: len(raw) // 2], "garbage": b"x" * 100, "empty": b""}[damage])
    fresh = FeatureStore(tmp_path / "cache", extractor)
    assert fresh.compute(dataset, boxes) == {"computed": 1, "cached": 2, "crops": 5, "damaged": 1}
    np.testing.assert_array_equal(fresh.load(s, boxes[s.id]), expected)
    assert "damaged cache entry" in capsys.readouterr().err
    # damaged between compute and load: load recomputes it
    path.write_bytes(raw[:-10])
    np.testing.assert_array_equal(FeatureStore(tmp_path / "cache", extractor).load(s, boxes[s.id]), expected)
