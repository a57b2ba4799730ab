"""`make bench-dense` (experiments/bench_dense.py) end to end on a tiny setting: Faster R-CNN,
SSD and CenterNet trained for two steps on two synthetic images and YOLO from a model file
(`--models`, trained at another size), timed at 96 px on two others; the table holds all four,
with positive times and ratios that are the times' ratios."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import bench_dense  # noqa: E402

from rcnn.datasets.synthetic import make_synthetic  # noqa: E402
from rcnn.detectors import build_detector, load_config  # noqa: E402

TINY = [
    "--synthetic",
    "--images",
    "2",
    "--train-images",
    "2",
    "--iterations",
    "2",
    "--scale",
    "96",
    "--max-size",
    "128",
]


def test_bench_dense_tiny(tmp_path, capsys):
    synth = make_synthetic(tmp_path / "synth", images=4, seed=0, size=128, test_fraction=0)
    overrides = {"cache_dir": str(tmp_path / "cache"), "scale": 64, "max_size": 64, "train": {"iterations": 2}}
    yolo = build_detector(load_config(ROOT / "experiments/configs/yolo_cards.toml", overrides)).fit(synth)
    yolo.save(tmp_path / "yolo.pt")
    result = bench_dense.main([*TINY, "--models", f"yolo={tmp_path / 'yolo.pt'}"])
    rows = result["rows"]
    assert list(rows) == ["faster", "yolo", "ssd", "centernet"]
    assert result["images"] == 2 and (result["scale"], result["max_size"]) == (96, 128)
    ref = rows["faster"]
    for name, r in rows.items():
        assert len(r["seconds"]) == 2 and all(s > 0 for s in r["seconds"]), name
        assert r["median"] > 0 and r["mean"] > 0
        assert math.isclose(r["ratio_median"], r["median"] / ref["median"])
        assert math.isclose(r["ratio_mean"], r["mean"] / ref["mean"])
        assert r["candidates"] >= r["detections"] >= 0
        # the stages split detect's time: their sum is within what the whole call took
        assert {"trunk", "head", "nms"} <= set(r["stages"])
        assert 0 < sum(r["stages"].values()) <= r["mean"] * 1.001
    assert "rpn" in ref["stages"] and ref["ratio_median"] == 1.0
    v = result["verdict"]
    assert v["ssd_faster_than_faster_rcnn"] == (rows["ssd"]["median"] < ref["median"])
    assert v["centernet_faster_than_faster_rcnn"] == (rows["centernet"]["median"] < ref["median"])
    assert v["yolo_fastest"] == (v["fastest"] == "yolo")
    assert rows[v["fastest"]]["median"] == min(r["median"] for r in rows.values())
    faster, loaded, ssd, centernet = result["models"]
    assert all("trained here: 2 iterations" in line for line in (faster, ssd, centernet))
    assert loaded == f"YOLO loaded from {tmp_path / 'yolo.pt'} (trained at 64/64)"

    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 4  # the header, its rule and a row per detector
    for r in rows.values():
        row = next(line for line in table if line.startswith(f"| {r['title']} |"))
        assert f"{r['ratio_median']:.2f}x" in row
    for line in ("SSD faster than Faster R-CNN: ", "CenterNet faster than Faster R-CNN: ", "YOLO the fastest: "):
        assert line in printed


def test_models_argument_is_checked():
    with pytest.raises(SystemExit):
        bench_dense.main(["--models", "rcnn=x.pt"])
    with pytest.raises(SystemExit):
        bench_dense.main(["--models", "yolo"])
