"""A sweep's stored state, and what ``--resume`` may do with it.

On ``--resume``:

- a trial counts as finished only if its ``trials`` row says ok, its ``epochs`` and
  ``calibration`` rows are complete *and* its exported student (``students/<trial_id>.pt``) is
  there; otherwise it runs again (from its group's last checkpoint when only the final rows or
  the weights are missing, from scratch when epoch rows are). A missing sidecar
  (``students/<trial_id>.json``) alone is only reported: it holds nothing the ``trials`` row and
  the weights do not;
- a stream group that had started continues as the same group (its run directory names its
  members), whatever ``trials_per_run`` says now;
- the config may grow the grid (more seeds, teacher counts, losses, views, datasets,
  permutations, values of a listed KD axis; :mod:`kd_ray.orchestration.growth` says why that
  is safe): the new trials run, the finished ones are kept and stored teachers are reused.
  Any other change to what trials compute is refused with one line naming the keys;
- settings that change the numbers of a run (:func:`kd_ray.plan.numerics`: workers, torch
  threads, device, bf16, channels-last, compile) may not change once the sweep has trials:
  while trials are unfinished, one run would mix two numerics; when all are finished, the saved
  config would stop describing them, and trials added later (a grown grid) would run under
  other numerics than the finished ones beside them. The sweep is refused with one line.

Temporary files that a killed write left behind (``.NAME.<hex>.tmp``) are removed at start.
"""

from __future__ import annotations

import logging
import os
import re
import time
from itertools import product
from typing import Any

from kd_ray.config import SweepConfig
from kd_ray.errors import KdRayError, ResultsError
from kd_ray.orchestration.growth import NotAGrowth, growth
from kd_ray.plan import DATA_LOCATION_FIELDS, NUMERICS_FIELDS, numerics
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage

log = logging.getLogger(__name__)

# Settings that may change between a sweep and its resume: they decide where and how fast
# trials run, or how often the report is written, not what trials compute.
RESUMABLE_CHANGES = ("resources", "runtime", "failure", "results", "trackers", "report")


def comparable(cfg: SweepConfig) -> dict[str, Any]:
    """What of a config must not change on --resume: all of it but :data:`RESUMABLE_CHANGES`
    and the datasets' locations (where the data lives, not what it is)."""
    kept = cfg.model_dump(mode="json", exclude=set(RESUMABLE_CHANGES))
    kept["datasets"] = [
        {k: v for k, v in d.items() if k not in DATA_LOCATION_FIELDS} for d in kept["datasets"]
    ]
    return kept


def _read_saved_config(sweep: Storage) -> SweepConfig:
    """The config a sweep saved (``config.yaml``).

    Raises:
        ResultsError: one line, when it is unreadable (not UTF-8, malformed YAML, or no longer a
            valid sweep config), with what to do.
    """
    import yaml

    from kd_ray.config import parse_config

    try:
        text = sweep.read_bytes("config.yaml").decode("utf-8")
        return parse_config(yaml.safe_load(text), source="config.yaml")
    except (ValueError, yaml.YAMLError, KdRayError) as err:  # UnicodeDecodeError is a ValueError
        if isinstance(err, UnicodeDecodeError):
            reason = "not UTF-8 text"
        elif isinstance(err, yaml.YAMLError):
            reason = f"malformed YAML ({getattr(err, 'problem', None) or 'invalid'})"
        else:
            reason = str(err).removeprefix("config.yaml: ")
        raise ResultsError(
            f"{sweep.uri}/config.yaml: the saved config of this sweep is unreadable ({reason}); "
            "restore it, or start the sweep afresh under another name or --results directory"
        ) from None


def prepare_results(cfg: SweepConfig, results: str, *, resume: bool) -> tuple[Storage, Storage]:
    """Check and create the results directory; returns (results root, sweep directory).

    The sweep's ``config.yaml`` is written later, by :func:`kd_ray.orchestration.sweep.run_sweep`,
    once every input check has passed: a sweep stopped by a user error can be started again
    without ``--resume``, and a grown config (:mod:`kd_ray.orchestration.growth`) replaces the
    saved one only then.

    Raises:
        ResultsError: not writable; a sweep of this name exists and ``resume`` is off; or
            ``resume`` is on and the saved config differs in what existing trials compute or
            lists fewer grid values.
    """
    root = Storage.open(results)
    root.makedirs()
    root.check_writable()
    sweep = root.child(cfg.name)
    if sweep.exists("config.yaml"):
        if not resume:
            raise ResultsError(
                f"{sweep.uri}: sweep {cfg.name!r} already has results; pass --resume to continue it, "
                "or use another --results directory or name"
            )
        saved = comparable(_read_saved_config(sweep))
        try:
            grown = growth(saved, comparable(cfg))
        except NotAGrowth as err:
            raise ResultsError(
                f"{sweep.uri}/config.yaml: the config changed since this sweep started: {err}. "
                f"Only {', '.join(RESUMABLE_CHANGES)} and data locations may change on --resume, "
                "and grid values may be added; start a new sweep (another name or --results) for "
                "anything else"
            ) from None
        if grown:
            log.info("--resume grows the sweep: %s", grown.describe())
    return root, sweep


