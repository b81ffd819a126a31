"""Leases in the results store: one driver per sweep, one trainer per teacher.

A lease is a small JSON file in the results store (plain Python over
:class:`~kd_ray.storage.Storage`, no Ray):

- ``RESULTS/<sweep name>.lease``: the driver running that sweep (:func:`sweep_lease`);
- ``RESULTS/_teachers/<teacher_id>.lease``: the driver training that teacher into the shared
  teacher store (:func:`train_once`).

It holds the holder's ``owner`` id (host, pid and a random token), what it is for, and
``created_at``/``heartbeat_at`` (Unix time). A daemon thread of the holder rewrites
``heartbeat_at`` every :data:`HEARTBEAT_S` seconds. A lease has expired when its last heartbeat
is older than :func:`expire_s` (:data:`EXPIRE_BEATS` heartbeats; others judge a lease by the
expiry its holder wrote into it), or when its holder ran on this machine (same host name, boot
and pid namespace) in a process that no longer exists: a killed driver is replaced at once on
its own machine, after ``expire_s()`` from any other. Clocks of the machines that share a store
must agree to well within ``expire_s()``. An expired lease is taken over with a log line naming
the old owner: a warning when its heartbeat stopped, a debug line when its process is gone from
this machine (the routine resume after a kill, whose refusals for user errors stay one line).
The holder deletes its lease on release (normal end, error, Ctrl-C); a kill leaves it to expire.
``kd-ray sweep --dry-run`` takes no lease.

Taking a lease:

- on a local filesystem (a path, ``file://``) atomically: ``os.open(O_CREAT | O_EXCL)``, so of
  two drivers exactly one creates the file. Of the drivers that judge a lease expired, only the
  one that creates its takeover marker (``<lease>.<tag>.takeover``, O_EXCL, kept until the new
  holder releases) may rename it away, after checking it is still the very lease judged
  expired; a lease its holder rewrote meanwhile is put back. What remains: a holder stalled past expiry (its heartbeat thread did not
  run for ``expire_s()``) that writes its heartbeat in the instant another driver takes over can
  overwrite the new lease; the new holder's next heartbeat then reports the lease lost.
- on an object store (``s3://``...) best-effort, as pyarrow has no create-if-absent: check that
  no lease exists, write it, wait :data:`SETTLE_S`, read it back and compare the owner; of
  several drivers that wrote, the last write wins and the others see it and refuse. Two drivers
  can both believe they hold the lease only if one of them paused for more than ``SETTLE_S``
  between its check and its write (it saw no lease, then wrote after the other's read-back).

A heartbeat first reads the lease: if another owner holds it (it was taken over after this
holder stalled), the holder logs an error, stops heartbeating and leaves that lease alone on
release; the driver itself is not stopped.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace

from kd_ray.errors import LeaseHeld, StorageError
from kd_ray.storage import Storage

log = logging.getLogger(__name__)

# Seconds between heartbeats; a lease expires after EXPIRE_BEATS of them without one. Tests
# shrink them; a lease records the expiry its holder used, and others judge it by that.
HEARTBEAT_S = 10.0
EXPIRE_BEATS = 3
# Object stores: how long a driver waits after writing a lease before reading it back.
SETTLE_S = 1.0
# A sweep that needs a teacher another live driver is training waits for it this long at most,
# looking every TEACHER_POLL_S seconds.
TEACHER_WAIT_S = 24 * 3600.0
TEACHER_POLL_S = 5.0

LEASE_SUFFIX = ".lease"


def expire_s() -> float:
    return HEARTBEAT_S * EXPIRE_BEATS


# --- who holds a lease -------------------------------------------------------------------------


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _machine() -> str:
    """This machine as pids see it: host name, boot and pid namespace (pids are unique within)."""
    boot = _read_text("/proc/sys/kernel/random/boot_id") or ""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = ""
    return f"{socket.gethostname()}/{boot}/{pidns}"


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), None if there is no such
    process or it is a zombie; ``""`` where ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):  # killed, not yet reaped: gone for our purpose
        return None
    return fields[19] if len(fields) > 19 else ""


def _pid_alive(pid: int, start: str) -> bool:
    now = _proc_start(pid)
    if now is None:
        return False
    if now and start:
        return now == start  # same pid, other start: the pid was reused
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class Holder:
    """The content of a lease file."""

    owner: str
    what: str
    host: str
    pid: int
    machine: str
    pid_start: str
    created_at: float
    heartbeat_at: float
    expires_after_s: float

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder:
        """Raises: ValueError, KeyError or TypeError when ``data`` is not a lease."""
        obj = json.loads(data)
        return cls(
            owner=str(obj["owner"]),
            what=str(obj.get("what", "")),
            host=str(obj.get("host", "?")),
            pid=int(obj.get("pid", 0)),
            machine=str(obj.get("machine", "")),
            pid_start=str(obj.get("pid_start", "")),
            created_at=float(obj["created_at"]),
            heartbeat_at=float(obj["heartbeat_at"]),
            expires_after_s=float(obj["expires_after_s"]),
        )

    def expired(self, now: float | None = None) -> str | None:
        """Why this lease has expired (its heartbeat stopped, its process is gone), or None."""
        now = time.time() if now is None else now
        # A holder known to be gone says so first: that is the routine resume after a kill.
        if self.gone_from_this_machine():
            return f"process {self.pid} on this machine is gone"
        age = now - self.heartbeat_at
        if age > self.expires_after_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    def gone_from_this_machine(self) -> bool:
        """The holder ran on this machine and its process no longer exists."""
        return bool(
            self.pid
            and self.machine
            and self.machine == _machine()
            and not _pid_alive(self.pid, self.pid_start)
        )

    def describe(self, now: float | None = None, *, what: bool = True) -> str:
        now = time.time() if now is None else now
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_at))
        who = f"{self.what or 'a driver'} on host" if what else "host"
        return (
            f"{who} {self.host}, pid {self.pid}, owner {self.owner}, since {since}, "
            f"last heartbeat {max(0.0, now - self.heartbeat_at):.0f} s ago"
        )


def _unreadable_holder(what: str, mtime: float) -> Holder:
    """A lease file that is empty or not JSON: being created (O_EXCL, then written), or left by
    a driver killed in that instant. Its file time stands in for the heartbeat."""
    return Holder("?", what, "?", 0, "", "", mtime, mtime, expire_s())


def _new_holder(what: str) -> Holder:
    pid = os.getpid()
    now = time.time()
    host = socket.gethostname()
    return Holder(
        owner=f"{host}:{pid}:{uuid.uuid4().hex[:12]}",
        what=what,
        host=host,
        pid=pid,
        machine=_machine(),
        pid_start=_proc_start(pid) or "",
        created_at=now,
        heartbeat_at=now,
        expires_after_s=expire_s(),
    )


def read_lease(storage: Storage, name: str) -> Holder | None:
    """The holder of lease ``name`` under ``storage``, None if there is no lease.

    Raises:
        StorageError: the store failed.
    """
    for attempt in range(3):
        try:
            data = storage.read_bytes(name)
            break
        except StorageError:
            if not storage.exists(name):
                return None
            # Moved away and back (or replaced) between the read and the look: read again.
            if attempt == 2:
                raise
    try:
        return Holder.parse(data)
    except (ValueError, KeyError, TypeError):
        try:
            mtime = storage.fs.get_file_info(storage.path(name)).mtime
            stamp = mtime.timestamp() if mtime is not None else time.time()
        except OSError:
            stamp = time.time()
        return _unreadable_holder("", stamp)


# --- creating and removing a lease file --------------------------------------------------------


def _create_local(path: str, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists (atomic: O_CREAT | O_EXCL)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def _remove_expired_local(storage: Storage, name: str, seen: Holder) -> bool:
    """Remove the expired lease ``seen``; False if another taker has it or it changed.

    Of several drivers that judged ``seen`` expired, only the one that creates the takeover
    marker for ``seen`` (O_EXCL, named by its owner and heartbeat) may move it; the others
    return False and find the winner's fresh lease on their next look. The winner checks that
    the file is still ``seen`` after moving it aside, and puts back a lease its stalled holder
    rewrote meanwhile.
    """
    path = storage.path(name)
    tag = uuid.uuid5(uuid.NAMESPACE_OID, f"{seen.owner}@{seen.heartbeat_at!r}").hex[:16]
    marker = f"{path}.{tag}.takeover"
    with contextlib.suppress(OSError):  # a taker killed mid-takeover leaves its marker behind
        if time.time() - os.stat(marker).st_mtime > expire_s():
            os.remove(marker)
    if not _create_local(marker, b""):
        return False
    # The marker stays until the new holder releases (a taker that comes late then reads the
    # new lease here, not ``seen``, and gives up).
    now = read_lease(storage, name)
    if now is None or (now.owner, now.heartbeat_at) != (seen.owner, seen.heartbeat_at):
        return False
    aside = f"{path}.{uuid.uuid4().hex}.expired"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    try:
        with open(aside, "rb") as f:
            data = f.read()
        try:
            moved = Holder.parse(data)
        except (ValueError, KeyError, TypeError):
            moved = None
        if moved is not None and (moved.owner, moved.heartbeat_at) != (seen.owner, seen.heartbeat_at):
            # Its stalled holder rewrote it between our read and our rename: put it back.
            _create_local(path, data)
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.remove(aside)


def _remove_takeover_markers(storage: Storage, name: str) -> None:
    """Delete the takeover markers of lease ``name`` (local stores; see _remove_expired_local)."""
    if not storage.is_local:
        return
    for marker in glob.glob(f"{glob.escape(storage.path(name))}.*.takeover"):
        with contextlib.suppress(OSError):
            os.remove(marker)


def _create(storage: Storage, name: str, holder: Holder, atomic: bool) -> bool:
    """Write ``holder`` as lease ``name`` unless a lease is there; True if it is now ours."""
    data = holder.to_bytes()
    if atomic:
        try:
            return _create_local(storage.path(name), data)
        except OSError as err:
            raise StorageError(f"results: cannot create lease {storage.path(name)!r}: {err}") from None
    if storage.exists(name):
        return False
    storage.write_bytes(name, data)
    time.sleep(SETTLE_S)  # let a driver that raced us overwrite it before we look
    back = read_lease(storage, name)
    return back is not None and back.owner == holder.owner


def _delete(storage: Storage, name: str) -> None:
    try:
        storage.fs.delete_file(storage.path(name))
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StorageError(f"results: cannot delete lease {storage.path(name)!r}: {err}") from None


# --- a held lease ------------------------------------------------------------------------------


class Lease:
    """A lease this process holds; heartbeats from a daemon thread until :meth:`release`."""

    def __init__(self, storage: Storage, name: str, holder: Holder) -> None:
        self.storage = storage
        self.name = name
        self.holder = holder
        self.lost = False  # another owner took it over (this process stalled past expiry)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"kd_ray lease {name}", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"{self.storage.uri}/{self.name}"

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat()
            except StorageError as err:  # transient, we hope: the next beat tries again
                log.warning("%s: heartbeat not written (%s)", self.uri, err)
            if self.lost:
                return

    def heartbeat(self) -> None:
        """Write a fresh ``heartbeat_at``, unless the lease is no longer ours (then: lost)."""
        current = read_lease(self.storage, self.name)
        if current is None or current.owner != self.holder.owner:
            self.lost = True
            whom = current.describe() if current else "nobody (it was removed)"
            log.error(
                "%s: this driver lost its lease on %s; it is now held by %s. Two drivers may now "
                "write the same files: stop one of them",
                self.uri,
                self.holder.what,
                whom,
            )
            return
        beat = replace(self.holder, heartbeat_at=time.time())
        if self._stop.is_set():
            return
        self.storage.write_bytes(self.name, beat.to_bytes())
        self.holder = beat

    def release(self) -> None:
        """Stop heartbeating and delete the lease if it is still ours. Never raises."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=max(5.0, 2 * HEARTBEAT_S))
        try:
            current = read_lease(self.storage, self.name)
            if current is not None and current.owner == self.holder.owner:
                _remove_takeover_markers(self.storage, self.name)
                _delete(self.storage, self.name)
        except StorageError as err:  # it expires on its own
            log.warning(
                "%s: lease not released (%s); it expires %.0f s after its last heartbeat",
                self.uri,
                err,
                self.holder.expires_after_s,
            )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(storage: Storage, name: str, *, what: str, atomic: bool | None = None) -> Lease:
    """Take lease ``name`` under ``storage`` (taking over an expired one) or refuse.

    ``atomic`` chooses how the file is created: O_EXCL (default on a local filesystem) or
    write and read back (object stores).

    Raises:
        LeaseHeld: a live holder has it; ``.holder`` says who.
        StorageError: the store failed.
    """
    atomic = storage.is_local if atomic is None else atomic
    for _ in range(5):  # each round loses only to a driver that then holds the lease
        mine = _new_holder(what)
        if _create(storage, name, mine, atomic):
            return Lease(storage, name, mine)
        current = read_lease(storage, name)
        if current is None:
            continue  # released meanwhile
        why = current.expired()
        if why is None:
            raise LeaseHeld(f"{storage.uri}/{name}: held by {current.describe()}", current)
        # A holder whose process is gone from this machine is the routine resume after a kill:
        # said in the debug log only, so a resume refused for a user error stays one line.
        level = logging.DEBUG if current.gone_from_this_machine() else logging.WARNING
        log.log(
            level,
            "%s: taking over the expired lease of %s (%s)",
            f"{storage.uri}/{name}",
            current.describe(),
            why,
        )
        if atomic:
            if not _remove_expired_local(storage, name, current):
                continue
        else:
            _delete(storage, name)
    current = read_lease(storage, name)
    if current is not None:
        raise LeaseHeld(f"{storage.uri}/{name}: held by {current.describe()}", current)
    raise StorageError(f"results: cannot take lease {storage.uri}/{name}: it keeps changing")


