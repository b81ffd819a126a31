"""Experiment trackers (issue 11, item 1): MLflow, TensorBoard and W&B runs fed by the driver.

Units feed the results collector (the real :class:`ResultsCollector`, without a cluster: its
Tune callbacks are called with a stand-in trial) and read each tracker back as a user would:
MLflow's file store through ``mlflow.search_runs`` and its metric history, TensorBoard's event
files through its ``EventAccumulator``, W&B's offline run files. One slow test runs ``kd-ray sweep
--tracker mlflow --tracker tensorboard`` end to end on the shared test cluster.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from _sweep_helpers import TINY, feature_sweep, free_port, user_error_line, write_config

from kd_ray.cli import _resume_command, build_parser, main, with_trackers
from kd_ray.config import TRACKER_NAMES, dump_config, load_config, parse_config
from kd_ray.errors import ConfigError
from kd_ray.metrics.names import SPLIT_METRICS, SPLITS
from kd_ray.orchestration.collector import ResultsCollector, TeacherOutcomes
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.stored_sweep import comparable
from kd_ray.overrides import apply_overrides
from kd_ray.plan import pack_id, plan_sweep
from kd_ray.results.rows import teacher_row, trial_keys
from kd_ray.storage import Storage
from kd_ray.trackers import SWEEP_ID_FILE, Trackers, check_trackers, epochs_from_rows

REPO = Path(__file__).resolve().parents[1]
GROUP = "synthetic-Sw-s0-2x-abcdef12"
# The top-level keys of every config.yaml saved before trackers existed.
KEYS_BEFORE_TRACKERS = [
    "name",
    "datasets",
    "teacher",
    "student",
    "distill",
    "grid",
    "metrics",
    "resources",
    "runtime",
    "failure",
    "results",
]


def _cfg(**extra):
    return parse_config({**TINY, **extra})


def _plan(**extra):
    return plan_sweep(_cfg(**extra), check_names=False)


def _trials(n=2):
    trials = [t for t in _plan().trials if t.student_aug == "w"][:n]
    assert len(trials) == n
    return trials


def _value(epoch: int, index: int, split: str, metric: str) -> float:
    return round(
        0.1 * epoch + 0.01 * index + 0.001 * SPLITS.index(split) + 1e-4 * SPLIT_METRICS.index(metric), 6
    )


def _report(trials, epoch: int) -> dict:
    """A stream group's report of one epoch, as a worker sends it (``{trial_id}::{key}``)."""
    out = {}
    for i, trial in enumerate(trials):
        values = {"epoch": epoch, "lr": 0.05 / epoch, "seconds": 1.5}
        for split in SPLITS:
            values.update({f"{split}/{m}": _value(epoch, i, split, m) for m in SPLIT_METRICS})
            values[f"{split}/acc_t1"] = 0.5 + 0.01 * epoch
        out.update({f"{trial.trial_id}::{k}": v for k, v in values.items()})
    return out


def _done(trials) -> dict:
    out = {}
    for trial in trials:
        out[f"{trial.trial_id}::kd_status"] = "ok"
        out[f"{trial.trial_id}::kd_error"] = ""
    return out


def _tune_trial(book: RunBook, trials, group=GROUP):
    """A Tune trial of stream group ``group``, written down in ``book`` as the gate does."""
    book.record(f"tune-{group}", {"group_id": group, "trials": [t.__dict__ for t in trials]})
    return SimpleNamespace(trial_id=f"tune-{group}")


def _collect(sweep_dir: Path, trackers: Trackers, trials, epochs, *, finish=True) -> ResultsCollector:
    """Feed the collector a stream group's reports of ``epochs`` (and its end), as Tune would."""
    collector = ResultsCollector(
        str(sweep_dir),
        RunBook("group"),
        teacher_arch="cnn_tiny",
        student_arch="cnn_tiny",
        ece_bins=15,
        trackers=trackers,
    )
    tune_trial = _tune_trial(collector.runs, trials)
    collector.on_trial_start(0, [], tune_trial)
    for epoch in epochs:
        collector.on_trial_result(0, [], tune_trial, _report(trials, epoch))
    if finish:
        collector.on_trial_result(0, [], tune_trial, _done(trials))
        collector.on_trial_complete(0, [], tune_trial)
    return collector


def _trackers(cfg, sweep_dir: Path) -> Trackers:
    return Trackers.from_config(cfg, Storage.open(sweep_dir))


