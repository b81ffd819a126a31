"""Attention maps from forward hooks: CAMs for CNNs, last-block CLS attention for ViTs.

The paper's attention metrics (IoU between teachers, and between teachers and the student) need
one spatial map per image for every forward pass that training already makes, so maps are read
by hooks on that pass, never by a second one, vectorised over the batch::

    with capture_attention(teacher, cam_target="predicted") as capture:
        logits = teacher(images)
    maps = capture.maps(logits, targets)          # (N, h, w), float32, detached

Which extractor applies is decided by the model's type, so DDP-wrapped and user-built models work
too: a module with an ``attention_spec`` attribute (:class:`AttentionSpec`) states it itself (the
small CNNs do), a torchvision ``VisionTransformer`` gets ``vit_cls``, a torchvision ``ResNet``
gets ``cam`` on ``layer4``/``fc``. Extractors live in the ``ATTENTION`` registry; a new one is a
class plus a decorator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.utils.hooks import RemovableHandle
from torchvision.models import ResNet
from torchvision.models.vision_transformer import VisionTransformer

from kd_ray.errors import ConfigError
from kd_ray.registry import Registry

CamTarget = Literal["predicted", "label", "sum"]
CAM_TARGETS: tuple[str, ...] = ("predicted", "label", "sum")


@dataclass(frozen=True)
class AttentionSpec:
    """Where a model's attention map comes from.

    Attributes:
        kind: Name of the extractor in ``ATTENTION`` (``"cam"`` or ``"vit_cls"``).
        features: Dotted path of the hooked module (integers index containers, ``-1`` = last):
            the last conv stage for CAM, the last block's ``nn.MultiheadAttention`` for ViTs.
        classifier: Dotted path of the linear head whose weights weigh the CAM channels.
    """

    kind: str
    features: str
    classifier: str | None = None


class AttentionExtractor(Protocol):
    """What an ``ATTENTION`` entry builds from ``(model, spec)``."""

    def attach(self) -> list[RemovableHandle]:
        """Register the hooks and return their handles (the caller removes them)."""
        ...

    def maps(self, logits: torch.Tensor, targets: torch.Tensor | None, cam_target: str) -> torch.Tensor:
        """``(N, h, w)`` float32 maps of the last forward pass seen by the hooks."""
        ...


ATTENTION: Registry[type[AttentionExtractor]] = Registry("attention extractor")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP / DataParallel / ``torch.compile`` wrappers, whose modules we hook."""
    while True:
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def attention_spec(model: nn.Module) -> AttentionSpec:
    """The :class:`AttentionSpec` of ``model`` (unwrapped first), by declaration or by type."""
    model = unwrap_model(model)
    spec = getattr(model, "attention_spec", None)
    if isinstance(spec, AttentionSpec):
        return spec
    if isinstance(model, VisionTransformer):
        return AttentionSpec(kind="vit_cls", features="encoder.layers.-1.self_attention")
    if isinstance(model, ResNet):
        return AttentionSpec(kind="cam", features="layer4", classifier="fc")
    raise ConfigError(
        f"no attention extractor for model type {type(model).__name__}; supported: models with an "
        f"attention_spec attribute, torchvision ResNet and VisionTransformer"
    )


def _submodule(model: nn.Module, path: str) -> nn.Module:
    module = model
    for part in path.split("."):
        if part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
            module = module[int(part)]
        else:
            module = getattr(module, part)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{type(model).__name__}.{path} is not a module")
    return module


def _check_batch(name: str, captured: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    if captured is None:
        raise RuntimeError(f"{name}: no forward pass was captured; call the model inside the context")
    if captured.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{name}: logits have batch size {logits.shape[0]} but the last forward pass had "
            f"{captured.shape[0]}; maps() refers to the last forward pass only"
        )
    return captured


