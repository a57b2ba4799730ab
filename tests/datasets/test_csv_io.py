"""CSV box labels (filename,width,height,class,xmin,ymin,xmax,ymax): reading, writing, errors."""

import re

import numpy as np
import pytest
from test_voc_io import ITEMS, image, sample_folder

from rcnn.cli import main
from rcnn.datasets import load_dataset, write_csv_labels
from rcnn.datasets.check import check_dataset
from rcnn.datasets.loader import dataset_kind
from rcnn.errors import DatasetError

HAND_WRITTEN = """\
filename,width,height,class,xmin,ymin,xmax,ymax,source
b.jpg,40,30,dog,0,0,40,30,web
a.jpg,40,30,cat,1.5,2,10,20.25,web
b.jpg,40,30,cat,5,6,7.125,8
c.jpg,40,30,,,,,,
"""


def csv_folder(folder, text=HAND_WRITTEN, stems="abc"):
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        image(folder / f"{stem}.jpg")
    (folder / "labels.csv").write_text(text)
    return folder / "labels.csv"


def test_hand_written_csv_boxes_exact(tmp_path):
    path = csv_folder(tmp_path / "c")
    assert dataset_kind(path) == "csv"
    ds = load_dataset(path)
    assert ds.classes == ["cat", "dog"]
    assert [s.id for s in ds] == ["b", "a", "c"]  # in order of first appearance
    b, a, c = ds
    np.testing.assert_array_equal(b.boxes, [[0, 0, 40, 30], [5, 6, 7.125, 8]])  # pixel corners, as written
    assert b.labels.tolist() == [2, 1] and (b.width, b.height) == (40, 30) and b.image_path == tmp_path / "c" / "b.jpg"
    np.testing.assert_array_equal(a.boxes, [[1.5, 2, 10, 20.25]])
    assert len(c.boxes) == 0  # a row with no class and no corners: an image without objects


def test_columns_by_name_in_any_order_without_sizes_and_with_images(tmp_path):
    text = "XMIN,ymin,xmax,ymax,Class,filename\n1,2,3,4,cat,sub/a.jpg\n"
    path = csv_folder(tmp_path / "c", text, stems="")
    (tmp_path / "pics" / "sub").mkdir(parents=True)
    image(tmp_path / "pics" / "sub" / "a.jpg")
    ds = load_dataset(path, images=tmp_path / "pics")
    assert (ds[0].width, ds[0].height) == (40, 30)  # from the image
    np.testing.assert_array_equal(ds[0].boxes, [[1, 2, 3, 4]])
    (tmp_path / "c" / "labels.csv").write_text("XMIN,ymin,xmax,ymax,Class,filename\n1,2,3,4,cat,../pics/sub/a.jpg\n")
    with pytest.raises(DatasetError, match="leaves the image folder"):
        load_dataset(path)
    assert len(load_dataset(path, allow_outside_images=True)) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a.jpg,40,30,cat,1,2,3,4\n",
            "needs a header row naming the columns filename,width,height,class,xmin,ymin,xmax,ymax; lacks",
        ),
        ("filename,width,class,xmin,ymin,xmax,ymax\n", "has one of the columns width, height but not the other"),
        (
            "filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,x,4\n",
            "line 2: a.jpg: xmin, ymin, xmax, ymax must be numbers",
        ),
        ("filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,3\n", "line 2: 5 fields, the columns read need 6"),
        ("filename,class,xmin,ymin,xmax,ymax\n\na.jpg,,1,2,3,4\n", "line 3: a.jpg: no class"),
        ("filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,3,4\n,cat,1,2,3,4\n", "line 3: no filename"),
        (
            "filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,30,2,50,4\n",
            "line 2: a.jpg 'cat': box [30 2 50 4] (x1 y1 x2 y2) lies outside the 40x30 image",
        ),
        ("filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,3,2,3,4\n", "has zero area"),
        (
            "filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,40,30,cat,1,2,3,4\na.jpg,41,30,cat,1,2,3,4\n",
            "line 3: a.jpg: size 41x30 differs from line 2's 40x30",
        ),
        (
            "filename,width,height,class,xmin,ymin,xmax,ymax\na.jpg,50,30,cat,1,2,3,4\n",
            "line 2: a.jpg: annotated size 50x30 differs from the image's 40x30",
        ),
        ("filename,class,xmin,ymin,xmax,ymax\nz.jpg,cat,1,2,3,4\n", "image file not found"),
        (
            "filename,class,xmin,ymin,xmax,ymax\na.jpg,cat,1,2,3,4\nsub/a.jpg,cat,1,2,3,4\n",
            "line 3: sub/a.jpg has the stem of a.jpg",
        ),
    ],
)
def test_errors_name_the_file_and_line(tmp_path, text, message):
    path = csv_folder(tmp_path / "c", text, stems="a")
    (tmp_path / "c" / "sub").mkdir()
    image(tmp_path / "c" / "sub" / "a.jpg")
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(path)


