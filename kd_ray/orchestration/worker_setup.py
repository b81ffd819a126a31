"""The ``worker_process_setup_hook`` of every cluster a sweep runs on: Ray runs it first in each
of the sweep's worker processes.

It keeps torch.distributed on loopback (:func:`kd_ray.orchestration.loopback.setup_worker`),
logs kd_ray's own lines at the driver's level (``-q``: warnings only; the driver passes its
level in :data:`LOG_LEVEL_ENV`), and drops two kinds of Ray's noise.

Each Train worker logs every report whole at INFO ("Reporting training result N:
TrainingReport(...)", thousands of characters per epoch, hundreds of kilobytes in the output of
a tiny ``-q`` sweep). Its logger is named by its source file's path, outside ``ray.train``, so
``ray.train.LoggingConfig`` does not reach it; the hook sets that one logger to WARNING.

Ray Train's ``PlacementGroupCleaner`` actor asks the State API every
second whether its Train controller is alive, and the State API is served by the dashboard,
which the private local cluster does not start (``include_dashboard=False``: nothing listens
for clients). Each failed query logs "Failed to query Ray Train Controller actor state. State
API may be temporarily unavailable. Continuing to monitor." once a second per running run.

Ray has no setting for it: no environment variable, and ``ray.LoggingConfig`` sets the level
of every logger in every worker (ours included). So the hook adds a filter, which drops that
message only, to the logger that emits it, named by its module in Ray 2.60.

``tests/test_progress.py`` checks both loggers' names and messages against the installed Ray,
so an upgrade that moves them fails there. On a joined cluster (with a dashboard) the query
succeeds and the filter has nothing to drop. Imports nothing heavy: it runs in every worker.
"""

from __future__ import annotations

import logging
import os

from kd_ray.orchestration.loopback import setup_worker as _loopback_setup_worker

# The driver's kd_ray log level (kd_ray.orchestration.cluster.kd_ray_log_level), by name.
LOG_LEVEL_ENV = "KD_RAY_LOG_LEVEL"

# The logger of ray.train.v2._internal.execution.controller.placement_group_cleaner (Ray 2.60).
CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
STATE_API_NOISE = "State API may be temporarily unavailable"


# The module whose logger is ``logging.getLogger(__file__)`` and says "Reporting training result".
REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"
REPORT_NOISE = "Reporting training result"


def report_logger_name() -> str:
    """The name of Ray Train's per-report logger: its module's source path (Ray 2.60)."""
    import ray  # already imported in a Ray worker; its submodules are not imported here

    return os.path.join(os.path.dirname(ray.__file__), *REPORT_LOGGER_MODULE.split(".")[1:]) + ".py"


def quiet_report_dump() -> None:
    """Ray Train's whole-report INFO lines off in this process; its warnings stay."""
    logging.getLogger(report_logger_name()).setLevel(logging.WARNING)


class _DropStateApiNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return STATE_API_NOISE not in record.getMessage()


def quiet_state_api_noise() -> None:
    """Drop the cleaner's State API warning in this process (idempotent)."""
    logger = logging.getLogger(CLEANER_LOGGER)
    if not any(isinstance(f, _DropStateApiNoise) for f in logger.filters):
        logger.addFilter(_DropStateApiNoise())


def follow_driver_log_level() -> None:
    """The ``kd_ray`` logger at the driver's level; left as it is without one (or a bad one)."""
    level = logging.getLevelName(os.environ.get(LOG_LEVEL_ENV, ""))
    if isinstance(level, int):  # getLevelName maps a known name to its number
        logging.getLogger("kd_ray").setLevel(level)


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook`` for the sweep's workers (see the module docstring)."""
    _loopback_setup_worker()
    follow_driver_log_level()
    quiet_report_dump()
    quiet_state_api_noise()
