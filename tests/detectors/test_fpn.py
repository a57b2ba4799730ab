"""Faster and Fast R-CNN with a feature pyramid (``[backbone] fpn = true``): the levels'
strides and anchors on a padded image, each RoI pooled from the level its size maps to, the
frozen-stem cache and the TorchScript trunk giving the same maps, training to a real
accuracy, the model file (old files without the pyramid's keys included), the trace and the
explain page. Real computations on small synthetic sets, on the CPU."""

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from test_fast_rcnn import FAST  # the small Fast R-CNN of tests/test_fast_rcnn.py
from test_faster_rcnn import FASTER  # the small Faster R-CNN of tests/test_faster_rcnn.py
from torchvision import ops

from rcnn.config import to_dict
from rcnn.datasets import load_dataset, read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import FasterRCNN, FastRCNN, build_detector, load_config, load_model
from rcnn.detectors.base import training_key
from rcnn.detectors.faster_rcnn import _image_list, _training_settings, build_network
from rcnn.errors import ConfigError
from rcnn.evaluation import evaluate_voc
from rcnn.features.extractor import freeze_for_inference
from rcnn.features.pyramid import PyramidBackboneConfig, PyramidPooler, PyramidTrunk, build_pyramid_trunk
from rcnn.features.roi import BackboneConfig, RoIConfig
from rcnn.heads.fast_rcnn import FastRCNNTrainer
from rcnn.heads.roi_trainer import train_settings
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


# -- Fast R-CNN with the pyramid ----------------------------------------------------------------------


def fast_config(tmp_path, **changes):
    """`FAST` at 128 px, caching under `tmp_path`, with `changes` merged in (tables key by key)."""
    small = {"cache_dir": str(tmp_path / "cache"), "workers": 1, "scale": 128, "max_size": 128}
    return load_config(overrides=[FAST, small, changes])


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """``(train, test)``: 24 synthetic images of 128 px (18 train, 6 test)."""
    root = tmp_path_factory.mktemp("fast-fpn-set") / "synth"
    make_synthetic(root, images=24, seed=5, size=128, test_fraction=0.25)
    train = load_dataset(root, split="train")
    return train, load_dataset(root, split="test", classes=train.classes)


@pytest.fixture(scope="module")
def fast_fpn(tiny_set, tmp_path_factory):
    """A tiny Fast R-CNN with the pyramid: 80 iterations on 18 images (about 10 s on one thread)."""
    tmp = tmp_path_factory.mktemp("fast-fpn")
    c = fast_config(tmp, backbone={"fpn": True}, train={"iterations": 80, "rois_per_image": 32})
    return FastRCNN(c).fit(tiny_set[0])


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """4 synthetic images of 128 px, all for training."""
    return make_synthetic(tmp_path_factory.mktemp("four") / "synth", images=4, seed=3, size=128, test_fraction=0.0)


def test_the_pyramid_pooler_takes_small_boxes_from_stride_8_and_large_ones_from_stride_16():
    with torch.random.fork_rng(devices=[]):  # the pyramid's new layers and the image: the same whatever ran before
        torch.manual_seed(0)
        trunk, _ = build_pyramid_trunk(PyramidBackboneConfig(weights="random", fpn=True), out_channels=8)
        image = torch.randn(1, 3, 320, 320)
    with torch.inference_mode():
        maps = trunk(image)
    sides = [40, 150, 223, 224, 300]  # the FPN rule: floor(4 + log2(side / 224)), clamped to levels 3 and 4
    boxes = torch.tensor([[10.0, 12.0, 10.0 + s, 12.0 + s] for s in sides])
    pooler = PyramidPooler(RoIConfig(output_size=4, sampling_ratio=2))
    assert pooler.level_of(boxes).tolist() == [0, 0, 0, 1, 1]
    pooled = pooler(maps, [boxes])
    assert pooled.shape == (5, 8, 4, 4)
    for i, level in enumerate([0, 0, 0, 1, 1]):
        own, other = (("0", 8), ("1", 16))[level], (("0", 8), ("1", 16))[1 - level]
        expected = ops.roi_align(maps[own[0]], [boxes[i : i + 1]], 4, 1.0 / own[1], 2)
        torch.testing.assert_close(pooled[i : i + 1], expected)  # from its own level, at that level's scale
        elsewhere = ops.roi_align(maps[other[0]], [boxes[i : i + 1]], 4, 1.0 / other[1], 2)
        assert (pooled[i : i + 1] - elsewhere).abs().max() > 1e-3, i  # not what the other level gives
    with pytest.raises(ConfigError, match="roi.mode"):
        PyramidPooler(RoIConfig(mode="pool"))


