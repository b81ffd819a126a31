"""Bake torchvision ImageNet weights into ``$TORCH_HOME`` at image build time.

Usage (docker/Dockerfile runs it): ``python docker/prefetch_weights.py ResNet50_Weights.DEFAULT ...``

Each argument names a torchvision weights enum and member. The file is fetched through kd_ray's own
loader (:func:`kd_ray.models._builder.load_weights`), so it lands exactly where a trial looks for
it (``$TORCH_HOME/hub/checkpoints/<file from the weights URL>``) and is checked to load; a sweep
with ``pretrained: true`` then never downloads anything at run time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def resolve(spec: str):
    """``"ResNet50_Weights.DEFAULT"`` -> the torchvision weights member."""
    import torchvision.models as tvm

    enum_name, sep, member = spec.partition(".")
    enum = getattr(tvm, enum_name, None) if sep else None
    if enum is None or member not in enum.__members__:
        raise SystemExit(
            f"prefetch_weights: {spec!r} is not a torchvision weights member (e.g. ResNet50_Weights.DEFAULT)"
        )
    return enum[member]


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from kd_ray.models._builder import load_weights

    specs = list(sys.argv[1:] if argv is None else argv)
    weights = [resolve(spec) for spec in specs]  # all names checked before the first download
    for spec, member in zip(specs, weights, strict=True):
        load_weights(spec, member)
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(member.url))
        print(f"prefetch_weights: {spec} -> {path} ({os.path.getsize(path) / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
