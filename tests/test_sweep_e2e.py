"""The backbone end to end: the demo's grid through the real CLI, Ray, Parquet and report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from _sweep_helpers import REPO, run_cli

from kd_ray.metrics.names import SPLITS
from kd_ray.results.schema import SCHEMAS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, object]:
    """experiments/demo.yaml with one epoch per model: the same 4 teachers and 16 trials."""
    tmp = tmp_path_factory.mktemp("e2e")
    config = yaml.safe_load((REPO / "experiments" / "demo.yaml").read_text())
    config["name"] = "demo_e2e"
    config["teacher"]["train"]["epochs"] = 1
    config["student"]["train"]["epochs"] = 2
    path = tmp / "demo_e2e.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_cli("sweep", str(path), "--results", str(tmp / "results"), "--quiet")
    return tmp / "results" / "demo_e2e", proc


def test_sweep_exits_zero_and_says_where_results_are(demo_run) -> None:
    sweep, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "16 trial(s) ok, 0 failed" in proc.stdout
    assert (sweep / "config.yaml").exists()


def test_trials_table_has_16_ok_rows_with_the_spec_columns(demo_run) -> None:
    sweep, _ = demo_run
    trials = pd.read_parquet(sweep / "trials.parquet")
    assert len(trials) == 16 and trials["trial_id"].is_unique
    assert (trials["status"] == "ok").all()
    assert set(SCHEMAS["trials"].names) <= set(trials.columns)
    assert sorted(trials["perm"].unique()) == sorted(
        f"T1{a}_T2{b}_S{c}" for a in "ws" for b in "ws" for c in "ws"
    )
    assert set(trials["loss"]) == {"kd", "zscore_kd"} and (trials["n_teachers"] == 2).all()
    for column in (
        "val_acc",
        "train_acc",
        "agreement",
        "kl",
        "mi",
        "entropy",
        "ece",
        "iou_teachers",
        "iou_student",
        "affinity",
    ):
        assert trials[column].notna().all(), column
    assert (trials["gap"] - (trials["train_acc"] - trials["val_acc"])).abs().max() < 1e-12
    assert ((trials["affinity"] - trials["val_aug_acc"] / trials["val_acc"]).abs() < 1e-12).all()


def test_epochs_table_has_every_split_of_every_epoch(demo_run) -> None:
    sweep, _ = demo_run
    epochs = pd.read_parquet(sweep / "epochs.parquet")
    assert len(epochs) == 16 * 2 * len(SPLITS)
    assert not epochs.duplicated(["trial_id", "epoch", "split"]).any()
    per_trial = epochs.groupby("trial_id").apply(lambda g: set(zip(g["epoch"], g["split"], strict=True)))
    assert all(s == {(e, sp) for e in (1, 2) for sp in SPLITS} for s in per_trial)


def test_each_teacher_trained_once(demo_run) -> None:
    sweep, _ = demo_run
    teachers = pd.read_parquet(sweep / "teachers.parquet")
    assert sorted(teachers["name"]) == ["T1s", "T1w", "T2s", "T2w"]
    assert (teachers["status"] == "ok").all() and teachers["teacher_id"].is_unique
    assert (teachers["wall_s"] > 0).all() and teachers["val_acc"].between(0, 1).all()
    trials = pd.read_parquet(sweep / "trials.parquet")
    used = {tid for ids in trials["teacher_ids"] for tid in ids}
    assert used == set(teachers["teacher_id"])
    assert all(Path(p).exists() for p in teachers["checkpoint"])
    # 4 teachers, 2 slots: 2 Train runs (Tune trials) of 2 teachers each, trained in turn
    # (docs/architecture.md#teacher-packs); each reported epoch names its teacher.
    packs = []
    for results in sorted((sweep / "_ray" / "teachers-1").glob("*/result.json")):
        reports = [json.loads(line) for line in results.read_text().splitlines()]
        packs.append([r["teacher"] for r in reports if "epoch" in r])
    assert len(packs) == 2 and all(len(set(p)) == 2 for p in packs), packs
    assert sorted(t for p in packs for t in p) == sorted(teachers["teacher_id"])  # 1 epoch each
    assert list((sweep.parent / "_teachers" / "_ray").iterdir()) == []  # runs deleted once stored


def test_calibration_bins_cover_each_split(demo_run) -> None:
    sweep, _ = demo_run
    cal = pd.read_parquet(sweep / "calibration.parquet")
    counts = cal.groupby(["trial_id", "split"])["count"].sum().unstack()
    assert counts.shape == (16, 3)
    assert (counts["val"] == counts["val_aug"]).all()  # the same validation images, two views


def test_report_is_written_and_self_contained(demo_run) -> None:
    sweep, _ = demo_run
    html = (sweep / "report.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=[\"']?https?:", html)  # plotly.js embedded, not fetched
    assert "C1" in html and "T1s_T2w_Ss" in html


def test_rerun_without_resume_refuses_and_keeps_results(demo_run) -> None:
    sweep, _ = demo_run
    proc = run_cli("sweep", str(sweep.parent.parent / "demo_e2e.yaml"), "--results", str(sweep.parent))
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert len(pd.read_parquet(sweep / "trials.parquet")) == 16
