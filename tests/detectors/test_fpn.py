"""Faster R-CNN with a feature pyramid (``[backbone] fpn = true``): the levels' strides and
anchors on a padded image, the frozen-stem cache and the TorchScript trunk giving the same
maps, training to a real accuracy, the model file, and the explain page. Real computations
on small synthetic sets, on the CPU."""

import numpy as np
import pytest
import torch
from test_faster_rcnn import FASTER  # the small Faster R-CNN of tests/test_faster_rcnn.py

from rcnn.datasets import read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import FasterRCNN, build_detector, load_config, load_model
from rcnn.detectors.faster_rcnn import _image_list, _training_settings, build_network
from rcnn.errors import ConfigError
from rcnn.evaluation import evaluate_voc
from rcnn.features.extractor import freeze_for_inference
from rcnn.features.pyramid import PyramidTrunk
from rcnn.reports.explain import FASTER_RCNN_PICTURES, explain

SLOW_FIXTURES = ("fitted",)  # trained to real accuracy: the tests that use it run in the slow tier (conftest.py)

FPN = {"backbone": {"fpn": True}, "train": {"iterations": 100}}


def config(tmp_path, **changes):
    """`FASTER` caching under `tmp_path`, with `changes` merged in (tables key by key)."""
    return load_config(overrides=[FASTER, {"cache_dir": str(tmp_path / "cache")}, changes])


@pytest.fixture(scope="module")
def fitted(synth60, tmp_path_factory):
    """A small FPN Faster R-CNN (100 iterations, about 30 s on one thread) and its file."""
    tmp = tmp_path_factory.mktemp("fpn")
    model = build_detector(config(tmp, **FPN)).fit(synth60[0])
    return model, model.save(tmp / "fpn.pt")


def _network(tmp_path, pool=False, sizes=(32, 64)):
    c = config(tmp_path, backbone={"fpn": True, "fpn_pool": pool}, anchors={"sizes": list(sizes)})
    return build_network(c, 3)[0], c


# -- the pyramid's maps and anchors -----------------------------------------------------------------


@pytest.mark.parametrize("pool", [False, True])
def test_levels_have_strides_8_16_32_and_the_padded_image_puts_anchors_on_the_cells(tmp_path, pool):
    sizes = (32, 64, 128) if pool else (32, 64)
    net, _ = _network(tmp_path, pool, sizes)
    assert isinstance(net.backbone, PyramidTrunk)
    size = (200, 150)  # not a multiple of 32: padded to 224 x 160
    with torch.inference_mode():
        maps = net.backbone(torch.randn(1, 3, *size))
    strides = {"0": 8, "1": 16, "pool": 32}
    assert list(maps) == ["0", "1", "pool"][: len(sizes)]
    for k, m in maps.items():
        assert m.shape == (1, 128, 224 // strides[k], 160 // strides[k]), k  # exactly the padded size / stride
    images = _image_list(maps, size)
    assert tuple(images.tensors.shape[-2:]) == (224, 160) and images.image_sizes == [size]  # padded; the true size
    anchors = net.rpn.anchor_generator(images, list(maps.values()))[0].numpy()
    at = 0
    for (k, m), side in zip(maps.items(), sizes):
        h, w = m.shape[-2:]
        level = anchors[at : at + h * w * 3].reshape(h, w, 3, 4)
        at += h * w * 3
        centres = (level[..., :2] + level[..., 2:]) / 2  # [h, w, 3, (x, y)]
        s = strides[k]
        expected = np.stack(np.meshgrid(np.arange(w) * s, np.arange(h) * s), -1)[:, :, None]
        np.testing.assert_array_equal(centres, np.broadcast_to(expected, centres.shape))  # one cell apart: the stride
        square = level[0, 0, 1]  # ratio 1: the level's one size
        assert square[2] - square[0] == side, k
    assert at == len(anchors)
    # the RoI head pools from "0" and "1" at their strides, never from "pool"
    pool_ = net.roi_heads.box_roi_pool
    assert pool_.featmap_names == ["0", "1"] and pool_.scales == [1 / 8, 1 / 16]


def test_the_frozen_stem_and_the_torchscript_trunk_give_the_same_maps(tmp_path):
    from rcnn.detectors.faster_rcnn import _Trainer

    net, c = _network(tmp_path, pool=True, sizes=(32, 64, 128))
    trunk = net.backbone
    for name, p in trunk.named_parameters():
        p.requires_grad_(not name.startswith(c.train.frozen))
    stem, rest = _Trainer(net, c, torch.device("cpu"), None)._split(trunk)
    assert stem is not None  # blocks 0-10 cached, block 6's stride-8 map among their outputs
    x = torch.randn(1, 3, 170, 260)
    with torch.no_grad():
        whole = trunk(x)
        cut = rest(stem(x))
        frozen = freeze_for_inference(trunk, x, torch.contiguous_format)(x)
    for k in whole:
        assert torch.equal(whole[k], cut[k]), k
        assert torch.allclose(whole[k], frozen[k], atol=1e-4), k


def test_the_stem_cache_trains_to_the_same_weights(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=4, seed=3, size=128, test_fraction=0.0)
    small = dict(scale=128, max_size=128, backbone={"fpn": True, "fpn_pool": True})
    runs = [
        FasterRCNN(
            config(tmp_path / str(cache), **small, train={"iterations": 3, "rois_per_image": 16, "cache_frozen": cache})
        ).fit(data)
        for cache in (True, False)
    ]
    assert len(runs[0].config.anchors.sizes) == 3  # one per level, chosen
    assert runs[0].history_ == runs[1].history_
    for (name, a), b in zip(runs[0].net_.state_dict().items(), runs[1].net_.state_dict().values()):
        assert torch.equal(a, b), name


# -- the config ---------------------------------------------------------------------------------------


def test_fpn_is_off_by_default_and_checked(tmp_path):
    plain = config(tmp_path)
    assert plain.backbone.fpn is False and plain.backbone.levels == ("0",)
    assert "fpn" not in _training_settings(plain)["backbone"]  # the single map's checkpoints keep their keys
    fpn = config(tmp_path, backbone={"fpn": True})
    assert fpn.backbone.levels == ("0", "1") and _training_settings(fpn)["backbone"]["fpn"] is True
    with pytest.raises(ConfigError, match="backbone.name"):
        config(tmp_path, backbone={"fpn": True, "name": "resnet18"})
    with pytest.raises(ConfigError, match="anchors.sizes"):
        config(tmp_path, backbone={"fpn": True}, anchors={"sizes": [32, 64, 128]})
    assert config(tmp_path, backbone={"fpn": True}, anchors={"sizes": [16, 32, 64, 128]})  # two per level
    with pytest.raises(ConfigError, match="fpn"):  # Fast R-CNN has one map: no such key
        load_config(overrides={"detector": "fast_rcnn", "backbone": {"fpn": True}})


# -- training, the model file, the explain page -------------------------------------------------------


def test_fit_reaches_real_accuracy_and_the_model_file_rebuilds_it(fitted, synth60):
    model, path = fitted
    assert isinstance(model.net_.backbone, PyramidTrunk)
    sizes = model.config.anchors.sizes
    assert len(sizes) == 2 and sizes[0] < sizes[1]  # chosen: one octave per level, the smaller on stride 8
    h = model.history_
    assert np.mean(h["rpn_objectness"][-20:]) < 0.3 * np.mean(h["rpn_objectness"][:10])
    mAP = evaluate_voc(synth60[1], model.detect_dataset(synth60[1]), iou_threshold=0.5).mAP
    assert mAP > 0.3, mAP  # chance is near 0; 0.49 here
    state = torch.load(path, weights_only=True)
    assert state["config"]["backbone"]["fpn"] is True and any(k.startswith("backbone.fpn.") for k in state["net"])
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded.net_.backbone, PyramidTrunk)
    for image in (read_image(s.image_path) for s in synth60[1].samples[:2]):
        a, b = model.detect(image), loaded.detect(image)
        assert len(a) > 0
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)
        assert np.array_equal(model.propose(image), loaded.propose(image))
    timings = {}
    assert len(loaded.propose(synth60[1][0].image_path, max_boxes=20, timings=timings)) <= 20
    assert set(timings) == {"trunk", "rpn"}


