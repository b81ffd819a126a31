"""One driver per sweep, one trainer per teacher (issue 9, item 11: "No lock").

Unit tests of :mod:`kd_ray.orchestration.lease` with intervals shrunk to tens of milliseconds
(acquire, refuse, heartbeat, expiry, takeover, release; the object-store path through a
``file://`` URI), the teacher stage's wait for a teacher another driver trains, the sweep's
release on error and Ctrl-C, and one end-to-end test: a second ``kd-ray sweep --resume`` of a
running sweep exits 2 with one line naming the holder, before starting Ray, while the first
finishes normally.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from _sweep_helpers import (
    table,
    write_config,
)

from kd_ray.errors import LeaseHeld, ResultsError
from kd_ray.orchestration import lease as L
from kd_ray.storage import Storage


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(L, "HEARTBEAT_S", 0.05)
    # Expiry 3 s: a busy CI machine has stalled a holder's heartbeat thread for 2 s.
    monkeypatch.setattr(L, "EXPIRE_BEATS", 60)
    monkeypatch.setattr(L, "SETTLE_S", 0.05)
    monkeypatch.setattr(L, "TEACHER_POLL_S", 0.02)


def _stale(holder: L.Holder, *, machine: str | None = None, pid: int | None = None) -> L.Holder:
    """``holder`` as a driver elsewhere (or a gone process here) left it, heartbeat long ago."""
    return replace(
        holder,
        owner="elsewhere:4242:abc",
        host="elsewhere",
        pid=4242 if pid is None else pid,
        machine="elsewhere/boot/ns" if machine is None else machine,
        heartbeat_at=time.time() - 3600,
    )


def test_acquire_refuse_release(tmp_path):
    storage = Storage.open(tmp_path)
    lease = L.acquire(storage, "s.lease", what="sweep 's'")
    on_disk = json.loads((tmp_path / "s.lease").read_text())
    assert on_disk["owner"] == lease.holder.owner and on_disk["pid"] == os.getpid()
    assert {"created_at", "heartbeat_at", "expires_after_s", "host"} <= set(on_disk)
    assert on_disk["expires_after_s"] == pytest.approx(L.expire_s())
    with pytest.raises(LeaseHeld) as refused:
        L.acquire(storage, "s.lease", what="sweep 's'")
    assert isinstance(refused.value, ResultsError)
    assert refused.value.holder.owner == lease.holder.owner
    assert lease.holder.owner in str(refused.value) and "sweep 's'" in str(refused.value)
    lease.release()
    assert not (tmp_path / "s.lease").exists()
    L.acquire(storage, "s.lease", what="again").release()


def test_heartbeat_keeps_a_live_lease(tmp_path):
    storage = Storage.open(tmp_path)
    with L.acquire(storage, "s.lease", what="x") as lease:
        first = lease.holder.heartbeat_at
        time.sleep(1.5 * L.expire_s())  # heartbeats carry it past its expiry
        assert L.read_lease(storage, "s.lease").heartbeat_at > first
        assert L.read_lease(storage, "s.lease").expired() is None
        with pytest.raises(LeaseHeld):
            L.acquire(storage, "s.lease", what="y")
    assert not lease.lost


def test_a_lease_whose_heartbeat_stopped_is_taken_over(tmp_path, caplog):
    storage = Storage.open(tmp_path)
    old = L.acquire(storage, "s.lease", what="sweep 's'")
    old._stop.set()  # the driver hangs: no more heartbeats, no release
    old._thread.join()
    with pytest.raises(LeaseHeld):  # its process lives, and its last heartbeat is recent
        L.acquire(storage, "s.lease", what="sweep 's'")
    time.sleep(L.expire_s() + 0.1)
    with caplog.at_level(logging.WARNING, logger="kd_ray.orchestration.lease"):
        new = L.acquire(storage, "s.lease", what="sweep 's'")
    line = next(r.getMessage() for r in caplog.records if "taking over" in r.getMessage())
    assert old.holder.owner in line and "no heartbeat for" in line
    # The old holder finds out at its next heartbeat and leaves the new lease alone on release.
    old.heartbeat()
    assert old.lost
    old.release()
    assert L.read_lease(storage, "s.lease").owner == new.holder.owner
    new.release()
    assert not list(tmp_path.iterdir())  # nothing left: no .expired or .tmp files


def test_a_lease_of_another_machine_expires_by_heartbeat_only(tmp_path, caplog):
    storage = Storage.open(tmp_path)
    mine = L._new_holder("sweep 's'")
    fresh = replace(_stale(mine), heartbeat_at=time.time())  # pid 4242 means nothing here
    (tmp_path / "s.lease").write_bytes(fresh.to_bytes())
    with pytest.raises(LeaseHeld) as refused:
        L.acquire(storage, "s.lease", what="sweep 's'")
    assert "host elsewhere, pid 4242, owner elsewhere:4242:abc" in str(refused.value)
    (tmp_path / "s.lease").write_bytes(_stale(mine).to_bytes())
    with caplog.at_level(logging.WARNING, logger="kd_ray.orchestration.lease"):
        L.acquire(storage, "s.lease", what="sweep 's'").release()
    assert any("elsewhere:4242:abc" in r.getMessage() for r in caplog.records)


def test_a_lease_of_a_gone_process_on_this_machine_is_taken_over_at_once(tmp_path, caplog):
    storage = Storage.open(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    here = L._new_holder("sweep 's'")
    dead = replace(here, owner="me:dead", pid=int(gone.stdout), pid_start="1", heartbeat_at=time.time())
    (tmp_path / "s.lease").write_bytes(dead.to_bytes())
    assert "is gone" in dead.expired()
    # A reused pid (this process's, with another start time) does not keep a lease alive either.
    reused = replace(here, owner="me:reused", pid_start="1", heartbeat_at=time.time())
    assert "is gone" in reused.expired()
    assert here.expired() is None
    with caplog.at_level(logging.DEBUG, logger="kd_ray.orchestration.lease"):
        lease = L.acquire(storage, "s.lease", what="sweep 's'")
    assert any("me:dead" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    lease.release()


def test_an_unreadable_lease_is_held_until_it_is_old(tmp_path):
    storage = Storage.open(tmp_path)
    (tmp_path / "s.lease").write_bytes(b"")  # O_EXCL done, JSON not yet written
    with pytest.raises(LeaseHeld):
        L.acquire(storage, "s.lease", what="x")
    old = time.time() - 3600
    os.utime(tmp_path / "s.lease", (old, old))  # ... or its creator died in that instant
    L.acquire(storage, "s.lease", what="x").release()


def _race(n: int, take) -> list:
    """``n`` threads call ``take`` at once: what the winners got. Every loser must be refused
    with LeaseHeld; anything else (a StorageError from reading a lease mid-takeover) fails."""
    barrier = threading.Barrier(n)
    won: list = []
    errors: list[BaseException] = []

    def one() -> None:
        barrier.wait()
        try:
            won.append(take())
        except LeaseHeld:
            pass
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return won


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "takeover"])
def test_of_racing_drivers_exactly_one_wins_locally(tmp_path, stale):
    storage = Storage.open(tmp_path)
    if stale:
        (tmp_path / "s.lease").write_bytes(_stale(L._new_holder("x")).to_bytes())
    won = _race(8, lambda: L.acquire(storage, "s.lease", what="x"))
    assert len(won) == 1
    assert L.read_lease(storage, "s.lease").owner == won[0].holder.owner
    won[0].release()
    assert not list(tmp_path.iterdir())


def test_object_store_path_through_a_file_uri(tmp_path, caplog):
    """Write, settle, read back: the path object stores take (forced here on a file:// URI)."""
    storage = Storage.open(f"file://{tmp_path}").child("results")
    assert storage.uri.startswith("file://")
    lease = L.acquire(storage, "s.lease", what="sweep 's'", atomic=False)
    with pytest.raises(LeaseHeld) as refused:
        L.acquire(storage, "s.lease", what="sweep 's'", atomic=False)
    assert str(refused.value).startswith(f"file://{tmp_path}/results/s.lease: held by sweep 's' on host ")
    time.sleep(1.0)
    assert L.read_lease(storage, "s.lease").heartbeat_at > lease.holder.created_at
    with pytest.raises(LeaseHeld):  # the heartbeat goes through the URI's filesystem too
        L.acquire(storage, "s.lease", what="sweep 's'", atomic=False)
    lease.release()
    assert not (tmp_path / "results" / "s.lease").exists()
    # Takeover of an expired lease, and a race of drivers that all write: one reads itself back.
    (tmp_path / "results" / "s.lease").write_bytes(_stale(L._new_holder("x")).to_bytes())
    with caplog.at_level(logging.WARNING, logger="kd_ray.orchestration.lease"):
        won = _race(4, lambda: L.acquire(storage, "s.lease", what="x", atomic=False))
    assert len(won) == 1 and L.read_lease(storage, "s.lease").owner == won[0].holder.owner
    assert any("elsewhere:4242:abc" in r.getMessage() for r in caplog.records)
    won[0].release()
    # The sweep's own lease on such a store, through sweep_lease: the one-line refusal.
    held = L.sweep_lease(storage, "tiny")
    with pytest.raises(LeaseHeld) as refused:
        L.sweep_lease(storage, "tiny")
    line = str(refused.value)
    assert "\n" not in line and line.startswith(
        f"file://{tmp_path}/results/tiny.lease: sweep 'tiny' is being run"
    )
    assert f"pid {os.getpid()}" in line and held.holder.owner in line
    held.release()


# --- teachers ----------------------------------------------------------------------------------


class _Driver:
    """A second driver training teachers into the same store: leases ``ids`` and trains them."""

    def __init__(self, storage: Storage, ids: list[str], *, seconds: float, succeed: bool = True):
        self.storage, self.started = storage, threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ids, seconds, succeed))

    def _run(self, ids, seconds, succeed) -> None:
        leases = [L.acquire(self.storage, f"{i}.lease", what=f"teacher {i} of sweep 'other'") for i in ids]
        self.started.set()
        time.sleep(seconds)
        for i in ids:
            if succeed:
                (Path(self.storage.root) / f"{i}.json").write_text("{}")
        for lease in leases:
            lease.release()

    def __enter__(self):
        self.thread.start()
        self.started.wait()
        return self

    def __exit__(self, *exc):
        self.thread.join()


