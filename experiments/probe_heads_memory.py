"""SVM + box-regression training at the cards scale on synthetic features, streamed.

300 images x 2000 proposals x 1280-D float32 (about 3 GB if all were held), 6 classes.
Prints wall time per stage, peak RSS and the hard negative mining history as JSON.
Run: .venv/bin/python experiments/probe_heads_memory.py [n_images] [n_boxes] [dim]
"""

import json
import resource
import sys
import time

import numpy as np

from rcnn.boxes import box_iou
from rcnn.heads import BoxRegressor, ImageData, SVMConfig, SVMHead
from rcnn.heads.data import LazySequence

N_IMAGES, N_BOXES, DIM, C = 300, 2000, 1280, 6
if len(sys.argv) > 1:
    N_IMAGES, N_BOXES, DIM = (int(a) for a in sys.argv[1:4])
CENTRES = np.maximum(np.random.default_rng(0).normal(0, 1, (C + 1, DIM)), 0).astype(np.float32)


def image(i):
    """Deterministic image `i`: 1-3 gt boxes, proposals around them and at random; features
    a ReLU of the IoU-weighted class centres plus background and noise."""
    rng = np.random.default_rng([7, i])
    g = int(rng.integers(1, 4))
    xy = rng.uniform(0, 300, (g, 2))
    gt = np.concatenate([xy, xy + rng.uniform(60, 200, (g, 2))], 1).astype(np.float32)
    labels = rng.integers(1, C + 1, g)
    near = np.repeat(gt, N_BOXES // 10 // g + 1, 0)[: N_BOXES // 10]
    wh = np.concatenate([near[:, 2:] - near[:, :2]] * 2, 1)
    near = near + rng.normal(0, 0.25, near.shape) * wh
    xy = rng.uniform(0, 450, (N_BOXES - len(near) - g, 2))
    rand = np.concatenate([xy, xy + rng.uniform(10, 250, xy.shape)], 1)
    boxes = np.concatenate([near, rand, gt]).astype(np.float32)  # gt appended, as the detector does
    iou = box_iou(boxes, gt)
    w = np.zeros((len(boxes), C + 1), np.float32)
    np.add.at(w.T, labels, iou.T)
    w[:, 0] = 1 - w[:, 1:].max(1).clip(0, 1)
    feats = np.maximum(w @ CENTRES + rng.normal(0, 0.5, (len(boxes), DIM)).astype(np.float32), 0)
    return ImageData(feats.astype(np.float32), boxes, gt, labels, np.zeros(g, bool))


if __name__ == "__main__":
    t0 = time.perf_counter()
    svm = SVMHead(C, SVMConfig()).fit(LazySequence(N_IMAGES, image))
    t1 = time.perf_counter()
    reg = BoxRegressor(C).fit(LazySequence(N_IMAGES, image))
    t2 = time.perf_counter()
    test = [image(N_IMAGES + k) for k in range(20)]
    correct = total = 0
    for d in test:
        s = svm.decision_function(d.features[-len(d.gt_labels) :])
        correct += int((s.argmax(1) + 1 == d.gt_labels).sum())
        total += len(d.gt_labels)
    print(
        json.dumps(
            {
                "images": N_IMAGES,
                "boxes": N_BOXES,
                "dim": DIM,
                "svm_fit_s": round(t1 - t0, 1),
                "regression_fit_s": round(t2 - t1, 1),
                "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                "svm_history": svm.history_,
                "liblinear_iterations": svm.n_iter_,
                "regression_pairs": reg.num_pairs_.tolist(),
                "test_gt_top1": correct / total,
            }
        )
    )