def _teacher_stage(cfg, sweep_dir: Path, trackers: Trackers, *, trained: bool = True) -> dict:
    """The teacher stage's tracker calls for the first teacher: its epoch reports through
    TeacherOutcomes (when this sweep trains it), then its row."""
    spec = _plan().teachers[0]
    epochs = cfg.teacher.train.epochs
    if trained:
        outcomes = TeacherOutcomes(RunBook("teacher"), trackers)
        outcomes.runs.record("tune-teacher", {"pack_id": pack_id([spec]), "teachers": [spec.__dict__]})
        tune_trial = SimpleNamespace(trial_id="tune-teacher")
        for epoch in range(1, epochs + 1):
            report = {
                "epoch": epoch,
                "train/loss": 2.0 / epoch,
                "train/acc": 0.3 * epoch,
                "val/acc": 0.25 * epoch,
                "teacher": spec.teacher_id,  # a pack's reports name their teacher
                "teacher_index": 0,
            }
            outcomes.on_trial_result(0, [], tune_trial, {**report, "lr": 0.05, "training_iteration": epoch})
        outcomes.on_trial_result(
            0, [], tune_trial, trial_keys(spec.teacher_id, {"kd_status": "ok", "kd_error": ""})
        )
    info = {"epochs": epochs, "train_acc": 0.3 * epochs, "val_acc": 0.25 * epochs, "wall_s": 3.0}
    row = teacher_row(spec, info=info, status="ok", error=None, checkpoint="x.pt")
    trackers.teacher_done(spec, row)
    return {"spec": spec, "row": row}


# -- config and command line ------------------------------------------------------------------


def test_without_trackers_the_saved_config_is_as_before():
    configs = [load_config(p) for p in sorted((REPO / "experiments").glob("*.yaml"))] + [_cfg()]
    for cfg in configs:
        assert cfg.trackers is None
        assert list(yaml.safe_load(dump_config(cfg))) == KEYS_BEFORE_TRACKERS, cfg.name
    # A sweep started without trackers resumes with them (and the other way round).
    with_mlflow = with_trackers(_cfg(), ["mlflow"])
    assert "trackers" in yaml.safe_load(dump_config(with_mlflow))
    saved = parse_config(yaml.safe_load(dump_config(with_mlflow)))  # as --resume reads it back
    assert comparable(saved) == comparable(_cfg())
    assert parse_config(yaml.safe_load(dump_config(with_mlflow))) == with_mlflow


def test_the_trackers_section_takes_names_or_settings_and_refuses_mistakes():
    assert _cfg(trackers=["mlflow", "tensorboard"]).trackers.enabled == ("mlflow", "tensorboard")
    cfg = _cfg(trackers={"wandb": {"mode": "offline", "project": "p"}})
    assert cfg.trackers.enabled == ("wandb",) and cfg.trackers.wandb.project == "p"
    saved = yaml.safe_load(dump_config(cfg))["trackers"]
    assert list(saved) == ["wandb"]  # trackers left off are not dumped
    cfg = apply_overrides(_cfg(), ["trackers.mlflow.uri=http://127.0.0.1:5000"])
    assert cfg.trackers.enabled == ("mlflow",) and cfg.trackers.mlflow.uri == "http://127.0.0.1:5000"
    for bad, says in [
        (["neptune"], "trackers: unknown tracker 'neptune'"),
        ({"mlflow": {"url": "x"}}, "trackers.mlflow.url: unknown key"),
        ({"wandb": {"mode": "sometimes"}}, "trackers.wandb.mode"),
        ({"mlflow": {"uri": "https://me:secret@mlflow.example/"}}, "MLFLOW_TRACKING_USERNAME"),
    ]:
        with pytest.raises(ConfigError) as err:
            _cfg(trackers=bad)
        assert says in str(err.value) and "secret" not in str(err.value)


def test_tracker_flag_turns_a_tracker_on_and_keeps_its_configured_settings():
    args = build_parser().parse_args(["sweep", "c.yaml", "--tracker", "mlflow", "--tracker", "tensorboard"])
    assert args.trackers == ["mlflow", "tensorboard"]
    cfg = with_trackers(_cfg(trackers={"mlflow": {"experiment": "mine"}}), args.trackers)
    assert cfg.trackers.enabled == ("mlflow", "tensorboard")
    assert cfg.trackers.mlflow.experiment == "mine" and cfg.trackers.tensorboard.logdir is None
    assert with_trackers(_cfg(), []) == _cfg()
    # Ctrl-C's resume hint keeps the trackers on, so their runs continue.
    assert _resume_command(args).endswith("--tracker mlflow --tracker tensorboard --resume")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "c.yaml", "--tracker", "neptune"])


