"""YOLO roots: data.yaml / classes.txt, splits, the box conversion, the round trip, every error."""

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_voc_io import ITEMS as VOC_ITEMS
from test_voc_io import sample_folder

from rcnn.cli import main
from rcnn.datasets import Dataset, Sample, load_dataset, write_voc, write_yolo
from rcnn.datasets.check import check_dataset
from rcnn.datasets.loader import dataset_kind
from rcnn.datasets.yolo import label_path, parse_data_yaml
from rcnn.errors import DatasetError


def image(path, width=40, height=30):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    assert cv2.imwrite(str(path), rgb)
    return path


def yolo_root(root, items, names=("cat", "dog"), split=None, data_yaml=None):
    """A YOLO root: items are (stem, label text or None for no label file); 40x30 PNGs under
    images/[split/], labels under labels/[split/]; classes.txt unless `data_yaml` is given."""
    sub = Path(split) if split else Path()
    for stem, text in items:
        image(root / "images" / sub / f"{stem}.png")
        if text is not None:
            (root / "labels" / sub).mkdir(parents=True, exist_ok=True)
            (root / "labels" / sub / f"{stem}.txt").write_text(text)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    if data_yaml is not None:
        (root / "data.yaml").write_text(data_yaml)
    elif not (root / "classes.txt").exists():
        (root / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    return root


# cat: centre (10, 15) of a 40x30 image, 8 x 6 px; dog: the whole image
ITEMS = [("a", "0 0.25 0.5 0.2 0.2\n1 0.5 0.5 1 1\n"), ("b", "\n1 0.125 0.25 0.25 0.5\n"), ("c", "")]


def test_yolo_boxes_become_pixel_corners(tmp_path):
    root = yolo_root(tmp_path / "y", ITEMS + [("d", None)])
    assert dataset_kind(root) == "yolo"
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"] and [s.id for s in ds] == ["a", "b", "c", "d"]
    a = ds[0]
    np.testing.assert_array_equal(a.boxes, [[6, 12, 14, 18], [0, 0, 40, 30]])
    assert a.labels.tolist() == [1, 2] and (a.width, a.height) == (40, 30)
    np.testing.assert_array_equal(ds[1].boxes, [[0, 0, 10, 15]])
    assert len(ds[2].boxes) == 0 and len(ds[3].boxes) == 0  # empty label file, no label file: no objects


def test_label_path_follows_ultralytics():
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    assert label_path(Path("/images/d/images/x.png")) == Path("/images/d/labels/x.txt")  # the last images/
    assert label_path(Path("/d/pics/x.jpg")) == Path("/d/pics/x.txt")


def test_splits_by_folder_and_by_list_file(tmp_path):
    root = yolo_root(tmp_path / "y", ITEMS[:2], split="train")
    yolo_root(root, ITEMS[2:], split="val")
    assert [s.id for s in load_dataset(root, split="train")] == ["a", "b"]
    assert [s.id for s in load_dataset(root, split="val")] == ["c"]
    assert [s.id for s in load_dataset(root)] == ["a", "b", "c"]  # every image under images/
    (root / "mine.txt").write_text("images/val/c.png\n\n./images/train/a.png\n")
    assert [s.id for s in load_dataset(root, split="mine")] == ["c", "a"]
    with pytest.raises(DatasetError, match="split 'test' not found; this root has: train, val, mine"):
        load_dataset(root, split="test")
    with pytest.raises(DatasetError, match="--images does not apply to a YOLO root"):
        load_dataset(root, images=root / "images")


def test_data_yaml_entries_names_as_list_or_mapping(tmp_path):
    block = (
        "# a comment\npath: .  # the root\ntrain: images/train\nval: lists/val.txt\ntest:\nnc: 2\n"
        "names:\n  0: cat\n  1: 'dog # not a comment'\n"
        "roboflow:\n  workspace: w\n  url: https://x.y/z\ndownload: |\n  python -c 'anything: [goes'\n"
    )
    root = yolo_root(tmp_path / "y", ITEMS[:2], split="train", data_yaml=block)
    yolo_root(root, ITEMS[2:], split="val", data_yaml=block)
    (root / "lists").mkdir()
    (root / "lists" / "val.txt").write_text("../images/val/c.png\n")
    assert parse_data_yaml(root / "data.yaml") == {
        "path": ".",
        "train": "images/train",
        "val": "lists/val.txt",
        "test": None,
        "nc": "2",
        "names": {"0": "cat", "1": "dog # not a comment"},
    }
    ds = load_dataset(root, split="train")
    assert ds.classes == ["cat", "dog # not a comment"] and [s.id for s in ds] == ["a", "b"]
    assert [s.id for s in load_dataset(root, split="val")] == ["c"]
    assert [s.id for s in load_dataset(root)] == ["a", "b", "c"]  # every entry together
    for names in (
        'names: ["cat", dog]\n',
        "names:\n- cat\n- dog\n",
        "names:\n  - cat\n  - dog\n",
        "names: {0: cat, 1: dog}\n",
    ):
        (root / "data.yaml").write_text("train: images/train\n" + names)
        assert load_dataset(root).classes == ["cat", "dog"], names


def test_roboflow_layout(tmp_path):
    root = tmp_path / "rf"
    for split, (stem, text) in zip(("train", "valid"), ITEMS):
        image(root / split / "images" / f"{stem}.jpg")
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 2\nnames: ['cat', 'dog']\n")
    assert [s.id for s in load_dataset(root, split="val")] == ["b"]
    assert [len(s.boxes) for s in load_dataset(root)] == [2, 1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("names: [cat, dog]\nnc: 3\n", "nc is 3 but there are 2 names"),
        ("names: {0: cat, 2: dog}\n", "the indices must be 0..1"),
        ("names: [cat, cat]\n", "the class 'cat' is named twice"),
        ("train: images\n", "needs 'names'"),
        ("names: [[cat], dog]\n", "line 1: nested collections are not supported"),
        ("names: &anchor [cat]\ntrain: *anchor\n", "line 2: malformed YAML: aliases"),
        ("names:\n  - cat\n  0: dog\n", "line 3: malformed YAML"),
        ("names: [cat]\nnames: [dog]\n", "line 2: 'names' given twice"),
        ("names [cat]\n", "line 1: expected 'key: value'"),
        ("names: [cat]\ntrain: /elsewhere\n", "leaves the dataset root"),
        ("names: [cat]\ntrain: missing\n", "neither a folder nor a .txt list"),
    ],
)
def test_data_yaml_errors_name_the_file_and_line(tmp_path, text, message):
    root = yolo_root(tmp_path / "y", ITEMS[2:], data_yaml=text)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(root)
    assert e.value.path == str(root / "data.yaml")


