"""Pascal VOC roots and flat folders: reading, writing, the exact round trip, every error."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from rcnn.datasets import Dataset, Sample, load_dataset, read_image, write_voc
from rcnn.datasets.loader import dataset_kind
from rcnn.errors import DatasetError, ImageError

CARDS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cards" / "train"


def xml(filename, width, height, objects):
    """VOC annotation text; objects are (name, xmin, ymin, xmax, ymax[, difficult])."""
    parts = [f"<annotation><filename>{filename}</filename>"]
    if width is not None:
        parts.append(f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>")
    for name, *corners in objects:
        difficult = corners[4] if len(corners) > 4 else 0
        box = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), corners[:4]))
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{box}</bndbox></object>")
    return "".join(parts) + "</annotation>"


def image(path, width=40, height=30):
    rgb = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
    assert cv2.imwrite(str(path), rgb)
    return path


def sample_folder(folder, items):
    """A flat folder: items are (stem, objects[, xml size]); images are 40x30 JPEGs."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, objects, *size in items:
        image(folder / f"{stem}.jpg")
        w, h = size[0] if size else (40, 30)
        (folder / f"{stem}.xml").write_text(xml(f"{stem}.jpg", w, h, objects))
    return folder


def voc_root(root, items, splits):
    sample_folder(root / "tmp", items)
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    for p in (root / "tmp").iterdir():
        p.rename(root / ("Annotations" if p.suffix == ".xml" else "JPEGImages") / p.name)
    (root / "tmp").rmdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


ITEMS = [("a", [("dog", 1, 1, 10, 20), ("cat", 5, 6, 40, 30, 1)]), ("b", [("cat", 2, 3, 4, 5)]), ("c", [])]


def test_voc_corners_become_continuous(tmp_path):
    ds = load_dataset(sample_folder(tmp_path / "f", ITEMS))
    assert dataset_kind(tmp_path / "f") == "folder"
    assert ds.classes == ["cat", "dog"] and [s.id for s in ds] == ["a", "b", "c"]
    a = ds[0]
    np.testing.assert_array_equal(a.boxes, [[0, 0, 10, 20], [4, 5, 40, 30]])  # whole image: 0..40
    assert a.labels.tolist() == [2, 1] and a.difficult.tolist() == [False, True]
    assert (a.width, a.height) == (40, 30) and a.image_path == tmp_path / "f" / "a.jpg"
    assert len(ds[2].boxes) == 0


def test_voc_root_and_splits(tmp_path):
    root = voc_root(tmp_path / "voc", ITEMS, {"train": ["b", "a"], "test": ["c"]})
    assert dataset_kind(root) == "voc"
    assert [s.id for s in load_dataset(root, split="train")] == ["b", "a"]
    assert [s.id for s in load_dataset(root, split="test")] == ["c"]
    assert [s.id for s in load_dataset(root)] == ["a", "b", "c"]
    with pytest.raises(DatasetError, match="split 'val' not found; this root has: test, train"):
        load_dataset(root, split="val")


def test_given_classes_fix_labels_and_reject_unknown(tmp_path):
    folder = sample_folder(tmp_path / "f", ITEMS)
    ds = load_dataset(folder, classes=["dog", "cat", "bird"])
    assert ds.classes == ["dog", "cat", "bird"] and ds[0].labels.tolist() == [1, 2]
    with pytest.raises(DatasetError, match="unknown class 'dog'"):
        load_dataset(folder, classes=["cat"])


def test_round_trip_is_lossless_with_fractions(tmp_path):
    items = [("a", [("dog", 1, 1, 10, 20), ("cat", 2.5, 3.25, 39.75, 30, 1)]), ("b", [("cat", 1.1, 2.3, 17.7, 29.9)])]
    src = load_dataset(sample_folder(tmp_path / "f", items))
    write_voc(src, tmp_path / "voc", split="train")
    back = load_dataset(tmp_path / "voc", split="train")
    assert back.classes == src.classes
    for s, t in zip(src, back):
        assert s.id == t.id and (s.width, s.height) == (t.width, t.height)
        np.testing.assert_array_equal(s.boxes, t.boxes)
        np.testing.assert_array_equal(s.labels, t.labels)
        np.testing.assert_array_equal(s.difficult, t.difficult)
        np.testing.assert_array_equal(read_image(s.image_path), read_image(t.image_path))
    text = (tmp_path / "voc" / "Annotations" / "a.xml").read_text()
    assert "<xmin>1</xmin>" in text and "<xmax>10</xmax>" in text  # integral values stay integers
    assert "<xmin>2.5</xmin>" in text and "<ymin>3.25</ymin>" in text
    assert "<xmin>1.1</xmin>" in (tmp_path / "voc" / "Annotations" / "b.xml").read_text()
    # and again: VOC -> internal -> VOC gives the same text
    write_voc(back, tmp_path / "voc2", split="train", images="link")
    assert (tmp_path / "voc2" / "JPEGImages" / "a.jpg").is_symlink()
    for stem in ("a", "b"):
        assert (tmp_path / "voc" / "Annotations" / f"{stem}.xml").read_text() == (
            tmp_path / "voc2" / "Annotations" / f"{stem}.xml"
        ).read_text()


