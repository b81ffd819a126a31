"""Reliability without a cluster: fingerprints, teacher ids, the finished marker, resume
bookkeeping, failure reasons, orphan clean-up and checkpoint memory (issue 9).

The same guarantees are checked against a real Ray in ``test_resume.py`` and ``test_faults.py``;
here each piece is tested on its own, in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import time
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
import yaml

from kd_ray.config import dump_config, parse_config
from kd_ray.errors import ResultsError
from kd_ray.orchestration import stage_runs, stored_sweep
from kd_ray.orchestration.cluster import sweep_environment
from kd_ray.orchestration.collector import ResultsCollector, TeacherOutcomes
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.teacher_store import TeacherStore
from kd_ray.orchestration.trials import ERROR_KEY, GROUP_MANIFEST, STATUS_KEY, short_error
from kd_ray.orchestration.workers import student_fingerprints
from kd_ray.plan import StudentTrial, group_id, plan_sweep, stream_groups
from kd_ray.results.rows import trial_keys
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage
from kd_ray.train.checkpoint import fingerprint_problem, load_file, save_to_storage

BASE = {
    "name": "rel",
    "datasets": [{"name": "synthetic", "num_train": 64, "num_val": 32}],
    "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 32}},
    "student": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 32, "lr": 0.05}},
    "grid": {"teacher_counts": [1], "losses": ["kd", "zscore_kd"]},
}


def _cfg(**override):
    data = json.loads(json.dumps(BASE))
    for key, value in override.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return parse_config(data)


def _teacher_ids(cfg) -> list[str]:
    return [t.teacher_id for t in plan_sweep(cfg).teachers]


# --- item 3: the teacher id hashes what changes the teacher ----------------------------------


@pytest.mark.parametrize(
    "override",
    [
        {"runtime__channels_last": True},
        {"runtime__compile": True},
        {"runtime__torch_threads": 2},
        {"resources__teacher_workers": 2},
        {"resources__cpus_per_worker": 2.0},
        {"resources__gpus_per_worker": 1.0},
    ],
)
def test_teacher_id_changes_with_the_numerics_it_is_trained_with(override) -> None:
    assert set(_teacher_ids(_cfg())).isdisjoint(_teacher_ids(_cfg(**override)))


def test_teacher_id_ignores_settings_that_change_speed_only() -> None:
    same = _cfg(
        runtime={"loader_workers": 2, "pin_memory": True},
        resources={"max_concurrent_trials": 3, "report_interval_s": 1.0, "num_workers": 2},
    )
    assert _teacher_ids(same) == _teacher_ids(_cfg())
    # bf16 acts on CUDA only: on a CPU worker it changes nothing, on a GPU it changes the teacher.
    assert _teacher_ids(_cfg(runtime={"bf16": True})) == _teacher_ids(_cfg())
    gpu = {"gpus_per_worker": 1.0}
    assert set(_teacher_ids(_cfg(resources=gpu, runtime={"bf16": True}))).isdisjoint(
        _teacher_ids(_cfg(resources=gpu))
    )


def test_pretrained_true_is_resolved_to_the_weights_it_loads() -> None:
    def spec(pretrained):
        return plan_sweep(_cfg(teacher={"arch": "resnet50", "pretrained": pretrained})).teachers[0]

    default = spec(True)
    # True means this torchvision's DEFAULT; the id and the spec name the member it resolves to.
    from torchvision.models import ResNet50_Weights

    assert default.pretrained == ResNet50_Weights.DEFAULT.name == "IMAGENET1K_V2"
    assert default.teacher_id == spec("IMAGENET1K_V2").teacher_id == spec("DEFAULT").teacher_id
    assert default.teacher_id != spec("IMAGENET1K_V1").teacher_id != spec(False).teacher_id


# --- item 1: a checkpoint's fingerprint -------------------------------------------------------


def _fingerprints(cfg, index: int = 0):
    trials = list(plan_sweep(cfg).trials)
    return student_fingerprints(cfg, [trials[index]])


@pytest.mark.parametrize(
    ("override", "section"),
    [
        ({"student": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 32, "lr": 0.5}}}, "student"),
        ({"distill": {"temperature": 4.0}}, "distill"),
        ({"metrics": {"ece_bins": 10}}, "metrics"),
        ({"resources": {"num_workers": 2}}, "numerics"),
        ({"runtime": {"channels_last": True}}, "numerics"),
        ({"datasets": [{"name": "synthetic", "num_train": 96, "num_val": 32}]}, "dataset"),
    ],
)
def test_a_checkpoint_made_under_other_settings_is_refused(override, section) -> None:
    saved = _fingerprints(_cfg())
    problem = fingerprint_problem(saved, _fingerprints(_cfg(**override)))
    assert problem is not None and f"changed: {section}" in problem


def test_a_checkpoint_fingerprint_ignores_where_and_how_fast() -> None:
    saved = _fingerprints(_cfg())
    moved = _cfg(
        datasets=[{"name": "synthetic", "num_train": 64, "num_val": 32, "root": "/elsewhere"}],
        resources={"max_concurrent_trials": 2, "trials_per_run": 1, "report_interval_s": 1.0},
        failure={"worker_max_failures": 3},
    )
    assert fingerprint_problem(saved, _fingerprints(moved)) is None
    # A state without fingerprints (an older kd_ray's) is not resumed either.
    assert "no fingerprint" in fingerprint_problem(None, saved)
    # A group resumed with fewer members may use the state of the whole group.
    both = {**saved, **_fingerprints(_cfg(), 1)}
    assert fingerprint_problem(both, saved) is None
    assert "holds no state" in fingerprint_problem(saved, both)


# --- item 4: the trials row is written last; resume checks every table -----------------------


def _fake_trial(book: RunBook, trials):
    """A Tune trial of stream group ``g`` with ``trials``, written down in ``book`` as the gate does."""
    book.record("tune-g", {"group_id": "g", "trials": [t.__dict__ for t in trials]})
    return SimpleNamespace(trial_id="tune-g", get_error=lambda: None, error_file=None)


def _report(trial_id: str, epoch: int, bins: int) -> dict:
    values = {"epoch": epoch, "train/loss": 1.0, "train/acc": 0.5, "val/acc": 0.5, "val_aug/acc": 0.4}
    for split in ("train", "val", "val_aug"):
        for b in range(bins):
            values.update({f"calibration/{split}/{b}/{f}": 1.0 for f in ("count", "acc", "conf")})
    return trial_keys(trial_id, values)


def _collect(tmp_path, cfg, epochs: int, ray_storage=None) -> tuple[ResultsCollector, list[str]]:
    trial = plan_sweep(cfg).trials[0]
    collector = ResultsCollector(
        str(tmp_path / "sweep"),
        RunBook("group"),
        ray_storage=ray_storage,
        teacher_arch="cnn_tiny",
        student_arch="cnn_tiny",
        ece_bins=cfg.metrics.ece_bins,
    )
    writes: list[str] = []
    write = collector.tables.write
    collector.tables.write = lambda table, owner, rows: (writes.append(table), write(table, owner, rows))
    fake = _fake_trial(collector.runs, [trial])
    for epoch in range(1, epochs + 1):
        collector.on_trial_result(0, [], fake, _report(trial.trial_id, epoch, cfg.metrics.ece_bins))
    status = trial_keys(trial.trial_id, {STATUS_KEY: "ok", ERROR_KEY: ""})
    collector.on_trial_result(0, [], fake, status)
    collector.on_trial_complete(0, [], fake)
    return collector, writes


def test_the_trials_row_is_written_after_every_other_row_of_the_trial(tmp_path) -> None:
    _, writes = _collect(tmp_path, _cfg(), epochs=2)
    # The trials row marks the trial finished: a kill before it must leave the trial unfinished.
    assert writes == ["epochs", "epochs", "calibration", "trials"]


def test_resume_reruns_a_finished_trial_whose_rows_are_incomplete(tmp_path, caplog) -> None:
    cfg = _cfg()
    _collect(tmp_path, cfg, epochs=2)
    tables = ResultTables(Storage.open(tmp_path / "sweep"))
    tid = plan_sweep(cfg).trials[0].trial_id
    students = tmp_path / "sweep" / "students"
    students.mkdir()
    (students / f"{tid}.pt").write_bytes(b"the worker's export")
    (students / f"{tid}.json").write_text("{}")
    assert stored_sweep.finished_trials(tables, cfg) == ({tid}, set())

    # Its exported weights gone: the trial is not finished; it reruns from its checkpoint.
    (students / f"{tid}.pt").unlink()
    assert stored_sweep.finished_trials(tables, cfg) == (set(), set())
    assert f"{tid}: its trials row says ok but its exported student" in caplog.text
    (students / f"{tid}.pt").write_bytes(b"the worker's export")
    # Only its sidecar gone: kept (the row and the weights hold all it says), and reported.
    caplog.clear()
    (students / f"{tid}.json").unlink()
    assert stored_sweep.finished_trials(tables, cfg) == ({tid}, set())
    assert f"1 finished trial(s) have no sidecar in {Storage.open(students).uri}" in caplog.text

    calibration = tmp_path / "sweep" / "calibration.parquet"
    kept = {p: p.read_bytes() for p in calibration.iterdir()}
    for p in kept:
        p.unlink()
    assert stored_sweep.finished_trials(tables, cfg) == (set(), set())  # rerun from its checkpoint
    for p, data in kept.items():
        p.write_bytes(data)

    epochs = tables.read_owner("epochs", tid)
    tables.write("epochs", tid, epochs[epochs["epoch"] == 1].to_dict("records"))
    assert stored_sweep.finished_trials(tables, cfg) == (set(), {tid})  # rerun from scratch


def test_a_report_from_an_earlier_epoch_drops_rows_of_later_epochs(tmp_path) -> None:
    # A restart from an older checkpoint (or from scratch) recomputes the later epochs: the rows
    # a previous attempt wrote for them must not stay beside the new ones.
    cfg = _cfg()
    collector, _ = _collect(tmp_path, cfg, epochs=2)
    trial = plan_sweep(cfg).trials[0]
    fake = _fake_trial(collector.runs, [trial])
    collector.on_trial_result(0, [], fake, _report(trial.trial_id, 1, cfg.metrics.ece_bins))
    epochs = collector.tables.read_owner("epochs", trial.trial_id)
    assert sorted(set(epochs["epoch"])) == [1]


# --- item 16: finished groups lose their checkpoints; orphans; memory ------------------------


def test_a_finished_group_deletes_its_training_checkpoints(tmp_path) -> None:
    ray_storage = tmp_path / "sweep" / "_ray"
    (ray_storage / "g" / "checkpoint_2026-01-01_00-00-00.000000").mkdir(parents=True)
    (ray_storage / "g" / "checkpoint_2026-01-01_00-00-00.000000" / "state.pt").write_bytes(b"x")
    (ray_storage / "other").mkdir()
    _collect(tmp_path, _cfg(), epochs=2, ray_storage=str(ray_storage))
    assert not (ray_storage / "g").exists()
    assert (ray_storage / "other").exists()


def test_orphaned_temporary_files_are_removed_and_live_ones_kept(tmp_path) -> None:
    folder = tmp_path / "sweep" / "trials.parquet"
    folder.mkdir(parents=True)
    old = folder / f".a.parquet.{'0' * 32}.tmp"
    live = folder / f".b.parquet.{'1' * 32}.tmp"
    mine = folder / "keep.tmp"
    for p in (old, live, mine):
        p.write_bytes(b"x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(mine, (an_hour_ago, an_hour_ago))
    stored_sweep.clean_orphans(Storage.open(tmp_path / "sweep"))
    assert not old.exists() and live.exists() and mine.exists()


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_checkpoints_are_written_without_a_second_copy_in_memory(tmp_path) -> None:
    model = torch.nn.Linear(1000, 5000)  # 20 MB of weights
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = _cfg()
    spec = plan_sweep(cfg).teachers[0]
    store = TeacherStore(Storage.open(tmp_path / "_teachers"))
    peak = _peak_bytes(lambda: store.save(model, spec, num_classes=5000, info={}))
    assert peak < size / 4, f"saving a {size / 1e6:.0f} MB teacher held {peak / 1e6:.0f} MB more"
    assert store.has(spec.teacher_id)
    state = {"run": {"model": model.state_dict()}, "epoch": 1}
    storage = Storage.open(tmp_path / "states")
    peak = _peak_bytes(lambda: save_to_storage(storage, "state.pt", state))
    assert peak < size / 4
    loaded = load_file(storage.path("state.pt"))
    assert torch.equal(loaded["run"]["model"]["weight"], model.weight.detach())
    assert not [p for p in os.listdir(storage.root) if p.endswith(".tmp")]


# --- item 2: numerics may not change once a sweep has trials; groups are kept --------------


def _saved_sweep(tmp_path, cfg) -> Storage:
    sweep = Storage.open(tmp_path / cfg.name)
    sweep.write_bytes("config.yaml", dump_config(cfg).encode())
    return sweep


@pytest.mark.parametrize(
    "override",
    [
        {"resources": {"num_workers": 2}},
        {"resources": {"cpus_per_worker": 2.0}},
        {"runtime": {"channels_last": True}},
        {"runtime": {"compile": True}},
        {"runtime": {"torch_threads": 3}},
    ],
)
def test_resume_refuses_other_numerics_once_the_sweep_has_trials(tmp_path, override) -> None:
    sweep = _saved_sweep(tmp_path, _cfg())
    changed = _cfg(**override)
    with pytest.raises(ResultsError, match="would mix two numerics") as err:
        stored_sweep.refuse_changed_numerics(changed, sweep, finished=1, unfinished=3)
    assert "\n" not in str(err.value) and "while 3 trial(s) are unfinished" in str(err.value)
    # All finished: nothing would run now, but the saved config would be rewritten to numerics
    # none of them had, and a grown grid would add trials under them beside the old ones.
    with pytest.raises(ResultsError, match="would mix two numerics") as err:
        stored_sweep.refuse_changed_numerics(changed, sweep, finished=4, unfinished=0)
    assert "its 4 finished trial(s) were computed with the saved setting" in str(err.value)
    stored_sweep.refuse_changed_numerics(changed, sweep, finished=0, unfinished=0)  # no trial yet
    stored_sweep.refuse_changed_numerics(
        _cfg(resources={"max_concurrent_trials": 1}), sweep, finished=4, unfinished=3
    )


def test_a_started_group_is_resumed_whole_whatever_trials_per_run_says(tmp_path) -> None:
    cfg = _cfg()
    trials = list(plan_sweep(cfg).trials)
    stream = [t for t in trials if t.student_aug == "w"]
    assert len(stream) == 4
    started = stream[:3]
    sweep = Storage.open(tmp_path / "rel")
    manifest = {"group_id": "started-group", "trials": [t.trial_id for t in started]}
    sweep.child("_ray", "started-group").write_bytes(GROUP_MANIFEST, json.dumps(manifest).encode())
    # One of its members finished meanwhile; trials_per_run is now 1.
    runnable = [t for t in trials if t.trial_id != started[0].trial_id]
    plan = plan_sweep(cfg)
    one_per_run = _cfg(resources={"trials_per_run": 1})
    items = stage_runs.group_items(one_per_run, plan, sweep, runnable, set(), slots=2)
    by_id = {item["group_id"]: [t["trial_id"] for t in item["trials"]] for item in items}
    assert by_id["started-group"] == [t.trial_id for t in started[1:]]
    others = [t for t in runnable if t not in started]
    assert sorted(i for i in by_id if i != "started-group") == sorted(
        group_id(g) for g in stream_groups(others, 1)
    )
    # A trial to rerun from scratch never joins a started group, and its old run is removed.
    scratch = started[1]
    old_run = sweep.child("_ray", group_id([scratch]))
    old_run.write_bytes("checkpoint_x/state.pt", b"stale")
    items = stage_runs.group_items(cfg, plan, sweep, runnable, {scratch.trial_id}, slots=2)
    by_id = {item["group_id"]: [t["trial_id"] for t in item["trials"]] for item in items}
    assert by_id["started-group"] == [started[2].trial_id]
    assert by_id[group_id([scratch])] == [scratch.trial_id]
    assert not old_run.exists()


def test_a_group_ships_its_teachers_specs_and_the_workers_digests(tmp_path) -> None:
    # The worker loads its teachers from the specs in its group, and the collector writes each
    # sidecar with the digest in it: both must be what the plan and the worker's own
    # fingerprints say (issue 13, item 4: workers get what the driver knows).
    cfg = _cfg()
    plan = plan_sweep(cfg)
    items = stage_runs.group_items(cfg, plan, Storage.open(tmp_path / "s"), list(plan.trials), set(), 2)
    assert sum(len(item["trials"]) for item in items) == len(plan.trials)
    for item in items:
        trials = [StudentTrial.from_dict(d) for d in item["trials"]]
        needed = {tid for t in trials for tid in t.teacher_ids}
        assert {d["teacher_id"] for d in item["teachers"]} == needed
        assert all(d == plan.teacher(d["teacher_id"]).__dict__ for d in item["teachers"])
        worker = student_fingerprints(cfg, trials)
        assert item["digests"] == {tid: f["digest"] for tid, f in worker.items()}


# --- item 7: the worker's own reason reaches the tables ---------------------------------------

WORKER_GROUP_ERROR = """Training failed due to worker errors:
[Rank 0 Error Snippet]:
Traceback (most recent call last):
  File "/work/main/kd_ray/orchestration/workers.py", line 125, in student_worker
    teachers[tid] = store.load_into(model, plan.teacher(tid))