def _train_once(storage: Storage, ids: list[str]):
    trained: list[list[str]] = []

    def train(batch: list[str]) -> None:
        held = set(L.lease_names(storage))
        assert {f"{i}.lease" for i in batch} <= held, held  # leased while training
        trained.append(batch)
        for i in batch:
            (Path(storage.root) / f"{i}.json").write_text("{}")

    mine, gave_up = L.train_once(
        storage, ids, done=lambda i: storage.exists(f"{i}.json"), train=train, what=lambda i: f"teacher {i}"
    )
    return trained, mine, gave_up


def test_a_teacher_another_driver_trains_is_waited_for_and_reused(tmp_path, caplog):
    storage = Storage.open(tmp_path)
    with _Driver(storage, ["a"], seconds=0.4), caplog.at_level(logging.INFO, "kd_ray.orchestration.lease"):
        trained, mine, gave_up = _train_once(storage, ["a", "b"])
    assert trained == [["b"]] and mine == {"b"} and gave_up == {}
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "a: being trained by teacher a of sweep 'other'" in text and "waiting for it" in text
    assert "a: trained by another driver; reusing it" in text
    assert not L.lease_names(storage)


def test_a_teacher_whose_other_driver_failed_is_trained_here(tmp_path):
    storage = Storage.open(tmp_path)
    with _Driver(storage, ["a"], seconds=0.2, succeed=False):
        trained, mine, gave_up = _train_once(storage, ["a", "b"])
    assert trained == [["b"], ["a"]] and mine == {"a", "b"} and gave_up == {}