def test_write_voc_needs_the_images(tmp_path):
    ds = Dataset(["x"], [Sample("s", tmp_path / "missing.jpg", 10, 10, [[0, 0, 5, 5]], [1])])
    with pytest.raises(ImageError, match="image file not found"):
        write_voc(ds, tmp_path / "voc")


def test_box_poking_out_by_rounding_is_clipped_and_reported(tmp_path):
    folder = sample_folder(tmp_path / "f", [("a", [("dog", 0, 1, 41, 30)])])
    ds = load_dataset(folder)
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 40, 30]])
    assert len(ds.repairs) == 1 and "clipped" in ds.repairs[0][1]


@pytest.mark.parametrize(
    "objects, message",
    [
        ([("dog", 10, 10, 5, 20)], "zero area"),
        ([("dog", 10, 10, 9, 20)], "zero area"),
        ([("dog", 10, 10, 45, 20)], "outside the 40x30 image"),
        ([("dog", -3, 10, 20, 20)], "outside the 40x30 image"),
        ([("dog", 1, 1, "ten", 5)], "needs numbers"),
    ],
)
def test_bad_boxes_raise_naming_the_file_or_are_skipped(tmp_path, objects, message):
    folder = sample_folder(tmp_path / "f", [("good", [("cat", 1, 1, 5, 5)]), ("bad", objects)])
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(folder)
    assert e.value.path == str(folder / "bad.xml")
    ds = load_dataset(folder, skip_bad=True)
    assert [s.id for s in ds] == ["good"]
    assert ds.skipped[0][0] == str(folder / "bad.xml") and message in ds.skipped[0][1]


