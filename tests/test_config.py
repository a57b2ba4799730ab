"""Configuration: every value type-checked and range-checked when a config is loaded, before
any work; one merge rule for every caller; typed proposer configs chosen by ``method``."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import torch

from rcnn.cli import main
from rcnn.commands.train import config_from_args
from rcnn.config import from_dict, merge, to_dict
from rcnn.detectors import RCNN, DetectorConfig, load_config
from rcnn.detectors.base import MODEL_FORMAT, MODEL_VERSION
from rcnn.errors import ConfigError, ModelError
from rcnn.proposals import (
    PROPOSERS,
    ProposalsConfig,
    Proposer,
    SelectiveSearch,
    SelectiveSearchConfig,
    SlidingWindowConfig,
    SlidingWindows,
    make_proposer,
)

# -- type checks, generic -----------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    size: int = 1


@dataclass(frozen=True)
class Toy:
    count: int = 0
    rate: float = 0.5
    flag: bool = False
    name: str = "x"
    limit: int | None = None
    sizes: tuple[int, ...] = ()
    pair: tuple[int, str] = (0, "a")
    loose: tuple = ()
    kind: Literal["a", "b"] = "a"
    inner: Inner = field(default_factory=Inner)


def test_from_dict_accepts_well_typed_values_and_converts_lists():
    toy = from_dict(
        Toy,
        {
            "count": 3,
            "rate": 2,
            "flag": True,
            "limit": 4,
            "sizes": [1, 2],
            "pair": [5, "b"],
            "loose": [[1, 2], [3]],
            "kind": "b",
            "inner": {"size": 7},
        },
    )
    assert toy == Toy(3, 2, True, "x", 4, (1, 2), (5, "b"), ((1, 2), (3,)), "b", Inner(7))
    assert isinstance(toy.rate, int)  # ints stay ints in float fields: cache keys of old settings keep
    assert from_dict(Toy, {"limit": None}).limit is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("count", 2.5, "count = 2.5: expected an integer"),
        ("count", True, "count = true: expected an integer"),
        ("count", "3", 'count = "3": expected an integer'),
        ("rate", "high", 'rate = "high": expected a number'),
        ("rate", False, "rate = false: expected a number"),
        ("rate", math.inf, "rate = Infinity: expected a finite number"),
        ("rate", math.nan, "rate = NaN: expected a finite number"),
        ("flag", "no", 'flag = "no": expected true or false'),
        ("flag", 1, "flag = 1: expected true or false"),
        ("name", 5, "name = 5: expected a string"),
        ("limit", 1.5, "limit = 1.5: expected an integer"),
        ("sizes", 3, "sizes = 3: expected a list of integers"),
        ("sizes", [1, "2"], 'sizes[1] = "2": expected an integer'),
        ("pair", [1, 2], "pair[1] = 2: expected a string"),
        ("pair", [1], "pair = [1]: expected a list of 2 (an integer, a string)"),
        ("loose", "ab", 'loose = "ab": expected a list'),
        ("kind", "c", 'kind = "c": expected one of "a", "b"'),
        ("inner", 5, "inner = 5: expected a table"),
    ],
)
def test_from_dict_names_the_key_the_value_and_what_is_expected(key, value, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Toy, {key: value}, where="x.toml", table="toy")
    assert str(e.value) == f"x.toml: toy.{message}"


def test_nested_tables_are_named_by_their_dotted_path():
    with pytest.raises(ConfigError, match=r'^x.toml: inner.size = "big": expected an integer$'):
        from_dict(Toy, {"inner": {"size": "big"}}, where="x.toml")
    with pytest.raises(ConfigError, match=r"^x.toml: inner: unknown key\(s\) colour; known: size$"):
        from_dict(Toy, {"inner": {"colour": 1}}, where="x.toml")


# -- the detector's config: each bad value of the issue, from a TOML file -------------------------

BAD = [
    ('score_threshold = "high"', 'score_threshold = "high": expected a number'),
    ("max_detections = 2.5", "max_detections = 2.5: expected an integer"),
    ("max_detections = 0", "max_detections = 0: expected an integer >= 1"),
    ("[features]\ncrop_size = 64.7", "features.crop_size = 64.7: expected an integer"),
    ("[features]\ncrop_size = 0", "features.crop_size = 0: expected an integer >= 32"),
    ("[features]\nbatch_size = 0", "features.batch_size = 0: expected an integer >= 1"),
    ("[features]\nfrozen = 1", "features.frozen = 1: expected true or false"),
    ("[proposals]\nmax_boxes = 50.5", "proposals.max_boxes = 50.5: expected an integer"),
    ('[proposals]\nmethod = "sliding_window"\nstride = 1.5', "proposals.stride = 1.5: expected a number in (0, 1]"),
    ('[proposals]\nks = "100"', 'proposals.ks = "100": expected a list of numbers'),
    (
        '[proposals]\nmethod = "edge_boxes"',
        'proposals.method = "edge_boxes": expected one of "selective_search", "sliding_window"',
    ),
    ('[proposals]\nmethod = "sliding_window"\nmode = "fast"', "proposals: unknown key(s) mode"),
    ('workers = "many"', 'workers = "many": expected an integer'),
    ("workers = -1", "workers = -1: expected an integer >= 0"),
    ("cache_dir = 5", "cache_dir = 5: expected a string"),
    ('box_regression = "no"', 'box_regression = "no": expected true or false'),
    ("nms_threshold = nan", "nms_threshold = NaN: expected a finite number"),
    ("nms_threshold = 0", "nms_threshold = 0: expected an IoU in (0, 1]"),
    ("features = 5", "features = 5: expected a table"),
    ("proposals = 5", "proposals = 5: expected a table"),
    ("[svm]\nC = true", "svm.C = true: expected a number"),
    ("[svm]\nneg_iou = 1.5", "svm.neg_iou = 1.5: expected an IoU in (0, 1)"),
    ("[svm]\nfeature_norm = -1", "svm.feature_norm = -1: expected a number > 0"),
    ("[finetune]\nfrozen = [1]", "finetune.frozen[0] = 1: expected a string"),
    ("[finetune]\npositive_iou = 1.5", "finetune.positive_iou = 1.5: expected an IoU in (0, 1]"),
    ("[finetune]\nbatch_positives = 0", "finetune.batch_positives = 0: expected an integer >= 1"),
    ("[regression]\nmin_iou = 1", "regression.min_iou = 1: expected an IoU in [0, 1)"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_load_config_rejects_each_bad_value_naming_file_key_value(tmp_path, text, message):
    path = tmp_path / "x.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: {message}")
    assert "\n" not in str(e.value)


def test_cli_train_rejects_a_bad_set_with_one_line_before_any_work(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"  # the config is checked before the dataset is even read
    for option, message in [
        ("features.crop_size=64.7", "features.crop_size = 64.7: expected an integer"),
        ("box_regression=no", 'box_regression = "no": expected true or false'),
        ("features=5", "features = 5: expected a table"),
        ("max_detections=2.5", "max_detections = 2.5: expected an integer"),
    ]:
        code = main(["--quiet", "train", str(missing), "--set", option, "--out", str(tmp_path / "m.pt")])
        out, err = capsys.readouterr()
        assert code == 1, option
        assert err.count("\n") == 1 and message in err, err
        assert "Traceback" not in err and not (tmp_path / "m.pt").exists()
    assert main(["train", str(missing), "--set", "features=5", "--set", "features.crop_size=64", "--out", "m.pt"]) == 1
    assert "not a table" in capsys.readouterr().err


def test_a_model_file_with_a_bad_saved_config_fails_with_a_clean_model_error(tmp_path):
    path = tmp_path / "old.pt"
    config = {**to_dict(DetectorConfig()), "score_threshold": "high"}
    torch.save({"format": MODEL_FORMAT, "version": MODEL_VERSION, "config": config}, path)
    with pytest.raises(ModelError, match=r'old.pt: .*score_threshold = "high": expected a number'):
        RCNN.load(path)


def test_a_config_saved_before_typed_proposers_still_loads():
    old = {**to_dict(DetectorConfig()), "proposals": {"method": "sliding_window", "max_boxes": 150}}
    config = from_dict(DetectorConfig, old, where="m.pt: config")
    assert config.proposals == SlidingWindowConfig(max_boxes=150)
    old["proposals"] = {"method": "selective_search"}  # the old default table, read as a model file is
    assert from_dict(DetectorConfig, old, as_saved=True).proposals == SelectiveSearchConfig()
    # a config file's table is laid over the detector's defaults instead (500 boxes)
    assert from_dict(DetectorConfig, old).proposals == SelectiveSearchConfig(max_boxes=500)
    saved = to_dict(config)  # what a model stores now: a plain table with its method
    assert saved["proposals"]["method"] == "sliding_window" and from_dict(DetectorConfig, saved) == config


# -- typed proposer configs and the registry ----------------------------------------------------


def test_proposals_table_becomes_the_config_of_its_method():
    assert DetectorConfig().proposals == SelectiveSearchConfig(max_boxes=500)  # the detector's default
    fast = load_config(None, {"proposals": {"mode": "fast"}}).proposals
    assert fast == SelectiveSearchConfig(mode="fast", max_boxes=500)
    windows = load_config(None, {"proposals": {"method": "sliding_window", "scales": [0.5]}}).proposals
    assert windows == SlidingWindowConfig(scales=(0.5,)) and windows.method == "sliding_window"
    # it still reads like the table it came from, for code written against the dict
    assert windows["method"] == "sliding_window" and windows.get("max_boxes") == 2000 and "mode" not in windows
    assert dict(windows) == dataclasses.asdict(windows) and list(windows)[0] == "method"
    assert make_proposer(**windows).config == windows == make_proposer(windows).config
    assert DetectorConfig(proposals={"method": "sliding_window"}).proposals == SlidingWindowConfig()
    with pytest.raises(ConfigError, match=r"method = \"selective_search\": expected \"sliding_window\""):
        from_dict(SlidingWindowConfig, {"method": "selective_search"})


def test_registry_maps_method_to_config_and_proposer_sharing_one_base():
    from rcnn.proposals import RPNProposals, RPNProposalsConfig

    assert PROPOSERS == {
        "selective_search": (SelectiveSearchConfig, SelectiveSearch),
        "sliding_window": (SlidingWindowConfig, SlidingWindows),
        "rpn": (RPNProposalsConfig, RPNProposals),  # needs a model file: tests/test_faster_rcnn.py
    }
    for method, (config_class, proposer_class) in list(PROPOSERS.items())[:2]:
        proposer = make_proposer(method)
        assert type(proposer) is proposer_class and isinstance(proposer, Proposer)
        assert proposer.method == method == config_class().method
        assert proposer.config == config_class() and repr(proposer).startswith(f"{proposer_class.__name__}(")
        assert proposer.key() == make_proposer(**proposer.params()).key()
    assert set(ProposalsConfig.__args__) == {SelectiveSearchConfig, SlidingWindowConfig, RPNProposalsConfig}
    with pytest.raises(ConfigError, match="max_boxes = 2.5: expected an integer"):
        make_proposer("sliding_window", max_boxes=2.5)
    with pytest.raises(ConfigError, match="max_boxes = 2.5: expected an integer"):
        SelectiveSearch(max_boxes=2.5)


# -- one merge rule -----------------------------------------------------------------------------


def test_merge_rule_a_changed_method_replaces_the_table_otherwise_key_by_key():
    base = {"proposals": {"method": "selective_search", "mode": "fast", "max_boxes": 500}, "features": {"pool": 2}}
    before = repr(base)
    assert merge(base, {"proposals": {"max_boxes": 7}}, cls=DetectorConfig)["proposals"] == {
        "method": "selective_search",
        "mode": "fast",
        "max_boxes": 7,
    }
    assert merge(base, {"proposals": {"method": "sliding_window"}}, cls=DetectorConfig)["proposals"] == {
        "method": "sliding_window"
    }  # mode and max_boxes of the other method dropped
    # a table without method is the default method's: naming that method merges
    implicit = {"proposals": {"mode": "fast"}}
    assert merge(implicit, {"proposals": {"method": "selective_search", "max_boxes": 7}}, cls=DetectorConfig) == {
        "proposals": {"mode": "fast", "method": "selective_search", "max_boxes": 7}
    }
    assert merge(implicit, {"proposals": {"method": "sliding_window"}}, cls=DetectorConfig) == {
        "proposals": {"method": "sliding_window"}
    }
    assert merge(base, {"features": {"crop_size": 64}}, None, cls=DetectorConfig)["features"] == {
        "pool": 2,
        "crop_size": 64,
    }
    assert repr(base) == before


def test_set_method_over_a_config_setting_mode_works_like_the_harness(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[proposals]\nmethod = "selective_search"\nmode = "fast"\nmax_boxes = 500\n')
    args = argparse.Namespace(config=str(path), set=["proposals.method=sliding_window", "proposals.max_boxes=50"])
    config = config_from_args(args)
    assert config.proposals == SlidingWindowConfig(max_boxes=50)
    same = load_config(path, merge({}, {"proposals": {"method": "sliding_window", "max_boxes": 50}}))
    assert config == same
    args.set = ["proposals.max_boxes=50"]
    assert config_from_args(args).proposals == SelectiveSearchConfig(mode="fast", max_boxes=50)


def test_propose_command_method_option_over_a_config_setting_mode(tmp_path, capsys):
    from rcnn.commands.propose import proposer_from_args

    path = tmp_path / "c.toml"
    path.write_text('[proposals]\nmethod = "selective_search"\nmode = "fast"\nmax_boxes = 500\n')
    args = argparse.Namespace(
        config=str(path), method="sliding_window", max_boxes=None, min_size=None, mode=None, longest_side=None
    )
    assert proposer_from_args(args).config == SlidingWindowConfig()
    args.method, args.max_boxes = None, 9
    assert proposer_from_args(args).config == SelectiveSearchConfig(mode="fast", max_boxes=9)
    path.write_text("[proposals]\nmax_boxes = 50.5\n")
    with pytest.raises(ConfigError, match=rf"^{path}: proposals.max_boxes = 50.5: expected an integer$"):
        proposer_from_args(args)


# -- the defaults: measured settings; R-CNN's paper settings one file away ----------------------

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"


def test_the_defaults_are_the_measured_cards_settings():
    defaults, cards = to_dict(load_config(None)), to_dict(load_config(CONFIGS / "cards.toml"))
    assert defaults.pop("cache_dir") == "cache" and cards.pop("cache_dir") == "data/cache"
    assert defaults == cards
    assert defaults["test_rule"] == "rcnn" and defaults["finetune"]["iterations"] == 400


def test_paper_toml_is_rcnns_settings_the_old_defaults():
    from rcnn.features.extractor import FeatureConfig
    from rcnn.heads import SVMConfig
    from rcnn.heads.softmax import FinetuneConfig

    paper = load_config(CONFIGS / "paper.toml")
    old = DetectorConfig(
        proposals=SelectiveSearchConfig(),
        features=FeatureConfig(),
        finetune=FinetuneConfig(iterations=0),
        svm=SVMConfig(),
    )
    assert paper == old
    assert (paper.proposals.max_boxes, paper.features.crop_size, paper.features.padding) == (2000, 224, 16)
    assert paper.finetune.iterations == 0 and paper.svm.C == 0.001 and paper.svm.positive_iou is None


def test_a_table_changes_only_the_keys_it_names(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[finetune]\nlr = 0.01\n[features]\nbackbone = "resnet18"\n[proposals]\nmode = "fast"\n')
    config, defaults = load_config(path), DetectorConfig()
    assert config.finetune == dataclasses.replace(defaults.finetune, lr=0.01)
    assert config.features == dataclasses.replace(defaults.features, backbone="resnet18")
    assert config.proposals == dataclasses.replace(defaults.proposals, mode="fast")
    # another proposal method starts from its own defaults
    assert load_config(None, {"proposals": {"method": "sliding_window"}}).proposals == SlidingWindowConfig()
