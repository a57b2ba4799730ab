"""Bad input at the command line, as a table: each case builds its input in a scratch folder,
runs one `rcnn` command in this process and states the exit status and what the output
must say: one line naming the file for an error (no traceback), or the skip or note. Cases
that used to hang (a FIFO, ``/dev/zero``) run under an alarm, so a hang fails the test.

The table is meant to grow: a new command or reader is tried against every case here."""

from __future__ import annotations

import os
import shutil
import signal
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from rcnn.cli import main


@dataclass
class Case:
    name: str
    argv: object  # (env) -> list of arguments after `rcnn --quiet`
    says: str  # printed (stdout or stderr): the error line, the skip or the note
    status: int = 1
    setup: object = None  # (env) -> None: make the bad input
    one_line: bool = True  # the error is one line on stderr (argparse's own errors are two)
    marks: list = field(default_factory=list)


class Env:
    """Paths of one case: ``tmp`` (scratch), ``model`` (a tiny R-CNN), ``synth`` (its data)."""

    def __init__(self, tmp: Path, trained: Path):
        self.tmp, self.model, self.synth = tmp, str(trained / "model.pt"), trained / "synth"
        self.image = sorted((self.synth / "JPEGImages").glob("*.jpg"))[0]

    def folder(self, name: str = "images") -> Path:
        """A folder holding one good image, for `detect`."""
        folder = self.tmp / name
        folder.mkdir(exist_ok=True)
        shutil.copy(self.image, folder / self.image.name)
        return folder

    def file(self, name: str = "afile", data: bytes = b"x") -> Path:
        path = self.tmp / name
        path.write_bytes(data)
        return path

    def yolo(self, classes: bytes = b"circle\n") -> Path:
        root = self.tmp / "yolo"
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        shutil.copy(self.image, root / "images" / "a.jpg")
        (root / "classes.txt").write_bytes(classes)
        return root


def detect(env, *more, folder=None):
    return ["detect", env.model, str(folder or env.tmp / "images"), "--out", str(env.tmp / "d.json"), *more]


TINY = [
    ("proposals.method", "'sliding_window'"),
    ("proposals.max_boxes", "40"),
    ("features.backbone", "'resnet18'"),
    ("features.weights", "'random'"),
    ("features.crop_size", "32"),
    ("finetune.iterations", "0"),
    ("workers", "1"),
]


def train(env, *sets, out=None):
    """``rcnn train`` of the synthetic set with the tiny R-CNN's settings (none when `sets`
    name another detector) and `sets` after them."""
    tiny = [] if any(key == "detector" for key, _ in sets) else TINY
    sets = [*tiny, ("cache_dir", f"'{env.tmp / 'cache'}'"), *sets]
    args = [a for key, value in sets for a in ("--set", f"{key}={value}")]
    return ["train", str(env.synth), "--split", "train", "--out", str(out or env.tmp / "m.pt"), *args]


def mkfifo(path: Path) -> None:
    os.mkfifo(path)


