"""Cuts as an integer program: the planner's exact cuts and the makespan's lower bound.

docs/cohorts.md#lower-bound. A run's cost depends only on its *type* -- the set of teacher
inputs it runs -- and on how many students it trains, so the cuts of one stream into runs of at
most T seconds are counted by type: x_S runs of type S, y_uS students of unit u in them. The
least work of such a cut is an integer program; the planner solves it for its exact cuts
(:func:`_exact_split`) and the lower bound (:func:`cut_lower_bound`) takes its linear
relaxation, which is quick and never above it. Both share :data:`MAX_RUN_TYPES`, so they live
together.

**Lower bound** (docs/cohorts.md#lower-bound, with the proof). No plan beats ``W / slots`` (``W``:
one run per stream, the least work) nor ``w_max`` (the costliest single student). Those ignore
the teacher passes that cutting a stream repeats; :func:`cut_lower_bound` counts them: the least
``T`` for which the least work of cutting every stream into runs of at most ``T`` fits in
``slots·T``; and the longest ``T`` proven short when each run too long to share its slot with
the shortest run counts as a whole slot. Both are integer programs over run *types* (the set of
teacher inputs a run holds), of which the bound takes linear relaxations. On
``experiments/cifar100.yaml`` with 8 slots it proves the plan (4 runs of 7 students per stream, 4
teacher inputs each) optimal, where ``W / slots`` is 28% lower.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from kd_ray.cohort.cost import CostModel, teacher_inputs
from kd_ray.cohort.split import _units
from kd_ray.plan import StudentTrial

# Types are the unions of units' teacher inputs. Past this many the program is not built (its
# size, and the time to solve it, grow with them): the planner keeps its greedy cuts, and the
# bound leaves the rarest teacher inputs out until the types fit (a relaxation:
# docs/cohorts.md#lower-bound). The paper's grids have 39 per stream, 99 with both views.
MAX_RUN_TYPES = 200
# A safety net for the planner's integer programs on pathological inputs (the paper's grids solve
# in milliseconds): one cut short finds no exact cut, and the greedy one stays.
_SOLVER_TIME_LIMIT_S = 5.0


@dataclass(frozen=True)
class _Shape:
    """One stream as the integer program sees it.

    ``needs[u]``: the teacher inputs (numbered by first appearance) of unit ``u``, which has
    ``sizes[u]`` students; ``a``, ``b``, ``o``: seconds of one teacher input, of one student and
    of starting a run; ``dropped``: teacher inputs left out of ``needs`` by a projection (each
    still runs at least once, so the bound adds ``dropped·a``).
    """

    needs: tuple[frozenset[int], ...]
    sizes: tuple[int, ...]
    a: float
    b: float
    o: float
    dropped: int = 0

    @property
    def students(self) -> int:
        return sum(self.sizes)

    @property
    def inputs(self) -> int:
        return len(frozenset().union(*self.needs)) + self.dropped

    def least_work(self) -> float:
        """Seconds of one run for the whole stream: no cut does less work."""
        return self.o + self.inputs * self.a + self.students * self.b

    def breakpoints(self) -> set[float]:
        """Run lengths where a type's capacity changes: ``o + K·a + c·b``."""
        return {
            self.o + k * self.a + c * self.b
            for k in range(self.inputs + 1)
            for c in range(1, self.students + 1)
        }


def _shape(trials: Sequence[StudentTrial], cost: CostModel) -> tuple[_Shape, list[list[StudentTrial]]]:
    """The shape of one stream and its units (in plan order, as ``needs`` numbers them)."""
    units = _units(trials)
    number: dict[tuple, int] = {}
    needs = []
    for unit in units:
        keys = sorted(teacher_inputs(unit), key=repr)
        for k in keys:
            number.setdefault(k, len(number))
        needs.append(frozenset(number[k] for k in keys))
    dataset = trials[0].dataset
    spf = cost.seconds_per_flop
    shape = _Shape(
        tuple(needs),
        tuple(len(u) for u in units),
        cost.key_flops[dataset] * spf,
        cost.student_flops[dataset] * spf,
        cost.run_overhead_s,
    )
    return shape, units


