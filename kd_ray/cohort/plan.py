"""The plan of the student phase: which runs, in what order, and what they cost.

:func:`plan_cohorts` searches candidate cuts (the greedy one of :mod:`kd_ray.cohort.split`, the
exact one of :mod:`kd_ray.cohort.program`, units straight onto slots, one run per trial),
schedules each with :func:`~kd_ray.cohort.schedule.lpt_schedule` and returns a
:class:`CohortPlan` that ``kd-ray sweep --dry-run`` prints and the sweep runs.

**Splitting rule.** Students of one stream that see the same teacher inputs form a *unit*. Three
kinds of candidate plans are scheduled longest-first (:func:`lpt_schedule`) onto the slots:
(1) each stream cut into ``m`` chunks, starting from ``m = 1`` and cutting the stream of the
costliest run one chunk finer at a time until that run is one student or cutting only adds work.
A stream's ``m`` chunks are the better of a greedy cut balanced by cost (:func:`split_stream`:
units, largest first, each into the chunk it makes least costly, then moves off the costliest
chunk) and the exact one (:func:`_exact_split`: the integer program below, solved for the
shortest longest run, then for the least work at that length); (2) units placed straight onto
slots, one run per (slot, stream), which balances uneven cuts such as 2 streams on 5 slots; (3)
one run per trial. Of the candidates whose makespan is within ``tolerance`` of the best, the one
of least work (fewest repeated teacher passes) is kept. ``resources.trials_per_run``, when set,
decides instead: each stream is cut in plan order into runs of at most that many students
(:func:`kd_ray.plan.stream_groups`), as the sweep always did.

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kd_ray.cohort.cost import CostModel, teacher_inputs
from kd_ray.cohort.packs import teacher_packs
from kd_ray.cohort.program import _exact_split, cut_lower_bound
from kd_ray.cohort.schedule import lpt_schedule
from kd_ray.cohort.split import _Chunk, _key_counts, _units, split_stream
from kd_ray.config import SweepConfig
from kd_ray.errors import ConfigError
from kd_ray.plan import StudentTrial, SweepPlan, TeacherSpec, stream_groups, stream_key


@dataclass(frozen=True)
class CohortRun:
    """One run of the student phase: trials of one stream, trained together on one slot."""

    stream: tuple[str, str, int]  # kd_ray.plan.stream_key of its trials
    trials: tuple[StudentTrial, ...]  # in plan order
    flops: float
    seconds: float  # flops × seconds_per_flop + run_overhead_s
    teacher_forwards: int  # distinct teacher inputs: teacher forward passes per image
    slot: int = 0  # where the longest-first estimate places it (0-based)
    start_s: float = 0.0  # when, in that estimate


@dataclass(frozen=True)
class CohortPlan:
    """The runs of the student phase and what they are estimated to cost; ``describe()`` prints it.

    ``runs`` are ordered longest first: submitted in that order to a scheduler that starts the
    next run whenever a slot frees, they give ``makespan_s``. Seconds are estimates on ``slots``
    identical slots; ``*_hours`` sum run times, not wall time. ``baseline_*`` are the same
    figures for one run per trial; ``teacher_*`` estimate the teacher phase, which runs first.
    """

    slots: int
    runs: tuple[CohortRun, ...]
    makespan_s: float
    lower_bound_s: float  # max(total_work_s / slots, largest_unit_s, cut_bound_s): no plan beats it
    total_work_s: float  # one run per stream: the least work any plan does
    largest_unit_s: float  # the costliest single student in a run of its own
    gpus_per_slot: float  # num_workers × gpus_per_worker (0 on CPU)
    baseline_makespan_s: float
    baseline_work_s: float
    baseline_teacher_forwards: int
    teachers: int = 0  # teachers to train first
    teacher_runs: int = 0  # the Train runs they take (packs: docs/architecture.md#teacher-packs)
    teacher_makespan_s: float = 0.0
    teacher_work_s: float = 0.0
    gpus_per_teacher: float = 0.0
    override: int | None = None  # resources.trials_per_run, when it decided the runs
    cost: CostModel | None = field(default=None, repr=False, compare=False)
    # The least T for which the streams' least work in runs of at most T fits in slots·T: the
    # teacher passes that cutting streams into runs that short must repeat (cut_lower_bound).
    cut_bound_s: float = 0.0

    @property
    def work_s(self) -> float:
        """Sum of the runs' seconds (slot-seconds)."""
        return sum(r.seconds for r in self.runs)

    @property
    def slot_hours(self) -> float:
        return self.work_s / 3600

    @property
    def gpu_hours(self) -> float:
        """GPU-hours of the student runs (slot-hours on CPU)."""
        return self.slot_hours * (self.gpus_per_slot or 1.0)

    @property
    def baseline_gpu_hours(self) -> float:
        return self.baseline_work_s / 3600 * (self.gpus_per_slot or 1.0)

    @property
    def teacher_gpu_hours(self) -> float:
        return self.teacher_work_s / 3600 * (self.gpus_per_teacher or 1.0)

    @property
    def teacher_forwards(self) -> int:
        """Teacher forward passes per image, summed over the runs (minimal: one run per stream)."""
        return sum(r.teacher_forwards for r in self.runs)

    @property
    def saving(self) -> float:
        """Fraction of the student phase's compute saved against one run per trial."""
        return 1.0 - self.work_s / self.baseline_work_s if self.baseline_work_s else 0.0

    @property
    def gap(self) -> float:
        """Makespan over the lower bound, minus one (0.05: 5% above the bound)."""
        return self.makespan_s / self.lower_bound_s - 1.0 if self.lower_bound_s else 0.0

    @property
    def busy(self) -> float:
        """Fraction of slot time the runs keep busy until the makespan (1.0: no slot idles)."""
        return self.work_s / (self.slots * self.makespan_s) if self.makespan_s else 1.0

    def describe(self) -> list[str]:
        """Human-readable lines: runs and their students, GPU-hours, makespan, saving."""
        unit = "GPU" if self.gpus_per_slot else "slot"
        n_trials = sum(len(r.trials) for r in self.runs)
        how = (
            f"resources.trials_per_run = {self.override}"
            if self.override
            else "balanced by cost, teacher-sharing students together"
        )
        lines = [
            f"student runs: {len(self.runs)} for {n_trials} trials on {self.slots} slot(s) "
            f"({self.gpus_per_slot:g} GPU each)"
            if self.gpus_per_slot
            else f"student runs: {len(self.runs)} for {n_trials} trials on {self.slots} slot(s)",
            f"  ({how})",
        ]
        for i, run in enumerate(sorted(self.runs, key=lambda r: (r.slot, r.start_s)), 1):
            dataset, aug, seed = run.stream
            lines.append(
                f"  {i:>3}. slot {run.slot + 1}, from {_duration(run.start_s)}: {dataset} S{aug} seed {seed}, "
                f"{len(run.trials)} student(s), {run.teacher_forwards} teacher fwd/image, {_duration(run.seconds)}"
            )
            lines.append(f"       {_compact(run.trials)}")
        lines += [
            "",
            f"estimated {unit}-hours: {_figure(self.gpu_hours)} for the students"
            + (
                f" + {_figure(self.teacher_gpu_hours)} for {self.teachers} teacher(s) in {self.teacher_runs} run(s)"
                if self.teacher_runs
                else ""
            ),
            f"estimated makespan: {_duration(self.makespan_s)} for the students, {self.busy:.0%} of slot time busy"
            + (
                f"; {_duration(self.teacher_makespan_s + self.makespan_s)} with the teachers first"
                if self.teacher_runs
                else ""
            ),
            f"  lower bound {_duration(self.lower_bound_s)} = max(least work / slots "
            f"{_duration(self.total_work_s / self.slots)}, largest student {_duration(self.largest_unit_s)}, "
            f"counting the teacher passes and slots that cuts take {_duration(self.cut_bound_s)}); "
            f"makespan {self.gap:+.1%}" + (" (no plan is faster)" if self.gap < 1e-6 else ""),
            f"saving against one run per trial: {self.saving:.0%} of the compute "
            f"({_figure(self.gpu_hours)} instead of {_figure(self.baseline_gpu_hours)} {unit}-hours); "
            f"{self.teacher_forwards} teacher forwards per image instead of {self.baseline_teacher_forwards}; "
            f"makespan {_duration(self.makespan_s)} instead of {_duration(self.baseline_makespan_s)}",
        ]
        if self.cost is not None:
            rate = 1 / self.cost.seconds_per_flop
            rate_text = f"{rate / 1e12:.3g} TFLOP/s" if rate >= 1e12 else f"{rate / 1e9:.3g} GFLOP/s"
            lines.append(
                f"(cost model: FLOPs counted on the models, {rate_text} per slot, "
                f"{self.cost.run_overhead_s:g} s to start a run; see docs/cohorts.md)"
            )
        return lines

    def format(self) -> str:
        """``describe()`` as one string."""
        return "\n".join(self.describe())


