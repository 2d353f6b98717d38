"""Placement strategies, on their own and in a real sweep over two local sources."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from hsm_core.engine import SweepEngine
from hsm_core.model import SourceSpec, TaskState
from hsm_core.orchestrate import context_for
from hsm_core.sources.local import LocalSource
from hsm_core.strategies import Load, Placer
from tests.sweep_utils import PY, command_tasks, make_sweep


def _loads() -> list[Load]:
    return [Load("a", 4, 3, 1.0, 10), Load("b", 2, 0, 3.0, 10), Load("c", 8, 4, 1.0, 0)]


def test_least_loaded_picks_the_lowest_share_of_slots_in_use() -> None:
    assert Placer("least_loaded").choose(_loads()).name == "b"


def test_round_robin_takes_turns() -> None:
    p = Placer("round_robin")
    assert [p.choose(_loads()).name for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_weighted_follows_the_weights() -> None:
    p = Placer("weighted")
    loads = {n: Load(n, 100, 0, w, 0) for n, w in (("a", 1.0), ("b", 3.0))}
    got: Counter[str] = Counter()
    for _ in range(400):
        pick = p.choose(list(loads.values()))
        got[pick.name] += 1
        loads[pick.name].assigned_total += 1
    assert got["b"] == 300 and got["a"] == 100


def test_random_is_reproducible_with_a_seed() -> None:
    a = [Placer("random", seed=3).choose(_loads()).name for _ in range(1)]
    b = [Placer("random", seed=3).choose(_loads()).name for _ in range(1)]
    assert a == b


def test_lost_somewhere_goes_elsewhere_when_it_can() -> None:
    p = Placer("least_loaded")
    assert p.choose(_loads(), avoid=frozenset({"b"})).name == "c"
    only = [Load("a", 1, 0)]
    assert p.choose(only, avoid=frozenset({"a"})).name == "a"


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValueError):
        Placer("fastest")


def test_faster_source_does_more_work_under_least_loaded(tmp_path: Path) -> None:
    code = "import os, time; time.sleep(float(os.environ['DELAY']))"
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", code, str(i)] for i in range(24)]))
    ctx = context_for(store)
    fast = LocalSource(SourceSpec("fast", "local", 2, {"env": {"DELAY": "0.05"}}), ctx)
    # Seconds apart, not tenths: on a busy machine a Python start alone takes most of a
    # second, and a 0.6 s task was then barely slower than a 0.05 s one.
    slow = LocalSource(SourceSpec("slow", "local", 2, {"env": {"DELAY": "2.5"}}), ctx)
    engine = SweepEngine(store, ctx, [fast, slow], strategy="least_loaded")
    counts = asyncio.run(engine.run())
    assert counts[TaskState.COMPLETED] == 24
    per = Counter(a.source for a in store.latest_attempts().values())
    assert per["fast"] >= 2 * per["slow"], per
