"""The cohort planner: how to cut each data stream's student trials into runs for a cluster.

Pure Python and PyTorch (to count FLOPs on the meta device), no Ray. Given the sweep's plan, its
config and the number of *slots* -- the concurrent runs the cluster can hold: GPUs divided by the
GPUs one run takes, or CPUs divided by the CPUs one run takes (:func:`slots_for`) -- it chooses
the runs of the student phase so that the estimated makespan is near its lower bound while
shared teacher passes are kept, and says what the sweep will cost::

    from kd_ray.cohort import plan_cohorts, slots_for
    cohorts = plan_cohorts(plan, cfg, slots_for(cfg, gpus=8))
    print(cohorts.format())           # what `kd-ray sweep CONFIG --dry-run --gpus 8` shows
    for run in cohorts.runs:          # longest first: one Ray Train run each, in this order
        run.trials                    # tuple[StudentTrial, ...], all of one stream

Public API:

* ``plan_cohorts(plan, cfg, slots, *, cost=None, tolerance=0.02, trials=None, teachers=None)
  -> CohortPlan``. :class:`CohortPlan`: ``runs`` (:class:`CohortRun`: ``stream``, ``trials``,
  ``flops``, ``seconds``, ``teacher_forwards``, ``slot``, ``start_s``), ``makespan_s``,
  ``lower_bound_s`` (with its parts ``total_work_s``, ``largest_unit_s``, ``cut_bound_s``), ``work_s``,
  ``slot_hours``, ``gpu_hours``, ``busy``, ``gap``, ``teacher_forwards`` (per image, all runs),
  ``saving`` and ``baseline_*`` (one run per trial), ``teacher_*`` (the teacher phase, which runs
  first), ``override`` (``resources.trials_per_run`` when it decided), ``describe() -> list[str]``
  and ``format() -> str``.
* ``CostModel.from_config(cfg, *, seconds_per_flop=None, run_overhead_s=30.0, facts=None)``:
  ``run_flops(trials)``, ``run_seconds(trials)``, ``teacher_flops(teacher)``, ``seconds(flops)``;
  or ``CostModel(key_flops, student_flops, teacher_run_flops, seconds_per_flop, run_overhead_s)``
  with plain numbers per dataset key.
* ``forward_flops(arch, *, num_classes, in_channels, image_size) -> int`` (cached),
  ``dataset_facts(dataset_cfg) -> DatasetFacts``, ``default_seconds_per_flop(cfg)``.
* ``slots_for(cfg, *, gpus=None, cpus=None) -> int``; ``lpt_schedule(durations, slots) ->
  (makespan, [(slot, start), ...])``; ``split_stream(trials, m, cost)``;
  ``teacher_inputs(trials) -> frozenset`` (the teacher forwards per image of one run);
  ``cut_lower_bound(streams, slots, cost, floor_s, ceiling_s) -> float``.

**Cost model** (docs/cohorts.md). A run trains the students of one stream together
(``kd_ray.train.distill``): per image, each distinct teacher *input* runs once -- one forward per
teacher in the full view, one per (teacher, slot, k) in the split view, where k = 1's only strip
is the full image -- and each student takes one training step (:data:`TRAIN_STEP_FORWARDS` = 3
forwards); every epoch then evaluates teachers and students on ``val`` and ``val_aug``
(:data:`EVAL_PASSES` = 2, forward only). A run of ``n`` students with ``K`` distinct teacher
inputs costs ``K·a + n·b`` FLOPs, with ``a = E·(N_train + 2·N_val)·F_teacher`` and
``b = E·(3·N_train + 2·N_val)·F_student``: ``E`` student epochs, ``N`` split sizes, ``F`` the
FLOPs of one image's forward at the training resolution. Seconds are FLOPs × ``seconds_per_flop``
(one slot's rate: measure it, or take :func:`default_seconds_per_flop`) plus ``run_overhead_s``
to start a run. A teacher's run costs ``E_teacher·(3·N_train + N_val)·F_teacher``.

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
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from kd_ray.config import DatasetConfig, SweepConfig
from kd_ray.errors import ConfigError
from kd_ray.plan import StudentTrial, SweepPlan, TeacherSpec, stream_groups, stream_key

TRAIN_STEP_FORWARDS = 3.0  # one training step ≈ a forward and a backward of twice its cost
EVAL_PASSES = 2  # each epoch evaluates on ``val`` and ``val_aug``
# Sustained FLOP rates, per GPU and per CPU core, when no measured one is given. GPU: an
# A100-class GPU training ResNets at 224 px under bf16 autocast and channels_last (~2600
# ResNet-50 training images/s). CPU: the demo's small CNNs in plain processes (issue 10: 1.7
# TFLOP in 56 s on 2 cores); large convolutions run a few times faster per core.
GPU_FLOPS_PER_SECOND = 64e12
CPU_FLOPS_PER_SECOND = 15e9
# Starting one Ray Train run (controller, workers, imports), measured on the demo (issue 10).
DEFAULT_RUN_OVERHEAD_S = 30.0


# --- What a dataset costs per epoch ----------------------------------------------------------


@dataclass(frozen=True)
class DatasetFacts:
    """What the cost model needs of a dataset: its shape and split sizes."""

    num_classes: int
    channels: int
    input_size: int  # side of the images the models see (after any device-side resize)
    train_images: int
    val_images: int


def dataset_facts(dataset: DatasetConfig) -> DatasetFacts:
    """Sizes of ``dataset``; the file datasets without reading them.

    CIFAR-100 (-LT) and ImageNet (-LT) are known from their published splits (``imagenet_lt``
    assumes the published split files). Other datasets (digits, synthetic: generated in memory,
    or a third-party registration) are built and measured, which may read their files.
    """
    from kd_ray.data.long_tail import long_tail_counts

    name, size = dataset.name, dataset.image_size
    if name in ("cifar100", "cifar100_lt"):
        train = 50000
        if name == "cifar100_lt":
            imbalance = 100.0 if dataset.imbalance is None else dataset.imbalance
            train = sum(long_tail_counts(500, 100, imbalance))
        return DatasetFacts(100, 3, size or 32, train, 10000)
    if name == "imagenet":
        return DatasetFacts(1000, 3, size or 224, 1281167, 50000)
    if name == "imagenet_lt":
        return DatasetFacts(1000, 3, size or 224, 115846, 50000)
    from kd_ray.data import DATASETS

    built = DATASETS.get(name)(dataset)
    return DatasetFacts(
        built.num_classes, built.channels, size or built.native_size, len(built.train), len(built.val)
    )


@functools.cache
def forward_flops(arch: str, *, num_classes: int, in_channels: int, image_size: int) -> int:
    """FLOPs of one forward pass of one image through ``arch`` (a multiply-add counts 2).

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` on a model built on the meta device
    (no weights are allocated; resnet50 at 224 takes ~0.1 s), on CPU if the model cannot be
    built there; cached per (arch, classes, channels, size).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kd_ray.models import create_model

    def count(device: str) -> int:
        with torch.device(device):
            model = create_model(
                arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size
            )
        model.eval()
        x = torch.zeros(1, in_channels, image_size, image_size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return int(counter.get_total_flops())

    # The meta device allocates nothing, but some operators have no meta kernel (they raise
    # NotImplementedError or RuntimeError); those models are counted on the CPU at batch 1.
    try:
        return count("meta")
    except (NotImplementedError, RuntimeError):
        return count("cpu")


def _teacher_key(teacher_id: str, view: str, slot: int, k: int) -> tuple:
    # Same rule as kd_ray.train.distill.teacher_key (a test holds them equal), kept here so the
    # planner does not import the training loop.
    if view == "full" or (view == "split" and k == 1):
        return (teacher_id,)
    return (teacher_id, view, slot, k)


@functools.lru_cache(maxsize=65536)
def _inputs_of(trial: StudentTrial) -> frozenset[tuple]:
    return frozenset(
        _teacher_key(tid, trial.view, slot, trial.n_teachers) for slot, tid in enumerate(trial.teacher_ids, 1)
    )


def teacher_inputs(trials: Iterable[StudentTrial]) -> frozenset[tuple]:
    """The distinct teacher inputs of ``trials`` trained in one run: teacher forwards per image."""
    return frozenset().union(*(_inputs_of(t) for t in trials))


@dataclass(frozen=True)
class CostModel:
    """FLOPs and seconds of runs: ``K·key_flops + n·student_flops`` per dataset (module docstring).

    Build it with :meth:`from_config`; the per-dataset figures are plain numbers, so a test or a
    calibration can also construct one directly.
    """

    key_flops: Mapping[str, float]  # dataset key → FLOPs of one teacher input over a whole run
    student_flops: Mapping[str, float]  # dataset key → FLOPs of one student over a whole run
    teacher_run_flops: Mapping[str, float]  # dataset key → FLOPs of training one teacher
    seconds_per_flop: float = 1.0 / GPU_FLOPS_PER_SECOND
    run_overhead_s: float = DEFAULT_RUN_OVERHEAD_S

    @classmethod
    def from_config(
        cls,
        cfg: SweepConfig,
        *,
        seconds_per_flop: float | None = None,
        run_overhead_s: float = DEFAULT_RUN_OVERHEAD_S,
        facts: Mapping[str, DatasetFacts] | None = None,
    ) -> CostModel:
        """The cost model of ``cfg``'s datasets and models.

        Args:
            seconds_per_flop: one slot's measured seconds per FLOP (default: :func:`default_seconds_per_flop`).
            run_overhead_s: fixed seconds to start a run.
            facts: dataset key → :class:`DatasetFacts`, to override :func:`dataset_facts`.
        """
        if seconds_per_flop is None:
            seconds_per_flop = default_seconds_per_flop(cfg)
        if seconds_per_flop <= 0 or run_overhead_s < 0:
            raise ConfigError("cost model: seconds_per_flop must be > 0 and run_overhead_s >= 0")
        key_flops, student_flops, teacher_flops = {}, {}, {}
        s_epochs, t_epochs = cfg.student.train.epochs, cfg.teacher.train.epochs
        for dataset in cfg.datasets:
            f = (facts or {}).get(dataset.key) or dataset_facts(dataset)
            shape = {"num_classes": f.num_classes, "in_channels": f.channels, "image_size": f.input_size}
            f_t = forward_flops(cfg.teacher.arch, **shape)
            f_s = forward_flops(cfg.student.arch, **shape)
            key_flops[dataset.key] = s_epochs * (f.train_images + EVAL_PASSES * f.val_images) * f_t
            student_flops[dataset.key] = (
                s_epochs * (TRAIN_STEP_FORWARDS * f.train_images + EVAL_PASSES * f.val_images) * f_s
            )
            # A teacher trains on its split and evaluates once per epoch on ``val``.
            teacher_flops[dataset.key] = (
                t_epochs * (TRAIN_STEP_FORWARDS * f.train_images + f.val_images) * f_t
            )
        return cls(key_flops, student_flops, teacher_flops, seconds_per_flop, run_overhead_s)

    def run_flops(self, trials: Sequence[StudentTrial]) -> float:
        """FLOPs of one run training ``trials`` (one stream) together."""
        dataset = trials[0].dataset
        return (
            len(teacher_inputs(trials)) * self.key_flops[dataset] + len(trials) * self.student_flops[dataset]
        )

    def seconds(self, flops: float) -> float:
        """Seconds of a run of ``flops`` on one slot, start-up included."""
        return flops * self.seconds_per_flop + self.run_overhead_s

    def run_seconds(self, trials: Sequence[StudentTrial]) -> float:
        return self.seconds(self.run_flops(trials))

    def teacher_flops(self, teacher: TeacherSpec) -> float:
        """FLOPs of training ``teacher`` (its own run)."""
        return self.teacher_run_flops[teacher.dataset]


def default_seconds_per_flop(cfg: SweepConfig) -> float:
    """One student slot's seconds per FLOP when none is measured: :data:`GPU_FLOPS_PER_SECOND`
    per GPU (or :data:`CPU_FLOPS_PER_SECOND` per CPU) of a run, DDP taken as scaling linearly."""
    res = cfg.resources
    if res.gpus_per_worker > 0:
        return 1.0 / (GPU_FLOPS_PER_SECOND * res.num_workers * res.gpus_per_worker)
    return 1.0 / (CPU_FLOPS_PER_SECOND * res.num_workers * res.cpus_per_worker)


# --- Scheduling -------------------------------------------------------------------------------


def lpt_schedule(durations: Sequence[float], slots: int) -> tuple[float, list[tuple[int, float]]]:
    """List scheduling, longest first, onto ``slots`` identical slots.

    Returns the makespan and, per duration (in the given order), ``(slot, start)``. This is how
    Ray starts queued runs as slots free up, if it takes them longest first.
    """
    if slots < 1:
        raise ConfigError(f"cohort plan: slots must be at least 1, got {slots}")
    heap = [(0.0, s) for s in range(slots)]
    placed: list[tuple[int, float]] = [(0, 0.0)] * len(durations)
    for i in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        load, slot = heapq.heappop(heap)
        placed[i] = (slot, load)
        heapq.heappush(heap, (load + durations[i], slot))
    return max((load for load, _ in heap), default=0.0), placed


def slots_for(cfg: SweepConfig, *, gpus: int | None = None, cpus: float | None = None) -> int:
    """Concurrent student runs a cluster of ``gpus`` GPUs (or ``cpus`` CPUs) holds, at least 1.

    A run takes ``num_workers × gpus_per_worker`` GPUs when ``gpus_per_worker > 0``, else
    ``num_workers × cpus_per_worker`` CPUs.
    """
    res = cfg.resources
    if res.gpus_per_worker > 0 and gpus is not None:
        return max(1, int(gpus / (res.num_workers * res.gpus_per_worker) + 1e-9))
    if cpus is not None:
        return max(1, int(cpus / (res.num_workers * res.cpus_per_worker) + 1e-9))
    if gpus is not None:  # a CPU config sized by a GPU count: one run per "GPU"
        return max(1, int(gpus))
    raise ConfigError("cohort plan: give the cluster's size (gpus or cpus)")


# --- Splitting one stream ------------------------------------------------------------------------


def _units(trials: Sequence[StudentTrial]) -> list[list[StudentTrial]]:
    """Students that see the same teacher inputs, in plan order of first appearance."""
    units: dict[frozenset, list[StudentTrial]] = {}
    for t in trials:
        units.setdefault(teacher_inputs([t]), []).append(t)
    return list(units.values())


class _Chunk:
    """A run being built: its students and their teacher inputs with multiplicities."""

    def __init__(self, cost: CostModel, dataset: str) -> None:
        self.a = cost.key_flops[dataset]
        self.b = cost.student_flops[dataset]
        self.keys: dict[tuple, int] = {}
        self.trials: list[StudentTrial] = []

    @property
    def flops(self) -> float:
        return len(self.keys) * self.a + len(self.trials) * self.b

    def flops_with(self, piece: Sequence[StudentTrial], keys: frozenset) -> float:
        new = sum(1 for k in keys if k not in self.keys)
        return (len(self.keys) + new) * self.a + (len(self.trials) + len(piece)) * self.b

    def flops_without(self, piece: Sequence[StudentTrial], counts: Mapping[tuple, int]) -> float:
        gone = sum(1 for k, c in counts.items() if self.keys[k] == c)
        return (len(self.keys) - gone) * self.a + (len(self.trials) - len(piece)) * self.b

    def add(self, piece: Sequence[StudentTrial], counts: Mapping[tuple, int]) -> None:
        self.trials.extend(piece)
        for k, c in counts.items():
            self.keys[k] = self.keys.get(k, 0) + c

    def remove(self, piece: Sequence[StudentTrial], counts: Mapping[tuple, int]) -> None:
        ids = {t.trial_id for t in piece}
        self.trials = [t for t in self.trials if t.trial_id not in ids]
        for k, c in counts.items():
            self.keys[k] -= c
            if not self.keys[k]:
                del self.keys[k]


def _key_counts(piece: Sequence[StudentTrial]) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for t in piece:
        for k in teacher_inputs([t]):
            counts[k] = counts.get(k, 0) + 1
    return counts


def split_stream(trials: Sequence[StudentTrial], m: int, cost: CostModel) -> list[tuple[StudentTrial, ...]]:
    """Cut one stream's ``trials`` into at most ``m`` runs balanced by cost (module docstring).

    Returns the runs, each in plan order, ordered by their first trial's plan position.
    """
    m = max(1, min(m, len(trials)))
    if m == 1:
        return [tuple(trials)]
    dataset = trials[0].dataset
    order = {t.trial_id: i for i, t in enumerate(trials)}
    # Pieces: units, the costliest cut in halves while there are fewer pieces than chunks;
    # the moves of single students below cut them further where that balances the chunks.
    pieces = _units(trials)

    def alone(piece: Sequence[StudentTrial]) -> float:
        return cost.run_flops(piece)

    while True:
        pieces.sort(key=lambda p: (-alone(p), order[p[0].trial_id]))
        big = next((i for i, p in enumerate(pieces) if len(p) > 1), None)
        if big is None or len(pieces) >= m:
            break
        piece = pieces.pop(big)
        half = (len(piece) + 1) // 2
        pieces += [piece[:half], piece[half:]]
    chunks = [_Chunk(cost, dataset) for _ in range(m)]
    infos = [(p, teacher_inputs(p), _key_counts(p)) for p in pieces]
    for piece, keys, counts in infos:
        best = min(
            range(m),
            key=lambda c: (chunks[c].flops_with(piece, keys), -len(keys & chunks[c].keys.keys()), c),
        )
        chunks[best].add(piece, counts)
    _improve(chunks, infos)
    _improve(chunks, [((t,), teacher_inputs([t]), _key_counts([t])) for t in trials])
    runs = [tuple(sorted(c.trials, key=lambda t: order[t.trial_id])) for c in chunks if c.trials]
    return sorted(runs, key=lambda r: order[r[0].trial_id])


def _improve(chunks: list[_Chunk], infos: list, rounds: int = 200) -> None:
    """Move pieces out of the costliest chunk while that lowers the larger of the two chunks."""
    owner = {t.trial_id: c for c in chunks for t in c.trials}
    where = {id(p): owner[p[0].trial_id] for p, _, _ in infos}
    for _ in range(rounds):
        top = max(chunks, key=lambda c: c.flops)
        best = None
        for piece, keys, counts in infos:
            if where[id(piece)] is not top:
                continue
            without = top.flops_without(piece, counts)
            for other in chunks:
                if other is top:
                    continue
                pair = max(without, other.flops_with(piece, keys))
                if pair < top.flops - 1e-9 * top.flops and (best is None or pair < best[0]):
                    best = (pair, piece, counts, other)
        if best is None:
            return
        _, piece, counts, other = best
        top.remove(piece, counts)
        other.add(piece, counts)
        where[id(piece)] = other


# --- Cuts as an integer program -----------------------------------------------------------------
#
# docs/cohorts.md#lower-bound. A run's cost depends only on its *type* -- the set of teacher
# inputs it runs -- and on how many students it trains, so the cuts of one stream into runs of at
# most T seconds are counted by type: x_S runs of type S, y_uS students of unit u in them. The
# least work of such a cut is an integer program; the planner solves it for its exact cuts and
# the lower bound takes its linear relaxation, which is quick and never above it.

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
    """The integer program of one stream's cuts into runs of at most T seconds (module section)."""

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

    def _problem(self, longest_s: float, max_runs: int | None):
        """The program at ``longest_s`` as arrays for ``scipy.optimize.milp``; None when a unit
        fits in no run that short. Columns: ``x_S`` of the types with room for a student, then
        ``y_uS`` of the units they fit."""
        from scipy.optimize import Bounds, LinearConstraint
        from scipy.sparse import csr_matrix

        s = self.shape
        caps = self.capacities(longest_s)
        live = caps >= 1
        keep = live[self.pair_type]
        p_unit, p_type = self.pair_unit[keep], self.pair_type[keep]
        if len(set(p_unit.tolist())) < len(s.sizes):
            return None
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
        caps = self.capacities(longest_s)
        live = caps >= 1
        keep = live[self.pair_type]
        p_unit, p_type = self.pair_unit[keep], self.pair_type[keep]
        if len(set(p_unit.tolist())) < len(s.sizes):
            return float("inf")
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


# --- The plan ----------------------------------------------------------------------------------


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
    teacher_runs: int = 0
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
                f" + {_figure(self.teacher_gpu_hours)} for {self.teacher_runs} teacher(s)"
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
    # A teacher run has teacher_workers workers where a student slot has num_workers.
    t_secs = [cost.seconds(cost.teacher_flops(t) * res.num_workers / res.teacher_workers) for t in teachers]
    # Teachers run on the same GPUs (or CPUs), teacher_workers per run.
    t_slots = max(1, slots * res.num_workers // res.teacher_workers)
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
        teacher_runs=len(teachers),
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
