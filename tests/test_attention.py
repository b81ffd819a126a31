"""Attention maps from hooks: CAMs against hand-computed einsums, ViT CLS attention against MHA."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from kd_ray.errors import ConfigError
from kd_ray.models import capture_attention, create_model, list_models


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _resnet_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet's forward up to ``layer4``, written out independently of the hooks."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def _cnn_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.stages(model.stem(x))


@pytest.mark.parametrize(
    ("name", "side", "features", "classifier"),
    [
        ("cnn_tiny", 8, _cnn_features, "head"),
        ("cnn_small", 16, _cnn_features, "head"),
        ("resnet18", 64, _resnet_features, "fc"),
        ("resnet18_cifar", 32, _resnet_features, "fc"),
        ("resnet50", 32, _resnet_features, "fc"),
    ],
)
def test_cam_equals_hand_einsum(name: str, side: int, features, classifier: str) -> None:
    torch.manual_seed(0)
    channels = 1 if name.startswith("cnn") else 3
    model = create_model(name, num_classes=6, in_channels=channels).eval()
    nn.init.normal_(getattr(model, classifier).weight)  # torchvision/ours init heads small; any W works
    x = torch.randn(3, channels, side, side)
    targets = torch.tensor([5, 0, 2])
    with torch.no_grad():
        feats = features(model, x)
        per_class = torch.einsum("kc,nchw->nkhw", getattr(model, classifier).weight, feats)
        # Three captures on one forward pass: each context holds its own hooks.
        with (
            capture_attention(model) as predicted,
            capture_attention(model, cam_target="label") as label,
            capture_attention(model, cam_target="sum") as total,
        ):
            logits = model(x)
    rows = torch.arange(3)
    for capture, expected in [
        (predicted, per_class[rows, logits.argmax(dim=1)]),
        (label, per_class[rows, targets]),
        (total, per_class.sum(dim=1)),
    ]:
        maps = capture.maps(logits, targets)
        assert maps.shape == feats.shape[:1] + feats.shape[2:]
        assert maps.dtype == torch.float32 and not maps.requires_grad
        torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if not n.startswith("vit") and n != "resnet50"])
def test_cam_spatial_mean_plus_bias_is_the_logit(name: str) -> None:
    """The defining CAM identity under global average pooling, for every registered CNN."""
    torch.manual_seed(0)
    # 16 px keeps the stride-1 CIFAR stems cheap and still leaves a 2x2 map.
    channels, side = (1, 8) if name.startswith("cnn") else (3, 16 if name.endswith("cifar") else 32)
    model = create_model(name, num_classes=4, in_channels=channels).eval()
    head = model.head if name.startswith("cnn") else model.fc
    nn.init.normal_(head.weight)
    nn.init.normal_(head.bias)
    with capture_attention(model) as capture, torch.no_grad():
        logits = model(torch.randn(2, channels, side, side))
    maps = capture.maps(logits)
    predicted = logits.argmax(dim=1)
    torch.testing.assert_close(
        maps.mean(dim=(1, 2)) + head.bias[predicted], logits[torch.arange(2), predicted], rtol=1e-4, atol=1e-5
    )


def _reference_cls_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """CLS→patch weights from ``nn.MultiheadAttention(need_weights=True)`` on the last ln_1 output."""
    block = model.encoder.layers[-1]
    seen: list[torch.Tensor] = []
    handle = block.ln_1.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    h = seen[0]
    _, weights = block.self_attention(h, h, h, need_weights=True, average_attn_weights=True)
    side = int((weights.shape[-1] - 1) ** 0.5)
    return weights[:, 0, 1:].reshape(x.shape[0], side, side)


@pytest.mark.parametrize(("name", "side", "grid"), [("vit_tiny", 32, 8), ("vit_tiny", 16, 4)])
def test_vit_cls_attention_matches_multihead_attention(name: str, side: int, grid: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, image_size=side).eval()
    x = torch.randn(3, 3, side, side)
    with capture_attention(model) as capture, torch.no_grad():
        logits = model(x)
    maps = capture.maps(logits)
    assert maps.shape == (3, grid, grid)
    assert maps.dtype == torch.float32 and torch.isfinite(maps).all()
    with torch.no_grad():
        expected = _reference_cls_attention(model, x)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-6)
    assert (maps.sum(dim=(1, 2)) <= 1 + 1e-5).all()  # the CLS column's share is left out


def test_vit_ignores_cam_target_and_works_with_grad() -> None:
    torch.manual_seed(0)
    model = create_model("vit_tiny", num_classes=5)
    with capture_attention(model, cam_target="label") as capture:
        logits = model(torch.randn(2, 3, 32, 32))
        logits.sum().backward()
    maps = capture.maps(logits)
    assert maps.shape == (2, 8, 8) and not maps.requires_grad


@pytest.mark.parametrize("name", ["cnn_tiny", "resnet18", "vit_tiny"])
def test_hooks_removed_on_exit_and_on_exception(name: str) -> None:
    model = create_model(name, num_classes=3, in_channels=3)
    side = 8 if name.startswith("cnn") else 32
    before = _hook_count(model)
    with capture_attention(model) as capture:
        assert _hook_count(model) > before
        logits = model(torch.randn(2, 3, side, side))
    assert _hook_count(model) == before
    assert capture.maps(logits).shape[0] == 2  # the last pass made inside stays readable

    with pytest.raises(RuntimeError, match="boom"), capture_attention(model):
        model(torch.randn(2, 3, side, side))
        raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_cam_uses_weights_of_the_captured_pass() -> None:
    """A student's optimiser step between forward and maps() must not change the maps."""
    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=3, in_channels=1)
    with capture_attention(model, cam_target="sum") as capture:
        logits = model(torch.randn(2, 1, 8, 8))
    before = capture.maps(logits).clone()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    torch.testing.assert_close(capture.maps(logits), before)


def test_errors() -> None:
    model = create_model("cnn_tiny", num_classes=3, in_channels=1)
    with pytest.raises(ConfigError, match="predicted, label, sum"):
        capture_attention(model, cam_target="max")
    with pytest.raises(ConfigError, match="no attention extractor"):
        capture_attention(nn.Linear(2, 2))
    with capture_attention(model, cam_target="label") as capture:
        with pytest.raises(RuntimeError, match="no forward pass"):
            capture.maps(torch.zeros(2, 3))
        logits = model(torch.randn(2, 1, 8, 8))
        with pytest.raises(ValueError, match="needs targets"):
            capture.maps(logits)
        with pytest.raises(ValueError, match="batch size"):
            capture.maps(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))


def test_through_distributed_data_parallel(tmp_path) -> None:
    """Hooks go on ``ddp.module``; maps from a DDP forward equal the bare model's."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_model("cnn_tiny", num_classes=3, in_channels=1)
        ddp = nn.parallel.DistributedDataParallel(model)
        x = torch.randn(4, 1, 8, 8)
        with capture_attention(ddp) as capture:
            logits = ddp(x)
        with capture_attention(model) as bare:
            model(x)
        torch.testing.assert_close(capture.maps(logits), bare.maps(logits))
        assert _hook_count(model) == 0
    finally:
        dist.destroy_process_group()
