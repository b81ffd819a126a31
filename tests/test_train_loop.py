"""The plain-PyTorch loops: determinism, paired randomness, schedules, checkpoints (no Ray)."""

from __future__ import annotations

import math

import pytest
import torch

from kd_ray.config import ScheduleConfig, parse_config
from kd_ray.data import DATASETS, VIEWS
from kd_ray.errors import CheckpointError
from kd_ray.models import create_model
from kd_ray.plan import plan_sweep
from kd_ray.train.checkpoint import load_teacher_weights, teacher_bytes, teacher_state
from kd_ray.train.distill import DistillationRun, teacher_key
from kd_ray.train.optim import lr_factor
from kd_ray.train.runtime import Runtime
from kd_ray.train.teacher import TeacherRun

CFG = {
    "name": "loop",
    "datasets": [{"name": "synthetic", "num_train": 64, "num_val": 32}],
    "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
    "student": {"arch": "cnn_tiny", "train": {"epochs": 2, "batch_size": 16, "lr": 0.05}},
    "grid": {"teacher_counts": [2], "losses": ["kd", "zscore_kd"]},
}
CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def setup():
    cfg = parse_config(CFG)
    plan = plan_sweep(cfg)
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    teachers = {}
    for spec in plan.teachers:
        run = TeacherRun(cfg, spec, datasets, CPU)
        run.run_epoch(1)
        teachers[spec.teacher_id] = run.model
    return cfg, plan, datasets, teachers


def _run(setup, trial_indices: list[int], epochs: int = 2):
    cfg, plan, datasets, teachers = setup
    trials = [plan.trials[i] for i in trial_indices]
    run = DistillationRun(cfg, trials, datasets, teachers, CPU)
    return run, [run.run_epoch(e) for e in range(1, epochs + 1)]


def _metrics(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "seconds"}


def test_same_trial_and_seed_give_identical_metrics(setup) -> None:
    _, first = _run(setup, [0])
    _, second = _run(setup, [0])
    tid = setup[1].trials[0].trial_id
    assert [_metrics(r.reports[tid]) for r in first] == [_metrics(r.reports[tid]) for r in second]
    assert 0.0 <= first[-1].reports[tid]["val/acc"] <= 1.0 and math.isfinite(
        first[-1].reports[tid]["train/loss"]
    )


def test_a_trial_trained_in_a_stream_group_equals_the_trial_alone(setup) -> None:
    cfg, plan, *_ = setup
    kd, zs = plan.trials[0], plan.trials[1]
    assert (kd.perm, kd.loss, zs.perm, zs.loss) == (kd.perm, "kd", kd.perm, "zscore_kd")
    # The other permutations with the same student augmentation share the stream too.
    mates = [i for i, t in enumerate(plan.trials) if t.student_aug == kd.student_aug]
    assert len(mates) == 8
    _, alone = _run(setup, [1])
    _, grouped = _run(setup, mates)
    for a, b in zip(alone, grouped, strict=True):
        assert _metrics(a.reports[zs.trial_id]) == _metrics(b.reports[zs.trial_id])


MIXED = {
    **CFG,
    "grid": {**CFG["grid"], "views": ["full", "split"], "permutations": ["T1s_T2w_Sw", "T1w_T2w_Sw"]},
}


def test_a_trial_in_a_mixed_view_group_equals_the_trial_alone(setup) -> None:
    # The view decides what the teachers see, not the student's stream: full- and split-view
    # trials share one group (teacher ids do not depend on the grid, so setup's teachers serve).
    _, _, datasets, teachers = setup
    cfg = parse_config(MIXED)
    trials = list(plan_sweep(cfg).trials)
    assert sorted({t.view for t in trials}) == ["full", "split"] and len(trials) == 8
    grouped = DistillationRun(cfg, trials, datasets, teachers, CPU)
    together = [grouped.run_epoch(e) for e in (1, 2)]
    for view in ("full", "split"):
        trial = next(t for t in trials if t.view == view and t.loss == "zscore_kd")
        alone = DistillationRun(cfg, [trial], datasets, teachers, CPU)
        for epoch, both in enumerate(together, 1):
            assert _metrics(alone.run_epoch(epoch).reports[trial.trial_id]) == _metrics(
                both.reports[trial.trial_id]
            )


KD_AXES = {
    **CFG,
    "grid": {
        **CFG["grid"],
        "losses": ["kd"],
        "permutations": ["T1w_T2s_Sw"],
        "temperatures": [4, 10],
        "student_lrs": [0.05, 0.2],
    },
}