@pytest.mark.parametrize("name", TRACKER_NAMES)
def test_a_missing_tracker_package_is_one_line_naming_the_extra(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    config = write_config(tmp_path)
    results = tmp_path / "results"
    code = main(["sweep", str(config), "--tracker", name, "--results", str(results)])
    line = user_error_line(capsys.readouterr().err)
    assert code == 2
    assert f"pip install 'kd_ray[{name}]'" in line and f"trackers.{name}" in line
    assert not results.exists()  # refused before anything was written


def test_a_tracker_without_a_location_on_remote_results_is_refused():
    results = "s3://bucket/prefix?region=us-east-1&endpoint_override=127.0.0.1:9"
    with pytest.raises(ConfigError, match=r"trackers\.mlflow\.uri: the results are not on a local"):
        check_trackers(with_trackers(_cfg(), ["mlflow"]), results)
    check_trackers(_cfg(trackers={"mlflow": {"uri": "http://127.0.0.1:5000"}}), results)
    check_trackers(with_trackers(_cfg(), ["wandb"]), results)  # W&B defaults to its own directory


# -- the tracker layer ------------------------------------------------------------------------


class _Recorder:
    """A backend that records what it is asked, and may hold epochs already (a resumed run)."""

    def __init__(self, name="recorder", holds=0, fail_on=None):
        self.name, self.holds, self.fail_on = name, holds, fail_on
        self.calls: list[tuple] = []

    def open(self, run):
        self._maybe_fail("open")
        self.calls.append(("open", run.key))
        return self.holds

    def log(self, run, epoch, metrics):
        self._maybe_fail("log")
        self.calls.append(("log", run.key, epoch, dict(metrics)))

    def finish(self, run, status, error):
        self.calls.append(("finish", run.key, status, error))

    def close(self):
        self.calls.append(("close",))

    def _maybe_fail(self, what):
        if self.fail_on == what:
            raise ConnectionError("tracking server is down")

    def logged(self, key):
        return [c[2] for c in self.calls if c[0] == "log" and c[1] == key]


def test_each_epoch_is_logged_once_and_nan_is_not_logged(tmp_path):
    fresh, resumed = _Recorder("fresh"), _Recorder("resumed", holds=2)
    trackers = Trackers([fresh, resumed], sweep="tiny", sweep_id="abc")
    trials = _trials(2)
    # Each report re-sends the trial's rows so far (and a restart re-reports epoch 2).
    _collect(tmp_path / "tiny", trackers, trials, [1, 2, 2, 3])
    key = f"student/{trials[0].trial_id}"
    assert fresh.logged(key) == [1, 2, 3]
    assert resumed.logged(key) == [3]  # it held epochs 1-2 already
    first = next(c[3] for c in fresh.calls if c[0] == "log" and c[1] == key)
    epochs = pd.read_parquet(tmp_path / "tiny" / "epochs.parquet")
    row = epochs[
        (epochs.trial_id == trials[0].trial_id) & (epochs.epoch == 1) & (epochs.split == "val")
    ].iloc[0]
    assert first["val/acc"] == row["acc"] and first["val/acc_t1"] == row["acc_t1"]
    assert first["lr"] == row["lr"] and first["seconds"] == row["seconds"]
    assert math.isnan(row["acc_t2"]) and "val/acc_t2" not in first  # undefined: not logged
    assert len(first) == len(SPLITS) * (len(SPLIT_METRICS) + 1) + 2
    assert ("finish", key, "ok", None) in fresh.calls
    trackers.close()
    assert fresh.calls[-1] == ("close",)


def test_a_failing_tracker_warns_once_and_the_others_and_the_tables_go_on(tmp_path, caplog):
    down, up = _Recorder("down", fail_on="log"), _Recorder("up")
    trackers = Trackers([down, up], sweep="tiny", sweep_id="abc")
    trials = _trials(2)
    with caplog.at_level(logging.WARNING, logger="kd_ray"):
        _collect(tmp_path / "tiny", trackers, trials, [1, 2, 3])
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "tracker down failed (ConnectionError: tracking server is down)" in warnings[0]
    assert "Parquet tables" in warnings[0]
    assert [b.name for b in trackers.active] == ["up"]
    assert up.logged(f"student/{trials[1].trial_id}") == [1, 2, 3]
    assert ("close",) in down.calls  # switched off: its resources released
    epochs = pd.read_parquet(tmp_path / "tiny" / "epochs.parquet")
    assert len(epochs) == 2 * 3 * len(SPLITS)
    assert set(pd.read_parquet(tmp_path / "tiny" / "trials.parquet").status) == {"ok"}


def test_runs_left_open_are_ended_as_interrupted_on_close(tmp_path):
    recorder = _Recorder()
    trackers = Trackers([recorder], sweep="tiny", sweep_id="abc")
    trials = _trials(1)
    _collect(tmp_path / "tiny", trackers, trials, [1], finish=False)
    trackers.close()
    assert ("finish", f"student/{trials[0].trial_id}", "interrupted", None) in recorder.calls
    assert recorder.calls[-1] == ("close",)


def test_epochs_from_rows_groups_the_rows_of_each_epoch():
    rows = [
        {"trial_id": "t", "epoch": e, "split": s, "lr": 0.1, "seconds": 2.0, "acc": 0.5, "kl": float("nan")}
        for e in (1, 2)
        for s in ("train", "val")
    ]
    assert epochs_from_rows(rows, after=1) == {
        2: {"lr": 0.1, "seconds": 2.0, "train/acc": 0.5, "val/acc": 0.5},
    }


# -- MLflow: its real file store, read back with mlflow.search_runs ---------------------------


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'kd_ray[mlflow]')")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the backend sets in a driver
    store = tmp_path / "tiny" / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    return store


