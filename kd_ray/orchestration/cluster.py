"""The Ray cluster a sweep runs on: the one ``RAY_ADDRESS`` names (``ray job submit`` sets it),
or a private one on this machine, on loopback only; the environment the sweep's Ray processes
read; and the check, before any run starts, that the cluster can ever hold one.

:func:`sweep_environment` wraps a whole sweep (:func:`kd_ray.orchestration.sweep.run_sweep`);
:func:`init_ray` starts or joins the cluster inside it when a stage first needs Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from kd_ray.config import SweepConfig
from kd_ray.errors import ClusterError
from kd_ray.orchestration.preflight import check_ray_address, unplaceable, wait_until_placeable
from kd_ray.orchestration.worker_setup import LOG_LEVEL_ENV
from kd_ray.storage import CREDENTIAL_ENV, JOINED_CLUSTER_CREDENTIALS

log = logging.getLogger(__name__)

# The Tune function itself only waits on its TorchTrainer: a sliver of CPU is enough.
TRIAL_FN_CPU = 0.01


def joined_cluster() -> bool:
    """Whether the sweep joins the cluster ``RAY_ADDRESS`` names (which may grow) rather than
    starting a private one on this machine (which cannot)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def kd_ray_log_level() -> str:
    """The level of this process's ``kd_ray`` logger (``-q``: WARNING), by name.

    The sweep's worker processes log at it too (:mod:`kd_ray.orchestration.worker_setup`), and
    :func:`init_ray` sets the driver's Ray logger to it (INFO at most verbose): a ``-q`` sweep
    shows neither the workers' info lines ("synthetic: 4 classes, ...") nor Ray's and Tune's
    driver-side ones, and its warnings still show.
    """
    return logging.getLevelName(logging.getLogger("kd_ray").getEffectiveLevel())


def _ray_env(cfg: SweepConfig) -> dict[str, str]:
    """What the sweep's Ray processes (driver, Tune functions, Train controllers and workers)
    read from their environment."""
    return {
        LOG_LEVEL_ENV: kd_ray_log_level(),
        # Train's controller polls workers at this interval; its 2 s default throttles small runs.
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": str(cfg.resources.report_interval_s),
        "RAY_USAGE_STATS_ENABLED": "0",
        # The collector writes the results; Tune's CSV and TensorBoard copies of every report
        # (hundreds of keys per stream group) would only cost driver time and disk. The JSON
        # log stays (see kd_ray.orchestration.sweep._tune): Tune's result grid reads it when the
        # run ends.
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    }


@contextlib.contextmanager
def sweep_environment(cfg: SweepConfig) -> Iterator[None]:
    """Set the environment a sweep's driver needs for the sweep only, then put back what was
    there: a notebook or test process that runs a sweep keeps its own environment afterwards.

    Besides :func:`_ray_env`: Tune's SIGINT handler off and its legacy output engine (see
    :func:`kd_ray.orchestration.sweep._tune`), and on a private cluster loopback-only services
    (see :func:`_loopback_env`).
    """
    updates = {
        **_ray_env(cfg),
        # Ctrl-C must stop the sweep. Tune's own SIGINT handler only ends this stage's loop
        # (fit() returns, the next stage starts) and points at Tuner.restore, which is not how a
        # kd_ray sweep resumes; without it, KeyboardInterrupt reaches the CLI (exit 130).
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
        # Progress is kd_ray's (kd_ray.orchestration.progress): Tune runs silent, on its legacy
        # output engine, since the new one prints its experiment box even at verbose=0.
        "RAY_AIR_NEW_OUTPUT": "0",
    }
    private = not joined_cluster()
    if private:
        updates.update(_loopback_env())
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    was_single_machine = None
    if private and "ray" in sys.modules:  # imported earlier (tests, notebooks)
        from kd_ray.orchestration._ray_compat import set_single_machine_mode

        was_single_machine = set_single_machine_mode(updates["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if was_single_machine is not None:
            set_single_machine_mode(was_single_machine)


def _loopback_env() -> dict[str, str]:
    """The environment that makes a private local cluster listen on 127.0.0.1 only, and
    starts no preemption watcher with each Train run (its one node is never drained).

    ``ray.init(_node_ip_address="127.0.0.1")`` is not enough: Ray resolves a loopback address
    to the machine's routable IP, and GCS and raylet then listen on all interfaces. Ray's
    single-machine mode (meant for Windows/macOS) uses the loopback IP for every service; it is
    read from the environment at ``import ray`` (so :func:`sweep_environment` also sets it in a
    process that imported Ray before), and the cluster's processes inherit it. A user's own
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is kept.

    torch.distributed's own listeners (rank 0's TCPStore, gloo) are kept on loopback by
    :mod:`kd_ray.orchestration.loopback`: gloo through the environment set here, the store
    through the worker setup hook that :func:`init_ray` gives the private cluster.
    """
    from kd_ray.orchestration._ray_compat import PREEMPTION_WATCHER_ENV
    from kd_ray.orchestration.loopback import loopback_env

    return {
        **loopback_env(),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"),
        # Nothing drains a private cluster's one node: no preemption watcher per run (see
        # _ray_compat; a joined cluster keeps Ray's default). A user's own setting is kept.
        PREEMPTION_WATCHER_ENV: os.environ.get(PREEMPTION_WATCHER_ENV, "0"),
    }


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def _wait_for_resources(cfg: SweepConfig, joined: bool) -> None:
    """Fail at once if a private cluster can never hold a run; let a joined one add nodes.

    A joined cluster (``RAY_ADDRESS``) may autoscale: it is asked for the workers' bundles and
    given ``resources.node_wait_s`` to add nodes.
    """
    if not joined:
        wait_until_placeable(cfg, _node_resources, autoscaling=False, trial_cpu=TRIAL_FN_CPU)
        return
    if unplaceable(cfg, _node_resources(), trial_cpu=TRIAL_FN_CPU) is None:
        return
    res = cfg.resources
    bundle = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.gpus_per_worker else {})}
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[bundle] * max(res.num_workers, res.teacher_workers))
    except Exception:  # no autoscaler to ask: the wait below still bounds the sweep
        log.debug("could not ask the autoscaler for %s", bundle, exc_info=True)
        request_resources = None
    try:
        wait_until_placeable(cfg, _node_resources, autoscaling=True, trial_cpu=TRIAL_FN_CPU)
    finally:
        if request_resources is not None:
            with contextlib.suppress(Exception):
                request_resources(bundles=[])


