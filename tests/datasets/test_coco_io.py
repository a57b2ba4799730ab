"""COCO instances and results files: reading, writing, round trips and errors."""

import json
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


def test_read_coco_converts_boxes_and_keeps_ids(tmp_path):
    ds = load_dataset(write_json(tmp_path / "gt.json", coco_dict()))
    assert ds.classes == ["cat", "dog"] and ds.category_ids == [2, 5]
    assert [s.id for s in ds] == ["7", "3"]
    a = ds[0]
    assert a.image_path == tmp_path / "a.jpg" and (a.width, a.height) == (100, 80)
    np.testing.assert_allclose(a.boxes, [[10.5, 20, 40.75, 60], [0, 0, 100, 80]])
    assert a.labels.tolist() == [2, 1]
    assert a.iscrowd.tolist() == [False, True]
    np.testing.assert_allclose(a.area, [900, 5000])


def test_images_folder_option(tmp_path):
    ds = load_dataset(write_json(tmp_path / "gt.json", coco_dict()), images=tmp_path / "imgs")
    assert ds[1].image_path == tmp_path / "imgs" / "b.jpg"


def test_coco_round_trip_is_exact(tmp_path):
    ds = load_dataset(write_json(tmp_path / "gt.json", coco_dict()))
    write_coco(ds, tmp_path / "out" / "gt2.json", images=tmp_path)
    back = load_dataset(tmp_path / "out" / "gt2.json", images=tmp_path)
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
    back = load_dataset(tmp_path / "gt.json")
    assert back[0].difficult.tolist() == [True] and back.category_ids == [1]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"].append({"id": 9, "image_id": 99, "category_id": 5, "bbox": [0, 0, 1, 1]}), "unknown image_id 99"),
        (lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 77, "bbox": [0, 0, 1, 1]}), "unknown category_id 77"),
        (lambda d: d["images"].append({"id": 3, "file_name": "c.jpg", "width": 5, "height": 5}), "duplicate image id 3"),
        (lambda d: d["annotations"].append({"id": 1, "image_id": 3, "category_id": 5, "bbox": [0, 0, 1, 1]}), "duplicate annotation id"),
        (lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 5, "bbox": [5, 5, 0, 3]}), "zero area"),
        (lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 5, "bbox": [40, 40, 20, 5]}), "outside"),
        (lambda d: d["annotations"].append({"id": 9, "image_id": 3, "category_id": 5, "bbox": [1, 2]}), "not 4 numbers"),
    ],
)
def test_bad_entries_raise_or_are_skipped(tmp_path, change, message):
    data = coco_dict()
    change(data)
    path = write_json(tmp_path / "gt.json", data)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(path)
    assert e.value.path == str(path)
    ds = load_dataset(path, skip_bad=True)
    assert len(ds.skipped) == 1 and message in ds.skipped[0][1]
    assert len(ds) >= 1


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text('{"images": [')
    with pytest.raises(DatasetError, match="malformed JSON") as e:
        load_dataset(path)
    assert e.value.path == str(path)
    with pytest.raises(DatasetError, match="not a COCO instances file"):
        load_dataset(write_json(tmp_path / "list.json", [1, 2]))


def test_check_images_finds_missing_files(tmp_path):
    path = write_json(tmp_path / "gt.json", coco_dict())
    assert len(load_dataset(path)) == 2  # images not needed by default
    with pytest.raises(DatasetError, match="image file not found"):
        load_dataset(path, check_images=True)


def test_detections_round_trip_coco_ids(tmp_path):
    ds = load_dataset(write_json(tmp_path / "gt.json", coco_dict()))
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
    ds = load_dataset(write_json(tmp_path / "gt.json", coco_dict()))
    path = write_json(tmp_path / "res.json", [record])
    with pytest.raises(DatasetError, match=message) as e:
        read_detections(path, ds)
    assert e.value.path == str(path)


def test_golden_coco_files():
    if not (GOLDEN / "gt.json").exists():
        pytest.skip("../shared/data/eval-golden/coco is absent")
    ds = load_dataset(GOLDEN / "gt.json")
    raw = json.loads((GOLDEN / "gt.json").read_text())
    assert len(ds) == len(raw["images"]) == 100
    assert sum(len(s.boxes) for s in ds) == len(raw["annotations"]) == 830
    assert ds.num_classes == 80 and ds.category_ids == sorted(c["id"] for c in raw["categories"])
    dets = read_detections(GOLDEN / "detections.json", ds)
    assert sum(len(d) for d in dets.values()) == 734
