"""Top-5 accuracy of the ImageNet family (docs/metrics.md#acc_top5): the formula against hand
values and independent sorts, ties included; the plain training loops on ImageNet files in the
real layout; the result tables and their analysis, old sweeps without the columns included.
(The DDP sum of its counts is in tests/test_accumulator.py, with the other sums.)"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from _analysis_fixtures import trial_row as fixture_trial_row
from _analysis_fixtures import write_results
from _fake_datasets import write_image_folder

from kd_ray import analysis as A
from kd_ray import metrics
from kd_ray.config import parse_config
from kd_ray.data import DATASETS
from kd_ray.metrics import SplitMetrics
from kd_ray.metrics.functional import predictions, top_k_correct
from kd_ray.metrics.names import SPLITS, computes_top5
from kd_ray.plan import plan_sweep
from kd_ray.results.rows import epoch_rows, teacher_row, trial_row
from kd_ray.results.schema import SCHEMAS
from kd_ray.results.store import ResultTables
from kd_ray.storage import Storage
from kd_ray.train.distill import DistillationRun
from kd_ray.train.runtime import Runtime
from kd_ray.train.teacher import TeacherRun

CPU = Runtime(torch.device("cpu"))

# --- the formula ----------------------------------------------------------------------------

DESCENDING = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]


def test_top5_hand_computed_with_ties() -> None:
    logits = torch.tensor(
        [
            DESCENDING,  # label 4 has rank 4: in the top 5
            DESCENDING,  # label 5 has rank 5: out
            [0.0] * 7,  # all tied: label 4 is behind classes 0..3 only, rank 4: in
            [0.0] * 7,  # label 5 is behind classes 0..4, rank 5: out
            [1.0, 1, 1, 1, 1, 1, 2],  # label 0: only class 6 is higher, rank 1: in
            [0.0, 3, 3, 3, 3, 3, 3],  # label 6: tied with the lower classes 1..5, rank 5: out
            [9.0, 0, 0, 0, 0, 0, 0],  # label 3: class 0 above, tied 1, 2 before it, rank 3: in
            [0.0, 0, 2, 2, 0, 0, 0],  # label 2: the tie's first class, rank 0: in, and top-1
            [0.0, 0, 2, 2, 0, 0, 0],  # label 3: second in the tie, rank 1: in, not top-1
        ]
    )
    labels = torch.tensor([4, 5, 4, 5, 0, 6, 3, 2, 3])
    in_top5 = [True, False, True, False, True, False, True, True, True]
    assert top_k_correct(logits, labels, 5).tolist() == in_top5
    assert metrics.top_k_accuracy(logits, labels) == pytest.approx(6 / 9)
    # Top-1 by the same rule is the argmax with its first-index tie-break: only row 8 (index 7).
    assert top_k_correct(logits, labels, 1).tolist() == [i == 7 for i in range(9)]
    assert top_k_correct(logits, labels, 1).tolist() == (predictions(logits) == labels).tolist()
    assert metrics.top_k_accuracy(logits, labels, k=1) == pytest.approx(1 / 9)
    assert metrics.top_k_accuracy(logits, labels, k=2) == pytest.approx(3 / 9)  # rows 5, 8, 9


def _numpy_top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """An independent top-k: a stable sort of the negated logits lists classes by descending
    logit with ties by lower index first (the documented rule); is the label in the first k?"""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_equals_a_stable_numpy_sort_on_tied_logits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Integer logits from a small range: most rows have ties, many at the label's value.
    logits = rng.integers(-3, 4, size=(400, 12)).astype(np.float64)
    labels = rng.integers(0, 12, size=400)
    assert (logits == logits[np.arange(400), labels][:, None]).sum(axis=1).max() > 1  # ties occur
    for k in (1, 2, 5, 11, 12, 20):
        want = _numpy_top_k(logits, labels, k)
        got = top_k_correct(logits, labels, k).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"k={k}")
        assert metrics.top_k_accuracy(logits, labels, k) == pytest.approx(want.mean(), abs=1e-15)
    assert metrics.top_k_accuracy(logits, labels, 12) == 1.0  # k >= C counts every sample


def test_top5_equals_torch_topk_without_ties() -> None:
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(300, 50, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 50, (300,), generator=g)
    want = (torch.topk(logits, 5, dim=1).indices == labels[:, None]).any(dim=1)
    assert torch.equal(top_k_correct(logits, labels, 5), want)
    assert 0 < float(want.double().mean()) < 1


def test_top_k_edges() -> None:
    assert math.isnan(metrics.top_k_accuracy(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(ValueError, match="k must be >= 1"):
        top_k_correct(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0)
    # float32/16 logits are ranked in float64, as the other metrics compute.
    half = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]], dtype=torch.float16)
    assert top_k_correct(half, torch.tensor([0]), 5).tolist() == [False]


def test_accumulator_streams_top5_only_when_asked() -> None:
    g = torch.Generator().manual_seed(3)
    n, c = 61, 9
    labels = torch.randint(0, c, (n,), generator=g)
    student = torch.randn(n, c, generator=g) + torch.nn.functional.one_hot(labels, c)
    teachers = [torch.randn(n, c, generator=g)]
    on, off = SplitMetrics(c, 1, top5=True), SplitMetrics(c, 1)
    for rows in torch.arange(n).split(16):
        on.update(student[rows], [t[rows] for t in teachers], labels[rows])
        off.update(student[rows], [t[rows] for t in teachers], labels[rows])
    got = on.compute()
    assert got["acc_top5"] == pytest.approx(metrics.top_k_accuracy(student, labels, 5), abs=1e-15)
    assert got["acc"] <= got["acc_top5"] < 1
    assert "acc_top5" not in off.compute()
    assert {k: v for k, v in got.items() if k != "acc_top5"} == off.compute()


def test_the_imagenet_family_is_the_one_that_measures_top5() -> None:
    assert computes_top5("imagenet") and computes_top5("imagenet_lt")
    assert not any(computes_top5(f) for f in ("digits", "cifar", "synthetic"))


# --- the loops on ImageNet files ------------------------------------------------------------

WNIDS = [f"n0{i}000000" for i in range(8)]  # 8 classes: top-5 is not trivially 1


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """One teacher epoch and one student epoch on a fake ImageNet folder (8 classes, 16 px)."""
    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(root / "train", WNIDS, 4, sizes=((20, 18),), seed=0)
    write_image_folder(root / "val", WNIDS, 3, sizes=((18, 20),), seed=50)
    cfg = parse_config(
        {
            "name": "top5",
            "datasets": [{"name": "imagenet", "root": str(root), "image_size": 16}],
            "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
            "student": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16, "lr": 0.05}},
            "grid": {"teacher_counts": [1], "permutations": ["T1w_Sw"], "losses": ["kd"]},
        }
    )
    plan = plan_sweep(cfg)
    datasets = DATASETS.get("imagenet")(cfg.datasets[0])
    assert (datasets.family, datasets.num_classes) == ("imagenet", 8)
    spec = plan.teachers[0]
    teacher = TeacherRun(cfg, spec, datasets, CPU)
    teacher_report = teacher.run_epoch(1)
    trial = plan.trials[0]
    student = DistillationRun(cfg, [trial], datasets, {spec.teacher_id: teacher.model}, CPU).run_epoch(1)
    return spec, teacher_report, trial, student.reports[trial.trial_id]


def test_teacher_and_student_report_top5_on_imagenet(imagenet_run) -> None:
    _, teacher, _, student = imagenet_run
    assert teacher["val/acc"] <= teacher["val/acc_top5"] <= 1
    for split in SPLITS:
        acc, top5 = student[f"{split}/acc"], student[f"{split}/acc_top5"]
        assert 0 <= acc <= top5 <= 1, split
    # 24 validation images of 8 classes: a multiple of 1/24, so a count, not an average of batches.
    assert student["val/acc_top5"] * 24 == pytest.approx(round(student["val/acc_top5"] * 24))


def test_imagenet_tables_hold_top5_and_load_results_reads_it(imagenet_run, tmp_path: Path) -> None:
    spec, teacher, trial, report = imagenet_run
    report = {**report, "epoch": 1}
    tables = ResultTables(Storage.open(tmp_path / "sweep"))
    row = trial_row(
        trial,
        teacher_arch="cnn_tiny",
        student_arch="cnn_tiny",
        report=report,
        status="ok",
        error=None,
        wall_s=1.0,
    )
    tables.write("trials", trial.trial_id, [row])
    tables.write("epochs", trial.trial_id, epoch_rows(trial.trial_id, report))
    info = {
        "epochs": 1,
        "train_acc": teacher["train/acc"],
        "val_acc": teacher["val/acc"],
        "val_acc_top5": teacher["val/acc_top5"],
    }
    tables.write(
        "teachers",
        spec.teacher_id,
        [teacher_row(spec, info=info, status="ok", error=None, checkpoint="x.pt")],
    )
    res = A.load_results(tmp_path / "sweep")
    got = res.trials.set_index("trial_id").loc[trial.trial_id]
    for split in SPLITS:
        assert got[f"{split}_acc_top5"] == report[f"{split}/acc_top5"]
    epochs = res.epochs.set_index("split")
    assert [epochs.loc[s, "acc_top5"] for s in SPLITS] == [report[f"{s}/acc_top5"] for s in SPLITS]
    assert res.teachers.loc[0, "val_acc_top5"] == teacher["val/acc_top5"]


def test_other_families_leave_the_top5_columns_null(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "name": "digits",
            "datasets": [{"name": "synthetic", "num_train": 32, "num_val": 16}],
            "teacher": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16}},
            "student": {"arch": "cnn_tiny", "train": {"epochs": 1, "batch_size": 16}},
            "grid": {"teacher_counts": [1], "permutations": ["T1w_Sw"], "losses": ["kd"]},
        }
    )
    plan = plan_sweep(cfg)
    datasets = DATASETS.get("synthetic")(cfg.datasets[0])
    spec, trial = plan.teachers[0], plan.trials[0]
    teacher = TeacherRun(cfg, spec, datasets, CPU)
    assert "val/acc_top5" not in teacher.run_epoch(1)
    report = DistillationRun(cfg, [trial], datasets, {spec.teacher_id: teacher.model}, CPU).run_epoch(1)
    report = {**report.reports[trial.trial_id], "epoch": 1}
    assert not any(key.endswith("acc_top5") for key in report)
    tables = ResultTables(Storage.open(tmp_path))
    row = trial_row(
        trial, teacher_arch="a", student_arch="b", report=report, status="ok", error=None, wall_s=1.0
    )
    tables.write("trials", trial.trial_id, [row])
    tables.write("epochs", trial.trial_id, epoch_rows(trial.trial_id, report))
    trials = pq.read_table(tmp_path / "trials.parquet")
    epochs = pq.read_table(tmp_path / "epochs.parquet")
    # Null (not measured), where an undefined metric is NaN (iou_teachers for one teacher).
    assert trials.column("val_acc_top5").null_count == 1
    assert epochs.column("acc_top5").null_count == 3
    assert epochs.column("iou_teachers").null_count == 0
    assert math.isnan(row["val_iou_teachers"])


# --- old sweeps and the analysis ------------------------------------------------------------

_TOP5_COLUMNS = {
    "trials": [f"{s}_acc_top5" for s in SPLITS],
    "epochs": ["acc_top5"],
    "teachers": ["val_acc_top5"],
}


@pytest.mark.parametrize("resumed", [False, True])
def test_a_sweep_written_before_top5_loads_with_null_columns(tmp_path: Path, resumed: bool) -> None:
    trials = [fixture_trial_row(perm=p, dataset="imagenet") for p in ("T1w_T2w_Sw", "T1s_T2w_Sw")]
    root = write_results(tmp_path / "old", trials)
    new_rows = {}
    for table, columns in _TOP5_COLUMNS.items():
        for i, path in enumerate(sorted((root / f"{table}.parquet").iterdir())):
            data = pq.read_table(path)
            if resumed and i == 0:  # a resumed old sweep: one file of today's, with top-5 values
                for column in columns:
                    at = data.schema.get_field_index(column)
                    data = data.set_column(at, column, pa.array([0.75] * data.num_rows, pa.float64()))
                new_rows[table] = data.num_rows
            else:
                data = data.drop_columns(columns)
            pq.write_table(data, path)
    res = A.load_results(root)
    for table, columns in _TOP5_COLUMNS.items():
        frame = getattr(res, table)
        assert list(frame.columns) == SCHEMAS[table].names
        for column in columns:
            assert (frame[column] == 0.75).sum() == new_rows.get(table, 0), (table, column)
            assert frame[column].isna().sum() == len(frame) - new_rows.get(table, 0), (table, column)
    A.table1_affinity_acc(res.trials)  # the analysis takes either


def _trials(dataset: str, **top5: float) -> list[dict]:
    return [
        fixture_trial_row(perm=perm, seed=seed, dataset=dataset, val_acc=0.6 + 0.1 * seed, **top5)
        for perm in ("T1w_T2w_Sw", "T1s_T2w_Ss")
        for seed in (0, 1)
    ]


def test_accuracy_tables_show_top5_for_the_imagenet_family_only(tmp_path: Path) -> None:
    imagenet = _trials("imagenet", val_acc_top5=0.9)
    digits = _trials("digits")
    table1 = A.table1_affinity_acc(
        A.load_results(write_results(tmp_path / "mixed", imagenet + digits)).trials
    )
    metrics_of = {
        d: list(table1.xs(d, level="dataset").index.get_level_values("metric"))
        for d in ("imagenet", "digits")
    }
    assert metrics_of == {
        "imagenet": ["affinity", "val_acc", "val_acc_top5"],
        "digits": ["affinity", "val_acc"],
    }
    assert (table1.xs("val_acc_top5", level="metric") == 0.9).all().all()
    best = A.table_g5_best(A.load_results(write_results(tmp_path / "in", imagenet)).trials)
    assert best.loc[0, "val_acc_top5"] == pytest.approx(0.9) and best.loc[0, "val_acc"] == pytest.approx(0.65)
    plain = A.load_results(write_results(tmp_path / "digits", digits)).trials
    assert "val_acc_top5" not in A.table_g5_best(plain)
    assert "val_acc_top5" not in A.table1_affinity_acc(plain).index.get_level_values("metric")


def test_the_report_shows_top5_in_the_accuracy_tables_of_an_imagenet_sweep(tmp_path: Path) -> None:
    from kd_ray.report import build_report_html

    page = build_report_html(
        A.load_results(write_results(tmp_path / "in", _trials("imagenet", val_acc_top5=0.9)))
    )
    for table in ("table-table1", "table-tableG5"):
        start = page.index(f'id="{table}"')
        assert "val_acc_top5" in page[start : page.index("</table>", start)], table
