"""The synthetic shapes set: deterministic bytes, sane content, a loadable VOC root."""

import json

import numpy as np
import pytest

from rcnn.datasets import load_dataset, read_image
from rcnn.datasets.synthetic import CLASSES, make_synthetic, render
from rcnn.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    return out, make_synthetic(out, 30, seed=3, size=128, test_fraction=0.2)


def test_same_seed_same_bytes(synth, tmp_path):
    out, _ = synth
    make_synthetic(tmp_path / "again", 30, seed=3, size=128, test_fraction=0.2)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for f in files:
        assert (out / f).read_bytes() == (tmp_path / "again" / f).read_bytes(), f
    make_synthetic(tmp_path / "other", 30, seed=4, size=128)
    assert (out / "JPEGImages" / "000000.jpg").read_bytes() != (
        tmp_path / "other" / "JPEGImages" / "000000.jpg"
    ).read_bytes()


def test_layout_and_splits(synth):
    out, ds = synth
    split = lambda name: (out / "ImageSets" / "Main" / f"{name}.txt").read_text().split()  # noqa: E731
    train, test = split("train"), split("test")
    assert len(test) == 6 and len(train) == 24 and not set(train) & set(test)
    assert split("trainval") == train
    assert sorted(train + test) == [s.id for s in ds]
    loaded = load_dataset(out, split="train")
    assert [s.id for s in loaded] == train and not loaded.skipped and not loaded.repairs


def test_content_is_sane(synth):
    _, ds = synth
    assert ds.classes == CLASSES
    counts = np.bincount(np.concatenate([s.labels for s in ds]), minlength=5)
    assert counts[0] == 0 and (counts[1:] > 0).all()  # every class present, no background label
    sizes = []
    for s in ds:
        assert 0 <= len(s.boxes) <= 5
        assert (s.boxes[:, :2] >= 0).all() and (s.boxes[:, 2] <= 128).all() and (s.boxes[:, 3] <= 128).all()
        assert (s.boxes[:, 2:] > s.boxes[:, :2]).all()
        sizes += (s.boxes[:, 2:] - s.boxes[:, :2]).max(1).tolist()
        image = read_image(s.image_path)
        assert image.shape == (128, 128, 3)
    assert 0.08 * 128 < min(sizes) and max(sizes) < 0.6 * 128


def test_object_counts_span_zero_to_five():
    rng = np.random.default_rng(11)
    counts = set()
    for _ in range(40):
        image, boxes, labels = render(rng, 96)
        assert image.dtype == np.uint8 and image.shape == (96, 96, 3)
        assert len(boxes) == len(labels) and set(labels.tolist()) <= {1, 2, 3, 4}
        counts.add(len(labels))
    assert {0, 5} <= counts


def test_reuse_replace_and_refuse(synth, tmp_path):
    out, ds = synth
    again = make_synthetic(out, 30, seed=3, size=128, test_fraction=0.2)  # the same set: reused
    assert [s.id for s in again] == [s.id for s in ds]
    small = make_synthetic(tmp_path / "s", 5, seed=1, size=64)
    assert len(small) == 5
    make_synthetic(tmp_path / "s", 3, seed=1, size=64)  # another synthetic set: replaced
    assert len(list((tmp_path / "s" / "Annotations").glob("*.xml"))) == 3
    assert json.loads((tmp_path / "s" / "synthetic.json").read_text())["images"] == 3
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty"):
        make_synthetic(tmp_path / "mine", 3, seed=1)
    with pytest.raises(ConfigError):
        make_synthetic(tmp_path / "x", 0, seed=1)