def test_bad_lines_are_errors_naming_the_file_and_line(tmp_path):
    bad = {
        "fields": ("0 0.5 0.5 0.2\n", "line 1: expected 5 values 'class cx cy w h', found 4"),
        "polygon": ("0 0.1 0.1 0.2 0.1 0.2\n", "line 1: a segmentation polygon 'class x1 y1 x2 y2 x3 y3 ...' needs"),
        "float_class": ("0 0.5 0.5 0.1 0.1\n1.0 0.5 0.5 0.1 0.1\n", "line 2: class '1.0' is not an integer index"),
        "unknown": ("\n\n2 0.5 0.5 0.1 0.1\n", "line 3: unknown class index 2 (the names are 0..1)"),
        "nan_text": ("0 0.5 x 0.1 0.1\n", "line 1: cx cy w h must be numbers"),
        "outside": (
            "0 0.5 0.5 0.1 0.1\n1 0.9 0.5 0.5 0.5\n",
            "line 2 (class 1 'dog': 0.9 0.5 0.5 0.5): box [26 7.5 46 22.5]",
        ),
        "zero": (
            "0 0.5 0.5 0 0.1\n",
            "line 1 (class 0 'cat': 0.5 0.5 0 0.1): box [20 13.5 20 16.5] (x1 y1 x2 y2) has zero area",
        ),
    }
    root = yolo_root(tmp_path / "y", [("good", "0 0.5 0.5 0.5 0.5\n")] + [(k, v[0]) for k, v in bad.items()])
    for stem, (_, message) in bad.items():
        (root / "only.txt").write_text(f"images/{stem}.png\n")
        with pytest.raises(DatasetError, match=re.escape(message)) as e:
            load_dataset(root, split="only")
        assert e.value.path == str(root / "labels" / f"{stem}.txt")
    ds = load_dataset(root, skip_bad=True)
    assert [s.id for s in ds] == ["good"] and len(ds.skipped) == len(bad)
    report = check_dataset(root)
    assert report.count("error") == len(bad) and report.samples == 1
    assert "outside the 40x30 image" in str(
        report.problems[[p.path for p in report.problems].index(str(root / "labels" / "outside.txt"))]
    )


def test_a_box_poking_out_by_rounding_is_clipped_and_reported(tmp_path):
    root = yolo_root(tmp_path / "y", [("a", "0 0.5 0.5 1.0001 1\n")])
    ds = load_dataset(root)
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 40, 30]])
    assert len(ds.repairs) == 1 and "clipped" in ds.repairs[0][1]


def test_classes_txt_and_a_given_class_list(tmp_path):
    root = yolo_root(tmp_path / "y", ITEMS, names=("cat", "dog"))
    ds = load_dataset(root, classes=["ant", "cat", "dog"])
    assert ds.classes == ["ant", "cat", "dog"] and ds[0].labels.tolist() == [2, 3]
    with pytest.raises(DatasetError, match="unknown class"):
        load_dataset(root, classes=["cat"])
    (root / "classes.txt").write_text("cat\n\ndog\n")
    with pytest.raises(DatasetError, match="one class name per line"):
        load_dataset(root)