@ATTENTION.register("cam")
class CamExtractor:
    """Class Activation Maps (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization").

    For last-stage features ``F`` of shape ``(N, C, h, w)`` and classifier weights ``W (K, C)``
    applied after global average pooling, the map of class ``k`` is ``M_k = Σ_c W[k, c] · F[c]``
    (no bias: it is constant over space). The target class per image is the predicted one
    (argmax of the logits), the label, or ``sum`` over all classes, which equals
    ``Σ_c (Σ_k W[k, c]) · F[c]`` and is what the paper's reference code used.
    """

    def __init__(self, model: nn.Module, spec: AttentionSpec) -> None:
        if spec.classifier is None:
            raise ValueError(f"CAM needs a classifier path; got {spec}")
        self._features_module = _submodule(model, spec.features)
        self._classifier = _submodule(model, spec.classifier)
        if not isinstance(self._classifier, nn.Linear):
            raise TypeError(f"CAM classifier {spec.classifier!r} must be nn.Linear")
        self._features: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None

    def attach(self) -> list[RemovableHandle]:
        """Hook the last conv stage's output and snapshot the classifier weights used with it."""
        return [
            self._features_module.register_forward_hook(self._on_features),
            self._classifier.register_forward_hook(self._on_classifier),
        ]

    def _on_features(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._features = output.detach()

    def _on_classifier(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        # A copy, because a student's optimiser step may update the weights in place before the
        # caller asks for the maps of this pass.
        self._weight = module.weight.detach().clone()

    def maps(self, logits: torch.Tensor, targets: torch.Tensor | None, cam_target: str) -> torch.Tensor:
        """CAMs ``(N, h, w)`` of the last forward pass for ``cam_target`` classes."""
        features = _check_batch("CAM", self._features, logits).float()
        if self._weight is None:
            raise RuntimeError("CAM: the classifier did not run in the last forward pass")
        weight = self._weight.float().to(features.device)
        if cam_target == "sum":
            return torch.einsum("c,nchw->nhw", weight.sum(dim=0), features)
        if cam_target == "predicted":
            classes = logits.detach().argmax(dim=1)
        elif targets is None:
            raise ValueError("cam_target='label' needs targets")
        else:
            classes = torch.as_tensor(targets)
        return torch.einsum("nc,nchw->nhw", weight[classes.to(weight.device).long()], features)


@ATTENTION.register("vit_cls")
class VitClsExtractor:
    """The CLS token's attention to the patch tokens in the last encoder block, mean over heads.

    torchvision's ``EncoderBlock`` calls its attention with ``need_weights=False`` (so the fused
    kernel can run), which leaves nothing to read. A pre-hook on that ``nn.MultiheadAttention``
    therefore recomputes only the CLS row from the same inputs and in-projection weights:
    ``softmax(q_cls · Kᵀ / √d)`` per head, the same numbers ``need_weights=True,
    average_attn_weights=True`` would return, at the cost of one query instead of all of them.
    The patch columns are reshaped to the square patch grid; ``cam_target`` does not apply.
    """

    def __init__(self, model: nn.Module, spec: AttentionSpec) -> None:
        attention = _submodule(model, spec.features)
        if not isinstance(attention, nn.MultiheadAttention):
            raise TypeError(f"vit_cls needs {spec.features!r} to be nn.MultiheadAttention")
        self._attention = attention
        self._maps: torch.Tensor | None = None

    def attach(self) -> list[RemovableHandle]:
        """Hook the inputs of the last block's attention."""
        return [self._attention.register_forward_pre_hook(self._on_attention_input)]

    @torch.no_grad()
    def _on_attention_input(self, module: nn.MultiheadAttention, args: tuple) -> None:
        # The maps are recomputed in float32 even inside the caller's bf16 autocast region.
        with torch.autocast(device_type=args[0].device.type, enabled=False):
            self._maps = self._cls_attention(module, args[0].detach().float(), args[1].detach().float())

    @staticmethod
    def _cls_attention(module: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        if not module.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        n, tokens, dim = key.shape
        heads = module.num_heads
        head_dim = dim // heads
        if module._qkv_same_embed_dim:
            w_q, w_k, _ = module.in_proj_weight.float().chunk(3)
        else:
            w_q, w_k = module.q_proj_weight.float(), module.k_proj_weight.float()
        b_q = b_k = None
        if module.in_proj_bias is not None:
            b_q, b_k, _ = module.in_proj_bias.float().chunk(3)
        q = nn.functional.linear(query[:, :1], w_q, b_q).view(n, 1, heads, head_dim).transpose(1, 2)
        k = nn.functional.linear(key, w_k, b_k).view(n, tokens, heads, head_dim).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)  # (N, H, 1, T)
        cls_to_patches = weights[:, :, 0, 1:].mean(dim=1)
        side = math.isqrt(tokens - 1)
        if side * side != tokens - 1:
            raise ValueError(f"vit_cls: {tokens - 1} patch tokens do not form a square grid")
        return cls_to_patches.reshape(n, side, side)

    def maps(self, logits: torch.Tensor, targets: torch.Tensor | None, cam_target: str) -> torch.Tensor:
        """CLS attention maps ``(N, side, side)`` of the last forward pass."""
        return _check_batch("ViT attention", self._maps, logits)


class AttentionCapture:
    """Context manager that holds the hooks of one model; see :func:`capture_attention`."""

    def __init__(self, model: nn.Module, cam_target: str = "predicted") -> None:
        if cam_target not in CAM_TARGETS:
            raise ConfigError(f"cam_target {cam_target!r}; expected one of: {', '.join(CAM_TARGETS)}")
        self.cam_target = cam_target
        self.model = unwrap_model(model)
        self.spec = attention_spec(self.model)
        self._extractor = ATTENTION.get(self.spec.kind)(self.model, self.spec)
        self._handles: list[RemovableHandle] = []

    def __enter__(self) -> AttentionCapture:
        if self._handles:
            raise RuntimeError("capture_attention context is not re-entrant")
        self._handles = self._extractor.attach()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def maps(self, logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Attention maps of the last forward pass made while the hooks were attached.

        Args:
            logits: That pass's output ``(N, K)``; picks the CAM class when ``cam_target`` is
                ``predicted`` and checks that the batch matches.
            targets: Labels ``(N,)``, needed for ``cam_target="label"``.

        Returns:
            Detached float32 maps ``(N, h, w)`` on the model's device: the last conv stage's grid
            for CAMs, the patch grid for ViTs. Unnormalised; ``metrics.attention_iou`` resizes and
            min-max normalises them.
        """
        return self._extractor.maps(logits, targets, self.cam_target)


def capture_attention(model: nn.Module, *, cam_target: CamTarget | str = "predicted") -> AttentionCapture:
    """Hook ``model`` (DDP-wrapped or not) so its next forward passes yield attention maps.

    Args:
        model: A registered model or any module :func:`attention_spec` understands.
        cam_target: CAM class per image: ``predicted`` (argmax of the logits), ``label``, or
            ``sum`` over all classes (the paper's reference code). Ignored by ViTs.

    Returns:
        A context manager; hooks are attached on entry and removed on exit, also on an exception.
        ``maps()`` stays callable after exit for the last pass made inside.

    Raises:
        ConfigError: Unknown ``cam_target`` or a model type without an extractor.
    """
    return AttentionCapture(model, cam_target)
