"""What counts as a metric: numbers in return values, result files and printed lines."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import pytest
from omegaconf import OmegaConf

from hsm_core.metrics import numbers_of, printed_numbers
from hsm_core.reporting.results import as_number


@dataclass
class Scores:
    loss: float
    name: str
    best: bool


def test_numbers_of_values() -> None:
    assert numbers_of(0.5) == {"return": 0.5}
    assert numbers_of(3) == {"return": 3.0}
    assert numbers_of(Fraction(1, 4)) == {"return": 0.25}  # any numbers.Real
    assert numbers_of(True) == {} and numbers_of("0.5") == {} and numbers_of([1, 2]) == {}
    assert numbers_of(None) == {}
    nested = {"val": {"loss": 0.1, "acc": 0.9, "hist": [1, 2]}, "ok": True, "n": 3}
    assert numbers_of(nested) == {"val.loss": 0.1, "val.acc": 0.9, "n": 3.0}
    assert numbers_of(OmegaConf.create({"a": {"b": 2.5}, "c": "x"})) == {"a.b": 2.5}
    assert numbers_of(Scores(0.3, "run", True)) == {"loss": 0.3}
    assert math.isnan(numbers_of(float("nan"))["return"])
    deep = {"a": {"b": {"c": {"d": {"e": 1}}}}}
    assert numbers_of(deep) == {}  # nesting deeper than 4 levels is not a table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("final loss=0.5729 accuracy=0.844", {"loss": 0.5729, "accuracy": 0.844}),
        ("epoch 1 loss=1.0\nepoch 2 loss=0.5", {"loss": 0.5}),  # the last value wins
        ("lr=1e-3, step=100; val/acc=95%", {"lr": 1e-3, "step": 100.0, "val/acc": 95.0}),
        ("(train.loss=0.25)", {"train.loss": 0.25}),
        ("path=/a/b=3 name=x1 v=1.2.3 k=-2", {"k": -2.0}),  # not numbers, or not whole
        ("x==1 y=2abc", {}),
        ('{"val": {"loss": 0.25}, "note": "n", "ok": true}', {"val.loss": 0.25}),
        ('[INFO] - config: {"lr": 0.1}', {}),  # a JSON object inside a line is not one
        ("loss=nan", {"loss": math.nan}),
    ],
)
def test_printed_numbers(text: str, expected: dict[str, float]) -> None:
    got = printed_numbers(text)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert (math.isnan(got[k]) and math.isnan(v)) or got[k] == v


def test_parameters_read_as_numbers_when_they_are() -> None:
    assert as_number("0.1") == 0.1 and as_number("3") == 3 and as_number("mlp") == "mlp"
    assert as_number("nan") == "nan" and as_number(2) == 2 and as_number(None) is None