def test_students_of_other_temperature_and_lr_in_one_group_each_equal_the_trial_alone(setup) -> None:
    """τ and lr are the students' own: in a group of τ = 4 and τ = 10 students at two lrs, a
    τ = 4 and a τ = 10 student each train exactly as they would alone, and every value changes
    what a student computes."""
    _, _, datasets, teachers = setup
    cfg = parse_config(KD_AXES)
    trials = list(plan_sweep(cfg).trials)
    assert [(t.temperature, t.lr) for t in trials] == [(4, 0.05), (4, 0.2), (10, 0.05), (10, 0.2)]
    together = DistillationRun(cfg, trials, datasets, teachers, CPU).run_epoch(1)
    for trial in (trials[0], trials[3]):
        alone = DistillationRun(cfg, [trial], datasets, teachers, CPU).run_epoch(1)
        own = alone.reports[trial.trial_id]
        assert _metrics(own) == _metrics(together.reports[trial.trial_id]), trial.trial_id
        assert own["lr"] == trial.lr  # the trial's lr, not student.train.lr
    losses = {t.trial_id: together.reports[t.trial_id]["train/loss"] for t in trials}
    assert len(set(losses.values())) == len(trials), losses


def _teacher_forwards_per_batch(cfg, trials, datasets) -> float:
    """Teacher forward passes per batch of a group's epoch, counted by forward hooks."""
    teachers = {
        tid: create_model("cnn_tiny", num_classes=datasets.num_classes, in_channels=datasets.channels)
        for t in trials
        for tid in t.teacher_ids
    }
    run = DistillationRun(cfg, trials, datasets, teachers, CPU)
    calls = []
    for tid, model in run.teachers.items():
        model.register_forward_hook(lambda *_, tid=tid: calls.append(tid))
    run.run_epoch(1)
    batches = sum(len(getattr(run.loaders, split)) for split in ("train", "val", "val_aug"))
    assert len(calls) % batches == 0
    return len(calls) / batches


def test_each_teacher_runs_once_per_batch_and_input() -> None:
    cfg = parse_config(
        {
            **CFG,
            "datasets": [{"name": "synthetic", "num_train": 32, "num_val": 16}],
            "grid": {"teacher_counts": [1, 2, 3], "losses": ["kd"], "views": ["full", "split"]},
        }
    )
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    trials = [t for t in plan_sweep(cfg).trials if t.student_aug == "w"]
    full = [t for t in trials if t.view == "full"]
    assert len(full) == 2 + 4 + 8 and len(trials) == 2 * len(full)
    # Full view: a teacher's input depends on neither slot nor k, so each distinct teacher
    # (T1w, T1s, T2w, T2s, T3w, T3s; T1w is the same model for k = 1, 2, 3) runs once.
    assert _teacher_forwards_per_batch(cfg, full, datasets) == 6
    # Adding the split view: teacher (slot, k) sees strip slot of k, a new input for k = 2
    # (2 slots x w/s) and k = 3 (3 slots x w/s); strip 1 of 1 is the whole image.
    assert _teacher_forwards_per_batch(cfg, trials, datasets) == 6 + 4 + 6


def test_split_view_with_one_teacher_is_the_full_view() -> None:
    # Why teacher_key merges split k = 1 into the full view: the one strip is the whole image.
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(VIEWS.get("split")(x, 1, 1), x)
    assert teacher_key("t", "split", 1, 1) == teacher_key("t", "full", 2, 3) == ("t",)
    assert teacher_key("t", "split", 1, 2) != teacher_key("t", "split", 1, 3)


def test_trials_differing_only_in_loss_see_the_same_stream(setup) -> None:
    run, _ = _run(setup, [0, 1], epochs=0)
    a, b = run.students
    for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True):
        assert torch.equal(x, y)  # same initial weights
    with pytest.raises(ValueError, match="one data stream"):
        cfg, plan, datasets, teachers = setup
        other = next(t for t in plan.trials if t.student_aug != plan.trials[0].student_aug)
        DistillationRun(cfg, [plan.trials[0], other], datasets, teachers, CPU)


def test_checkpoint_round_trip_continues_identically(setup) -> None:
    tid = setup[1].trials[2].trial_id
    _, uninterrupted = _run(setup, [2], epochs=2)
    first, _ = _run(setup, [2], epochs=1)
    state = first.state_dict()
    cfg, plan, datasets, teachers = setup
    resumed = DistillationRun(cfg, [plan.trials[2]], datasets, teachers, CPU)
    resumed.load_state_dict(state)
    assert _metrics(resumed.run_epoch(2).reports[tid]) == _metrics(uninterrupted[1].reports[tid])


def test_a_diverging_student_stops_and_the_others_go_on(setup) -> None:
    cfg, plan, datasets, teachers = setup
    hot = parse_config(
        {**CFG, "student": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 1e12}}}
    )
    with pytest.raises(ValueError, match="has lr 0.05, but the config gives"):
        DistillationRun(hot, [plan.trials[0]], datasets, teachers, CPU)  # a trial trains at its own lr
    trial = plan_sweep(hot).trials[0]
    run = DistillationRun(hot, [trial], datasets, teachers, CPU)
    result = run.run_epoch(1)
    assert "diverged at epoch 1" in result.failures[trial.trial_id]
    assert not run.active and not result.reports