CASES = [
    # -- a folder given to detect: what lies in it named like an image --------------------------
    Case(
        "detect: a sub-folder named x.jpg",
        lambda e: detect(e),
        "x.jpg: cannot read image: is a folder",
        setup=lambda e: (e.folder() / "x.jpg").mkdir(),
    ),
    Case(
        "detect --skip-bad: a sub-folder named x.jpg",
        lambda e: detect(e, "--skip-bad"),
        "skipped 1 unreadable image(s): x",
        status=0,
        setup=lambda e: (e.folder() / "x.jpg").mkdir(),
    ),
    Case(
        "detect --skip-bad: a broken symlink",
        lambda e: detect(e, "--skip-bad"),
        "skipped 1 unreadable image(s): y",
        status=0,
        setup=lambda e: (e.folder() / "y.jpg").symlink_to(e.tmp / "nowhere.jpg"),
    ),
    Case(
        "detect --skip-bad: a symlink to /dev/zero (hashed forever before)",
        lambda e: detect(e, "--skip-bad"),
        "skipped 1 unreadable image(s): z",
        status=0,
        setup=lambda e: (e.folder() / "z.jpg").symlink_to("/dev/zero"),
    ),
    Case(
        "detect: a FIFO named like an image",
        lambda e: detect(e),
        "f.jpg: cannot read image: not a regular file (a FIFO)",
        setup=lambda e: mkfifo(e.folder() / "f.jpg"),
    ),
    Case(
        "detect: a FIFO as the model file",
        lambda e: ["detect", str(e.tmp / "fifo.pt"), str(e.image), "--out", str(e.tmp / "d.json")],
        "fifo.pt: not a regular file (a FIFO)",
        setup=lambda e: mkfifo(e.tmp / "fifo.pt"),
    ),
    # -- label files and class lists ------------------------------------------------------------
    Case(
        "data convert: a classes.txt that is not UTF-8",
        lambda e: ["data", "convert", str(e.tmp / "yolo"), str(e.tmp / "out.json")],
        "classes.txt: cannot read: 'utf-8' codec can't decode",
        setup=lambda e: e.yolo(b"\xff\xfe\x00circle\n"),
    ),
    Case(
        "data check --classes: a class-list file that is not UTF-8",
        lambda e: ["data", "check", str(e.synth), "--classes", str(e.tmp / "cls.txt")],
        "cls.txt: cannot read the class list",
        setup=lambda e: e.file("cls.txt", b"\xff\xfe\x00circle\n"),
    ),
    Case(
        "data convert: a FIFO as a YOLO label file",
        lambda e: ["data", "convert", str(e.tmp / "yolo"), str(e.tmp / "out.json")],
        "a.txt: cannot read the label file: not a regular file (a FIFO)",
        setup=lambda e: mkfifo(e.yolo() / "labels" / "a.txt"),
    ),
    Case(
        "data convert: a FIFO as a VOC annotation",
        lambda e: ["data", "convert", str(e.tmp / "voc"), str(e.tmp / "out.json")],
        "a.xml: cannot read the annotation file: not a regular file (a FIFO)",
        setup=lambda e: (e.folder("voc"), mkfifo(e.tmp / "voc" / "a.xml")),
    ),
    Case(
        "evaluate: a FIFO as the COCO ground truth",
        lambda e: ["evaluate", "--gt", str(e.tmp / "gt.json"), "--detections", str(e.tmp / "d.json")],
        "gt.json: cannot read: not a regular file (a FIFO)",
        setup=lambda e: mkfifo(e.tmp / "gt.json"),
    ),
    Case(
        "train --config: a FIFO",
        lambda e: ["train", str(e.synth), "--out", str(e.tmp / "m.pt"), "--config", str(e.tmp / "c.toml")],
        "c.toml: cannot read the config file: not a regular file (a FIFO)",
        setup=lambda e: mkfifo(e.tmp / "c.toml"),
    ),
    Case(
        "train --config: a file that is not UTF-8",
        lambda e: ["train", str(e.synth), "--out", str(e.tmp / "m.pt"), "--config", str(e.tmp / "c.toml")],
        "c.toml: malformed TOML",
        setup=lambda e: e.file("c.toml", b"a = '\xff'\n"),
    ),
    # -- output paths, checked before the work --------------------------------------------------
    Case(
        "explain --out FILE",
        lambda e: ["explain", e.model, str(e.image), "--out", str(e.file())],
        "--out " + "{tmp}/afile: is a file; name a folder",
    ),
    Case(
        "propose --out FILE",
        lambda e: ["propose", str(e.synth), "--method", "sliding_window", "--out", str(e.file())],
        "--out {tmp}/afile: is a file; name a folder",
    ),
    Case(
        "detect --out DIR",
        lambda e: ["detect", e.model, str(e.image), "--out", str(e.tmp)],
        "--out {tmp}: is a folder; name the file to write",
    ),
    Case(
        "detect --out under a file",
        lambda e: ["detect", e.model, str(e.image), "--out", str(e.file() / "d.json")],
        "{tmp}/afile is a file, not a folder",
    ),
    Case("train --out DIR", lambda e: train(e, out=e.tmp), "--out {tmp}: is a folder; name the file to write"),
    Case(
        "train: cache_dir naming a file",
        lambda e: train(e, ("cache_dir", f"'{e.file()}'")),
        "cache_dir {tmp}/afile: is a file; name a folder",
    ),
    Case(
        "report --out FILE",
        lambda e: ["report", e.model, str(e.synth), "--out", str(e.file())],
        "--out {tmp}/afile: is a file; name a folder",
    ),
    # -- odd values -----------------------------------------------------------------------------
    Case(
        "explain --top -5",
        lambda e: ["explain", e.model, str(e.image), "--out", str(e.tmp / "x"), "--top", "-5"],
        "argument --top: expected an integer >= 0, got -5",
        status=2,
        one_line=False,
    ),
    Case(
        "explain --crops -5",
        lambda e: ["explain", e.model, str(e.image), "--out", str(e.tmp / "x"), "--crops", "-5"],
        "argument --crops: expected an integer >= 0, got -5",
        status=2,
        one_line=False,
    ),
    Case(
        "propose --workers -3",
        lambda e: ["propose", str(e.synth), "--out", str(e.tmp / "p"), "--workers", "-3"],
        "argument --workers: expected an integer >= 0, got -3",
        status=2,
        one_line=False,
    ),
    Case(
        "train --set with a line break and a second key",
        lambda e: train(e, ("finetune.iterations", "0\ndetector = 'fast_rcnn'")),
        "the value holds a line break; give one value per --set",
    ),
    Case(
        "train: an iteration count of 10^23",
        lambda e: train(e, ("detector", "'fast_rcnn'"), ("train.iterations", "100000000000000000000000")),
        "train.iterations = 100000000000000000000000: expected at most 10000000",
    ),
    Case(
        "train: a localiser of 0 epochs (an untrained model)",
        lambda e: [
            "train",
            str(e.synth),
            "--out",
            str(e.tmp / "m.pt"),
            "--set",
            "detector=localizer",
            "--set",
            "epochs=0",
        ],
        "epochs = 0: expected an integer >= 1 (0 would write an untrained model)",
    ),
    *[
        Case(f"train: {key} = {value}", lambda e, s=(key, value): train(e, ("detector", "'fast_rcnn'"), s), says)
        for key, value, says in [
            ("head.fc", "[1000000000]", "head.fc = [1000000000]: expected at most 16384"),
            ("roi.output_size", "5000", "roi.output_size = 5000: expected at most 64"),
            ("scale", "200000", "scale = 200000: expected at most 8192"),
            ("max_size", "200000", "max_size = 200000: expected at most 8192"),
            ("backbone.num_threads", "100000", "backbone.num_threads = 100000: expected at most 1024"),
        ]
    ],
    # -- model files ----------------------------------------------------------------------------
    Case(
        "detect: a model file carrying an unbounded setting",
        lambda e: ["detect", str(e.tmp / "absurd.pt"), str(e.image), "--out", str(e.tmp / "d.json")],
        "absurd.pt: damaged model file (ConfigError: {tmp}/absurd.pt: config: features.crop_size = 100000: "
        "expected at most 1024",
        setup=lambda e: resave(e, e.tmp / "absurd.pt", lambda s: s["config"]["features"].update(crop_size=100000)),
    ),
    Case(
        "detect: one flipped byte in a weight of the model file",
        lambda e: ["detect", str(e.tmp / "flipped.pt"), str(e.image), "--out", str(e.tmp / "d.json")],
        "flipped.pt: damaged model file: its content does not match the hash stored in it",
        setup=lambda e: flip_a_weight_byte(e, e.tmp / "flipped.pt"),
    ),
]