def sweep_lease(root: Storage, sweep_name: str) -> Lease:
    """Take the lease of sweep ``sweep_name`` (``RESULTS/<name>.lease``) or refuse with one line.

    Raises:
        ResultsError: another live driver runs this sweep (names it).
    """
    name = sweep_name + LEASE_SUFFIX
    try:
        return acquire(root, name, what=f"sweep {sweep_name!r}")
    except LeaseHeld as err:
        h = err.holder
        raise LeaseHeld(
            f"{root.uri}/{name}: sweep {sweep_name!r} is being run by another driver "
            f"({h.describe(what=False)}); a second driver would corrupt its checkpoints. Wait for "
            f"it to finish or stop it; a driver that died frees the sweep {h.expires_after_s:.0f} s "
            "after its last heartbeat (at once on its own machine)",
            h,
        ) from None


# --- teachers: each trained once, by one driver ------------------------------------------------


def train_once(
    storage: Storage,
    ids: Iterable[str],
    *,
    done: Callable[[str], bool],
    train: Callable[[list[str]], None],
    what: Callable[[str], str],
) -> tuple[set[str], dict[str, str]]:
    """Train each of ``ids`` not ``done`` once, whichever driver sharing ``storage`` does it.

    Each id is leased (``<id>.lease`` under ``storage``) around ``train``. An id whose lease
    another live driver holds is not trained here: this driver waits for it (at most
    :data:`TEACHER_WAIT_S`, polling every :data:`TEACHER_POLL_S`, saying so in the log) until it
    is ``done`` (then it is reused) or its lease is freed without it (its driver failed or died:
    then it is trained here, once).

    Returns:
        (ids that ``train`` was called for, {id: reason} for ids given up waiting for).
    """
    tried: set[str] = set()
    gave_up: dict[str, str] = {}
    pending = [i for i in ids if not done(i)]
    while pending:
        held: dict[str, Lease] = {}
        busy: dict[str, Holder] = {}
        try:
            for i in pending:
                try:
                    lease = acquire(storage, i + LEASE_SUFFIX, what=what(i))
                except LeaseHeld as err:
                    busy[i] = err.holder
                    continue
                if done(i):  # finished by the driver that held it a moment ago
                    lease.release()
                    continue
                held[i] = lease
            if held:
                tried.update(held)
                train(list(held))
        finally:
            for lease in held.values():
                lease.release()
        deadline = time.monotonic() + TEACHER_WAIT_S
        for i, holder in busy.items():
            log.info(
                "%s: being trained by %s; waiting for it (up to %.0f s, then this sweep "
                "records it as not trained)",
                i,
                holder.describe(),
                TEACHER_WAIT_S,
            )
        pending = []
        while busy:
            for i in list(busy):
                if done(i):
                    log.info("%s: trained by another driver; reusing it", i)
                    del busy[i]
                    continue
                current = read_lease(storage, i + LEASE_SUFFIX)
                if current is None or current.expired() is not None:
                    del busy[i]
                    if i not in tried:
                        log.info("%s: its other driver stopped without it; training it here", i)
                        pending.append(i)
            if busy and time.monotonic() >= deadline:
                for i, holder in busy.items():
                    gave_up[i] = (
                        f"still being trained by {holder.describe()} after {TEACHER_WAIT_S:.0f} s "
                        "of waiting; run this sweep again with --resume once it is trained"
                    )
                break
            if busy:
                time.sleep(min(TEACHER_POLL_S, max(0.0, deadline - time.monotonic())))
    return tried, gave_up


def lease_names(storage: Storage) -> list[str]:
    """The lease files directly under ``storage`` (for tests and tools)."""
    return [n for n in storage.listdir() if n.endswith(LEASE_SUFFIX)]