kd_ray.errors.CheckpointError: /r/_teachers/t.pt: weights do not fit cnn_tiny: size mismatch for fc
"""


def test_the_workers_own_reason_is_kept_not_rays_wrapper() -> None:
    reason = "CheckpointError: /r/_teachers/t.pt: weights do not fit cnn_tiny: size mismatch for fc"
    assert short_error(WORKER_GROUP_ERROR) == reason
    # As the driver reads it back from Tune's error file: the trial function's TrialError.
    tune_text = (
        "Traceback (most recent call last):\n  File x\nkd_ray.orchestration.trials.TrialError: " + reason
    )
    assert short_error(tune_text) == reason
    assert short_error("Training failed due to worker errors:\nTraceback\n  File y\nStopIteration\n") == (
        "StopIteration"
    )


def test_teacher_failures_keep_the_workers_reason() -> None:
    # A pack of two teachers in one run: the first diverged, the second trained.
    outcomes = TeacherOutcomes(RunBook("teacher"))
    first, second = plan_sweep(_cfg()).teachers[:2]
    pack = [{**first.__dict__, "teacher_id": "t1"}, {**second.__dict__, "teacher_id": "t2"}]
    outcomes.runs.record("tune-t1", {"pack_id": "teachers-2x-abc", "teachers": pack})
    trial = SimpleNamespace(trial_id="tune-t1", get_error=lambda: WORKER_GROUP_ERROR)
    outcomes.on_trial_result(0, [], trial, {"train/loss": 1.0, "epoch": 1, "teacher": "t1"})
    assert outcomes.errors == {}
    final = {
        **trial_keys("t1", {STATUS_KEY: "failed", ERROR_KEY: "teacher diverged at epoch 1"}),
        **trial_keys("t2", {STATUS_KEY: "ok", ERROR_KEY: ""}),
    }
    outcomes.on_trial_result(0, [], trial, final)
    assert outcomes.errors == {"t1": "teacher diverged at epoch 1"}
    outcomes.on_trial_error(0, [], trial)  # the whole run failed: every teacher gets its reason
    assert set(outcomes.errors) == {"t1", "t2"}
    assert outcomes.errors["t1"].startswith("CheckpointError: /r/_teachers/t.pt")


def test_saved_config_round_trips() -> None:
    # The numerics check reads the saved config.yaml back; it must parse to the same config.
    cfg = _cfg()
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg


# --- item 12: a student whose own loss raises fails alone ------------------------------------


def test_a_student_whose_loss_raises_fails_alone_like_a_divergence() -> None:
    from kd_ray.data import DATASETS
    from kd_ray.models import create_model
    from kd_ray.train.distill import DistillationRun
    from kd_ray.train.runtime import Runtime

    cfg = _cfg()
    plan = plan_sweep(cfg)
    group = [t for t in plan.trials if t.student_aug == "w"]
    assert len(group) == 4
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    torch.manual_seed(0)
    teachers = {
        spec.teacher_id: create_model(
            "cnn_tiny", num_classes=datasets.num_classes, in_channels=datasets.channels
        )
        for spec in plan.teachers
    }
    run = DistillationRun(cfg, group, datasets, teachers, Runtime(torch.device("cpu")))
    victim = run.students[1]

    def broken(*args, **kwargs):
        raise ValueError("this loss has a bug\nsecond line")

    victim.loss_fn = broken
    first = run.run_epoch(1)
    tid = victim.trial.trial_id
    assert first.failures == {tid: "its loss raised at epoch 1: ValueError: this loss has a bug"}
    assert sorted(first.reports) == sorted(t.trial_id for t in group if t.trial_id != tid)
    second = run.run_epoch(2)
    assert tid not in second.reports and len(second.reports) == 3
    assert all(math.isfinite(r["train/loss"]) for r in second.reports.values())


def test_a_sweeps_environment_is_put_back_when_it_ends(monkeypatch) -> None:
    # A notebook or test process that runs a sweep keeps its own environment afterwards
    # (issue 13, item 5): what the sweep sets is set during the sweep only, and a value the
    # caller had is restored, not dropped.
    from ray._private import ray_constants

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("TUNE_DISABLE_SIGINT_HANDLER", raising=False)
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    before, cluster_mode = dict(os.environ), ray_constants.ENABLE_RAY_CLUSTER
    cfg = _cfg()
    with sweep_environment(cfg):
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
        assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
        assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == str(cfg.resources.report_interval_s)
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
        assert ray_constants.ENABLE_RAY_CLUSTER is False  # Ray imported here: set in-process too
    assert dict(os.environ) == before
    assert cluster_mode == ray_constants.ENABLE_RAY_CLUSTER
    with pytest.raises(KeyboardInterrupt), sweep_environment(cfg):
        raise KeyboardInterrupt  # Ctrl-C mid-sweep
    assert dict(os.environ) == before