def test_fast_rcnn_fpn_is_off_by_default_checked_and_keeps_the_single_maps_checkpoints(tmp_path, four):
    plain = fast_config(tmp_path)
    assert plain.backbone.fpn is False and plain.backbone.levels == ("0",)
    fpn = fast_config(tmp_path, backbone={"fpn": True, "fpn_channels": 64})
    assert fpn.backbone.levels == ("0", "1") and fpn.backbone.fpn_channels == 64
    with pytest.raises(ConfigError, match="roi.mode"):  # RoI max pooling has no multi-level form in torchvision
        fast_config(tmp_path, backbone={"fpn": True}, roi={"mode": "pool"})
    assert fast_config(tmp_path, roi={"mode": "pool"}).roi.mode == "pool"  # the single map still has it
    with pytest.raises(ConfigError, match="backbone.fpn_pool"):  # the stride-32 level only feeds an RPN
        fast_config(tmp_path, backbone={"fpn": True, "fpn_pool": True})
    with pytest.raises(ConfigError, match="backbone.name"):
        fast_config(tmp_path, backbone={"fpn": True, "name": "resnet18"})
    with pytest.raises(ConfigError, match="fpn_channels"):
        fast_config(tmp_path, backbone={"fpn": True, "fpn_channels": 0})
    # the single map's checkpoint key is the one computed before the pyramid's fields existed
    model = FastRCNN(plain)
    store = model.proposal_store()
    old_backbone = BackboneConfig(**{f.name: getattr(plain.backbone, f.name) for f in fields(BackboneConfig)})
    params = {
        "fast_rcnn": {
            "backbone": to_dict(old_backbone),
            "roi": to_dict(plain.roi),
            "head": to_dict(plain.head),
            "train": train_settings(plain.train),
        },
        "scale": plain.scale,
        "max_size": plain.max_size,
        "proposals": store.folder.name,
    }
    assert model.checkpoint_path(four, store).stem == training_key(params, four)
    assert FastRCNN(replace(plain, backbone=replace(plain.backbone, fpn=True))).checkpoint_path(four, store) != (
        model.checkpoint_path(four, store)
    )


def test_fast_rcnn_with_the_pyramid_reaches_real_accuracy_and_the_model_file_rebuilds_it(fast_fpn, tiny_set, tmp_path):
    model, (_, test) = fast_fpn, tiny_set
    assert isinstance(model.trunk_, PyramidTrunk) and model.channels_ == 128
    assert isinstance(model.pooler_, PyramidPooler)
    mAP = evaluate_voc(test, model.detect_dataset(test), iou_threshold=0.5).mAP
    assert mAP > 0.15, mAP  # chance is near 0; 0.39 when written
    path = model.save(tmp_path / "fast_fpn.pt")
    state = torch.load(path, weights_only=True)
    assert state["config"]["backbone"]["fpn"] is True and any(k.startswith("fpn.") for k in state["trunk"])
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded.trunk_, PyramidTrunk) and isinstance(loaded.pooler_, PyramidPooler)
    store = model.proposal_store()
    store.compute(test, workers=1)  # not left to another test to have done
    for sample in test.samples[:3]:
        proposals = store.load(sample)
        a, b = model.detect(sample.image_path, proposals=proposals), loaded.detect(sample.image_path, proposals)
        assert len(a) > 0
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)


