"""The greedy cut of one stream into runs balanced by cost (docs/cohorts.md).

Students of one stream that see the same teacher inputs form a *unit*; :func:`split_stream` cuts
a stream into ``m`` chunks: units, largest first, each into the chunk it makes least costly,
then moves off the costliest chunk. It is quick and always answers, so the planner tries it
first for every chunk count, and the exact cut (:mod:`kd_ray.cohort.program`) replaces it where
that finds a shorter longest run. The chunks (:class:`_Chunk`) also build the planner's
slot-filling candidate (:mod:`kd_ray.cohort.plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from kd_ray.cohort.cost import CostModel, teacher_inputs
from kd_ray.plan import StudentTrial


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
