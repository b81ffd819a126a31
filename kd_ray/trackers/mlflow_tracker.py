"""MLflow: one run per student trial and per teacher, in one experiment (default: the sweep's name).

Runs are named by their trial or teacher id, carry the grid point as parameters, and are tagged
``kd_ray.sweep``, ``kd_ray.group`` (the stream group; ``teachers``), ``kd_ray.role`` and
``kd_ray.status``. Metrics are ``{split}/{metric}``, ``lr`` and ``seconds`` with the epoch as the
step. The tag ``kd_ray.last_epoch`` says which epochs a run holds, so a resumed sweep continues
each run (found by ``kd_ray.sweep_id`` and ``kd_ray.run_key``) where it stopped.

MLflow's file store (a directory, the default ``RESULTS/NAME/mlruns``) is in maintenance mode
since MLflow 3.7 and refuses to open unless ``MLFLOW_ALLOW_FILE_STORE=true``; kd_ray sets that
default in the driver for a file store it is given. A database or server URI works as MLflow
documents (``sqlite:///...`` needs the full ``mlflow`` package). A server that does not answer
at the first run (``/health``, 5 s) switches the tracker off at once rather than after MLflow's
minutes of retries.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from kd_ray.trackers.base import TAG_ERROR, TAG_KEY, TAG_STATUS, TAG_SWEEP_ID, RunInfo

TAG_LAST_EPOCH = "kd_ray.last_epoch"
_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_MAX_PARAM = 6000  # MLflow's limit on a parameter value


def _check_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast on a tracking server that does not answer: MLflow's own client retries a dead
    server for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES) before it gives up."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:  # it answered: MLflow's client says what it thinks of it
        return
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise ConnectionError(f"no MLflow tracking server answers at {uri} ({reason})") from None


def _is_file_store(uri: str) -> bool:
    scheme = uri.partition("://")[0] if "://" in uri else ""
    return scheme in ("", "file")


class MlflowBackend:
    name = "mlflow"

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self._client: Any = None
        self._experiment_id: str | None = None
        self._known: dict[str, tuple[str, int]] = {}  # run key -> (run id, last epoch), this sweep
        self._run_ids: dict[str, str] = {}

    def _start(self, sweep_id: str) -> None:
        if self._client is not None:
            return
        if _is_file_store(self.uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        elif self.uri.lower().startswith(("http://", "https://")):
            _check_server(self.uri)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self.uri)
        found = client.get_experiment_by_name(self.experiment)
        if found is None:
            experiment_id = client.create_experiment(self.experiment)
        else:
            experiment_id = found.experiment_id
            if found.lifecycle_stage == "deleted":
                client.restore_experiment(experiment_id)
        token = None
        while True:  # the runs an earlier driver of this sweep started
            page = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}'",
                max_results=1000,
                page_token=token,
            )
            for run in page:
                key = run.data.tags.get(TAG_KEY)
                if key:
                    self._known[key] = (run.info.run_id, int(run.data.tags.get(TAG_LAST_EPOCH, 0)))
            token = page.token
            if not token:
                break
        self._client, self._experiment_id = client, experiment_id

    def open(self, run: RunInfo) -> int:
        from mlflow.entities import Param

        self._start(run.tags[TAG_SWEEP_ID])
        if run.key in self._known:
            run_id, last = self._known.pop(run.key)
            self._client.update_run(run_id, status="RUNNING")
            self._run_ids[run.key] = run_id
            return last
        created = self._client.create_run(self._experiment_id, run_name=run.name, tags=dict(run.tags))
        run_id = created.info.run_id
        self._run_ids[run.key] = run_id
        params = [Param(k, str(v)[:_MAX_PARAM]) for k, v in run.params.items()]
        self._client.log_batch(run_id, params=params)
        return 0

    def log(self, run: RunInfo, epoch: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self._client.log_batch(
            self._run_ids[run.key],
            metrics=[Metric(k, float(v), now, epoch) for k, v in metrics.items()],
            tags=[RunTag(TAG_LAST_EPOCH, str(epoch))],
        )

    def finish(self, run: RunInfo, status: str, error: str | None) -> None:
        from mlflow.entities import RunTag

        run_id = self._run_ids.pop(run.key)
        tags = [RunTag(TAG_STATUS, status)]
        if error:
            tags.append(RunTag(TAG_ERROR, error[:_MAX_PARAM]))
        self._client.log_batch(run_id, tags=tags)
        self._client.set_terminated(run_id, _STATUS.get(status, "FAILED"))

    def close(self) -> None:
        self._client = None
        self._run_ids.clear()
