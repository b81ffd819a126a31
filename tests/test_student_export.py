"""Issue 12, item 2: students you can use.

Each finished student is exported as ``RESULTS/N/students/<trial_id>.pt`` (its final weights and
what rebuilds its model) with a JSON sidecar (grid point, final metrics, fingerprint digest), and
``kd_ray.models.load_student`` gives it back as a ready ``nn.Module`` (docs/results.md#students).

Units: the file round trip on a tiny model, the one-line refusals, and the collector's sidecar.
End to end (slow): every student of the shared reference sweep, loaded from a copy of its file
alone, scores on the sweep's validation split exactly the ``val_acc`` its ``trials`` row holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _sweep_helpers import TINY, table, uninterrupted_run

from kd_ray.config import load_config, parse_config
from kd_ray.errors import CheckpointError
from kd_ray.models import create_model, load_student
from kd_ray.orchestration.collector import GRID_COLUMNS, ResultsCollector
from kd_ray.orchestration.runbook import RunBook
from kd_ray.orchestration.trials import ERROR_KEY, STATUS_KEY
from kd_ray.orchestration.workers import student_fingerprints
from kd_ray.plan import plan_sweep
from kd_ray.results.rows import trial_keys
from kd_ray.storage import Storage
from kd_ray.train.checkpoint import save_to_storage, student_state, teacher_state, to_bytes

# A grey 20x20 input: every field differs from create_model's defaults, so a field the file
# failed to carry would build a model that does not take the input or the weights.
ARCH, CLASSES, CHANNELS, SIZE = "cnn_tiny", 7, 1, 20


def _trained_student() -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=CLASSES, in_channels=CHANNELS, image_size=SIZE)
    with torch.no_grad():  # weights and BN statistics unlike a fresh model's
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return model.eval()


def _export(model: torch.nn.Module, folder: Path, trial_id: str = "synthetic-T1s_Ss-kd-full-s0") -> Path:
    state = student_state(
        model,
        trial_id=trial_id,
        arch=ARCH,
        num_classes=CLASSES,
        in_channels=CHANNELS,
        image_size=SIZE,
        dataset="synthetic",
        fingerprint={"digest": "abc", "content": {}},
    )
    save_to_storage(Storage.open(folder), f"{trial_id}.pt", state)
    return folder / f"{trial_id}.pt"


def test_an_exported_student_loads_as_the_same_model_in_eval_mode(tmp_path) -> None:
    model = _trained_student()
    path = _export(model, tmp_path / "students")
    x = torch.randn(5, CHANNELS, SIZE, SIZE)
    for location in (path, str(path), f"file://{path}"):
        loaded = load_student(location)
        assert isinstance(loaded, torch.nn.Module) and not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x))


def _refusal(path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_student(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    return message


def test_an_older_student_file_is_refused_in_one_line(tmp_path) -> None:
    # kd_ray.student.v1 had no input channels or image size: nothing to rebuild the model from.
    model = _trained_student()
    v1 = {
        "format": "kd_ray.student.v1",
        "trial_id": "t",
        "arch": ARCH,
        "num_classes": CLASSES,
        "fingerprint": {"digest": "abc", "content": {}},
        "state_dict": model.state_dict(),
    }
    path = tmp_path / "t.pt"
    torch.save(v1, path)
    assert "kd_ray.student.v1" in _refusal(path)


def test_garbage_foreign_and_missing_files_are_refused_in_one_line(tmp_path) -> None:
    model = _trained_student()
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert "not a readable checkpoint" in _refusal(garbage)

    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(to_bytes(teacher_state(model, teacher_id="x", arch=ARCH, num_classes=CLASSES)))
    assert "not a kd_ray student file" in _refusal(teacher)

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert "not a kd_ray checkpoint" in _refusal(tensor)

    _refusal(tmp_path / "missing.pt")


def test_a_file_whose_fields_or_weights_do_not_fit_is_refused_in_one_line(tmp_path) -> None:
    path = _export(_trained_student(), tmp_path)
    state = torch.load(path, weights_only=True)
    for change, expected in (
        ({"in_channels": None}, "'in_channels' is None"),
        ({"num_classes": CLASSES + 1}, "weights do not fit"),
        ({"arch": "no_such_arch"}, "cannot rebuild its model"),
    ):
        torch.save({**state, **change}, path)
        assert expected in _refusal(path)


# --- the sidecar the driver writes --------------------------------------------------------------


def _report(trial_id: str, epoch: int, bins: int) -> dict:
    values = {"epoch": epoch, "train/loss": 1.0, "train/acc": 0.5, "val/acc": 0.625, "val_aug/acc": 0.5}
    for split in ("train", "val", "val_aug"):
        for b in range(bins):
            values.update({f"calibration/{split}/{b}/{f}": 1.0 for f in ("count", "acc", "conf")})
    return trial_keys(trial_id, values)


def _finish_one(sweep: Path, cfg, status: str, monkeypatch) -> tuple[str, list[str]]:
    """Feed a collector one trial's two epochs and its end, as Tune would; (its id, the names
    of the files written, in order)."""
    trial = plan_sweep(cfg).trials[0]
    _export(_trained_student(), sweep / "students", trial.trial_id)  # as the worker does
    written: list[str] = []
    write_bytes = Storage.write_bytes
    monkeypatch.setattr(
        Storage, "write_bytes", lambda self, name, data: (written.append(name), write_bytes(self, name, data))
    )
    collector = ResultsCollector(
        str(sweep), RunBook("group"), teacher_arch=ARCH, student_arch=ARCH, ece_bins=cfg.metrics.ece_bins
    )
    # The group as the driver hands it out: with each trial's fingerprint digest, which the
    # worker computes again for the .pt it exports.
    digest = student_fingerprints(cfg, [trial])[trial.trial_id]["digest"]
    collector.runs.record(
        "tune-g", {"group_id": "g", "trials": [trial.__dict__], "digests": {trial.trial_id: digest}}
    )
    fake = SimpleNamespace(trial_id="tune-g", get_error=lambda: None, error_file=None)
    for epoch in (1, 2):
        collector.on_trial_result(0, [], fake, _report(trial.trial_id, epoch, cfg.metrics.ece_bins))
    collector.on_trial_result(
        0,
        [],
        fake,
        trial_keys(trial.trial_id, {STATUS_KEY: status, ERROR_KEY: ""}),
    )
    collector.on_trial_complete(0, [], fake)
    return trial.trial_id, written


def test_the_sidecar_holds_the_grid_point_metrics_and_the_weights_digest(tmp_path, monkeypatch) -> None:
    cfg = parse_config(TINY)
    sweep = tmp_path / "sweep"
    trial_id, written = _finish_one(sweep, cfg, "ok", monkeypatch)
    # Before the trials row, which marks the trial finished (the collector says why).
    assert written.index(f"{trial_id}.json") < next(
        i for i, n in enumerate(written) if n.startswith("trials.")
    )
    sidecar = json.loads((sweep / "students" / f"{trial_id}.json").read_text())
    row = table(sweep, "trials").set_index("trial_id").loc[trial_id]
    assert sidecar["trial_id"] == trial_id and sidecar["weights"] == f"{trial_id}.pt"
    assert sidecar["grid"] == {k: _plain(row[k]) for k in GRID_COLUMNS}
    assert sidecar["metrics"]["val_acc"] == row["val_acc"] == 0.625
    assert sidecar["metrics"]["epochs"] == 2
    assert sidecar["metrics"]["iou_teachers"] is None  # NaN (k = 1) as null: strict JSON
    trial = plan_sweep(cfg).trials[0]
    assert sidecar["fingerprint"] == student_fingerprints(cfg, [trial])[trial_id]["digest"]


def test_a_failed_trial_gets_no_sidecar(tmp_path, monkeypatch) -> None:
    sweep = tmp_path / "sweep"
    trial_id, _ = _finish_one(sweep, parse_config(TINY), "failed", monkeypatch)
    assert not (sweep / "students" / f"{trial_id}.json").exists()


# --- end to end: the reference sweep's students, as a user loads them -------------------------


def _val_metrics(model: torch.nn.Module, cfg, row) -> tuple[float, float]:
    """(accuracy, mean predictive entropy) on the clean validation split, batched, resized and
    counted as the training loop does (kd_ray.train.distill.DistillationRun: build_loaders'
    ``val``, resize_batch when the config sets an image size, sums over the whole split)."""
    from kd_ray.data import DATASETS
    from kd_ray.data.device_resize import resize_batch
    from kd_ray.data.streams import build_loaders
    from kd_ray.metrics.functional import entropy_per_sample
    from kd_ray.seeding import stream_seed

    dcfg = cfg.dataset(row["dataset"])
    datasets = DATASETS.get(dcfg.name)(dcfg)
    loaders = build_loaders(
        datasets,
        student_aug=row["student_aug"],
        global_batch_size=cfg.student.train.batch_size,
        stream_seed=stream_seed(row["dataset"], row["student_aug"], int(row["seed"])),
    )
    correct = total = 0
    entropy = 0.0
    with torch.no_grad():
        for x, y in loaders.val:
            if dcfg.image_size:
                x = resize_batch(x, dcfg.image_size)
            logits = model(x).float()
            correct += int((logits.argmax(dim=1) == y).sum())
            entropy += float(entropy_per_sample(logits).double().sum())
            total += y.numel()
    return correct / total, entropy / total


@pytest.mark.slow
def test_exported_students_reproduce_their_recorded_val_accuracy(tmp_path) -> None:
    sweep = uninterrupted_run() / "tiny"
    cfg = load_config(sweep / "config.yaml")
    trials = table(sweep, "trials").set_index("trial_id")
    exported = sorted((sweep / "students").glob("*.pt"))
    assert [p.stem for p in exported] == sorted(trials.index[trials["status"] == "ok"])
    assert not list(sweep.rglob("checkpoint_*"))  # the training checkpoints are gone
    for weights in exported:
        row = trials.loc[weights.stem]
        alone = tmp_path / weights.name  # the file alone is enough: nothing else is read
        shutil.copy(weights, alone)
        student = load_student(alone)
        acc, entropy = _val_metrics(student, cfg, row)
        # Exactly: the same weights on the same batches through the same ops; the accuracy is a
        # count over 32 samples, which only an argmax flipped by float noise could change.
        assert acc == row["val_acc"], weights.stem
        # The tiny sweep's students sit at chance (val_acc 0.25, as would a fresh model), so the
        # entropy, a function of the student's logits alone, proves the weights are the trained
        # ones: it matches the recorded val_entropy to 1e-6 (summation order and thread count
        # move it by ~1e-7 at most), while a freshly initialised cnn_tiny is 1.4e-4 or more away.
        assert entropy == pytest.approx(row["val_entropy"], abs=1e-6), weights.stem

        sidecar = json.loads(weights.with_suffix(".json").read_text())
        assert sidecar["trial_id"] == weights.stem and sidecar["weights"] == weights.name
        assert sidecar["grid"] == {k: _plain(row[k]) for k in GRID_COLUMNS}
        for name, value in sidecar["metrics"].items():
            assert value == _plain(row[name]) or (value is None and row[name] != row[name]), name
        state = torch.load(weights, weights_only=True)
        assert sidecar["fingerprint"] == state["fingerprint"]["digest"]
        assert state["dataset"] == row["dataset"]


def _plain(value):
    """A table cell as the JSON sidecar holds it (numpy scalars as Python ones, arrays as lists)."""
    return value.tolist() if hasattr(value, "tolist") else value
