import json

import numpy as np
from test_proposal_store import make_images

from rcnn.cli import main
from rcnn.datasets import Dataset, Sample, load_dataset, write_voc
from rcnn.evaluation.recall import proposal_recall
from rcnn.proposals import SlidingWindows


def voc(tmp_path):
    ds = make_images(tmp_path / "images", 3)
    ds = Dataset(["thing"], [Sample(s.id, s.image_path, s.width, s.height, [[10, 10, 70, 60]], [1]) for s in ds])
    write_voc(ds, tmp_path / "voc")
    return tmp_path / "voc"


def test_propose_then_recall(tmp_path, capsys):
    root = voc(tmp_path)
    args = [
        "--quiet",
        "propose",
        str(root),
        "--method",
        "sliding_window",
        "--max-boxes",
        "300",
        "--out",
        str(tmp_path / "p"),
    ]
    assert main([*args, "--workers", "1"]) == 0
    assert "3 computed" in capsys.readouterr().out
    assert main([*args, "--workers", "1"]) == 0
    assert "0 computed, 3 already cached" in capsys.readouterr().out
    assert (
        main(
            [
                "recall",
                str(root),
                "--proposals",
                str(tmp_path / "p"),
                "--ks",
                "10,300",
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "r.json").read_text())
    dataset = load_dataset(root)
    proposer = SlidingWindows(max_boxes=300)
    expected = proposal_recall(
        dataset, {s.id: proposer(np.zeros((s.height, s.width), np.uint8)) for s in dataset}, [10, 300]
    )
    assert report["overall"] == expected["overall"]
    assert report["proposer"]["max_boxes"] == 300 and report["seconds_per_image"] > 0


def test_config_file_and_errors(tmp_path, capsys):
    root = voc(tmp_path)
    (tmp_path / "c.toml").write_text('[proposals]\nmethod = "selective_search"\nmode = "custom"\nks = [100]\n')
    out = str(tmp_path / "p")
    assert main(["propose", str(root), "--config", str(tmp_path / "c.toml"), "--workers", "1", "--out", out]) == 0
    params = json.loads(next((tmp_path / "p").glob("*/params.json")).read_text())
    assert params["mode"] == "custom" and params["ks"] == [100]
    assert main(["propose", str(root), "--mode", "turbo", "--out", out]) == 1
    assert 'mode = "turbo": expected one of single, fast, quality, custom' in capsys.readouterr().err
    assert main(["recall", str(root), "--proposals", str(tmp_path / "nothing")]) == 1
    assert "expected one proposal folder" in capsys.readouterr().err