def test_skip_bad_and_check_report_every_bad_image(tmp_path):
    text = HAND_WRITTEN + "a.jpg,40,30,cat,1,2,99,4,\nb.jpg,40,30,ant,1,2,3,4,\n"
    path = csv_folder(tmp_path / "c", text)
    ds = load_dataset(path, skip_bad=True, classes=["cat", "dog"])
    assert [s.id for s in ds] == ["c"] and len(ds.skipped) == 2
    report = check_dataset(path, classes=["cat", "dog"])
    assert report.count("error") == 2 and report.samples == 1
    assert any("line 7: b.jpg: unknown class 'ant'" in str(p) for p in report.problems)


def test_write_csv_round_trip(tmp_path):
    src = load_dataset(sample_folder(tmp_path / "f", ITEMS + [("d", [("dog", 1.5, 2.25, 39.75, 29)])]))
    assert write_csv_labels(src, tmp_path / "f" / "gt.csv") == tmp_path / "f"
    back = load_dataset(tmp_path / "f" / "gt.csv")
    assert back.classes == src.classes and [s.id for s in back] == [s.id for s in src]
    for s, b in zip(src, back):
        np.testing.assert_array_equal(s.boxes, b.boxes)
        np.testing.assert_array_equal(s.labels, b.labels)
    assert (tmp_path / "f" / "gt.csv").read_text().splitlines()[1] == "a.jpg,40,30,dog,0,0,10,20"


def test_cli_check_and_convert(tmp_path, capsys):
    path = csv_folder(tmp_path / "c")
    assert main(["--quiet", "data", "check", str(path)]) == 0
    assert "3 good samples, 3 boxes, 2 classes (cat 2, dog 1); 0 errors" in capsys.readouterr().out
    assert (
        main(["--quiet", "data", "convert", str(path), str(tmp_path / "y"), "--format", "yolo", "--split", "train"])
        == 0
    )
    assert (
        main(["--quiet", "data", "convert", str(tmp_path / "y"), str(tmp_path / "out" / "gt.csv"), "--split", "train"])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "(csv)" in out
        and f"read {tmp_path / 'out' / 'gt.csv'} with --images {tmp_path / 'y' / 'images' / 'train'}" in out
    )
    back = load_dataset(tmp_path / "out" / "gt.csv", images=tmp_path / "y" / "images" / "train")
    assert [s.id for s in back] == ["a", "b", "c"]  # the YOLO root's order: sorted files
    src = {s.id: s for s in load_dataset(path)}
    for b in back:
        np.testing.assert_array_equal(src[b.id].boxes, b.boxes)
    assert main(["--quiet", "data", "check", str(path), "--split", "x"]) == 1
    assert (
        "--split applies to VOC roots (with ImageSets/Main/) and YOLO roots; a CSV file is one split"
        in capsys.readouterr().out
    )
    (tmp_path / "c" / "labels.csv").write_text(HAND_WRITTEN + "a.jpg,40,30,cat,1,2,3\n")
    assert main(["--quiet", "data", "check", str(path)]) == 1
    assert f"{path}: error: line 6: 7 fields, the columns read need 8" in capsys.readouterr().out
