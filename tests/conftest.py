"""Suite order: fast unit tests first, the slow end-to-end ones (marked ``slow``: they start Ray
or run the CLI) last, so a broken unit shows in seconds; within each part, file order is kept."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from _sweep_helpers import stop_shared_cluster

    stop_shared_cluster()