def resave(env, path: Path, change) -> None:
    """The tiny model's state, changed by `change(state)`, saved to `path` without a content
    hash (as a file written before the hash, or by hand)."""
    state = torch.load(env.model, weights_only=True)
    state.pop("content_hash", None)
    change(state)
    torch.save(state, path)


def flip_a_weight_byte(env, path: Path) -> None:
    """The tiny model saved with its hash, then one byte in the middle of its largest tensor's
    data flipped (torch's zip archive stores tensors uncompressed, without a check)."""
    from rcnn.detectors import load_model

    load_model(env.model).save(path)
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang("the command hung")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_one_line(case, tiny_trained, tmp_path, capsys):
    env = Env(tmp_path, tiny_trained)
    if case.setup:
        case.setup(env)
    argv = case.argv(env)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        status = main(["--quiet", *argv])
    except SystemExit as e:  # argparse's own errors
        status = e.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    out, err = capsys.readouterr()
    says = case.says.replace("{tmp}", str(tmp_path))
    assert says in out + err
    assert status == case.status
    assert "Traceback" not in err
    if case.status == 1 and case.one_line and err.startswith("rcnn "):
        assert err.count("\n") == 1, err


def test_an_old_model_file_without_the_hash_still_loads(tiny_trained, tmp_path):
    from rcnn.detectors import load_model

    env = Env(tmp_path, tiny_trained)
    resave(env, tmp_path / "old.pt", lambda s: None)
    old, new = load_model(tmp_path / "old.pt"), load_model(env.model)
    a, b = old.detect(str(env.image)), new.detect(str(env.image))
    assert torch.equal(torch.as_tensor(a.boxes), torch.as_tensor(b.boxes))