def test_explain_draws_the_stride_16_level_of_a_pyramid(fitted, synth60, tmp_path):
    model, _ = fitted
    sample = next(s for s in synth60[1] if len(s.boxes) >= 2)
    image = read_image(sample.image_path)
    result = explain(model, image, tmp_path / "page", sample.boxes, sample.labels)
    assert result["pictures"] == FASTER_RCNN_PICTURES
    index = result["index"].read_text()
    assert "feature pyramid" in index and "24 x 24, 12 x 12 cells" in index
    assert np.array_equal(result["proposals"], model.propose(image))
    d = model.detect(image)
    assert np.allclose(result["detections"].boxes, d.boxes) and np.array_equal(result["detections"].scores, d.scores)
    trace = result["trace"]
    anchors, objectness = trace.anchors.boxes, trace.anchors.objectness
    assert objectness.shape == (3, 12, 12) and anchors.shape == (12, 12, 3, 4)  # the stride-16 level
    assert trace.anchors.total == (24 * 24 + 12 * 12) * 3  # both levels' anchors
    assert [level[:2] for level in trace.feature_map.levels] == [("0", 8), ("1", 16)]
    side = model.config.anchors.sizes[1]
    assert anchors[0, 0, 1, 2] - anchors[0, 0, 1, 0] == side and anchors[0, 1, 1, 0] - anchors[0, 0, 1, 0] == 16
    assert f"**{12 * 12 * 3} anchors**" in index and f"({side} px in the rescaled image)" in index


def test_a_model_file_saved_before_the_pyramid_existed_loads_as_the_single_map(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=4, seed=3, size=128, test_fraction=0.0)
    small = dict(scale=128, max_size=128, train={"iterations": 2, "rois_per_image": 16})
    model = FasterRCNN(config(tmp_path, **small)).fit(data)
    state = torch.load(model.save(tmp_path / "new.pt"), weights_only=True)
    for key in ("fpn", "fpn_channels", "fpn_pool"):  # what an older file's [backbone] lacks
        del state["config"]["backbone"][key]
    state.pop("content_hash")  # nor had older files the content hash
    torch.save(state, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", device="cpu")
    assert loaded.config.backbone.fpn is False and not isinstance(loaded.net_.backbone, PyramidTrunk)
    image = read_image(data[0].image_path)
    assert np.array_equal(model.propose(image), loaded.propose(image))
