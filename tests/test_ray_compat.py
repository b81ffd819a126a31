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


def test_the_preemption_watcher_flag_is_the_one_this_ray_reads() -> None:
    # The private cluster turns the watcher off by this variable; an upgrade that renames it
    # (or drops the watcher) must fail here, not silently bring the watcher back.
    import inspect

    from ray.train.v2._internal import constants
    from ray.train.v2._internal.execution.controller import controller

    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR == _ray_compat.PREEMPTION_WATCHER_ENV
    source = inspect.getsource(controller)
    assert "ENABLE_PREEMPTION_WATCHER_ENV_VAR" in source and "PreemptionCallback" in source


def test_a_private_cluster_starts_no_preemption_watcher_and_a_joined_one_keeps_rays_default(
    monkeypatch,
) -> None:
    import os

    from kd_ray.config import parse_config
    from kd_ray.orchestration.cluster import sweep_environment

    cfg = parse_config({"name": "x", "datasets": [{"name": "synthetic"}]})
    flag = _ray_compat.PREEMPTION_WATCHER_ENV
    monkeypatch.delenv(flag, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with sweep_environment(cfg):
        assert os.environ[flag] == "0"
    assert flag not in os.environ  # put back
    monkeypatch.setenv(flag, "1")  # the user's own choice stands
    with sweep_environment(cfg):
        assert os.environ[flag] == "1"
    monkeypatch.delenv(flag)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    with sweep_environment(cfg):
        assert flag not in os.environ


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


def test_tune_pieces_exist_in_this_ray(tmp_path) -> None:
    from ray.tune.execution import class_cache
    from ray.tune.experiment import Trial

    assert isinstance(class_cache.ENV_VARS_TO_PROPAGATE, set), f"Ray {ray.__version__}: Tune's env copy moved"
    assert callable(getattr(Trial, "get_error", None)), f"Ray {ray.__version__}: Trial.get_error moved"
    # The local copy is read when the storage read fails; a trial with neither gives None.
    saved = tmp_path / "error.txt"
    saved.write_text("Traceback\nKeyError: 'x'\n")

    def unreadable() -> str:
        raise OSError("gone")

    class _Trial:
        get_error = staticmethod(unreadable)
        error_file = str(saved)

    assert _ray_compat.trial_error_text(_Trial()) == saved.read_text()
    _Trial.error_file = None
    assert _ray_compat.trial_error_text(_Trial()) is None


def test_tune_stops_copying_the_named_credentials() -> None:
    from ray.tune.execution import class_cache

    before = set(class_cache.ENV_VARS_TO_PROPAGATE)
    try:
        assert "AWS_SECRET_ACCESS_KEY" in before  # what the sweep removes is there to remove
        _ray_compat.stop_tune_copying_credentials(["AWS_SECRET_ACCESS_KEY"])
        assert "AWS_SECRET_ACCESS_KEY" not in class_cache.ENV_VARS_TO_PROPAGATE
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE.clear()
        class_cache.ENV_VARS_TO_PROPAGATE.update(before)