# torch.distributed on loopback where the cluster is on loopback (see kd_ray.orchestration.loopback),
# and Ray Train's State API noise dropped (see kd_ray.orchestration.worker_setup)
_WORKER_SETUP_HOOK = "kd_ray.orchestration.worker_setup.setup_worker"


def _keep_credentials_out_of_runtime_envs() -> None:
    """Stop Tune from copying AWS credentials into its trial actors' runtime environments.

    Ray's runtime-env agent logs every runtime environment it sets up, so Tune's copy of
    ``AWS_SECRET_ACCESS_KEY`` (from this process's environment) would end up in the session
    logs. The private cluster's processes inherited this environment when it started, so its
    actors have the credentials without the copy.
    """
    from kd_ray.orchestration._ray_compat import stop_tune_copying_credentials

    stop_tune_copying_credentials(
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")
    )


def init_ray(cfg: SweepConfig) -> None:
    """Join the cluster in ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a private one.

    Then check that the cluster can hold the sweep's runs (see :func:`_wait_for_resources`):
    Ray Train would otherwise wait for an impossible worker group forever.

    Raises:
        ClusterError: no cluster at ``RAY_ADDRESS``, or it can never hold a run.
    """
    env = _ray_env(cfg)  # also in this process's environment, for the sweep (sweep_environment)
    address = os.environ.get("RAY_ADDRESS")
    # Ray's driver-side INFO lines ("Started a local Ray instance", Tune's "Wrote the latest
    # version of all result files") only where kd_ray's own show: not under -q.
    ray_level = max(logging.INFO, logging.getLogger("kd_ray").getEffectiveLevel())
    import ray

    if not ray.is_initialized():
        if address:
            check_ray_address(address)
            if CREDENTIAL_ENV:  # Ray would keep them in its runtime env and logs
                raise ClusterError(JOINED_CLUSTER_CREDENTIALS)
            try:
                ray.init(
                    runtime_env={"env_vars": env, "worker_process_setup_hook": _WORKER_SETUP_HOOK},
                    log_to_driver=True,
                    logging_level=ray_level,
                )
            except (ConnectionError, ValueError) as err:
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise ClusterError(
                    f"RAY_ADDRESS={address}: cannot join a Ray cluster there ({first})"
                ) from None
        else:
            # "local": always a new cluster private to this process, never one found on the
            # machine; no dashboard or job server, so nothing listens for clients. Its workers
            # inherit this process's environment (results credentials included).
            ray.init(
                address="local",
                include_dashboard=False,
                logging_level=ray_level,
                runtime_env={
                    "env_vars": env,
                    "worker_process_setup_hook": _WORKER_SETUP_HOOK,
                },
            )
            _keep_credentials_out_of_runtime_envs()
    _wait_for_resources(cfg, joined=bool(address))