def _mlflow_runs(experiment="tiny"):
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment])
    return runs.set_index("tags.mlflow.runName")


def _points(got, expected, tol=1e-6):
    """(step, value) lists equal: the same steps, values within ``tol`` (TensorBoard keeps float32)."""
    expected = list(expected)
    assert [s for s, _ in got] == [int(s) for s, _ in expected], (got, expected)
    assert [v for _, v in got] == pytest.approx([float(v) for _, v in expected], abs=tol), (got, expected)
    return True


def _history(run_id, key):
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key))


def test_mlflow_holds_one_run_per_trial_and_teacher_with_params_tags_and_history(tmp_path, mlflow_store):
    cfg = with_trackers(_cfg(), ["mlflow"])
    sweep_dir = tmp_path / "tiny"
    trackers = _trackers(cfg, sweep_dir)
    teacher = _teacher_stage(cfg, sweep_dir, trackers)
    trials = _trials(2)
    _collect(sweep_dir, trackers, trials, [1, 2, 3])
    trackers.close()

    runs = _mlflow_runs()
    assert sorted(runs.index) == sorted([t.trial_id for t in trials] + [teacher["spec"].teacher_id])
    sweep_id = json.loads((sweep_dir / SWEEP_ID_FILE).read_text())["sweep_id"]
    epochs = pd.read_parquet(sweep_dir / "epochs.parquet")
    for trial in trials:
        run = runs.loc[trial.trial_id]
        assert run["status"] == "FINISHED"
        params = {k: run[f"params.{k}"] for k in ("dataset", "perm", "k", "loss", "view", "seed")}
        assert params == {
            "dataset": trial.dataset,
            "perm": trial.perm,
            "k": "1",
            "loss": trial.loss,
            "view": trial.view,
            "seed": str(trial.seed),
        }
        assert run["params.temperature"] == "10.0" and run["params.alpha"] == "0.2"
        assert run["params.lr"] == "0.05" and run["params.student_arch"] == "cnn_tiny"
        assert run["tags.kd_ray.sweep"] == "tiny" and run["tags.kd_ray.group"] == GROUP
        assert run["tags.kd_ray.sweep_id"] == sweep_id and run["tags.kd_ray.status"] == "ok"
        # Every epoch's per-split values, as epochs.parquet holds them.
        for split in SPLITS:
            table = epochs[(epochs.trial_id == trial.trial_id) & (epochs.split == split)].sort_values("epoch")
            expected = [(int(e), float(v)) for e, v in zip(table.epoch, table.acc, strict=True)]
            assert _points(_history(run["run_id"], f"{split}/acc"), expected, tol=0)
        assert "metrics.val/acc_t3" not in runs.columns  # NaN for k = 1: not logged
    teacher_run = runs.loc[teacher["spec"].teacher_id]
    assert teacher_run["tags.kd_ray.role"] == "teacher" and teacher_run["params.aug"] == teacher["spec"].aug
    assert _history(teacher_run["run_id"], "val/acc") == [(1, 0.25)]