def test_malformed_xml(tmp_path):
    folder = sample_folder(tmp_path / "f", ITEMS)
    (folder / "b.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match="malformed XML") as e:
        load_dataset(folder)
    assert e.value.path == str(folder / "b.xml")
    assert len(load_dataset(folder, skip_bad=True)) == 2


def test_size_mismatch_and_missing_or_corrupt_images(tmp_path):
    folder = sample_folder(tmp_path / "f", [("a", [("dog", 1, 1, 5, 5)], (50, 30))])
    with pytest.raises(DatasetError, match="annotated size 50x30 differs from the image's 40x30"):
        load_dataset(folder)
    assert len(load_dataset(folder, check_images=False)) == 1  # the fast path trusts <size>
    (folder / "a.xml").write_text(xml("a.jpg", 40, 30, [("dog", 1, 1, 5, 5)]))
    (folder / "a.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        load_dataset(folder)
    (folder / "a.jpg").unlink()
    with pytest.raises(ImageError, match="no image for it"):
        load_dataset(folder)


def test_size_taken_from_the_image_when_the_xml_has_none(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    image(folder / "a.png", 33, 22)
    (folder / "a.xml").write_text(xml("a.png", None, None, [("dog", 1, 1, 33, 22)]))
    s = load_dataset(folder, check_images=False)[0]
    assert (s.width, s.height) == (33, 22) and s.image_path.name == "a.png"


def test_duplicate_ids(tmp_path):
    root = voc_root(tmp_path / "voc", ITEMS, {"train": ["a", "b", "a"]})
    with pytest.raises(DatasetError, match="line 3: duplicate id 'a'"):
        load_dataset(root, split="train")
    ds = load_dataset(root, split="train", skip_bad=True)
    assert [s.id for s in ds] == ["a", "b"] and len(ds.skipped) == 1
    folder = sample_folder(tmp_path / "f", ITEMS)
    image(folder / "a.png")
    with pytest.raises(DatasetError, match="more than one image for sample 'a'") as e:
        load_dataset(folder)
    assert f"{folder / 'a.jpg'} and {folder / 'a.png'}" in str(e.value)  # the stem and both files


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no VOC .xml"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="split applies to VOC roots"):
        load_dataset(sample_folder(tmp_path / "f", ITEMS), split="train")


def test_cards_train():
    if not CARDS.is_dir():
        pytest.skip("../shared/data/cards/train is absent")
    ds = load_dataset(CARDS)
    assert len(ds) == 296 and sum(len(s.boxes) for s in ds) == 527
    assert ds.classes == sorted(["nine", "ten", "jack", "queen", "king", "ace"])
    assert not ds.skipped and not ds.repairs
    s = next(s for s in ds if s.id == "IMG_2385")
    np.testing.assert_array_equal(s.boxes, [[91, 182, 223, 348]])  # <bndbox> 92 183 223 348
    assert ds.name_of(s.labels[0]) == "king"


@pytest.mark.parametrize("text, difficult", [("0", False), ("1", True), ("true", True), ("False", False), ("", False)])
def test_difficult_text(tmp_path, text, difficult):
    folder = sample_folder(tmp_path / "f", [("a", [("dog", 1, 1, 5, 5, text)])])
    assert load_dataset(folder)[0].difficult.tolist() == [difficult]


@pytest.mark.parametrize("text", ["yes", "2", "0.0"])
def test_other_difficult_text_is_an_error_not_true(tmp_path, text):
    folder = sample_folder(tmp_path / "f", [("a", [("dog", 1, 1, 5, 5, text)])])
    with pytest.raises(DatasetError, match=f"object 1 'dog': <difficult> must be 0 or 1, not '{text}'") as e:
        load_dataset(folder)
    assert e.value.path == str(folder / "a.xml")


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_huge_numbers_are_errors_without_overflow_warnings(tmp_path):
    folder = sample_folder(tmp_path / "f", [("a", [("dog", 1e300, 1, 1e300, 5)])])
    with pytest.raises(DatasetError, match=r"box \[1e\+300 0 1e\+300 5\] .* zero area"):
        load_dataset(folder)
    sample_folder(folder, [("a", [("dog", 1, 1, 1e300, 5)])])
    with pytest.raises(DatasetError, match="lies outside the 40x30 image"):
        load_dataset(folder)
    (folder / "a.xml").write_text(xml("a.jpg", "inf", 30, [("dog", 1, 1, 5, 5)]))  # unusable <size>: the image's
    assert (load_dataset(folder, check_images=False)[0].width, load_dataset(folder)[0].height) == (40, 30)


@pytest.mark.parametrize("filename", ["../secret.jpg", "/etc/passwd", "sub/../../secret.jpg"])
def test_voc_filename_must_stay_inside_the_image_folder(tmp_path, filename):
    folder = tmp_path / "f"
    folder.mkdir()
    image(tmp_path / "secret.jpg")
    (folder / "a.xml").write_text(xml(filename, 40, 30, [("dog", 1, 1, 5, 5)]))
    for check in (True, False):
        with pytest.raises(DatasetError, match=f"<filename> '{filename}' leaves the image folder {folder}") as e:
            load_dataset(folder, check_images=check)
        assert e.value.path == str(folder / "a.xml")
    if filename == "../secret.jpg":
        assert load_dataset(folder, allow_outside_images=True)[0].image_path == folder / filename
    inside = folder / Path(filename).name  # an image inside the folder by that name is used: fine
    inside.write_bytes((tmp_path / "secret.jpg").read_bytes())
    assert load_dataset(folder)[0].image_path == inside


def test_exif_rotated_image_is_named_in_the_size_error(tmp_path):
    from PIL import Image

    folder = tmp_path / "f"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (30, 40)).save(folder / "a.jpg", exif=exif.tobytes())  # stored 30x40, displayed 40x30
    (folder / "a.xml").write_text(xml("a.jpg", 40, 30, [("dog", 1, 1, 35, 25)]))
    with pytest.raises(DatasetError, match="annotated size 40x30 differs from the image's 30x40 \\(EXIF orientation 8"):
        load_dataset(folder)


def test_the_common_voc_variants_are_voc_roots(tmp_path):
    """Item 5: supervision (and many Kaggle sets) write annotations/ + images/; a COCO set's
    annotations/ of .json files is not VOC."""
    root = voc_root(tmp_path / "voc", ITEMS, {"train": ["a", "b"]})
    expected = load_dataset(root)
    (root / "Annotations").rename(root / "annotations")
    (root / "JPEGImages").rename(root / "images")
    assert dataset_kind(root) == "voc"
    back = load_dataset(root)
    assert back.classes == expected.classes and [s.id for s in back] == ["a", "b", "c"]
    for s, t in zip(expected, back):
        np.testing.assert_array_equal(s.boxes, t.boxes)
        assert t.image_path == root / "images" / f"{s.id}.jpg"
    assert [s.id for s in load_dataset(root, split="train")] == ["a", "b"]
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances.json").write_text("{}")
    assert dataset_kind(coco) == "folder"