def test_two_images_with_one_stem_are_an_error(tmp_path):
    root = yolo_root(tmp_path / "y", [("a", "")], split="train")
    yolo_root(root, [("a", "")], split="val")
    with pytest.raises(DatasetError, match="another image has the stem 'a'"):
        load_dataset(root)
    assert len(load_dataset(root, split="val")) == 1


def test_list_lines_stay_inside_the_root(tmp_path):
    root = yolo_root(tmp_path / "y", ITEMS[:1])
    outside = image(tmp_path / "elsewhere" / "images" / "z.png")
    (root / "odd.txt").write_text(f"{outside}\nimages/a.png\n")
    with pytest.raises(DatasetError, match="leaves the dataset root .* --allow-outside-images"):
        load_dataset(root, split="odd")
    assert [s.id for s in load_dataset(root, split="odd", allow_outside_images=True)] == ["z", "a"]


def test_write_yolo_round_trip_reads_back_the_same_boxes(tmp_path):
    rng = np.random.default_rng(0)
    samples = []
    for i, (w, h) in enumerate([(640, 480), (37, 1001), (4000, 3000)]):
        p = image(tmp_path / "src" / f"im{i}.png", w, h)
        xy = rng.uniform(0, 1, (50, 2)) * [w, h]
        size = rng.uniform(0.5, 1, (50, 2)) * ([w, h] - xy)
        boxes = np.concatenate([xy, xy + size], 1).astype(np.float32)
        boxes[0] = [0, 0, w, h]
        samples.append(Sample(f"im{i}", p, w, h, boxes, rng.integers(1, 4, 50)))
    ds = Dataset(["a", "b", "c"], samples)
    write_yolo(ds, tmp_path / "y", split="train")
    back = load_dataset(tmp_path / "y", split="train")
    assert back.classes == ds.classes and [s.id for s in back] == ["im0", "im1", "im2"]
    for s, b in zip(ds, back):
        np.testing.assert_allclose(b.boxes, s.boxes, rtol=0, atol=1e-4)  # the documented tolerance
        np.testing.assert_array_equal(b.boxes, s.boxes)  # and in fact exact
        np.testing.assert_array_equal(b.labels, s.labels)
    line = (tmp_path / "y" / "labels" / "train" / "im0.txt").read_text().splitlines()[0]
    assert line.endswith(" 0.5 0.5 1 1")
    # a second split goes into the same data.yaml; other names are refused
    write_yolo(ds.subset(["im1"]), tmp_path / "y", split="val")
    assert parse_data_yaml(tmp_path / "y" / "data.yaml")["train"] == "images/train"
    assert [s.id for s in load_dataset(tmp_path / "y", split="val")] == ["im1"]
    with pytest.raises(DatasetError, match="has the classes a, b, c"):
        write_yolo(Dataset(["x"], []), tmp_path / "y")


def test_voc_to_yolo_to_voc(tmp_path):
    src = load_dataset(sample_folder(tmp_path / "f", VOC_ITEMS + [("d", [("dog", 1.5, 2.25, 39.75, 29)])]))
    write_yolo(src, tmp_path / "y")
    back = load_dataset(tmp_path / "y")
    assert back.classes == src.classes
    for s, b in zip(src, back):
        np.testing.assert_allclose(b.boxes, s.boxes, rtol=0, atol=1e-4)
        np.testing.assert_array_equal(b.boxes, s.boxes)
        np.testing.assert_array_equal(b.labels, s.labels)
    write_voc(back, tmp_path / "voc")
    for s, v in zip(src, load_dataset(tmp_path / "voc")):
        np.testing.assert_array_equal(s.boxes, v.boxes)


