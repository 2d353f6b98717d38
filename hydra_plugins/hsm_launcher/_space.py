"""The hsm sweeper's search space: Hydra override syntax in, a list of jobs out.

- Every discrete sweep of the basic sweeper works (`a=1,2`, `choice()`, `range()`,
  `glob()`, `sort()`, `shuffle()`); jobs are the cartesian product, in the same order as
  the basic sweeper's.
- `paired: [[a, b]]` zips the sweeps of `a` and `b` instead of crossing them (they must
  have the same length); groups are crossed with each other and with the other keys.
- `num_samples: N` (with `seed`) takes N distinct points of that space at random, kept in
  space order; `interval(lo, hi)` (tag `log` for log-uniform) is allowed only then, and
  each sampled job draws its own value.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hsm_core.errors import ConfigError

WHERE = "hydra.sweeper"


@dataclass
class _Axis:
    keys: list[str]  # one key, or the keys of a paired group
    values: list[list[str]]  # per point: one "key=value" line per key


@dataclass
class _Interval:
    key: str
    low: float
    high: float
    log: bool
    as_int: bool


def expand(
    overrides: Sequence[Any],
    *,
    paired: Sequence[Sequence[str]] | None = None,
    num_samples: int | None = None,
    seed: int = 0,
) -> list[list[str]]:
    """Jobs as lists of override lines, in the order of the keys on the command line."""
    lines: dict[str, list[str]] = {}
    intervals: dict[str, _Interval] = {}
    for ov in overrides:
        key = ov.get_key_element()
        intervals.pop(key, None)
        if ov.is_interval_sweep():
            if num_samples is None:
                raise ConfigError(
                    f"interval() for {key!r} needs random sampling",
                    key=f"{WHERE}.num_samples",
                    hint="set hydra.sweeper.num_samples=N, or sweep a list or range()",
                )
            sweep = ov.value()
            is_int = isinstance(sweep.start, int) and isinstance(sweep.end, int)
            intervals[key] = _Interval(key, sweep.start, sweep.end, "log" in sweep.tags, is_int)
            lines[key] = []
        elif ov.is_sweep_override():
            if not ov.is_discrete_sweep():
                raise ConfigError(f"sweep type of {key!r} is not supported", key=WHERE)
            lines[key] = [f"{key}={v}" for v in ov.sweep_string_iterator()]
        else:
            lines[key] = [f"{key}={ov.get_value_element_as_str()}"]
    order = list(lines)
    axes = _axes(lines, intervals, paired or [])
    total = math.prod(len(a.values) for a in axes)
    if num_samples is not None and num_samples < 1:
        raise ConfigError("must be >= 1", key=f"{WHERE}.num_samples")
    rng = random.Random(seed)
    if num_samples is None or (num_samples >= total and not intervals):
        picks: Sequence[int] = range(total)
    elif num_samples >= total:
        picks = sorted(rng.choices(range(total), k=num_samples)) if total else []
    else:
        picks = sorted(rng.sample(range(total), num_samples))
    jobs = []
    for index in picks:
        job: dict[str, str] = {}
        for axis, i in zip(axes, _digits(index, [len(a.values) for a in axes]), strict=True):
            for key, line in zip(axis.keys, axis.values[i], strict=True):
                job[key] = line
        for key, iv in intervals.items():
            job[key] = f"{key}={_draw(iv, rng)}"
        jobs.append([job[k] for k in order])
    return jobs


def _axes(
    lines: dict[str, list[str]], intervals: dict[str, _Interval], paired: Sequence[Sequence[str]]
) -> list[_Axis]:
    grouped: dict[str, int] = {}
    for gi, group in enumerate(paired):
        for key in group:
            if key not in lines or key in intervals:
                raise ConfigError(
                    f"paired key {key!r} is not swept on the command line or in params",
                    key=f"{WHERE}.paired",
                    hint=f"swept keys: {', '.join(k for k in lines if k not in intervals)}",
                )
            if key in grouped:
                raise ConfigError(f"key {key!r} is in two paired groups", key=f"{WHERE}.paired")
            grouped[key] = gi
    axes: list[_Axis] = []
    done: set[int] = set()
    for key, values in lines.items():
        if key in intervals:
            continue
        if key not in grouped:
            axes.append(_Axis([key], [[v] for v in values]))
            continue
        gi = grouped[key]
        if gi in done:
            continue
        done.add(gi)
        keys = list(paired[gi])
        sizes = {k: len(lines[k]) for k in keys}
        if len(set(sizes.values())) != 1:
            listed = ", ".join(f"{k}: {n}" for k, n in sizes.items())
            raise ConfigError(
                f"paired sweeps must have the same length ({listed})", key=f"{WHERE}.paired"
            )
        axes.append(
            _Axis(keys, [list(vals) for vals in zip(*(lines[k] for k in keys), strict=True)])
        )
    return axes


def _digits(index: int, sizes: list[int]) -> list[int]:
    """Mixed-radix digits of `index`, last axis fastest (itertools.product order)."""
    out = [0] * len(sizes)
    for i in range(len(sizes) - 1, -1, -1):
        index, out[i] = divmod(index, sizes[i])
    return out


def _draw(iv: _Interval, rng: random.Random) -> str:
    if iv.log:
        value = math.exp(rng.uniform(math.log(iv.low), math.log(iv.high)))
    else:
        value = rng.uniform(iv.low, iv.high)
    if iv.as_int:
        return str(round(value))
    return repr(float(value))