def _incomplete(tables: ResultTables, cfg: SweepConfig, trial_ids: set[str]) -> dict[str, tuple[str, bool]]:
    """Trials among ``trial_ids`` whose rows are not complete: trial id -> (what, epochs missing).

    A finished trial has one ``epochs`` row per (epoch, split) for every epoch and one
    ``calibration`` row per (split, bin).
    """
    from kd_ray.metrics.names import SPLITS

    epochs, calibration = tables.read("epochs"), tables.read("calibration")
    want_epochs = set(product(range(1, cfg.student.train.epochs + 1), SPLITS))
    want_bins = set(product(SPLITS, range(cfg.metrics.ece_bins)))
    have_epochs = {
        tid: set(zip(g["epoch"].astype(int), g["split"], strict=True))
        for tid, g in epochs.groupby("trial_id")
    }
    have_bins = {
        tid: set(zip(g["split"], g["bin"].astype(int), strict=True))
        for tid, g in calibration.groupby("trial_id")
    }
    out = {}
    for tid in sorted(trial_ids):
        lost = want_epochs - have_epochs.get(tid, set())
        if lost:
            e, split = min(lost)
            out[tid] = (f"{len(lost)} epochs row(s) are missing, e.g. epoch {e} {split}", True)
        elif want_bins - have_bins.get(tid, set()):
            out[tid] = ("calibration rows are missing", False)
    return out


def _unexported(tables: ResultTables, trial_ids: set[str]) -> dict[str, tuple[str, bool]]:
    """Trials among ``trial_ids`` whose exported weights are missing: trial id -> (what, False).

    Their sidecars are checked too, and a trial with weights but no sidecar is only reported.
    """
    students = tables.storage.child("students")
    names = set(students.listdir())
    lost = {
        t: (f"exported student {students.uri}/{t}.pt is missing", False)
        for t in trial_ids
        if f"{t}.pt" not in names
    }
    bare = sorted(t for t in trial_ids if t not in lost and f"{t}.json" not in names)
    if bare:
        log.warning(
            "%d finished trial(s) have no sidecar in %s (e.g. %s.json): their weights and trials rows "
            "are complete, so they are kept; load_student reads the weights without it",
            len(bare),
            students.uri,
            bare[0],
        )
    return lost


def finished_trials(tables: ResultTables, cfg: SweepConfig | None = None) -> tuple[set[str], set[str]]:
    """(finished trials, trials to run again from scratch).

    Finished: an ok ``trials`` row, complete ``epochs`` and ``calibration`` rows, and the exported
    student's weights. An ok trial with any of these missing runs again: from its group's last
    checkpoint when only its final rows or its weights are missing (the restart re-announces that
    epoch), from scratch when epoch rows are missing.
    """
    done = tables.read("trials")
    ok = set(done.loc[done["status"] == "ok", "trial_id"])
    if cfg is None:
        return ok, set()
    scratch = set()
    incomplete = {**_unexported(tables, ok), **_incomplete(tables, cfg, ok)}
    for tid, (what, from_scratch) in sorted(incomplete.items()):
        ok.discard(tid)
        how = "from scratch" if from_scratch else "from its last checkpoint if it has one"
        log.warning("trial %s: its trials row says ok but its %s; running it again %s", tid, what, how)
        if from_scratch:
            scratch.add(tid)
    return ok, scratch


def _saved_config(sweep: Storage) -> SweepConfig | None:
    """The sweep's saved config, None if it has none or it is unreadable (nothing to compare)."""
    try:
        return _read_saved_config(sweep)
    except (ResultsError, OSError):
        return None


def refuse_changed_numerics(cfg: SweepConfig, sweep: Storage, *, finished: int, unfinished: int) -> None:
    """Refuse a --resume under other numerics than the sweep's trials were computed with.

    Unfinished trials would run, or a started group continue, under the new numerics; with all
    trials finished the saved config would be rewritten to numerics none of them had, and a
    later grown grid would run its new trials under them beside the old ones.

    Raises:
        ResultsError: names the setting, its saved and new values, and what to do.
    """
    saved = _saved_config(sweep) if finished or unfinished else None
    if saved is None:
        return
    if unfinished:
        why = f"while {unfinished} trial(s) are unfinished"
    else:
        why = f"and its {finished} finished trial(s) were computed with the saved setting"
    for role in ("student", "teacher"):
        old, new = numerics(saved, role), numerics(cfg, role)
        for key in old:
            if old[key] != new[key]:
                raise ResultsError(
                    f"{sweep.uri}/config.yaml: {NUMERICS_FIELDS[key]} changed since this sweep "
                    f"started ({role} {key} {old[key]!r} -> {new[key]!r}) {why}; it changes the "
                    "numbers, so --resume would mix two numerics in one sweep. Resume with the saved "
                    "setting, or start a new sweep (another name or --results)"
                )


# Storage.write_bytes and save_to_storage write ``.NAME.<32 hex>.tmp`` and rename it.
_TMP = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
# A temporary file still being written is touched continuously; one this old was orphaned by a kill.
_TMP_ORPHAN_AGE_S = 15 * 60


def clean_orphans(*storages: Storage) -> None:
    """Delete temporary files left by writes that a kill interrupted (local storage only)."""
    now = time.time()
    for storage in storages:
        if not storage.is_local or not os.path.isdir(storage.root):
            continue
        removed = 0
        for folder, dirs, files in os.walk(storage.root):
            dirs[:] = [d for d in dirs if d != "_ray"]  # Ray's own files; none of ours
            for name in files:
                path = os.path.join(folder, name)
                try:
                    if _TMP.match(name) and now - os.stat(path).st_mtime > _TMP_ORPHAN_AGE_S:
                        os.remove(path)
                        removed += 1
                except OSError:  # removed meanwhile, or not ours to remove
                    continue
        if removed:
            log.info("removed %d temporary file(s) that interrupted writes left in %s", removed, storage.uri)
