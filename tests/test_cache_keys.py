"""Caches follow the annotations: after an annotation edit, training with the old cache gives
the model that training from an empty cache gives, bit for bit (features keyed by their boxes,
fine-tuning checkpoints by every image's content and annotations)."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from rcnn.datasets import load_dataset
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import RCNN, load_config
from rcnn.errors import DatasetError


def tiny_config(cache_dir, iterations: int = 0):
    return load_config(
        None,
        {
            "proposals": {"method": "sliding_window", "max_boxes": 40},
            "features": {
                "backbone": "resnet18",
                "weights": "random",
                "crop_size": 32,
                "padding": 2,
                "frozen": False,
                "pool": 1,
            },
            "finetune": {
                "iterations": iterations,
                "checkpoint_every": 1,
                "batch_positives": 48,
                "batch_negatives": 16,
                "epoch_iterations": 2,
            },
            "svm": {"positive_iou": 0.7, "C": 0.01},
            "cache_dir": str(cache_dir),
            "workers": 1,
        },
    )


def assert_same_model(a: RCNN, b: RCNN) -> None:
    def same(x, y, where):
        if isinstance(x, dict):
            assert x.keys() == y.keys(), where
            for k in x:
                same(x[k], y[k], f"{where}.{k}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), where
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=where)
        else:
            assert x == y, where

    sa, sb = a.state_dict(), b.state_dict()
    for d in (sa, sb):
        d["config"].pop("cache_dir")
        d.pop("content_hash")  # covers cache_dir too; everything else it covers is compared here
    same(sa, sb, "model")


def edit(root, how: str) -> None:
    """Change one annotation of the VOC root in place: move a box, remove one, relabel one (its
    masks, which would no longer fit the boxes, are removed: boxes-only data)."""
    shutil.rmtree(root / "SegmentationObject")
    for xml in sorted((root / "Annotations").glob("*.xml")):
        tree = ET.parse(xml)
        objects = tree.getroot().findall("object")
        if len(objects) >= 2:
            break
    obj = objects[0]
    if how == "move":
        box = obj.find("bndbox")
        for tag in ("xmin", "xmax"):
            box.find(tag).text = str(int(float(box.find(tag).text)) + 3)
    elif how == "remove":
        tree.getroot().remove(obj)
    else:
        names = [o.find("name").text for o in objects]
        obj.find("name").text = next(n for n in ("circle", "rectangle", "star", "triangle") if n != names[0])
    tree.write(xml)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A tiny synthetic set and a cache filled by training on it (with 2 fine-tuning steps)."""
    root = tmp_path_factory.mktemp("stale")
    make_synthetic(root / "synth", images=10, seed=5, size=128, test_fraction=0.2)
    RCNN(tiny_config(root / "cache", iterations=2)).fit(load_dataset(root / "synth", split="train"))
    return root


@pytest.mark.parametrize("how", ["move", "remove", "relabel"])
def test_edited_annotation_trains_as_from_an_empty_cache(warm, tmp_path, how):
    data, cache = tmp_path / "synth", tmp_path / "cache"
    shutil.copytree(warm / "synth", data)
    shutil.copytree(warm / "cache", cache)
    edit(data, how)
    train = load_dataset(data, split="train", classes=["circle", "rectangle", "star", "triangle"])
    with_old_cache = RCNN(tiny_config(cache, iterations=2)).fit(train)
    from_scratch = RCNN(tiny_config(tmp_path / "empty", iterations=2)).fit(train)
    assert_same_model(with_old_cache, from_scratch)


def test_checkpoint_and_features_are_reused_when_nothing_changed(warm, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(warm / "cache", cache)
    before = sorted(p.name for p in cache.rglob("*") if p.is_file())
    RCNN(tiny_config(cache, iterations=2)).fit(load_dataset(warm / "synth", split="train"))
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == before


def test_training_without_objects_is_refused(tmp_path):
    root = tmp_path / "synth"
    make_synthetic(root, images=3, seed=0, size=96, test_fraction=0.0)
    shutil.rmtree(root / "SegmentationObject")  # masks of the objects removed below
    for xml in (root / "Annotations").glob("*.xml"):
        tree = ET.parse(xml)
        for obj in tree.getroot().findall("object"):
            tree.getroot().remove(obj)
        tree.write(xml)
    empty = load_dataset(root)
    with pytest.raises(DatasetError, match="no annotated objects"):
        RCNN(tiny_config(tmp_path / "cache")).fit(empty)
    full = make_synthetic(tmp_path / "full", images=4, seed=1, size=96, test_fraction=0.0)
    with_unused = load_dataset(tmp_path / "full", classes=[*full.classes, "hexagon"])
    with pytest.raises(DatasetError, match="no training object of class.*'hexagon'"):
        RCNN(tiny_config(tmp_path / "cache")).fit(with_unused)
