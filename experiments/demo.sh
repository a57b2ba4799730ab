#!/usr/bin/env bash
# `make demo`: the whole R-CNN pipeline on the built-in synthetic set, end to end:
# generate -> propose (+ recall report) -> train -> detect (+ drawings) -> evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
RCNN=.venv/bin/rcnn
OUT=data/demo
CONFIG=experiments/configs/demo.toml
mkdir -p "$OUT"

echo "== 1. synthetic dataset (data/synth: 200 images, 256 px, VOC layout)"
$RCNN data synth data/synth --images 200 --seed 0
$RCNN data check data/synth

echo "== 2. Selective Search proposals on the test split, and their recall"
# the cache may hold other proposers' folders too: recall reads the one propose names after "->"
FOLDER=$($RCNN propose data/synth --split test --method selective_search --max-boxes 500 --out data/cache/proposals | tee /dev/stderr | sed -n 's/.*-> //p')
$RCNN recall data/synth --split test --proposals "$FOLDER" --out "$OUT/recall.json"

echo "== 3. train: proposals, CNN features, SVMs with hard negative mining, box regression"
$RCNN train data/synth --split train --config "$CONFIG" --out "$OUT/model.pt"

echo "== 4. detect on the test split, drawing a few images"
$RCNN detect "$OUT/model.pt" data/synth --split test --out "$OUT/detections.json" --draw "$OUT/drawn" --draw-limit 8

echo "== 5. evaluate"
$RCNN evaluate --gt data/synth --split test --detections "$OUT/detections.json" --metric voc --out "$OUT/eval-voc.json"
$RCNN evaluate --gt data/synth --split test --detections "$OUT/detections.json" --metric coco --out "$OUT/eval-coco.json"

echo "== 6. report: AP tables, PR curves, false-positive types, gallery (from the caches)"
$RCNN report "$OUT/model.pt" data/synth --split test --out "$OUT/report" --detections "$OUT/detections.json"
echo "demo done: model $OUT/model.pt, detections $OUT/detections.json, drawings $OUT/drawn/, reports $OUT/eval-*.json and $OUT/report/report.md"
