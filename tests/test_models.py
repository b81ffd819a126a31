"""Model registry and factories: every registered model builds, runs and is seed-deterministic."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from kd_ray.errors import CheckpointError, ConfigError
from kd_ray.models import MODELS, create_model, list_models
from kd_ray.models import vit as vit_module

ALL_MODELS = list_models()
PRETRAINABLE = ["resnet18", "resnet50", "vit_b_16", "vit_b_32"]


def _input_shape(name: str) -> tuple[int, int]:
    """(channels, side) of a small test input: digits-like for CNNs, 32 px for the rest."""
    return (1, 8) if name.startswith("cnn") else (3, 32)


def _build(name: str, seed: int, num_classes: int = 5) -> nn.Module:
    channels, side = _input_shape(name)
    torch.manual_seed(seed)
    return create_model(name, num_classes=num_classes, in_channels=channels, image_size=side)


def test_registry_lists_the_families() -> None:
    assert {"cnn_tiny", "cnn_small", "resnet18", "resnet50", "resnet18_cifar", "resnet50_cifar"} <= set(
        ALL_MODELS
    )
    assert {"vit_b_16", "vit_b_32", "vit_tiny"} <= set(ALL_MODELS)
    assert list_models("resnet*") == ["resnet18", "resnet18_cifar", "resnet50", "resnet50_cifar"]
    assert len(MODELS) == len(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape(name: str) -> None:
    channels, side = _input_shape(name)
    model = _build(name, seed=0).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, channels, side, side))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


# ViT-B builds take seconds each on CPU, and their init is the same torchvision code as vit_tiny's.
@pytest.mark.parametrize("name", [n for n in ALL_MODELS if not n.startswith("vit_b")])
def test_init_is_seed_deterministic(name: str) -> None:
    state, again, other = (_build(name, seed=s).state_dict() for s in (0, 0, 1))
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert any(not torch.equal(state[k], other[k]) for k in state if state[k].is_floating_point())


@pytest.mark.parametrize("name", ["cnn_tiny", "cnn_medium", "resnet18", "resnet18_cifar", "vit_tiny"])
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_in_channels(name: str, in_channels: int) -> None:
    side = 16
    model = create_model(name, num_classes=3, in_channels=in_channels, image_size=side)
    with torch.no_grad():
        assert model(torch.randn(2, in_channels, side, side)).shape == (2, 3)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        create_model("resnet1000", num_classes=10)
    message = str(info.value)
    assert "resnet1000" in message
    assert all(name in message for name in ALL_MODELS)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"num_classes": 10, "in_channels": 0}, {"num_classes": 10, "image_size": -1}],
)
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        create_model("cnn_tiny", **kwargs)


def test_vit_image_size_must_fit_the_patch_grid() -> None:
    with pytest.raises(ConfigError, match="multiple of the patch size 4"):
        create_model("vit_tiny", num_classes=3, image_size=30)


@pytest.mark.parametrize("name", sorted(set(ALL_MODELS) - set(PRETRAINABLE)))
def test_models_without_checkpoints_reject_pretrained(name: str) -> None:
    with pytest.raises(ConfigError, match="no pretrained weights"):
        create_model(name, num_classes=3, pretrained=True)


def test_unknown_weights_member() -> None:
    with pytest.raises(ConfigError, match="IMAGENET1K_V2"):
        create_model("resnet50", num_classes=3, pretrained="IMAGENET22K")


@pytest.fixture
def offline_torch_home(tmp_path, monkeypatch):
    """An empty torch.hub cache, and every download sent to a closed local port.

    The proxy makes the "no network" case real on any machine (and keeps CI from downloading
    45 MB); urllib honours it, so the failure is an immediate connection refusal.
    """
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.mark.parametrize("name", PRETRAINABLE)
def test_pretrained_without_network_is_one_line_checkpoint_error(name: str, offline_torch_home) -> None:
    start = time.monotonic()
    with pytest.raises(CheckpointError) as info:
        create_model(name, num_classes=10, pretrained=True)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert "\n" not in message
    assert str(offline_torch_home / "hub" / "checkpoints") in message
    assert "https://download.pytorch.org/models/" in message
    assert "TORCH_HOME" in message


def _cache_resnet18_checkpoint(torch_home) -> dict[str, torch.Tensor]:
    import torchvision

    torch.manual_seed(123)
    state = torchvision.models.resnet18(num_classes=1000).state_dict()
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet18-f37072fd.pth")
    return state


def test_pretrained_from_cache_replaces_head_and_adapts_stem(offline_torch_home) -> None:
    state = _cache_resnet18_checkpoint(offline_torch_home)
    model = create_model("resnet18", num_classes=10, pretrained=True)
    loaded = model.state_dict()
    assert model.fc.out_features == 10
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if not k.startswith("fc."))

    grey = create_model("resnet18", num_classes=10, in_channels=1, pretrained="IMAGENET1K_V1")
    # A grey image is R=G=B, so summed RGB filters give the pretrained response unchanged.
    torch.testing.assert_close(grey.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))


def test_corrupt_cached_checkpoint_is_checkpoint_error(offline_torch_home) -> None:
    checkpoints = offline_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        create_model("resnet18", num_classes=10, pretrained=True)


def test_pretrained_vit_resizes_position_embeddings(monkeypatch) -> None:
    torch.manual_seed(0)
    reference = create_model("vit_b_32", num_classes=1000, image_size=224).state_dict()
    monkeypatch.setattr(vit_module, "load_weights", lambda name, weights: dict(reference))
    model = create_model("vit_b_32", num_classes=10, pretrained=True, image_size=64)
    assert model.encoder.pos_embedding.shape == (1, 1 + 2 * 2, 768)
    torch.testing.assert_close(model.encoder.pos_embedding[:, :1], reference["encoder.pos_embedding"][:, :1])
    torch.testing.assert_close(model.conv_proj.weight, reference["conv_proj.weight"])
    assert model.heads.head.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", list_models("cnn_*"))
def test_small_cnns_are_batch_independent(name: str) -> None:
    """No BatchNorm or dropout: a 2-shard DDP step equals the whole-batch step on CPU.

    The per-sample gradient sum over two shards must equal the whole batch's gradient, which
    batch statistics (BatchNorm) or random masks (dropout) would break.
    """
    model = _build(name, seed=0, num_classes=4)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)) for m in model.modules())
    x, y = torch.randn(8, 1, 8, 8), torch.arange(8) % 4

    def grads(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        model.zero_grad()
        for xb, yb in batches:
            (nn.functional.cross_entropy(model(xb), yb, reduction="sum") / len(x)).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = grads([(x, y)])
    sharded = grads([(x[:4], y[:4]), (x[4:], y[4:])])
    for a, b in zip(whole, sharded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
