"""Which parameter values do failures go with? (`hsm monitor errors --analyze-patterns`)

For a value v of parameter p, over the finished tasks (COMPLETED, FAILED or LOST):

- support    = failures having p=v / all failures   ("every failure has batch_size=512": 100 %)
- confidence = failures having p=v / tasks having p=v   (how often p=v fails)
- lift       = confidence / the sweep's failure rate   (> 1: fails more often than average)

Single values first; then pairs of the strongest values (lr=0.1 with batch_size=512 can
explain a failure that neither value explains alone). A value that every task shares says
nothing (lift 1) and is left out.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from hsm_core.model import canonical_json

MIN_SUPPORT = 0.2  # a value seen in fewer failures than this is noise at sweep scale
MIN_FAILURES = 3  # below this any value of a failed task "explains" it: no pattern at all
MIN_LIFT = 1.5  # random noise over a few hundred failures rarely reaches 1.5


@dataclass(frozen=True)
class Pattern:
    items: tuple[tuple[str, str], ...]  # ((param, value as text), ...): one or two
    failed_with: int
    failures: int
    tasks_with: int
    tasks: int

    @property
    def support(self) -> float:
        return self.failed_with / self.failures if self.failures else 0.0

    @property
    def confidence(self) -> float:
        return self.failed_with / self.tasks_with if self.tasks_with else 0.0

    @property
    def lift(self) -> float:
        base = self.failures / self.tasks if self.tasks else 0.0
        return self.confidence / base if base else 0.0

    @property
    def text(self) -> str:
        return " and ".join(f"{p}={v}" for p, v in self.items)

    def describe(self) -> str:
        return (
            f"{self.text}: in {self.failed_with} of {self.failures} failures "
            f"(support {self.support:.0%}); {self.failed_with} of {self.tasks_with} tasks "
            f"with it failed (confidence {self.confidence:.0%}, lift {self.lift:.1f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.text,
            "failures_with": self.failed_with,
            "failures": self.failures,
            "tasks_with": self.tasks_with,
            "support": round(self.support, 4),
            "confidence": round(self.confidence, 4),
            "lift": round(self.lift, 3),
        }


def _flat(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in params.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, name + "."))
        elif isinstance(v, str):
            out[name] = v
        else:
            out[name] = canonical_json(v)
    return out


def find_patterns(
    params: Mapping[str, Mapping[str, Any]],
    failed: Collection[str],
    population: Collection[str],
    *,
    limit: int = 10,
) -> list[Pattern]:
    """Patterns for the `failed` keys among the `population` keys (both task keys)."""
    pop = [k for k in population if k in params]
    bad = set(failed) & set(pop)
    if len(bad) < MIN_FAILURES or len(bad) == len(pop):
        return []
    flat = {k: _flat(params[k]) for k in pop}
    with_value: Counter[tuple[str, str]] = Counter()
    failed_value: Counter[tuple[str, str]] = Counter()
    for k in pop:
        items = flat[k].items()
        with_value.update(items)
        if k in bad:
            failed_value.update(items)
    n_bad, n_pop = len(bad), len(pop)

    def make(items: tuple[tuple[str, str], ...], fw: int, tw: int) -> Pattern:
        return Pattern(items, fw, n_bad, tw, n_pop)

    singles = [
        make((item,), fw, with_value[item])
        for item, fw in failed_value.items()
        if fw / n_bad >= MIN_SUPPORT
    ]
    singles = [p for p in singles if p.lift >= MIN_LIFT]
    singles.sort(key=lambda p: (-p.support * p.confidence, -p.failed_with, p.text))
    pairs: list[Pattern] = []
    strong = singles[:8]
    for a, b in itertools.combinations(strong, 2):
        (pa, va), (pb, vb) = a.items[0], b.items[0]
        if pa == pb:
            continue
        tw = sum(1 for k in pop if flat[k].get(pa) == va and flat[k].get(pb) == vb)
        fw = sum(1 for k in bad if flat[k].get(pa) == va and flat[k].get(pb) == vb)
        pair = make(tuple(sorted(((pa, va), (pb, vb)))), fw, tw)
        # Worth showing only if it explains the failures better than either value alone.
        if fw / n_bad >= MIN_SUPPORT and pair.confidence > max(a.confidence, b.confidence):
            pairs.append(pair)
    found = pairs + singles
    found.sort(key=lambda p: (-p.support * p.confidence, -p.failed_with, p.text))
    return found[:limit]
