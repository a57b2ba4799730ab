"""The detectors, peers built from the same stages: `RCNN` (Girshick et al. 2014),
`FastRCNN` (Girshick 2015), `FasterRCNN` (Ren et al. 2015), `MaskRCNN` (He et al. 2017), and what
they share (`rcnn.detectors.base`: common settings, the model file, post-processing;
`rcnn.detectors.trace`: a detection's stages as plain data, what `Detector.trace` returns).

Which detector a config builds is its ``detector`` field (``"rcnn"`` by default);
`load_config` reads a TOML file into that detector's config, `build_detector` makes an
unfitted detector from a config, `load_model` reads any detector's model file.
"""

from __future__ import annotations

from rcnn.config import from_dict, load_toml, merge
from rcnn.detectors.base import CommonConfig, Detector, check_trainable, read_model
from rcnn.detectors.centernet import CenterNet, CenterNetConfig
from rcnn.detectors.fast_rcnn import FastRCNN, FastRCNNConfig
from rcnn.detectors.faster_rcnn import FasterRCNN, FasterRCNNConfig
from rcnn.detectors.localizer import Localizer, LocalizerConfig
from rcnn.detectors.mask_rcnn import MaskRCNN, MaskRCNNConfig
from rcnn.detectors.rcnn import RCNN, DetectorConfig
from rcnn.detectors.ssd import SSD, SSDConfig
from rcnn.detectors.trace import Trace
from rcnn.detectors.yolo import YOLO, YOLOConfig
from rcnn.errors import ConfigError, ModelError

__all__ = [
    "DETECTORS",
    "RCNN",
    "FastRCNN",
    "FastRCNNConfig",
    "FasterRCNN",
    "FasterRCNNConfig",
    "Localizer",
    "MaskRCNN",
    "MaskRCNNConfig",
    "LocalizerConfig",
    "DetectorConfig",
    "SSD",
    "SSDConfig",
    "YOLO",
    "YOLOConfig",
    "RCNNConfig",
    "CenterNet",
    "CenterNetConfig",
    "CommonConfig",
    "Detector",
    "Trace",
    "build_detector",
    "check_trainable",
    "load_config",
    "load_model",
]

RCNNConfig = DetectorConfig
DETECTORS: dict[str, type[Detector]] = {
    RCNN.kind: RCNN,
    FastRCNN.kind: FastRCNN,
    FasterRCNN.kind: FasterRCNN,
    Localizer.kind: Localizer,
    MaskRCNN.kind: MaskRCNN,
    YOLO.kind: YOLO,
    SSD.kind: SSD,
    CenterNet.kind: CenterNet,
}


def detector_class(kind, where: str = "config") -> type[Detector]:
    """The detector class a config's ``detector`` value names."""
    if kind not in DETECTORS:
        raise ConfigError(f"{where}: detector = {kind!r}: expected one of {', '.join(map(repr, DETECTORS))}")
    return DETECTORS[kind]


def load_config(path=None, overrides: dict | list | tuple | None = None) -> CommonConfig:
    """The config of the detector a TOML file names (``detector = ...``; None: the defaults,
    an R-CNN's) with `overrides` (one dict of tables, ``{"features": {"crop_size": 128}}``,
    or a sequence of them, in order) merged in by `rcnn.config.merge` (tables key by key; a
    different ``proposals.method`` replaces the table). Every value is checked before
    anything runs: unknown keys, wrong types and values out of range raise `ConfigError`
    naming the file (and the overrides), key and value."""
    values = load_toml(path) if path else {}
    values.pop("experiment", None)  # experiments keep their own settings in [experiment]
    if isinstance(overrides, dict) or overrides is None:
        overrides = [overrides]
    where = str(path or "defaults") + (" + overrides" if any(overrides) else "")
    kind = values.get("detector", "rcnn")
    for changes in overrides:
        kind = (changes or {}).get("detector", kind)
    cls = detector_class(kind, where).config_class
    return from_dict(cls, merge(values, *overrides, cls=cls), where=where)


def build_detector(config: CommonConfig) -> Detector:
    """An unfitted detector of the kind `config` names."""
    return detector_class(config.detector)(config)


def load_model(path, device: str | None = None) -> Detector:
    """A fitted detector of any kind from its model file (`Detector.save`), to run on
    `device` (``auto``, ``cpu``, ``cuda``; None: the device its config names)."""
    state = read_model(path)
    kind = state.get("detector", "rcnn")  # files from before Fast R-CNN are R-CNN's
    if kind not in DETECTORS:
        raise ModelError(f"{path}: a model of detector {kind!r}, which this rcnn does not know")
    return DETECTORS[kind].from_state(state, path, device)
