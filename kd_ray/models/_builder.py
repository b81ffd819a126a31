"""Shared construction helpers: pretrained-weight resolution, download and input-conv adaptation.

Pretrained weights are torchvision's ImageNet checkpoints, addressed through their weights enums
(``ResNet50_Weights.IMAGENET1K_V2`` ...). They are fetched into torch.hub's cache
(``$TORCH_HOME/hub/checkpoints``), so a cluster without internet works once that directory holds
the file; anything that keeps us from a usable state dict is a
:class:`~kd_ray.errors.CheckpointError` with one line saying what was tried and how to fix it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models import WeightsEnum

from kd_ray.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

# A node whose firewall drops packets would otherwise block a Ray worker forever inside urlopen,
# which has no timeout of its own; a minute is far more than a reachable mirror needs to start.
DOWNLOAD_TIMEOUT_S = 60.0


def resolve_weights(model: str, enum: type[WeightsEnum], pretrained: bool | str) -> WeightsEnum | None:
    """The weights member that ``pretrained`` asks for.

    Args:
        model: Registered model name, for error messages.
        enum: The torchvision weights enum of the architecture.
        pretrained: ``False`` for random init, ``True`` for the enum's ``DEFAULT`` member, or the
            name of a member (``"IMAGENET1K_V1"``) to pin the exact checkpoint a study used.

    Returns:
        The member, or ``None`` when no pretrained weights are wanted.
    """
    if pretrained is False:
        return None
    if pretrained is True:
        return enum.DEFAULT
    if isinstance(pretrained, str) and pretrained in enum.__members__:
        return enum[pretrained]
    known = ", ".join(name for name in enum.__members__ if name != "DEFAULT")
    raise ConfigError(f"model {model!r}: pretrained={pretrained!r}; expected true, false or one of: {known}")


def no_pretrained(model: str, pretrained: bool | str) -> None:
    """Reject ``pretrained`` for models that have no published checkpoint."""
    if pretrained is not False:
        raise ConfigError(f"model {model!r} has no pretrained weights; set pretrained: false")


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_weights(model: str, weights: WeightsEnum) -> dict[str, torch.Tensor]:
    """Load the state dict of ``weights`` from torch.hub's cache, downloading it if missing.

    Args:
        model: Registered model name, for error messages.
        weights: The torchvision weights member.

    Returns:
        The CPU state dict.

    Raises:
        CheckpointError: The file is neither cached nor downloadable, or is unreadable.
    """
    url = weights.url
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(checkpoints, os.path.basename(url))
    label = f"{type(weights).__name__}.{weights.name}"
    if not os.path.exists(cached):
        match = torch.hub.HASH_REGEX.search(os.path.basename(url))
        logger.info("downloading %s for %s from %s to %s", label, model, url, cached)
        try:
            os.makedirs(checkpoints, exist_ok=True)
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                torch.hub.download_url_to_file(
                    url, cached, hash_prefix=match.group(1) if match else None, progress=False
                )
        except Exception as exc:  # network, DNS, permission and hash errors all mean the same to a user
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CheckpointError(
                f"pretrained weights {label} for model {model!r} are not cached at {cached} and "
                f"could not be downloaded from {url} ({reason}); copy that file into {checkpoints} "
                f"(set TORCH_HOME to choose the cache root) or set pretrained: false"
            ) from None
    try:
        return torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(
            f"cached pretrained weights {cached} for model {model!r} are unreadable ({reason}); "
            f"delete the file to download it again"
        ) from None


def load_state(model_name: str, model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict`` that reports a mismatching checkpoint as a one-line CheckpointError."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"pretrained weights do not fit model {model_name!r}: {first}") from None


def adapt_input_conv(conv: nn.Conv2d, in_channels: int, *, pretrained: bool) -> nn.Conv2d:
    """A copy of the stem ``conv`` that takes ``in_channels`` channels.

    Random-init models simply get a fresh conv. Pretrained RGB filters are kept meaningful as in
    timm's ``adapt_input_conv``: for one channel they are summed over RGB (a grey image equals
    R=G=B, so the response is unchanged), otherwise tiled and rescaled by ``3 / in_channels`` so
    the activation scale matches what later layers were trained on.
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    if pretrained:
        weight = conv.weight.detach()
        with torch.no_grad():
            if in_channels == 1:
                new.weight.copy_(weight.sum(dim=1, keepdim=True))
            else:
                reps = -(-in_channels // weight.shape[1])
                tiled = weight.repeat(1, reps, 1, 1)[:, :in_channels]
                new.weight.copy_(tiled * (weight.shape[1] / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach())
    return new