def test_the_wait_for_a_teacher_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "TEACHER_WAIT_S", 0.3)
    storage = Storage.open(tmp_path)
    with _Driver(storage, ["a"], seconds=1.0):
        trained, mine, gave_up = _train_once(storage, ["a"])
    assert trained == [] and mine == set()
    assert "still being trained by teacher a of sweep 'other'" in gave_up["a"] and "--resume" in gave_up["a"]


def test_the_teacher_stage_takes_teacher_leases(tmp_path, monkeypatch):
    """sweep._train_teachers: a teacher leased by another driver is not trained but reused."""
    import yaml

    from kd_ray.config import parse_config
    from kd_ray.orchestration import sweep as S
    from kd_ray.plan import plan_sweep

    cfg = parse_config(yaml.safe_load(write_config(tmp_path).read_text()))
    plan = plan_sweep(cfg)
    first, second = (t.teacher_id for t in plan.teachers)
    root = Storage.open(tmp_path / "results")
    store = root.child("_teachers")
    tuned: list[list[str]] = []

    def fake_tune(cfg, sweep, stage, trainable, items, base, callbacks, verbose, runs):
        ids = [t["teacher_id"] for item in items for t in item["teachers"]]  # teacher packs
        tuned.append(ids)
        assert {f"{tid}.lease" for tid in ids} <= set(L.lease_names(store))
        for tid in ids:
            store.write_bytes(f"{tid}.json", b'{"epochs": 1}')

    monkeypatch.setattr(S, "init_ray", lambda cfg: None)
    monkeypatch.setattr(S, "teacher_slots", lambda cfg, count: 1)  # no cluster to ask
    monkeypatch.setattr(S, "_tune", fake_tune)
    with _Driver(store, [first], seconds=0.3):
        trained, reused, reasons = S._train_teachers(cfg, plan, root, root.child("tiny"), {}, 0)
    assert tuned == [[second]] and (trained, reused, reasons) == (1, 1, {})
    assert set(table(tmp_path / "results" / "tiny", "teachers")["status"]) == {"ok"}
    assert not L.lease_names(store)


