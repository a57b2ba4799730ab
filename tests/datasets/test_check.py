"""`check_dataset` and the `rcnn data` command: every problem reported with its file; exit codes."""

import json

import numpy as np
import pytest
from test_voc_io import image, sample_folder, xml

from rcnn.cli import main
from rcnn.datasets import load_dataset
from rcnn.datasets.check import check_dataset
from rcnn.datasets.writing import exact_number
from rcnn.errors import DatasetError, ImageError


def broken_folder(folder):
    """One good sample and one of every problem `check` must find."""
    sample_folder(
        folder,
        [
            ("good", [("cat", 1, 1, 10, 10)]),
            ("outside", [("cat", 1, 1, 60, 10)]),
            ("zero", [("cat", 5, 5, 4, 10)]),
            ("bird", [("bird", 1, 1, 10, 10)]),
            ("wrongsize", [("cat", 1, 1, 10, 10)], (64, 48)),
            ("clipped", [("cat", 0, 1, 10, 10)]),
            ("twice", [("cat", 1, 1, 10, 10)]),
            ("corrupt", [("cat", 1, 1, 10, 10)]),
            ("truncated", [("cat", 1, 1, 10, 10)]),
        ],
    )
    (folder / "malformed.xml").write_text("<annotation><size>")
    image(folder / "twice.png")
    (folder / "corrupt.jpg").write_bytes(b"garbage, not a picture")
    data = image(folder / "truncated.jpg", 400, 300).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "truncated.xml").write_text(xml("truncated.jpg", 400, 300, [("cat", 1, 1, 10, 10)]))
    image(folder / "lonely.jpg")
    return folder


EXPECTED = {  # file -> words in its message
    "outside.xml": "outside the 40x30 image",
    "zero.xml": "zero area",
    "bird.xml": "unknown class 'bird'",
    "wrongsize.xml": "annotated size 64x48 differs from the image's 40x30",
    "twice.xml": "more than one image",
    "corrupt.jpg": "not a readable image",
    "truncated.jpg": "truncated",
    "malformed.xml": "malformed XML",
}


def test_check_reports_every_problem_with_its_file(tmp_path):
    folder = broken_folder(tmp_path / "f")
    report = check_dataset(folder, classes=["cat", "dog"])
    errors = {p.path.split("/")[-1]: p.message for p in report.problems if p.severity == "error"}
    assert set(errors) == set(EXPECTED)
    for name, words in EXPECTED.items():
        assert words in errors[name], (name, errors[name])
    repairs = [p for p in report.problems if p.severity == "repair"]
    assert [p.path.split("/")[-1] for p in repairs] == ["clipped.xml"]
    notes = [p for p in report.problems if p.severity == "note"]
    assert [p.path.split("/")[-1] for p in notes] == ["lonely.jpg"]
    assert not report.ok and report.samples == 2 and report.boxes == 2
    assert "2 good samples, 2 boxes, 2 classes (cat 2, dog 0); 8 errors, 1 repairs, 1 notes" in report.summary()


def test_loading_stops_at_the_first_bad_file_or_skips_and_counts(tmp_path):
    folder = broken_folder(tmp_path / "f")
    with pytest.raises(DatasetError):
        load_dataset(folder, classes=["cat", "dog"])
    ds = load_dataset(folder, classes=["cat", "dog"], skip_bad=True)
    assert sorted(s.id for s in ds) == ["clipped", "good", "truncated"]  # loading reads image headers only
    assert len(ds.skipped) == 7 and len(ds.repairs) == 1
    assert str(folder / "corrupt.jpg") in dict(ds.skipped)


def test_cli_check_exit_codes(tmp_path, capsys):
    clean = sample_folder(tmp_path / "clean", [("a", [("cat", 1, 1, 10, 10)])])
    assert main(["--quiet", "data", "check", str(clean)]) == 0
    assert "1 good samples, 1 boxes, 1 classes (cat 1); 0 errors" in capsys.readouterr().out
    broken = broken_folder(tmp_path / "f")
    assert main(["--quiet", "data", "check", str(broken), "--classes", "cat,dog"]) == 1
    out = capsys.readouterr().out
    for name, words in EXPECTED.items():
        assert any(name in line and words in line for line in out.splitlines()), name
    (tmp_path / "classes.txt").write_text("cat\n")
    assert main(["--quiet", "data", "check", str(clean), "--classes", str(tmp_path / "classes.txt")]) == 0
    assert main(["--quiet", "data", "check", str(tmp_path / "nowhere")]) == 1


