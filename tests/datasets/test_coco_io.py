"""COCO instances and results files: reading, writing, round trips and errors."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rcnn.datasets import Dataset, Detections, Sample, load_dataset, read_detections, write_coco, write_detections
from rcnn.errors import DatasetError

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "eval-golden" / "coco"


def coco_dict():
    return {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 100, "height": 80},
            {"id": 3, "file_name": "b.jpg", "width": 50, "height": 50},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10.5, 20, 30.25, 40], "area": 900.0, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 100, 80], "area": 5000.0, "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 5, "bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}],
    }


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def load_annotations(path, **kw):
    """The ground truth alone: these files have no images beside them."""
    return load_dataset(path, check_images=False, **kw)


def test_read_coco_converts_boxes_and_keeps_ids(tmp_path):
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()))
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [2, 5]
    assert [s.id for s in ds] == ["7", "3"]
    a = ds[0]
    assert a.image_path == tmp_path / "a.jpg" and (a.width, a.height) == (100, 80)
    np.testing.assert_allclose(a.boxes, [[10.5, 20, 40.75, 60], [0, 0, 100, 80]])
    assert a.labels.tolist() == [2, 1]
    assert a.iscrowd.tolist() == [False, True]
    np.testing.assert_allclose(a.area, [900, 5000])


def test_images_folder_option(tmp_path):
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()), images=tmp_path / "imgs")
    assert ds[1].image_path == tmp_path / "imgs" / "b.jpg"


def test_coco_round_trip_is_exact(tmp_path):
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()))
    write_coco(ds, tmp_path / "out" / "gt2.json", images=tmp_path)
    back = load_annotations(tmp_path / "out" / "gt2.json", images=tmp_path)
    assert back.classes == ds.classes and back.category_ids == ds.category_ids
    for s, t in zip(ds, back):
        assert s.id == t.id and s.image_path == t.image_path
        for field in ("boxes", "labels", "iscrowd", "area", "difficult"):
            np.testing.assert_array_equal(getattr(s, field), getattr(t, field))


def test_write_coco_numbers_ids_of_a_voc_style_dataset(tmp_path):
    ds = Dataset(["x"], [Sample("img_a", tmp_path / "img_a.jpg", 10, 10, [[1, 1, 5, 5]], [1], [True])])
    write_coco(ds, tmp_path / "gt.json")
    data = json.loads((tmp_path / "gt.json").read_text())
    assert data["images"] == [{"id": 1, "file_name": "img_a.jpg", "width": 10, "height": 10}]
    assert data["annotations"][0]["bbox"] == [1, 1, 4, 4] and data["annotations"][0]["difficult"] == 1
    back = load_annotations(tmp_path / "gt.json")
    assert back[0].difficult.tolist() == [True] and back.category_ids == [1]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda d: d["annotations"].append({"id": 9, "image_id": 99, "category_id": 5, "bbox": [0, 0, 1, 1]}),
            "unknown image_id 99",
        ),
        (
            lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 77, "bbox": [0, 0, 1, 1]}),
            "unknown category_id 77",
        ),
        (
            lambda d: d["images"].append({"id": 3, "file_name": "c.jpg", "width": 5, "height": 5}),
            "duplicate image id 3",
        ),
        (
            lambda d: d["annotations"].append({"id": 1, "image_id": 3, "category_id": 5, "bbox": [0, 0, 1, 1]}),
            "duplicate annotation id",
        ),
        (
            lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 5, "bbox": [5, 5, 0, 3]}),
            "zero area",
        ),
        (
            lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 5, "bbox": [40, 40, 20, 5]}),
            "outside",
        ),
        (
            lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 5, "bbox": [1, 2]}),
            "not 4 numbers",
        ),
    ],
)
def test_bad_entries_raise_or_are_skipped(tmp_path, change, message):
    data = coco_dict()
    change(data)
    path = write_json(tmp_path / "gt.json", data)
    with pytest.raises(DatasetError, match=message) as e:
        load_annotations(path)
    assert e.value.path == str(path)
    ds = load_annotations(path, skip_bad=True)
    assert len(ds.skipped) == 1 and message in ds.skipped[0][1]
    assert len(ds) >= 1


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match="malformed JSON") as e:
        load_annotations(path)
    assert e.value.path == str(path)
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        load_annotations(write_json(tmp_path / "list.json", [1, 2]))


def test_check_images_finds_missing_files(tmp_path):
    path = write_json(tmp_path / "gt.json", coco_dict())
    assert len(load_annotations(path)) == 2  # images not needed with check_images=False
    with pytest.raises(DatasetError, match="image file not found"):
        load_dataset(path)  # by default they are checked, as for VOC


def test_detections_round_trip_coco_ids(tmp_path):
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()))
    dets = {"7": Detections([[1.1, 2.2, 30.3, 40.4], [0, 0, 5, 5]], [0.9, 0.1], [1, 2])}
    write_detections(tmp_path / "res.json", dets, ds)
    records = json.loads((tmp_path / "res.json").read_text())
    assert records[0] == {"image_id": 7, "category_id": 2, "bbox": [1.1, 2.2, 29.2, 38.2], "score": 0.9}
    assert records[1]["category_id"] == 5
    back = read_detections(tmp_path / "res.json", ds)
    assert set(back) == {"7", "3"} and len(back["3"]) == 0
    np.testing.assert_array_equal(back["7"].boxes, dets["7"].boxes)
    np.testing.assert_array_equal(back["7"].scores, dets["7"].scores)
    np.testing.assert_array_equal(back["7"].labels, dets["7"].labels)


def test_detections_of_a_voc_dataset_use_stems_and_names(tmp_path):
    ds = Dataset(["cat", "dog"], [Sample("img1", tmp_path / "img1.jpg", 10, 10)])
    write_detections(tmp_path / "res.json", {"img1": Detections([[1, 2, 3, 4]], [0.5], [2])}, ds)
    assert json.loads((tmp_path / "res.json").read_text()) == [
        {"image_id": "img1", "category_id": "dog", "bbox": [1, 2, 2, 2], "score": 0.5}
    ]
    assert read_detections(tmp_path / "res.json", ds)["img1"].labels.tolist() == [2]


@pytest.mark.parametrize(
    "record, message",
    [
        ({"image_id": 8, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1}, "unknown image_id 8"),
        ({"image_id": "7", "category_id": 5, "bbox": [0, 0, 1, 1], "score": 1}, "unknown image_id '7'"),
        ({"image_id": 7, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 1}, "unknown category_id 4"),
        ({"image_id": 7, "category_id": "dog", "bbox": [0, 0, 1, 1], "score": 1}, "unknown category_id 'dog'"),
        ({"image_id": 7, "category_id": 5, "bbox": [0, 0, 1], "score": 1}, "not 4 numbers"),
        ({"image_id": 7, "category_id": 5, "bbox": [0, 0, 1, 1]}, "needs image_id"),
    ],
)
def test_bad_detection_records(tmp_path, record, message):
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()))
    path = write_json(tmp_path / "res.json", [record])
    with pytest.raises(DatasetError, match=message) as e:
        read_detections(path, ds)
    assert e.value.path == str(path)


def test_golden_coco_files():
    if not (GOLDEN / "gt.json").exists():
        pytest.skip("../shared/data/eval-golden/coco is absent")
    ds = load_annotations(GOLDEN / "gt.json")
    raw = json.loads((GOLDEN / "gt.json").read_text())
    assert len(ds) == len(raw["images"]) == 100
    assert sum(len(s.boxes) for s in ds) == len(raw["annotations"]) == 830
    assert ds.num_classes == 80 and ds.category_ids == sorted(c["id"] for c in raw["categories"])
    dets = read_detections(GOLDEN / "detections.json", ds)
    assert sum(len(d) for d in dets.values()) == 734


def _image(path, width, height, exif_orientation=None):
    from PIL import Image

    im = Image.fromarray(np.zeros((height, width, 3), np.uint8))
    if exif_orientation is None:
        im.save(path)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        im.save(path, exif=exif.tobytes())
    return path


def test_coco_image_sizes_are_checked_when_loading_for_use(tmp_path):
    """`rcnn train` loads with the defaults: a wrongly sized image is an error naming it, not
    boxes trained outside the decoded image; EXIF orientation is named when it explains it."""
    _image(tmp_path / "a.jpg", 100, 80)
    _image(tmp_path / "b.jpg", 50, 50)
    path = write_json(tmp_path / "gt.json", coco_dict())
    assert len(load_dataset(path)) == 2
    _image(tmp_path / "a.jpg", 90, 80)
    with pytest.raises(
        DatasetError, match=r"image 7 \(.*a.jpg\): annotated size 100x80 differs from the image's 90x80$"
    ) as e:
        load_dataset(path)
    assert e.value.path == str(path)
    ds = load_dataset(path, skip_bad=True)
    assert [s.id for s in ds] == ["3"] and len(ds.skipped) == 1
    assert len(load_dataset(path, check_images=False)) == 2  # annotations alone, as `rcnn evaluate` reads them
    # Stored 80x100 with EXIF orientation 6: displayed (and annotated) 100x80; rcnn uses the stored pixels.
    _image(tmp_path / "a.jpg", 80, 100, exif_orientation=6)
    with pytest.raises(
        DatasetError, match="EXIF orientation 6 rotates it for display; that is its displayed size"
    ) as e:
        load_dataset(path)
    assert "annotated size 100x80 differs from the image's 80x100" in str(e.value)


@pytest.mark.parametrize("file_name", ["../../../../etc/passwd", "/etc/passwd", "sub/../../a.jpg", ""])
def test_file_names_must_stay_inside_the_image_folder(tmp_path, file_name):
    data = coco_dict()
    data["images"][0]["file_name"] = file_name
    path = write_json(tmp_path / "d" / "gt.json", data) if (tmp_path / "d").mkdir() is None else None
    with pytest.raises(DatasetError, match=f"image 7: file_name {re.escape(repr(file_name))} ") as e:
        load_annotations(path)
    assert e.value.path == str(path)
    assert [s.id for s in load_annotations(path, skip_bad=True)] == ["3"]
    if file_name:
        ds = load_annotations(path, allow_outside_images=True)
        assert ds[0].image_path == tmp_path / "d" / file_name


def test_data_convert_does_not_copy_files_from_outside_the_image_folder(tmp_path, capsys):
    from rcnn.cli import main

    (tmp_path / "d").mkdir()
    _image(tmp_path / "d" / "b.jpg", 50, 50)
    _image(tmp_path / "secret.jpg", 100, 80)  # a file beside, not inside, the image folder
    data = coco_dict()
    data["images"][0]["file_name"] = "../secret.jpg"
    path = write_json(tmp_path / "d" / "gt.json", data)
    assert main(["--quiet", "data", "convert", str(path), str(tmp_path / "voc")]) == 1
    err = capsys.readouterr().err
    assert f"{path}: image 7: file_name '../secret.jpg' leaves the image folder" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "voc" / "JPEGImages").exists() or not any((tmp_path / "voc" / "JPEGImages").iterdir())
    assert main(["--quiet", "data", "convert", str(path), str(tmp_path / "voc"), "--allow-outside-images"]) == 0
    assert (tmp_path / "voc" / "JPEGImages" / "7.jpg").read_bytes() == (tmp_path / "secret.jpg").read_bytes()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(id=[1]), "annotation #0: 'id' must be an integer, not [1]"),
        (lambda a: a.update(image_id=[7]), "annotation #0: unknown image_id [7]"),
        (lambda a: a.update(category_id=[5]), "annotation 1: unknown category_id [5]"),
        (lambda a: a.update(iscrowd="0"), "annotation 1: 'iscrowd' must be 0 or 1 (or false / true), not '0'"),
        (lambda a: a.update(iscrowd=2), "'iscrowd' must be 0 or 1"),
        (lambda a: a.update(difficult="1"), "annotation 1: 'difficult' must be 0 or 1 (or false / true), not '1'"),
        (lambda a: a.update(area=1e300), "annotation 1: 'area' must be a number >= 0, not 1e+300"),
        (lambda a: a.update(area=-5), "'area' must be a number >= 0"),
        (lambda a: a.update(bbox=[1e300, 10, 1e300, 20]), "lies outside the 100x80 image"),
        (
            lambda a: a.update(bbox=[1e308, 10, 1e308, 5]),
            "box [1e+308 10 inf 15] (x1 y1 x2 y2) has a coordinate that is not a finite",
        ),
        (lambda a: a.update(bbox=[10, 10, 10**400, 5]), "not 4 numbers"),
    ],
)
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_bad_annotation_values_are_one_line_errors(tmp_path, change, message):
    data = coco_dict()
    change(data["annotations"][0])
    path = write_json(tmp_path / "gt.json", data)
    with pytest.raises(DatasetError) as e:
        load_annotations(path)
    assert message in str(e.value) and e.value.path == str(path)
    assert len(load_annotations(path, skip_bad=True).skipped) == 1


def test_flags_accept_0_1_false_true(tmp_path):
    data = coco_dict()
    data["annotations"][0].update(iscrowd=True, difficult=1)
    data["annotations"][1].update(iscrowd=False, difficult=0.0)
    data["annotations"][2].update(iscrowd=1, difficult=None)
    ds = load_annotations(write_json(tmp_path / "gt.json", data))
    assert ds[0].iscrowd.tolist() == [True, False] and ds[0].difficult.tolist() == [True, False]
    assert ds[1].iscrowd.tolist() == [True] and ds[1].difficult.tolist() == [False]


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_detections_beyond_float32_are_errors_not_overflow_warnings(tmp_path):
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()))
    record = {"image_id": 7, "category_id": 5, "bbox": [1, 2, 3, 4], "score": 1e308}
    with pytest.raises(DatasetError, match=r"record 0: 'score' 1e\+308 is beyond float32's range") as e:
        read_detections(write_json(tmp_path / "res.json", [record]), ds)
    assert e.value.path == str(tmp_path / "res.json")
    record.update(score=0.5, bbox=[1, 2, 1e300, 4])
    with pytest.raises(DatasetError, match="record 0: 'bbox' .* reaches beyond float32's range"):
        read_detections(write_json(tmp_path / "res.json", [record]), ds)
    record.update(score=3e38, bbox=[1, 2, 3e38, 4])  # within float32: fine
    assert read_detections(write_json(tmp_path / "res.json", [record]), ds)["7"].scores.tolist() == [np.float32(3e38)]


def test_coco_classes_follow_the_given_list(tmp_path):
    """`load_dataset(coco, classes=model classes)` (as `rcnn detect` calls it) labels by the
    model's classes, in its order; a class the file lacks has no ground truth and a new id."""
    ds = load_annotations(write_json(tmp_path / "gt.json", coco_dict()), classes=["dog", "star", "cat"])
    assert ds.classes == ["dog", "star", "cat"] and ds.category_ids == [5, 6, 2]
    assert ds[0].labels.tolist() == [1, 3]  # dog, cat
    write_detections(tmp_path / "res.json", {"7": Detections([[0, 0, 5, 5]] * 2, [0.9, 0.8], [2, 3])}, ds)
    assert [r["category_id"] for r in json.loads((tmp_path / "res.json").read_text())] == [6, 2]
    with pytest.raises(DatasetError, match="unknown class"):
        load_annotations(tmp_path / "gt.json", classes=["dog"])


def test_two_samples_with_one_id_are_named_with_both_files(tmp_path):
    from rcnn.datasets import write_voc

    _image(tmp_path / "x" / "a.jpg", 10, 10) if (tmp_path / "x").mkdir() is None else None
    _image(tmp_path / "a.jpg", 10, 10)
    ds = Dataset(["c"], [Sample("a", tmp_path / "x" / "a.jpg", 10, 10), Sample("a", tmp_path / "a.jpg", 10, 10)])
    both = f"'a' ({tmp_path / 'x' / 'a.jpg'} and {tmp_path / 'a.jpg'})"
    with pytest.raises(DatasetError, match=re.escape(both)):
        write_voc(ds, tmp_path / "voc")
    with pytest.raises(DatasetError, match=re.escape(both)):
        write_detections(tmp_path / "res.json", {}, ds) or read_detections(tmp_path / "res.json", ds)
