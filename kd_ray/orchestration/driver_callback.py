"""Tune callbacks whose live state stays on the driver.

Tune pickles every callback into its experiment state (``tuner.pkl``, in the results store) when
a stage starts and whenever it saves. A kd_ray callback's live parts (open trackers, a writer
thread, an output stream, per-trial buffers, a test's clock) either do not pickle or have no
business in the results store, and kd_ray never restores a Tune experiment (a resumed sweep
starts a fresh one from its tables), so the pickled copy only has to be a plain snapshot. Each
callback names its live attributes in ``DRIVER_ONLY``, with the value its pickled copy holds
instead; the live callback itself is never changed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import ray.tune


class DriverCallback(ray.tune.Callback):
    """A ``ray.tune.Callback`` whose ``DRIVER_ONLY`` attributes are left out of Tune's pickles."""

    DRIVER_ONLY: ClassVar[dict[str, Any]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, **{k: v for k, v in self.DRIVER_ONLY.items() if k in self.__dict__}}
