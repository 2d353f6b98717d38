"""Placement strategies: which of the sources with a free slot gets the next task."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

STRATEGIES = ("round_robin", "least_loaded", "random", "weighted")


@dataclass
class Load:
    """What the engine knows about one source when it places a task."""

    name: str
    capacity: int
    inflight: int
    weight: float = 1.0
    assigned_total: int = 0


@dataclass
class Placer:
    strategy: str
    seed: int | None = None
    _rr: int = 0
    _rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(self.strategy)
        if self.seed is not None:
            self._rng.seed(self.seed)

    def choose(self, candidates: Sequence[Load], avoid: frozenset[str] = frozenset()) -> Load:
        """Pick among sources that have a free slot; `avoid` (where the task was lost
        before) is honoured whenever another candidate exists."""
        preferred = [c for c in candidates if c.name not in avoid] or list(candidates)
        if self.strategy == "round_robin":
            # Rotate over the preferred list by name so the cycle is stable as slots free up.
            names = sorted(c.name for c in preferred)
            pick = names[self._rr % len(names)]
            self._rr += 1
            return next(c for c in preferred if c.name == pick)
        if self.strategy == "random":
            return self._rng.choice(preferred)
        if self.strategy == "weighted":
            # Smooth weighted: the source furthest below its share of all assignments.
            return min(preferred, key=lambda c: ((c.assigned_total + 1) / c.weight, c.name))
        # least_loaded: lowest fraction of capacity in use; ties go to the larger source.
        return min(preferred, key=lambda c: (c.inflight / c.capacity, -c.capacity, c.name))
