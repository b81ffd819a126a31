"""The ``worker_process_setup_hook`` of every cluster a sweep runs on: Ray runs it first in each
of the sweep's worker processes.

It keeps torch.distributed on loopback (:func:`kd_ray.orchestration.loopback.setup_worker`) and
drops one line of noise: Ray Train's ``PlacementGroupCleaner`` actor asks the State API every
second whether its Train controller is alive, and the State API is served by the dashboard,
which the private local cluster does not start (``include_dashboard=False``: nothing listens
for clients). Each failed query logs "Failed to query Ray Train Controller actor state. State
API may be temporarily unavailable. Continuing to monitor." once a second per running run.

Ray has no setting for it: no environment variable, and ``ray.LoggingConfig`` sets the level
of every logger in every worker (ours included). So the hook adds a filter, which drops that
message only, to the logger that emits it, named by its module in Ray 2.60
(``tests/test_progress.py`` checks the name and the message against the installed Ray, so an
upgrade that moves them fails there). On a joined cluster (with a dashboard) the query
succeeds and the filter has nothing to drop. Imports nothing heavy: it runs in every worker.
"""

from __future__ import annotations

import logging

from kd_ray.orchestration.loopback import setup_worker as _loopback_setup_worker

# The logger of ray.train.v2._internal.execution.controller.placement_group_cleaner (Ray 2.60).
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
STATE_API_NOISE = "State API may be temporarily unavailable"


class _DropStateApiNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return STATE_API_NOISE not in record.getMessage()


def quiet_state_api_noise() -> None:
    """Drop the cleaner's State API warning in this process (idempotent)."""
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, _DropStateApiNoise) for f in logger.filters):
        logger.addFilter(_DropStateApiNoise())


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for the sweep's workers (see the module docstring)."""
    _loopback_setup_worker()
    quiet_state_api_noise()
