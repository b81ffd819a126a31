"""Ray's private internals that kd_ray relies on are still where _ray_compat expects them.

A failure here after a Ray upgrade names the piece to re-check in
kd_ray/orchestration/_ray_compat.py (checked against CHECKED_RAY_VERSION)."""

from __future__ import annotations

import ray

from kd_ray.orchestration import _ray_compat


def test_private_pieces_exist_in_this_ray() -> None:
    from ray._private import ray_constants
    from ray._private.utils import get_num_cpus

    assert hasattr(ray_constants, "ENABLE_RAY_CLUSTER"), f"Ray {ray.__version__}: ENABLE_RAY_CLUSTER moved"
    assert get_num_cpus() >= 1
    assert _ray_compat.local_cpu_count() == float(get_num_cpus())


def test_single_machine_mode_sets_and_restores_the_constant() -> None:
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        _ray_compat.set_single_machine_mode(True)
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def test_ray_outside_compat_is_public_only() -> None:
    from pathlib import Path

    root = Path(_ray_compat.__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "_ray_compat.py" and "ray._private" in p.read_text()
    ]
    assert offenders == []