def test_the_hash_covers_every_tensor_and_value():
    from rcnn.detectors.base import content_hash

    state = {"w": torch.zeros(4), "head": {"b": torch.ones(2, dtype=torch.float16)}, "c": ["a", 2.0]}
    before = content_hash(state)
    assert (
        content_hash({"c": ["a", 2.0], "head": {"b": torch.ones(2, dtype=torch.float16)}, "w": torch.zeros(4)})
        == before
    )
    state["head"]["b"][1] = 1.0009765625  # the next float16 after 1: one bit
    assert content_hash(state) != before
    assert content_hash({**state, "head": {"b": torch.ones(2, dtype=torch.float16)}, "c": ["a", 2]}) != before
    assert content_hash({**state, "w": torch.zeros(2, 2)}) != content_hash(state)  # the shape counts


@pytest.mark.slow
def test_fast_rcnn_frozen_prefix_matching_nothing_is_noted_and_a_history_not_a_table_is_one_line(
    tiny_trained, tmp_path, capsys
):
    """A tiny Fast R-CNN (two iterations, about 15 s): a `train.frozen` prefix that matches
    no layer gets a note; a model file whose `history` is not a table gets one line."""
    env = Env(tmp_path, tiny_trained)
    sets = [
        ("detector", "'fast_rcnn'"),
        ("train.iterations", "2"),
        ("train.rois_per_image", "16"),
        ("train.frozen", "['features.0.', 'nope.']"),
        ("scale", "128"),
        ("max_size", "128"),
        ("head.fc", "[32]"),
        ("proposals.method", "'sliding_window'"),
        ("proposals.max_boxes", "40"),
        ("workers", "1"),
    ]
    assert main(["--quiet", *train(env, *sets)]) == 0
    err = capsys.readouterr().err
    assert "note: train.frozen prefix 'nope.' matches no layer, so it freezes nothing (layers: features.0." in err
    assert "'features.0.' matches" not in err
    resave_from = env.model
    env.model = str(tmp_path / "m.pt")
    resave(env, tmp_path / "history.pt", lambda s: s.update(history=[1.0, 2.0]))
    env.model = resave_from
    assert (
        main(["--quiet", "detect", str(tmp_path / "history.pt"), str(env.image), "--out", str(tmp_path / "d.json")])
        == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "history.pt: damaged model file (AttributeError" in err