def test_a_resumed_sweep_continues_its_mlflow_runs_without_duplicates(tmp_path, mlflow_store):
    cfg = with_trackers(_cfg(), ["mlflow"])
    sweep_dir = tmp_path / "tiny"
    trials = _trials(2)
    first = _trackers(cfg, sweep_dir)
    _collect(sweep_dir, first, trials, [1, 2], finish=False)  # the driver is killed after epoch 2
    first.close()
    runs = _mlflow_runs()
    assert set(runs.status) == {"KILLED"}
    # The next driver restarts from the epoch 1 checkpoint: epochs 2 and 3 are reported again.
    second = _trackers(cfg, sweep_dir)
    _collect(sweep_dir, second, trials, [2, 3])
    second.close()
    runs = _mlflow_runs()
    assert sorted(runs.index) == sorted(t.trial_id for t in trials)  # one run per trial
    assert set(runs.status) == {"FINISHED"}
    for trial in trials:
        steps = [s for s, _ in _history(runs.loc[trial.trial_id, "run_id"], "val/acc")]
        assert steps == [1, 2, 3]
    # A new sweep of the same name (its results deleted) starts new runs, never the old ones.
    (sweep_dir / SWEEP_ID_FILE).unlink()
    third = _trackers(cfg, sweep_dir)
    _collect(sweep_dir, third, trials[:1], [1])
    third.close()
    assert len(_mlflow_runs().loc[[trials[0].trial_id]]) == 2


def test_a_dead_mlflow_server_costs_one_warning_and_no_result(tmp_path, caplog, monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'kd_ray[mlflow]')")
    pytest.importorskip(
        "tensorboard", reason="TensorBoard is not installed (pip install 'kd_ray[tensorboard]')"
    )
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = with_trackers(_cfg(trackers={"mlflow": {"uri": dead}}), ["tensorboard"])
    sweep_dir = tmp_path / "tiny"
    trackers = _trackers(cfg, sweep_dir)
    trials = _trials(2)
    with caplog.at_level(logging.WARNING, logger="kd_ray"):
        _collect(sweep_dir, trackers, trials, [1, 2])
        trackers.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("tracker mlflow failed (ConnectionError"), warnings
    assert dead in warnings[0]
    assert len(pd.read_parquet(sweep_dir / "epochs.parquet")) == 2 * 2 * len(SPLITS)
    assert _tb_scalars(sweep_dir / "tensorboard" / "students" / trials[0].trial_id, "val/acc")[0][0] == 1


# -- TensorBoard: its event files, read back with its EventAccumulator ------------------------


