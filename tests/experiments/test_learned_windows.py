"""The windows-vs-proposals report's section "Learned windows against learned proposals"
(experiments/windows_vs_proposals.py `learned_section`) from hand-made family results: its
table, its conclusion following the numbers, and one line where the dense rows are missing."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import windows_vs_proposals as wvp  # noqa: E402


def _row(arm, detector, mAP, steps, seconds):
    return {
        "arm": arm,
        "detector": detector,
        "mAP50": mAP,
        "coco_AP": mAP / 2,
        "train_seconds": 100.0,
        "total_seconds": seconds,
        "boxes_scored": sum(steps.values()),
        "boxes_scored_steps": steps,
    }


def _family(yolo_map: float = 0.70) -> dict:
    rows = [
        _row("R-CNN, SVMs", "rcnn", 0.9, {"proposals": 2000}, 1.0),  # not a learned arm: left out
        _row("Faster R-CNN", "faster_rcnn", 0.80, {"anchors": 4800, "proposals": 300}, 0.20),
        _row("YOLO", "yolo", yolo_map, {"grid boxes": 50}, 0.05),
        _row("SSD", "ssd", 0.60, {"default boxes": 1000}, 0.06),
    ]
    train = {"iterations": 400, "images_per_batch": 2}
    arms = [r["arm"] for r in rows]
    return {
        "meta": {},
        "synthetic": {
            "rows": rows,
            "configs": {a: {"train": train} for a in arms},
            "fits": {a: {"images": 40} for a in arms},
        },
        "cards": {"rows": rows[:2], "configs": {}, "fits": {}},
    }


def test_the_section_sets_the_learned_arms_side_by_side():
    lines = wvp.learned_section(_family(), "family.json")
    text = "\n".join(lines)
    assert lines[0] == "## Learned windows against learned proposals"
    table = [line for line in lines if line.startswith("| ")]
    assert table[0].startswith("| detector | boxes scored/img | VOC mAP@0.5 | COCO AP | train s | test s/img")
    assert [line.split(" | ")[0] for line in table[1:]] == ["| Faster R-CNN", "| YOLO", "| SSD"]
    assert "| Faster R-CNN | 4,800 anchors + 300 proposals | 0.800 | 0.400 | 100 | 0.200 | 400 it., 20.0 ep. |" in text
    assert "| SSD | 1,000 default boxes | 0.600 |" in text and "CenterNet" not in table[0]
    assert "Every arm trained for 20.0 epochs" in text and "No rows yet for CenterNet." in text
    # the conclusion follows the numbers: YOLO is the best dense arm, 10 points under Faster R-CNN
    assert "the best learned-window detector, YOLO, is 10.0 points below Faster R-CNN" in text
    assert "scoring 50 grid boxes per image where Faster R-CNN scores 4,800 anchors + 300 proposals" in text
    assert "1 trail it by more (SSD)" not in text and "2 trail it by more (YOLO, SSD)" in text
    assert (
        "(5,100 in all; 102 times as many for Faster R-CNN), in 0.050 s per image against 0.200 (4 times as fast)"
        in text
    )
    assert "learned, the windows trail by 10.0 points here" in text
    # cards has Faster R-CNN only: one line, not a table
    assert "Not yet on cards: `family.json` has no rows there for YOLO, SSD, CenterNet" in text
    assert text.count("**cards**") == 0


def test_the_conclusion_turns_with_the_numbers():
    text = "\n".join(wvp.learned_section(_family(yolo_map=0.85)))
    assert "YOLO, is 5.0 points above Faster R-CNN" in text and "1 beat Faster R-CNN by more than a point" in text
    assert "are level with the proposals or ahead of them here" in text
    level = "\n".join(wvp.learned_section(_family(yolo_map=0.805)))
    assert "YOLO, is level with Faster R-CNN" in level


def test_without_family_results_the_section_says_so_in_one_line(tmp_path):
    assert wvp.load_family(tmp_path / "none.json") is None
    lines = [line for line in wvp.learned_section(None, "none.json") if line]
    assert lines[-1] == "No family results at `none.json` yet: run `make experiment-family` first."
    # rows measured before boxes were counted: a dash, and the rest still there
    family = _family()
    for r in family["synthetic"]["rows"]:
        del r["boxes_scored"], r["boxes_scored_steps"]
    text = "\n".join(wvp.learned_section(family))
    assert "| YOLO | - | 0.700 |" in text and "scoring" not in text
