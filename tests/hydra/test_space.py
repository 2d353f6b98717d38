"""The hsm sweeper's search space: basic-sweeper order, paired keys, random sampling."""

from __future__ import annotations

import itertools

import pytest

from hsm_core.errors import ConfigError
from hydra_plugins.hsm_launcher._space import expand


def parse(*lines: str) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(list(lines))


def test_product_in_basic_sweeper_order() -> None:
    jobs = expand(parse("a=1,2", "b=x,y,z", "c=7"))
    expected = [[f"a={a}", f"b={b}", "c=7"] for a, b in itertools.product("12", "xyz")]
    assert jobs == expected


def test_range_choice_and_functions() -> None:
    jobs = expand(parse("a=range(0,3)", "b=choice(p,q)"))
    assert jobs[0] == ["a=0", "b=p"] and jobs[-1] == ["a=2", "b=q"] and len(jobs) == 6


def test_paired_keys_are_zipped_and_keep_their_order() -> None:
    jobs = expand(parse("lr=0.1,0.01", "seed=1,2,3", "bs=32,64"), paired=[["lr", "bs"]])
    assert jobs == [
        ["lr=0.1", "seed=1", "bs=32"],
        ["lr=0.1", "seed=2", "bs=32"],
        ["lr=0.1", "seed=3", "bs=32"],
        ["lr=0.01", "seed=1", "bs=64"],
        ["lr=0.01", "seed=2", "bs=64"],
        ["lr=0.01", "seed=3", "bs=64"],
    ]


def test_paired_lengths_must_match() -> None:
    with pytest.raises(ConfigError, match=r"same length \(a: 2, b: 3\)"):
        expand(parse("a=1,2", "b=1,2,3"), paired=[["a", "b"]])


def test_paired_key_must_be_swept() -> None:
    with pytest.raises(ConfigError, match="'c' is not swept"):
        expand(parse("a=1,2", "b=1,2"), paired=[["a", "c"]])


def test_random_samples_are_distinct_stable_and_in_order() -> None:
    full = expand(parse("a=range(0,10)", "b=range(0,10)"))
    one = expand(parse("a=range(0,10)", "b=range(0,10)"), num_samples=7, seed=3)
    two = expand(parse("a=range(0,10)", "b=range(0,10)"), num_samples=7, seed=3)
    other = expand(parse("a=range(0,10)", "b=range(0,10)"), num_samples=7, seed=4)
    assert one == two != other
    assert len({tuple(j) for j in one}) == 7
    assert [full.index(j) for j in one] == sorted(full.index(j) for j in one)


def test_intervals_need_sampling_and_are_drawn_per_job() -> None:
    with pytest.raises(ConfigError, match="num_samples"):
        expand(parse("lr=interval(0.001,0.1)"))
    jobs = expand(parse("lr=tag(log,interval(0.001,0.1))", "n=1,2"), num_samples=5, seed=0)
    values = [float(j[0].split("=")[1]) for j in jobs]
    assert len(jobs) == 5 and len(set(values)) == 5
    assert all(0.001 <= v <= 0.1 for v in values)