def _figure(hours: float) -> str:
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:.2g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _compact(trials: Sequence[StudentTrial]) -> str:
    """``T1w_T2s_Ss[kd,zscore_kd] ...``: each perm with the losses (and views) trained."""
    by_perm: dict[str, list[str]] = {}
    views = {t.view for t in trials}
    for t in trials:
        by_perm.setdefault(t.perm, []).append(t.loss if len(views) == 1 else f"{t.loss}/{t.view}")
    return " ".join(f"{perm}[{','.join(v)}]" for perm, v in by_perm.items())


def _streams(trials: Sequence[StudentTrial]) -> dict[tuple, list[StudentTrial]]:
    streams: dict[tuple, list[StudentTrial]] = {}
    for t in trials:
        streams.setdefault(stream_key(t), []).append(t)
    return streams


def plan_cohorts(
    plan: SweepPlan,
    cfg: SweepConfig,
    slots: int,
    *,
    cost: CostModel | None = None,
    tolerance: float = 0.02,
    trials: Sequence[StudentTrial] | None = None,
    teachers: Sequence[TeacherSpec] | None = None,
    pack_teachers: bool = True,
) -> CohortPlan:
    """Choose the student runs of ``plan`` for ``slots`` concurrent runs (module docstring).

    Args:
        plan: the sweep's plan (:func:`kd_ray.plan.plan_sweep`).
        cfg: the sweep config (models, epochs, datasets, ``resources``).
        slots: concurrent runs the cluster can hold (:func:`slots_for`).
        cost: the cost model; default ``CostModel.from_config(cfg)``.
        tolerance: among plans whose makespan is within this fraction of the best one found,
            keep the one of least work (fewest repeated teacher passes).
        trials: the trials to plan (default all of ``plan.trials``; e.g. those left on resume).
        teachers: the teachers still to train (default all of ``plan.teachers``).
        pack_teachers: whether the sweep trains them in packs, at most one run per teacher slot
            (:func:`kd_ray.cohort.packs_teachers`), or one run each.

    Raises:
        ConfigError: ``slots`` below 1.
    """
    if not isinstance(slots, int) or slots < 1:
        raise ConfigError(f"cohort plan: slots must be a whole number of at least 1, got {slots!r}")
    cost = cost or CostModel.from_config(cfg)
    trials = list(plan.trials if trials is None else trials)
    streams = _streams(trials)
    sec = cost.run_seconds
    work = sum(sec(s) for s in streams.values())
    largest = max((sec([t]) for t in trials), default=0.0)

    override = cfg.resources.trials_per_run
    if not trials:
        runs = []
    elif override:
        runs = stream_groups(trials, override)
    else:
        runs = _search(streams, slots, cost, tolerance)
    position = {t.trial_id: i for i, t in enumerate(trials)}
    runs = sorted(runs, key=lambda r: (-sec(r), position[r[0].trial_id]))  # longest first
    durations = [sec(r) for r in runs]
    makespan, placed = lpt_schedule(durations, slots)
    singles = [sec([t]) for t in trials]
    baseline_makespan = lpt_schedule(singles, slots)[0]
    floor = max(work / slots, largest)
    # Both plans are real: no bound exceeds the faster one's makespan.
    cut_bound = (
        cut_lower_bound(streams, slots, cost, floor, min(makespan, baseline_makespan)) if trials else 0.0
    )
    res = cfg.resources
    teachers = list(plan.teachers if teachers is None else teachers)
    # Teachers run on the same GPUs (or CPUs), teacher_workers per run where a student slot has
    # num_workers; packed, a run trains its pack's teachers in turn and starts once.
    t_slots = max(1, slots * res.num_workers // res.teacher_workers)
    t_runs = teacher_packs(teachers, cfg, t_slots, cost=cost) if pack_teachers else [(t,) for t in teachers]
    t_secs = [
        cost.seconds(sum(cost.teacher_flops(t) for t in run) * res.num_workers / res.teacher_workers)
        for run in t_runs
    ]
    return CohortPlan(
        slots=slots,
        runs=tuple(
            CohortRun(stream_key(r[0]), tuple(r), cost.run_flops(r), d, len(teacher_inputs(r)), slot, start)
            for r, d, (slot, start) in zip(runs, durations, placed, strict=True)
        ),
        makespan_s=makespan,
        lower_bound_s=max(floor, cut_bound),
        total_work_s=work,
        largest_unit_s=largest,
        gpus_per_slot=res.num_workers * res.gpus_per_worker,
        baseline_makespan_s=baseline_makespan,
        baseline_work_s=sum(singles),
        baseline_teacher_forwards=sum(len(teacher_inputs([t])) for t in trials),
        teachers=len(teachers),
        teacher_runs=len(t_runs),
        teacher_makespan_s=lpt_schedule(t_secs, t_slots)[0],
        teacher_work_s=sum(t_secs),
        gpus_per_teacher=res.teacher_workers * res.gpus_per_worker,
        override=override,
        cost=cost,
        cut_bound_s=cut_bound,
    )


def _search(
    streams: Mapping[tuple, list[StudentTrial]], slots: int, cost: CostModel, tolerance: float
) -> list[tuple[StudentTrial, ...]]:
    """Candidate cuts, scheduled longest first; the least work among the near-fastest wins.

    Chunk counts per stream start at 1, and the stream of the costliest run is cut one chunk
    finer at a time; then the slot-filling cut (:func:`_fill_slots`) and one run per trial.
    """
    counts = {key: 1 for key in streams}
    cache: dict[tuple, list[tuple[StudentTrial, ...]]] = {}

    def split(key) -> list[tuple[StudentTrial, ...]]:
        m = counts[key]
        if (key, m) not in cache:
            greedy = split_stream(streams[key], m, cost)
            longest = max(cost.run_seconds(r) for r in greedy)
            exact = _exact_split(streams[key], m, cost, longest) if len(greedy) > 1 else None
            cache[(key, m)] = exact or greedy
        return cache[(key, m)]

    seen: list[tuple[float, float, list[tuple[StudentTrial, ...]]]] = []
    while True:
        runs = [r for key in streams for r in split(key)]
        durations = [cost.run_seconds(r) for r in runs]
        makespan, _ = lpt_schedule(durations, slots)
        seen.append((makespan, sum(durations), runs))
        if sum(durations) / slots > min(m for m, _, _ in seen) * (1 + tolerance):
            break  # cutting finer adds work: no later plan can be faster than this one's work
        top = max(range(len(runs)), key=lambda i: durations[i])
        key = stream_key(runs[top][0])
        if len(runs[top]) == 1 or counts[key] >= len(streams[key]):
            break
        counts[key] += 1
    singles = [(t,) for trials in streams.values() for t in trials]
    for runs in (_fill_slots(streams, slots, cost), singles):
        durations = [cost.run_seconds(r) for r in runs]
        seen.append((lpt_schedule(durations, slots)[0], sum(durations), runs))
    best = min(m for m, _, _ in seen)
    return min((s for s in seen if s[0] <= best * (1 + tolerance)), key=lambda s: (s[1], s[0]))[2]


def _fill_slots(
    streams: Mapping[tuple, list[StudentTrial]], slots: int, cost: CostModel
) -> list[tuple[StudentTrial, ...]]:
    """Another candidate: place units straight onto slots, one run per (slot, stream).

    Units, largest first, each onto the slot whose load (its runs' seconds) grows least in
    total, joining that slot's run of the same stream; then single students move off the most
    loaded slot while that lowers the larger of the two slots. Balances unequal cuts (e.g. 5
    slots for 2 streams) that equal chunks per stream cannot.
    """
    order = {t.trial_id: i for s in streams.values() for i, t in enumerate(s)}
    slots = min(slots, sum(len(s) for s in streams.values()))  # a run holds at least one student
    loads = [dict() for _ in range(slots)]  # slot → stream → _Chunk

    def load(slot: dict) -> float:
        return sum(cost.seconds(c.flops) for c in slot.values() if c.trials)

    def load_with(slot: dict, key, piece, keys) -> float:
        chunk = slot.get(key)
        if chunk is None or not chunk.trials:
            return load(slot) + cost.seconds(cost.run_flops(piece))
        return (
            load(slot)
            - chunk.flops * cost.seconds_per_flop
            + chunk.flops_with(piece, keys) * cost.seconds_per_flop
        )

    units = [(key, u) for key, trials in streams.items() for u in _units(trials)]
    units.sort(key=lambda ku: (-cost.run_flops(ku[1]), order[ku[1][0].trial_id]))
    for key, unit in units:
        keys = teacher_inputs(unit)
        s = min(range(slots), key=lambda i: (load_with(loads[i], key, unit, keys), i))
        loads[s].setdefault(key, _Chunk(cost, unit[0].dataset)).add(unit, _key_counts(unit))
    for _ in range(4 * sum(len(s) for s in streams.values())):
        current = [load(s) for s in loads]
        top = max(range(slots), key=lambda i: current[i])
        best = None
        for key, chunk in loads[top].items():
            for t in chunk.trials:
                piece, keys, counts = (t,), teacher_inputs([t]), _key_counts([t])
                left = chunk.flops_without(piece, counts)
                rest = (
                    current[top]
                    - cost.seconds(chunk.flops)
                    + (cost.seconds(left) if len(chunk.trials) > 1 else 0.0)
                )
                for other in range(slots):
                    if other == top:
                        continue
                    pair = max(rest, load_with(loads[other], key, piece, keys))
                    if pair < current[top] * (1 - 1e-9) and (best is None or pair < best[0]):
                        best = (pair, key, t, counts, other)
        if best is None:
            break
        _, key, t, counts, other = best
        loads[top][key].remove((t,), counts)
        loads[other].setdefault(key, _Chunk(cost, t.dataset)).add((t,), counts)
    runs = [
        tuple(sorted(c.trials, key=lambda t: order[t.trial_id]))
        for s in loads
        for c in s.values()
        if c.trials
    ]
    return sorted(runs, key=lambda r: (list(streams).index(stream_key(r[0])), order[r[0].trial_id]))