def _run_types(
    needs: Sequence[frozenset[int]], most_inputs: int, limit: int
) -> tuple[frozenset[int], ...] | None:
    """Unions of ``needs`` of at most ``most_inputs`` inputs, or None past ``limit`` of them.

    Any run's teacher inputs are the union of its units' needs, reached one unit at a time
    through unions no larger than it.
    """
    distinct = sorted(set(needs), key=sorted)
    found = {s for s in distinct if len(s) <= most_inputs}
    frontier = sorted(found, key=sorted)
    while frontier:
        grown = []
        for s in frontier:
            for need in distinct:
                union = s | need
                if union not in found and len(union) <= most_inputs:
                    found.add(union)
                    grown.append(union)
                    if len(found) > limit:
                        return None
        frontier = grown
    return tuple(sorted(found, key=lambda s: (len(s), sorted(s))))


def _most_inputs(shape: _Shape, longest_s: float) -> int:
    """The most teacher inputs a run of one student can hold within ``longest_s``."""
    if shape.a <= 0:
        return shape.inputs
    return max(0, min(shape.inputs, int((longest_s - shape.o - shape.b) / shape.a * (1 + 1e-9) + 1e-9)))


class _CutProgram:
    """The integer program of one stream's cuts into runs of at most T seconds (module docstring)."""

    def __init__(self, shape: _Shape, types: tuple[frozenset[int], ...]) -> None:
        self.shape, self.types = shape, types
        self.type_inputs = np.array([len(t) for t in types], dtype=float)
        pairs = [(u, j) for j, t in enumerate(types) for u, need in enumerate(shape.needs) if need <= t]
        self.pair_unit = np.array([u for u, _ in pairs], dtype=int)
        self.pair_type = np.array([j for _, j in pairs], dtype=int)
        self.sizes = np.array(shape.sizes, dtype=float)
        # The students whose teacher inputs a type holds: no run of it trains more.
        self.fitting = np.bincount(self.pair_type, weights=self.sizes[self.pair_unit], minlength=len(types))

    def capacities(self, longest_s: float) -> np.ndarray:
        """Students a run of each type can train within ``longest_s``, and no more than fit it
        (rounded up at a hair's breadth: a capacity too large only weakens the bound)."""
        s = self.shape
        room = longest_s - s.o - self.type_inputs * s.a
        caps = np.floor(room / s.b * (1 + 1e-9) + 1e-9) if s.b > 0 else np.where(room >= 0, s.students, 0)
        return np.clip(caps, 0, self.fitting).astype(int)

    def _live_pairs(self, longest_s: float):
        """At ``longest_s``: each type's capacity, which types have room for a student, and the
        (unit, type) pairs of those types; None when some unit fits in no run that short."""
        caps = self.capacities(longest_s)
        live = caps >= 1
        keep = live[self.pair_type]
        p_unit, p_type = self.pair_unit[keep], self.pair_type[keep]
        if len(set(p_unit.tolist())) < len(self.shape.sizes):
            return None
        return caps, live, p_unit, p_type

    def _problem(self, longest_s: float, max_runs: int | None):
        """The program at ``longest_s`` as arrays for ``scipy.optimize.milp``; None when a unit
        fits in no run that short. Columns: ``x_S`` of the types with room for a student, then
        ``y_uS`` of the units they fit."""
        from scipy.optimize import Bounds, LinearConstraint
        from scipy.sparse import csr_matrix

        s = self.shape
        found = self._live_pairs(longest_s)
        if found is None:
            return None
        caps, live, p_unit, p_type = found
        column = np.cumsum(live) - 1  # type index → its x column
        types = np.flatnonzero(live)
        nx, ny, units = len(types), len(p_unit), len(s.sizes)
        ys, xs = nx + np.arange(ny), column[p_type]
        entries = [
            (p_unit, ys, np.ones(ny)),  # each unit's students all placed ...
            (units + np.arange(nx), np.arange(nx), -caps[types]),  # ... within its runs' room ...
            (units + xs, ys, np.ones(ny)),
            (units + nx + np.arange(ny), ys, np.ones(ny)),  # ... and only where such a run exists
            (units + nx + np.arange(ny), xs, -self.sizes[p_unit]),
        ]
        lo = np.concatenate([self.sizes, np.full(nx + ny, -np.inf)])
        hi = np.concatenate([self.sizes, np.zeros(nx + ny)])
        if max_runs is not None:
            entries.append((np.full(nx, units + nx + ny), np.arange(nx), np.ones(nx)))
            lo, hi = np.append(lo, 0), np.append(hi, max_runs)
        rows, cols, vals = (
            np.concatenate([np.asarray(e[i], dtype=float) for e in entries]) for i in range(3)
        )
        matrix = csr_matrix((vals, (rows.astype(int), cols.astype(int))), shape=(len(lo), nx + ny))
        scale = max(longest_s, 1e-9)  # objective in run lengths: coefficients near 1
        objective = np.concatenate([(s.o + self.type_inputs[types] * s.a) / scale, np.zeros(ny)])
        upper = np.concatenate([np.full(nx, float(max_runs or s.students)), self.sizes[p_unit]])
        return {
            "c": objective,
            "bounds": Bounds(0, upper),
            "constraints": LinearConstraint(matrix, lo, hi),
            "scale": scale,
            "layout": (nx, types, p_unit, p_type, column),
        }

    def least_work(self, longest_s: float) -> float:
        """A lower bound on the least work (seconds) of a cut into runs of at most ``longest_s``:
        the linear relaxation's optimum, ``inf`` when no cut exists."""
        from scipy.optimize import milp

        s = self.shape
        problem = self._problem(longest_s, None)
        if problem is None:
            return float("inf")
        res = milp(problem["c"], bounds=problem["bounds"], constraints=problem["constraints"])
        if res.status == 2:
            return float("inf")
        if res.status != 0:
            return s.least_work()  # nothing proved: one run's work always holds
        # The solver's tolerances are about 1e-7 of a run length: stay below them.
        relaxed = (res.fun - 1e-6) * problem["scale"] + s.students * s.b + s.dropped * s.a
        return max(s.least_work(), relaxed)

    def slot_time(self, longest_s: float, shortest_run_s: float) -> float:
        """A lower bound on the slot time (seconds) a cut into runs of at most ``longest_s`` takes
        on slots of that length, ``inf`` when no cut exists.

        A run longer than ``longest_s - shortest_run_s`` (the shortest run of any stream) shares
        its slot with no other run, so it takes the whole slot. The linear relaxation of the
        program with a column per (type, size), each run counted so.
        """
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import csr_matrix

        s = self.shape
        found = self._live_pairs(longest_s)
        if found is None:
            return float("inf")
        caps, live, p_unit, p_type = found
        types = np.flatnonzero(live)
        row_of = np.full(len(self.types), -1)
        row_of[types] = np.arange(len(types))
        # Columns: a run count per (type, size), then runs per type, then y_uS.
        run_type = np.repeat(types, caps[types])
        run_size = np.concatenate([np.arange(1, caps[j] + 1) for j in types])
        seconds = s.o + self.type_inputs[run_type] * s.a + run_size * s.b
        alone = seconds > longest_s - shortest_run_s + 1e-9 * longest_s  # at a hair's breadth: fewer
        cost = np.where(alone, longest_s, seconds)
        nr, nt, ny, units = len(run_type), len(types), len(p_unit), len(s.sizes)
        runs, per_type, ys = np.arange(nr), nr + np.arange(nt), nr + nt + np.arange(ny)
        rows_cap = units + row_of[run_type]
        entries = [
            (p_unit, ys, np.ones(ny)),  # each unit's students all placed ...
            (units + row_of[p_type], ys, np.ones(ny)),  # ... within the sizes of its type's runs ...
            (rows_cap, runs, -run_size),
            (units + nt + row_of[run_type], runs, np.ones(nr)),  # (runs per type)
            (units + nt + np.arange(nt), per_type, -np.ones(nt)),
            (units + 2 * nt + np.arange(ny), ys, np.ones(ny)),  # ... and only where such a run exists
            (units + 2 * nt + np.arange(ny), nr + row_of[p_type], -self.sizes[p_unit]),
        ]
        lo = np.concatenate([self.sizes, np.full(nt, -np.inf), np.zeros(nt), np.full(ny, -np.inf)])
        hi = np.concatenate([self.sizes, np.zeros(nt), np.zeros(nt), np.zeros(ny)])
        rows, cols, vals = (
            np.concatenate([np.asarray(e[i], dtype=float) for e in entries]) for i in range(3)
        )
        matrix = csr_matrix((vals, (rows.astype(int), cols.astype(int))), shape=(len(lo), nr + nt + ny))
        scale = max(longest_s, 1e-9)
        objective = np.concatenate([cost / scale, np.zeros(nt + ny)])
        upper = np.concatenate([np.full(nr + nt, float(s.students)), self.sizes[p_unit]])
        res = milp(objective, bounds=Bounds(0, upper), constraints=LinearConstraint(matrix, lo, hi))
        if res.status == 2:
            return float("inf")
        if res.status != 0:
            return s.least_work()
        return max(s.least_work(), (res.fun - 1e-6) * scale)

    def cut(self, longest_s: float, max_runs: int, *, least_work: bool) -> list[list[int]] | None:
        """A cut into at most ``max_runs`` runs of at most ``longest_s`` (per run, the unit of
        each student), or None if the solver finds none; with ``least_work``, one of least work,
        else the first found (a feasibility test)."""
        from scipy.optimize import milp

        problem = self._problem(longest_s, max_runs)
        if problem is None:
            return None
        c = problem["c"] if least_work else np.zeros_like(problem["c"])
        relaxed = milp(c, bounds=problem["bounds"], constraints=problem["constraints"])
        if relaxed.status == 2:
            return None  # not even a fractional cut: no integer one (and the relaxation is quick)
        res = milp(
            c,
            integrality=np.ones_like(c),
            bounds=problem["bounds"],
            constraints=problem["constraints"],
            options={"time_limit": _SOLVER_TIME_LIMIT_S, "mip_rel_gap": 1e-3},
        )
        if res.x is None:
            return None
        return self._runs(np.round(res.x).astype(int), *problem["layout"])

    def _runs(self, x, nx, types, p_unit, p_type, column) -> list[list[int]] | None:
        """Runs of a solution: per type, its students split into its ``x_S`` runs near-evenly,
        unit by unit (a unit split in two still fits the type)."""
        y = x[nx:]
        placed = np.zeros(len(self.sizes), dtype=int)
        np.add.at(placed, p_unit, y)
        if not np.array_equal(placed, self.sizes.astype(int)):
            return None
        runs = []
        for col, _ in enumerate(types):
            students = [
                u
                for u, n in zip(p_unit[column[p_type] == col], y[column[p_type] == col], strict=True)
                for _ in range(n)
            ]
            count = min(int(x[col]), len(students))
            for i in range(count):
                part = students[i * len(students) // count : (i + 1) * len(students) // count]
                if part:
                    runs.append(part)
        return runs


@functools.lru_cache(maxsize=256)
def _program(shape: _Shape, most_inputs: int, limit: int) -> _CutProgram | None:
    types = _run_types(shape.needs, most_inputs, limit)
    return None if types is None else _CutProgram(shape, types)


def _projected(shape: _Shape, most_inputs: int) -> _CutProgram:
    """The program of ``shape`` with the rarest teacher inputs left out until its types fit.

    Leaving inputs out only lowers each run's cost, and each left-out input still runs at least
    once (``dropped``): a relaxation, whose least work never exceeds the stream's.
    """
    program = _program(shape, most_inputs, MAX_RUN_TYPES)
    if program is not None:
        return program
    users: dict[int, int] = {}
    for need, size in zip(shape.needs, shape.sizes, strict=True):
        for k in need:
            users[k] = users.get(k, 0) + size
    ranked = sorted(users, key=lambda k: (-users[k], k))
    for kept in range(len(ranked) - 1, -1, -1):
        keep = frozenset(ranked[:kept])
        merged: dict[frozenset[int], int] = {}
        for need, size in zip(shape.needs, shape.sizes, strict=True):
            merged[need & keep] = merged.get(need & keep, 0) + size
        smaller = _Shape(
            tuple(merged),
            tuple(merged.values()),
            shape.a,
            shape.b,
            shape.o,
            shape.dropped + len(ranked) - kept,
        )
        program = _program(smaller, most_inputs, MAX_RUN_TYPES)
        if program is not None:
            return program
    raise AssertionError("a shape without teacher inputs has one run type")


# --- Exact cuts and the lower bound ------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _exact_cut(shape: _Shape, m: int, longest_s: float) -> tuple[tuple[int, ...], ...] | None:
    """:func:`_exact_split` on a shape: per run, the unit of each student; cached, so streams of
    one shape (the same grid on another augmentation or seed) are solved once."""
    program = _program(shape, _most_inputs(shape, longest_s), MAX_RUN_TYPES)
    if program is None:
        return None
    largest = max(shape.o + len(need) * shape.a + shape.b for need in shape.needs)
    floor = max(shape.least_work() / m, largest)
    points = sorted(t for t in shape.breakpoints() if floor * (1 - 1e-12) <= t < longest_s * (1 - 1e-9))
    # Where the greedy cut is best already, one test just below it says so.
    if not points or program.cut(points[-1], m, least_work=False) is None:
        return None
    shortest, lo, hi = points[-1], 0, len(points) - 2
    while lo <= hi:  # the shortest run length that admits a cut into m runs
        mid = (lo + hi) // 2
        if program.cut(points[mid], m, least_work=False) is None:
            lo = mid + 1
        else:
            shortest, hi = points[mid], mid - 1
    best = program.cut(shortest, m, least_work=True)
    return None if best is None else tuple(tuple(run) for run in best)


def _exact_split(
    trials: Sequence[StudentTrial], m: int, cost: CostModel, longest_s: float
) -> list[tuple[StudentTrial, ...]] | None:
    """The cut of ``trials`` into at most ``m`` runs with the shortest longest run, if that is
    shorter than ``longest_s`` (else None); among those, one of least work.

    The integer program is solved at the run lengths where a capacity changes (``o + K·a + c·b``),
    searching for the shortest that admits a cut. None too where the stream has more run types
    than :data:`MAX_RUN_TYPES`.
    """
    shape, units = _shape(trials, cost)
    cut = _exact_cut(shape, max(1, min(m, len(trials))), longest_s)
    if cut is None:
        return None
    left = [list(u) for u in units]
    order = {t.trial_id: i for i, t in enumerate(trials)}
    runs = [tuple(sorted((left[u].pop(0) for u in run), key=lambda t: order[t.trial_id])) for run in cut]
    return sorted(runs, key=lambda r: order[r[0].trial_id])


def cut_lower_bound(
    streams: Mapping[tuple, Sequence[StudentTrial]],
    slots: int,
    cost: CostModel,
    floor_s: float,
    ceiling_s: float,
) -> float:
    """A lower bound on the makespan of any plan of ``streams`` on ``slots``, at least ``floor_s``.

    ``floor_s`` must itself be a lower bound and ``ceiling_s`` the makespan of some plan. The
    bound is the larger of the least T for which the streams' least work in runs of at most T
    seconds fits in ``slots·T``, and the longest T proven short counting whole slots
    (:func:`_slot_bound`); docs/cohorts.md#lower-bound, with the proofs.
    """
    shapes: dict[_Shape, int] = {}
    for trials in streams.values():
        shape, _ = _shape(trials, cost)
        shapes[shape] = shapes.get(shape, 0) + 1
    if not shapes or ceiling_s <= floor_s:
        return floor_s
    programs = [(_projected(s, _most_inputs(s, ceiling_s)), n) for s, n in shapes.items()]
    points = sorted({floor_s} | {t for s in shapes for t in s.breakpoints() if floor_s < t < ceiling_s})

    @functools.cache
    def work(t: float) -> float:
        return sum(n * p.least_work(t) for p, n in programs)

    def proven_short(t: float) -> bool:  # no plan finishes by t
        return work(t) > slots * t

    bound = floor_s
    if proven_short(points[0]):
        lo, hi = 0, len(points) - 1  # points[lo] proven short; search the last one that is
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if proven_short(points[mid]):
                lo = mid
            else:
                hi = mid - 1
        start = points[lo]
        end = points[lo + 1] if lo + 1 < len(points) else ceiling_s
        # Between two breakpoints the least work is constant: short until work / slots.
        bound = min(end, max(start, work(start) / slots))
    return max(bound, _slot_bound(shapes, programs, slots, bound, ceiling_s))


def _slot_bound(
    shapes: Mapping[_Shape, int], programs: list, slots: int, floor_s: float, ceiling_s: float
) -> float:
    """The longest T proven short counting whole slots for runs too long to share one
    (:meth:`_CutProgram.slot_time`), or ``floor_s``; docs/cohorts.md#lower-bound.

    A test at T proves every shorter makespan impossible too, so it is made just below each
    run length where a capacity or a run's sharing changes.
    """
    shortest = min(s.o + s.b + s.a * min(len(need) for need in s.needs) for s in shapes)
    marks = {t for s in shapes for t in s.breakpoints()}
    marks |= {t + shortest for t in marks} | {ceiling_s}
    points = sorted(t * (1 - 1e-9) for t in marks if floor_s < t * (1 - 1e-9) < ceiling_s)

    def proven_short(t: float) -> bool:
        return sum(n * p.slot_time(t, shortest) for p, n in programs) > slots * t

    bound, lo, hi = floor_s, 0, len(points) - 1
    while lo <= hi:  # the last point proven short
        mid = (lo + hi) // 2
        if proven_short(points[mid]):
            bound, lo = points[mid], mid + 1
        else:
            hi = mid - 1
    return bound