def test_fast_rcnn_pools_a_proposal_from_the_stride_8_level_and_traces_the_stride_16_one(fast_fpn, tiny_set, tmp_path):
    model, sample = fast_fpn, tiny_set[1][0]
    image = read_image(sample.image_path)  # 128 px: rescaled by 1
    boxes = np.array([[10, 20, 50, 60], [4, 8, 120, 124]], np.float32)  # sides 40 and 116, both under 224
    with torch.inference_mode():
        *_, maps, factor, pooled = model._network(image, boxes)
        rois = [torch.from_numpy(boxes * factor)]
        eight = ops.roi_align(maps["0"], rois, 7, 1 / 8, model.config.roi.sampling_ratio)
        sixteen = ops.roi_align(maps["1"], rois, 7, 1 / 16, model.config.roi.sampling_ratio)
    assert factor == 1.0 and pooled.shape == (2, 128, 7, 7)
    torch.testing.assert_close(pooled, eight)
    assert (pooled - sixteen).abs().max() > 1e-2  # the stride-16 map alone would pool other features
    store = model.proposal_store()
    store.compute(tiny_set[1].subset([sample.id]), workers=1)
    proposals = store.load(sample)
    trace = model.trace(image, proposals)
    fm = trace.feature_map
    assert (fm.stride, fm.channels, fm.rows, fm.cols) == (16, 128, 8, 8)
    assert fm.levels == (("0", 8, 128, 16, 16), ("1", 16, 128, 8, 8))
    assert trace.pooled.block.shape == (128, 7, 7)
    d = model.detect(image, proposals)
    assert np.array_equal(trace.detections.boxes, d.boxes) and np.array_equal(trace.detections.scores, d.scores)
    index = explain(model, image, tmp_path / "page", sample.boxes, sample.labels)["index"].read_text()
    assert "feature pyramid" in index and "16 x 16, 8 x 8 cells" in index
    svd = FastRCNN.from_state(model.state_dict(), "memory").use_config(replace(model.config, svd_rank=32))
    assert svd.net_head_.fc[0][0].weight.shape == (32, 128 * 7 * 7)
    full, low = model.trace(image, proposals).scores, svd.trace(image, proposals).scores
    assert np.abs(full - low).mean() < 0.05 and not np.array_equal(full, low)


def test_fast_rcnn_with_the_pyramid_caches_its_frozen_stem_to_the_same_weights(tmp_path, four):
    train = {"iterations": 3, "rois_per_image": 16}
    runs = [
        FastRCNN(
            fast_config(tmp_path / str(cache), backbone={"fpn": True}, train={**train, "cache_frozen": cache})
        ).fit(four)
        for cache in (True, False)
    ]
    trunk, c = runs[0].trunk_, runs[0].config
    for name, p in trunk.named_parameters():
        p.requires_grad_(not name.startswith(c.train.frozen))
    stem, _ = FastRCNNTrainer(c.train, runs[0].pooler_, c.scale, c.max_size)._split(trunk)
    assert stem is not None  # the first 11 blocks run once per image and flip, block 6's stride-8 map among them
    assert runs[0].history_ == runs[1].history_
    for part in ("trunk_", "head_"):
        a, b = getattr(runs[0], part).state_dict(), getattr(runs[1], part).state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), name


def test_fast_rcnn_svms_on_the_pyramids_features_round_trip(tmp_path, four):
    c = fast_config(tmp_path, backbone={"fpn": True}, classifier="svm", train={"iterations": 3, "rois_per_image": 16})
    model = FastRCNN(c).fit(four)
    assert model.svm_ is not None and model.svm_.weights_.shape == (256, len(four.classes))
    loaded = load_model(model.save(tmp_path / "svm.pt"), device="cpu")
    assert isinstance(loaded.trunk_, PyramidTrunk) and loaded.svm_ is not None
    proposals = model.proposal_store().load(four[0])
    a, b = model.detect(four[0].image_path, proposals), loaded.detect(four[0].image_path, proposals)
    assert len(a) > 0 and np.array_equal(a.scores, b.scores) and np.array_equal(a.boxes, b.boxes)
    assert (a.scores < 1).all() and model.trace(four[0].image_path, proposals).score_name == "SVM margin"


def test_a_fast_rcnn_file_saved_before_the_pyramid_existed_loads_as_the_single_map(tmp_path, four):
    model = FastRCNN(fast_config(tmp_path, train={"iterations": 2, "rois_per_image": 16})).fit(four)
    state = torch.load(model.save(tmp_path / "new.pt"), weights_only=True)
    for key in ("fpn", "fpn_channels", "fpn_pool"):  # what an older file's [backbone] lacks
        del state["config"]["backbone"][key]
    state.pop("content_hash")  # edited by hand: the hash would stop it
    torch.save(state, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", device="cpu")
    assert loaded.config.backbone.fpn is False and not isinstance(loaded.trunk_, PyramidTrunk)
    proposals = model.proposal_store().load(four[0])
    a, b = model.detect(four[0].image_path, proposals), loaded.detect(four[0].image_path, proposals)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