def test_cli_convert_round_trip_and_skip_bad(tmp_path, capsys):
    folder = sample_folder(tmp_path / "f", [("a", [("cat", 1.5, 1, 10, 10)]), ("b", [("dog", 2, 3, 40, 30, 1)])])
    assert main(["--quiet", "data", "convert", str(folder), str(tmp_path / "c" / "gt.json")]) == 0
    out = capsys.readouterr().out
    assert "wrote 2 samples, 2 boxes, 2 classes" in out
    # The images lie outside the JSON's folder: file_names stay inside theirs (never "../f/a.jpg").
    assert f"read {tmp_path / 'c' / 'gt.json'} with --images {folder}" in out
    assert json.loads((tmp_path / "c" / "gt.json").read_text())["images"][0]["file_name"] == "a.jpg"
    coco = load_dataset(tmp_path / "c" / "gt.json", images=folder, check_images=True)
    gt = str(tmp_path / "c" / "gt.json")
    assert (
        main(["--quiet", "data", "convert", gt, str(tmp_path / "voc"), "--split", "train", "--images", str(folder)])
        == 0
    )
    voc = load_dataset(tmp_path / "voc", split="train")
    src = load_dataset(folder)
    for s, c, v in zip(src, coco, voc):
        np.testing.assert_array_equal(s.boxes, c.boxes)
        np.testing.assert_array_equal(s.boxes, v.boxes)
        np.testing.assert_array_equal(s.difficult, v.difficult)
    assert [src.name_of(label) for s in src for label in s.labels] == [
        voc.name_of(label) for s in voc for label in s.labels
    ]
    (folder / "c.xml").write_text("<annotation>")
    assert main(["--quiet", "data", "convert", str(folder), str(tmp_path / "out.json")]) == 1
    assert "malformed XML" in capsys.readouterr().err
    assert main(["--quiet", "data", "convert", str(folder), str(tmp_path / "out.json"), "--skip-bad"]) == 0
    assert "skipped 1 bad samples" in capsys.readouterr().out


def test_cli_synth(tmp_path, capsys):
    assert main(["--quiet", "data", "synth", str(tmp_path / "s"), "--images", "4", "--seed", "0", "--size", "64"]) == 0
    assert "wrote 4 images" in capsys.readouterr().out
    assert main(["--quiet", "data", "check", str(tmp_path / "s")]) == 0


@pytest.mark.parametrize("value, offset", [(0.0, 0), (9.3, -1), (1234.5677, 0), (1e-3, 0), (257.13, 61.87)])
def test_exact_number_reads_back_to_the_same_float32(value, offset):
    target = np.float32(value)
    number = exact_number(target, offset)
    assert np.float32(number + offset) == target
    assert len(repr(number)) <= 12


def test_an_image_over_the_pixel_limit_is_skipped_at_load_time_and_reported_by_check(tmp_path, monkeypatch, capsys):
    from rcnn.datasets import images

    folder = sample_folder(tmp_path / "f", [("small", [("cat", 1, 1, 10, 10)]), ("big", [("cat", 1, 1, 10, 10)])])
    image(folder / "big.jpg", 60, 50)
    (folder / "big.xml").write_text(xml("big.jpg", 60, 50, [("cat", 1, 1, 10, 10)]))
    monkeypatch.setattr(images, "MAX_PIXELS", 40 * 30)  # small.jpg is 40x30; big.jpg is over
    message = "image is 60x50 = 3000 pixels, over the 1200 pixel limit"
    with pytest.raises(ImageError, match=message) as e:
        load_dataset(folder)  # what `rcnn propose` / `rcnn train` do
    assert e.value.path == str(folder / "big.jpg")
    ds = load_dataset(folder, skip_bad=True)  # --skip-bad
    assert [s.id for s in ds] == ["small"] and ds.skipped == [
        (str(folder / "big.jpg"), message + " (rcnn.datasets.images.MAX_PIXELS)")
    ]
    assert main(["--quiet", "data", "check", str(folder)]) == 1
    assert f"{folder / 'big.jpg'}: error: {message}" in capsys.readouterr().out