def _tb(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _tb_scalars(path: Path, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in _tb(path).Scalars(tag)]


def _tb_hparams(path: Path) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = _tb(path).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def test_tensorboard_event_files_hold_every_epoch_and_the_grid_point(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="TensorBoard is not installed (pip install 'kd_ray[tensorboard]')"
    )
    cfg = with_trackers(_cfg(), ["tensorboard"])
    sweep_dir = tmp_path / "tiny"
    trackers = _trackers(cfg, sweep_dir)
    teacher = _teacher_stage(cfg, sweep_dir, trackers)
    trials = _trials(2)
    _collect(sweep_dir, trackers, trials, [1, 2], finish=False)
    trackers.close()  # the driver stops after epoch 2; the next one restarts at epoch 2
    resumed = _trackers(cfg, sweep_dir)
    _collect(sweep_dir, resumed, trials, [2, 3])
    resumed.close()

    logdir = sweep_dir / "tensorboard"
    epochs = pd.read_parquet(sweep_dir / "epochs.parquet")
    for trial in trials:
        run = logdir / "students" / trial.trial_id
        for split in SPLITS:
            table = epochs[(epochs.trial_id == trial.trial_id) & (epochs.split == split)].sort_values("epoch")
            expected = [(int(e), float(v)) for e, v in zip(table.epoch, table.kl, strict=True)]
            assert _points(_tb_scalars(run, f"{split}/kl"), expected)  # each epoch once
        hp = _tb_hparams(run)
        assert hp["perm"] == trial.perm and hp["loss"] == trial.loss and hp["k"] == 1.0
        assert hp["temperature"] == 10.0 and hp["group"] == GROUP and hp["sweep"] == "tiny"
    teacher_dir = logdir / "teachers" / teacher["spec"].teacher_id
    assert _points(_tb_scalars(teacher_dir, "val/acc"), [(1, 0.25)])
    assert _points(_tb_scalars(teacher_dir, "train/loss"), [(1, 2.0)])


# -- W&B: offline runs, read back from their run files -----------------------------------------


def _wandb_records(path: Path):
    """The records of a W&B run file (its LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b""


def test_wandb_offline_runs_hold_the_grid_point_group_and_every_epoch(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'kd_ray[wandb]')")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = with_trackers(_cfg(trackers={"wandb": {"mode": "offline"}}), [])
    sweep_dir = tmp_path / "tiny"
    trackers = _trackers(cfg, sweep_dir)
    trials = _trials(2)
    _collect(sweep_dir, trackers, trials, [1, 2])
    trackers.close()
    # As when the driver exits: W&B writes a finished run's file out asynchronously, and its
    # teardown (an atexit hook) waits for that.
    wandb = pytest.importorskip("wandb")
    wandb.teardown()

    files = sorted((sweep_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2
    seen = {}
    for path in files:
        records = list(_wandb_records(path))
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        history = [
            {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        seen[run.display_name] = (run, config, history)
    assert sorted(seen) == sorted(t.trial_id for t in trials)
    for i, trial in enumerate(trials):
        run, config, history = seen[trial.trial_id]
        assert run.project == "tiny" and run.run_group == GROUP and run.job_type == "student"
        assert list(run.tags) == ["tiny"]
        assert config["perm"] == trial.perm and config["loss"] == trial.loss and config["k"] == 1
        assert config["temperature"] == 10.0 and config["sweep"] == "tiny" and config["group"] == GROUP
        assert [h["epoch"] for h in history] == [1, 2]
        assert [h["val/acc"] for h in history] == [_value(e, i, "val", "acc") for e in (1, 2)]


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_sweep_logs_students_and_teachers_to_mlflow_and_tensorboard(monkeypatch):
    pytest.importorskip("mlflow", reason="MLflow is not installed (pip install 'kd_ray[mlflow]')")
    pytest.importorskip(
        "tensorboard", reason="TensorBoard is not installed (pip install 'kd_ray[tensorboard]')"
    )
    # The shared feature sweep: one permutation at τ = 4 and 10 (two students), one teacher
    # trained there (so it has an epoch history), --tracker mlflow --tracker tensorboard.
    _, results, done, options = feature_sweep()
    assert "--tracker" in options
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "tracker" not in done.stderr, done.stderr  # no tracker warning
    sweep_dir = results / "tiny"
    trials = pd.read_parquet(sweep_dir / "trials.parquet")
    teachers = pd.read_parquet(sweep_dir / "teachers.parquet")
    epochs = pd.read_parquet(sweep_dir / "epochs.parquet")
    assert len(trials) == 2 and len(teachers) == 1
    teacher_id = teachers.teacher_id[0]
    assert yaml.safe_load((sweep_dir / "config.yaml").read_text())["trackers"] == {
        "mlflow": {"uri": None, "experiment": None},
        "tensorboard": {"logdir": None},
    }

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (sweep_dir / "mlruns").as_uri())
    runs = _mlflow_runs()
    assert sorted(runs.index) == sorted([*trials.trial_id, teacher_id])
    logdir = sweep_dir / "tensorboard"
    for trial_id, temperature in zip(trials.trial_id, trials.temperature, strict=True):
        student = runs.loc[trial_id]
        assert student["status"] == "FINISHED" and student["params.perm"] == "T1w_Sw"
        assert float(student["params.temperature"]) == temperature
        assert student["tags.kd_ray.sweep"] == "tiny" and student["tags.kd_ray.group"].startswith(
            "synthetic-Sw-s0-"
        )
        val = epochs[(epochs.split == "val") & (epochs.trial_id == trial_id)].sort_values("epoch")
        assert len(val) == 2
        assert _points(_history(student["run_id"], "val/acc"), zip(val.epoch, val.acc, strict=True), tol=0)
        assert _points(
            _tb_scalars(logdir / "students" / trial_id, "val/acc"), zip(val.epoch, val.acc, strict=True)
        )
    teacher = runs.loc[teacher_id]
    assert teacher["tags.kd_ray.role"] == "teacher" and teacher["status"] == "FINISHED"
    assert _points(_history(teacher["run_id"], "val/acc"), [(1, teachers.val_acc[0])], tol=0)

    assert _points(_tb_scalars(logdir / "teachers" / teacher_id, "val/acc"), [(1, teachers.val_acc[0])])
