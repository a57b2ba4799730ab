"""`rcnn explain`: every stage's picture for a (tiny, real) R-CNN, the localiser's page, and
the ways to name the image."""

import numpy as np
import pytest
import torch

from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.datasets.images import read_image
from rcnn.detectors import RCNN, Localizer, load_config
from rcnn.reports.explain import RCNN_PICTURES, coverage, explain


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


def test_coverage_counts_boxes_over_each_pixel():
    heat = coverage(np.array([[0, 0, 4, 4], [2, 2, 6, 6], [-3, 5, 100, 7]], np.float32), (8, 8))
    expected = np.zeros((8, 8), np.float32)
    expected[0:4, 0:4] += 1
    expected[2:6, 2:6] += 1
    expected[5:7, 0:8] += 1
    assert np.array_equal(heat, expected)


def test_explain_writes_every_picture_for_an_rcnn(trained, tmp_path, capsys):
    test = load_dataset(trained / "synth", split="test")
    sample = next(s for s in test if len(s.boxes))
    out = tmp_path / "page"
    assert (
        main(
            [
                "--quiet",
                "explain",
                str(trained / "model.pt"),
                str(trained / "synth"),
                "--split",
                "test",
                "--sample",
                sample.id,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "index.md" in capsys.readouterr().out
    index = (out / "index.md").read_text()
    for name in RCNN_PICTURES:
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
        assert f"({name})" in index, name
        assert read_image(out / name).ndim == 3
    assert "ground truth" in index and "Box regression" in index and "Non-maximum suppression" in index
    # the page's final detections are the model's own
    model = RCNN.load(trained / "model.pt")
    image = read_image(sample.image_path)
    result = explain(model, image, tmp_path / "again", sample.boxes, sample.labels)
    direct = model.detect(image)
    assert np.allclose(result["detections"].boxes, direct.boxes) and np.allclose(
        result["detections"].scores, direct.scores
    )


def test_explain_an_image_with_its_xml_beside_it_and_one_without(trained, tmp_path):
    import shutil

    sample = load_dataset(trained / "synth", split="test")[0]
    folder = tmp_path / "imgs"
    folder.mkdir()
    shutil.copy(sample.image_path, folder / "a.jpg")
    shutil.copy(trained / "synth" / "Annotations" / f"{sample.id}.xml", folder / "a.xml")
    shutil.copy(sample.image_path, folder / "b.jpg")
    assert (
        main(["--quiet", "explain", str(trained / "model.pt"), str(folder / "a.jpg"), "--out", str(tmp_path / "a")])
        == 0
    )
    assert f"ground truth holds {len(sample.boxes)} object" in (tmp_path / "a" / "index.md").read_text()
    assert (
        main(["--quiet", "explain", str(trained / "model.pt"), str(folder / "b.jpg"), "--out", str(tmp_path / "b")])
        == 0
    )
    assert "no annotation was given" in (tmp_path / "b" / "index.md").read_text()
    assert (
        main(["--quiet", "explain", str(trained / "model.pt"), str(trained / "synth"), "--out", str(tmp_path / "c")])
        == 1
    )


def test_explain_a_localizer_says_which_stages_it_skips(trained, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train = load_dataset(trained / "synth", split="train")
        model = Localizer(
            load_config(
                None,
                {
                    "detector": "localizer",
                    "backbone": "resnet18",
                    "weights": "random",
                    "input_size": 32,
                    "epochs": 1,
                    "cache_dir": str(tmp_path / "cache"),
                },
            )
        )
        model.fit(train)
    finally:
        torch.set_num_threads(before)
    s = train[0]
    result = explain(model, read_image(s.image_path), tmp_path / "loc", s.boxes, s.labels)
    text = result["index"].read_text()
    assert "no proposals" in text and "no NMS" in text
    assert result["pictures"] == ["box.png", "detections.png"]
    assert all((tmp_path / "loc" / p).is_file() for p in result["pictures"])