def test_cli_check_and_convert(tmp_path, capsys):
    root = yolo_root(tmp_path / "y", ITEMS, split="train")
    assert main(["--quiet", "data", "check", str(root), "--split", "train"]) == 0
    assert "3 good samples, 3 boxes, 2 classes (cat 1, dog 2); 0 errors" in capsys.readouterr().out
    assert main(["--quiet", "data", "convert", str(root), str(tmp_path / "gt.json"), "--split", "train"]) == 0
    assert "wrote 3 samples, 3 boxes, 2 classes" in capsys.readouterr().out
    coco = load_dataset(tmp_path / "gt.json")  # file_names y/images/train/*.png
    assert (
        main(
            [
                "--quiet",
                "data",
                "convert",
                str(tmp_path / "gt.json"),
                str(tmp_path / "y2"),
                "--format",
                "yolo",
                "--split",
                "val",
            ]
        )
        == 0
    )
    assert "(yolo)" in capsys.readouterr().out
    again = load_dataset(tmp_path / "y2", split="val")
    for s, c, a in zip(load_dataset(root, split="train"), coco, again):
        np.testing.assert_array_equal(s.boxes, c.boxes)
        np.testing.assert_array_equal(s.boxes, a.boxes)
    # a folder that already is a YOLO root gets YOLO without --format
    assert main(["--quiet", "data", "convert", str(tmp_path / "gt.json"), str(tmp_path / "y2"), "--split", "test"]) == 0
    assert "(yolo)" in capsys.readouterr().out and len(load_dataset(tmp_path / "y2", split="test")) == 3
    (root / "labels" / "train" / "b.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    assert main(["--quiet", "data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{root / 'labels' / 'train' / 'b.txt'}: error: line 1: unknown class index 7" in out
    assert main(["--quiet", "data", "convert", str(root), str(tmp_path / "v")]) == 1
    assert "unknown class index 7" in capsys.readouterr().err


def test_a_missing_split_folder_is_named_not_called_an_escape(tmp_path):
    """A Roboflow layout without train/: "not found", naming both places looked at."""
    root = tmp_path / "rf"
    image(root / "valid" / "images" / "b.jpg")
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnames: [cat, dog]\n")
    assert [s.id for s in load_dataset(root, split="val")] == ["b"]
    with pytest.raises(
        DatasetError, match=r"the split entry '../train/images' not found: neither .* nor .*train/images exists"
    ):
        load_dataset(root, split="train")


@pytest.mark.parametrize("path", ["/", "../elsewhere", "{outside}"])
def test_a_data_yaml_path_outside_the_root_is_refused(tmp_path, path):
    """Item 12: `path:` leads the relative entries out of the root, as `train: /x` would."""
    outside = tmp_path / "elsewhere"
    image(outside / "images" / "z.png")
    root = yolo_root(tmp_path / "y", ITEMS[:1], data_yaml="")
    (root / "data.yaml").write_text(f"path: {path.format(outside=outside)}\ntrain: images\nnames: [cat, dog]\n")
    with pytest.raises(DatasetError, match=r"'path: .*' leaves the dataset root .* --allow-outside-images") as e:
        load_dataset(root)
    assert e.value.path == str(root / "data.yaml")
    if path != "/":
        assert [s.id for s in load_dataset(root, allow_outside_images=True)] == ["z"]
    # the root's own absolute path (as Ultralytics writes it), or ".", is the root
    for inside in (str(root), "."):
        (root / "data.yaml").write_text(f"path: {inside}\ntrain: images\nnames: [cat, dog]\n")
        assert [s.id for s in load_dataset(root)] == ["a"]


def test_a_yaml_bomb_and_a_huge_data_yaml_are_refused(tmp_path):
    root = yolo_root(tmp_path / "y", ITEMS[:1], data_yaml="")
    bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    bomb += [f"{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]" for p, c in zip("abcdefgh", "bcdefghi")]
    (root / "data.yaml").write_text("\n".join(bomb) + "\nnames: *i\n")
    with pytest.raises(DatasetError, match="line 2: malformed YAML: aliases"):
        load_dataset(root)
    (root / "data.yaml").write_text("names: [cat, dog]\n" + "# padding\n" * 200_000)
    with pytest.raises(DatasetError, match="is over 1048576 bytes"):
        load_dataset(root)


def test_a_data_yaml_keeps_yaml_types_as_text_and_reads_ultralytics_files(tmp_path):
    """Names as Ultralytics takes them (str of what YAML read); a file as Ultralytics writes it."""
    root = yolo_root(tmp_path / "y", ITEMS, data_yaml="")
    (root / "data.yaml").write_text(
        f"path: {root}  # dataset root dir\ntrain: images  # train images (relative to 'path')\nval: images\n"
        "test:  # test images (optional)\n\n# Classes\nnames:\n  0: 1\n  1: 2.5\n"
    )
    ds = load_dataset(root)
    assert ds.classes == ["1", "2.5"] and [s.id for s in ds] == ["a", "b", "c"]
    (root / "data.yaml").write_text("names: [cat, dog]\nnc: 2\n")
    assert load_dataset(root / "data.yaml").classes == ["cat", "dog"]
    (root / "data.yaml").write_text("- names\n")
    with pytest.raises(DatasetError, match="line 1: expected 'key: value' lines"):
        load_dataset(root)


def test_a_classes_txt_that_is_not_utf8_is_one_line(tmp_path):
    root = yolo_root(tmp_path / "y", ITEMS[:1])
    (root / "classes.txt").write_bytes(b"cat\n\xff\xfe dog\n")
    with pytest.raises(DatasetError, match="cannot read") as e:
        load_dataset(root)
    assert e.value.path == str(root / "classes.txt")