def test_a_diverging_teacher_says_so_and_a_sane_one_does_not(setup) -> None:
    # The loop judges divergence for teachers as for students; the Ray worker only ends the run.
    cfg, plan, datasets, _ = setup
    sane = TeacherRun(cfg, plan.teachers[0], datasets, CPU)
    sane.run_epoch(1)
    assert sane.failure is None
    hot = parse_config(
        {**CFG, "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 1e12}}}
    )
    run = TeacherRun(hot, plan_sweep(hot).teachers[0], datasets, CPU)
    report = run.run_epoch(1)
    assert not math.isfinite(report["train/loss"])
    assert run.failure == f"teacher diverged at epoch 1: loss {report['train/loss']}"


def test_a_teacher_trained_after_another_in_one_process_equals_the_teacher_alone(setup) -> None:
    # A teacher pack trains its teachers one after another in one worker
    # (docs/architecture.md#teacher-packs), and the store keys a teacher by its id alone, so a
    # teacher must not depend on what ran before it in the process: its seeds are its own.
    cfg, plan, datasets, _ = setup
    first, second = plan.teachers[:2]

    def second_teacher() -> dict[str, torch.Tensor]:
        run = TeacherRun(cfg, second, datasets, CPU)
        run.run_epoch(1)
        return run.model.state_dict()

    torch.manual_seed(12345)  # alone, from some other state of the global generator
    alone = second_teacher()
    TeacherRun(cfg, first, datasets, CPU).run_epoch(1)  # in a pack: after its packmate
    torch.rand(7)
    packed = second_teacher()
    assert alone.keys() == packed.keys()
    for name in alone:
        assert torch.equal(alone[name], packed[name]), name


def test_teacher_checkpoint_refuses_another_teacher(setup) -> None:
    model = create_model("cnn_tiny", num_classes=4, in_channels=3)
    data = teacher_bytes(model, teacher_id="a", arch="cnn_tiny", num_classes=4)
    load_teacher_weights(model, data, teacher_id="a", arch="cnn_tiny", source="a.pt")
    with pytest.raises(CheckpointError, match="holds teacher 'a'"):
        load_teacher_weights(model, data, teacher_id="b", arch="cnn_tiny", source="b.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_teacher_weights(model, b"garbage", teacher_id="a", arch="cnn_tiny", source="g.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        other = create_model("cnn_small", num_classes=4, in_channels=3)
        load_teacher_weights(other, data, teacher_id="a", arch="cnn_tiny", source="a.pt")


def test_the_teacher_store_checks_a_file_as_loading_it_does(setup, tmp_path) -> None:
    # One check of a teacher file (checkpoint.check_teacher): the store's check before a sweep
    # starts and the worker's load refuse the same file with the same line.
    from kd_ray.orchestration.teacher_store import TeacherStore
    from kd_ray.storage import Storage

    _, plan, _, teachers = setup
    right, wrong = plan.teachers[0], plan.teachers[1]
    store = TeacherStore(Storage.open(tmp_path))
    store.save(teachers[right.teacher_id], right, num_classes=4, info={})
    store.check(right)
    (tmp_path / f"{wrong.teacher_id}.pt").write_bytes((tmp_path / f"{right.teacher_id}.pt").read_bytes())
    fresh = create_model("cnn_tiny", num_classes=4, in_channels=3)
    errors = []
    for attempt in (lambda: store.check(wrong), lambda: store.load_into(fresh, wrong)):
        with pytest.raises(CheckpointError) as err:
            attempt()
        errors.append(str(err.value))
    assert errors[0] == errors[1]
    assert f"holds teacher {right.teacher_id!r}" in errors[0] and "delete it to retrain" in errors[0]
    (tmp_path / f"{wrong.teacher_id}.pt").unlink()
    for attempt in (lambda: store.check(wrong), lambda: store.load_into(fresh, wrong)):
        with pytest.raises(CheckpointError, match="teacher checkpoint not found"):
            attempt()


def test_checkpoints_hold_the_weights_inside_wrappers_and_only_there() -> None:
    # One unwrap (kd_ray.models.unwrap_model) for checkpoints and attention hooks: it strips
    # DDP/DataParallel/torch.compile wrappers, not a model's own child that is called "module".
    model = create_model("cnn_tiny", num_classes=4, in_channels=3)
    wrapped = teacher_state(torch.nn.DataParallel(model), teacher_id="a", arch="cnn_tiny", num_classes=4)
    assert wrapped["state_dict"].keys() == model.state_dict().keys()

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = torch.nn.Linear(2, 2)

    own = teacher_state(Holder(), teacher_id="a", arch="holder", num_classes=2)
    assert sorted(own["state_dict"]) == ["module.bias", "module.weight"]


def test_step_schedule_with_warmup() -> None:
    s = ScheduleConfig(kind="step", milestones=(3, 5), gamma=0.1, warmup_epochs=2)
    factors = [lr_factor(s, e, 6, 0.1) for e in range(6)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.1, 0.1, 0.01])


def test_cosine_schedule_reaches_eta_min() -> None:
    s = ScheduleConfig(kind="cosine", t_max=4, eta_min=0.01)
    factors = [lr_factor(s, e, 4, 0.1) for e in range(5)]
    assert factors[0] == pytest.approx(1.0) and factors[2] == pytest.approx(0.55)
    assert factors[4] == pytest.approx(0.1)  # eta_min / base lr