# --- the sweep ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_run_sweep_releases_its_lease_on_error_and_ctrl_c(tmp_path, monkeypatch, stop):
    import yaml

    from kd_ray.config import parse_config
    from kd_ray.orchestration import sweep as S

    cfg = parse_config(yaml.safe_load(write_config(tmp_path).read_text()))
    results = tmp_path / "results"

    def body(*args, **kwargs):
        assert json.loads((results / "tiny.lease").read_text())["what"] == "sweep 'tiny'"
        with pytest.raises(LeaseHeld, match="is being run by another driver"):
            S.run_sweep(cfg, str(results), resume=True)  # a second driver, in this very process
        raise stop

    monkeypatch.setattr(S, "_run_sweep", body)
    with pytest.raises(type(stop)):
        S.run_sweep(cfg, str(results))
    assert not (results / "tiny.lease").exists()


def test_dry_run_takes_no_lease(tmp_path, capsys):
    from kd_ray.cli import main

    config = write_config(tmp_path)
    results = Storage.open(tmp_path / "results")
    with L.sweep_lease(results, "tiny"):
        assert main(["sweep", str(config), "--dry-run", "--results", results.root]) == 0
    assert "4 student trials" in capsys.readouterr().out


# The end-to-end check of a second driver (the real CLI against a running sweep) shares one
# interrupted sweep with the Ctrl-C test: tests/test_interrupt.py.
