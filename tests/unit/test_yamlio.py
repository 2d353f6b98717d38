"""The hand-written YAML of flat views reads back exactly; atomic writes leave no debris."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from hsm_core.yamlio import dump_flat_yaml, dump_yaml, load_yaml, write_atomic

HOSTILE = [
    "",
    " ",
    " leading",
    "trailing ",
    "two\nlines",
    "crlf\r\nline",
    "\n",
    "tab\there",
    'a "quoted" word',
    "it's",
    "''",
    '""',
    "back\\slash",
    "ends with \\",
    "ünïcödé",
    "日本語",
    "emoji 😀🎉",
    "\U0010ffff",
    "zero\u200bwidth",
    "# not a comment",
    "a #b",
    "a: b",
    "key:",
    "- dash",
    "-",
    "--- doc",
    "...",
    "? q",
    "null",
    "Null",
    "NULL",
    "~",
    "yes",
    "No",
    "ON",
    "off",
    "y",
    "n",
    "true",
    "False",
    "1e3",
    "1.5",
    ".inf",
    ".nan",
    "-.5",
    "+1",
    "-9",
    "0x1F",
    "0o17",
    "0123",
    "1_000",
    "12:30:00",
    "2026-01-01",
    "2026-01-01T00:00:00.000",
    "=",
    "<<",
    "&anchor",
    "*alias",
    "!tag",
    "%directive",
    "@at",
    "`tick",
    "|",
    ">",
    "{a: 1}",
    "[1, 2]",
    ",",
    "\x00",
    "\x01\x02\x1b[31mred\x1f",
    "\x7f",
    "\x80\x85\x9f",
    "\xa0",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffe\uffff",
]
# Lone surrogates (non-UTF-8 bytes in an argv travel as \udcXX): only escapes carry them.
SURROGATES = ["\udc80", "\ud800", "a\ud83d", "\udfff z"]


def status_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "state": "FAILED",
        "attempt": 2,
        "source": "gpu-1",
        "handle": "12345",
        "created": "2026-01-01T00:00:00.000",
        "started": "2026-01-01T00:00:01.250",
        "ended": None,
        "exit_code": -9,
        "error": None,
        "key": "3b155449b83e19fe",
    }
    doc.update(changes)
    return doc


@pytest.mark.parametrize("value", HOSTILE + SURROGATES)
@pytest.mark.parametrize("field", ["error", "source", "key"])
def test_hostile_strings_read_back_exactly(field: str, value: str) -> None:
    doc = status_doc(**{field: value})
    text = dump_flat_yaml(doc)
    text.encode()  # writable as UTF-8, surrogates included
    assert yaml.safe_load(text) == doc
    if value not in SURROGATES:
        # libyaml refuses any lone surrogate, even escaped: no YAML carries one to it.
        assert load_yaml(text) == doc


def test_random_strings_read_back_exactly() -> None:
    rng = random.Random(20261128)
    alphabet = (
        [chr(c) for c in range(0x00, 0x180)]
        + list("\u2028\u2029\ufeff\ufffe\uffff\u200b日本😀🎉\U0010ffff\ud800\udc80")
        + list(":#-'\"\\ ?&*!|>{}[],%@`~")
    )
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        doc = status_doc(error=value, handle=value[::-1])
        assert yaml.safe_load(dump_flat_yaml(doc)) == doc, repr(value)


def test_plain_words_stay_plain_and_numbers_stay_ints() -> None:
    text = dump_flat_yaml(status_doc(error="exit code 9"))
    assert "state: FAILED\n" in text.splitlines(keepends=True)  # greppable as before
    assert "attempt: 2\n" in text and "exit_code: -9\n" in text and "ended: null\n" in text
    assert yaml.safe_load(text) == yaml.safe_load(dump_yaml(status_doc(error="exit code 9")))


@pytest.mark.parametrize(
    "doc",
    [
        {"flag": True},
        {"ratio": 0.5},
        {"nested": {"a": 1}},
        {"items": [1, 2]},
        {"needs quoting": 1},
        {"1": "numeric key"},
        {"yes": "a key YAML reads as true"},
        {"null": 1},
        {},
    ],
)
def test_other_documents_go_through_dump_yaml(doc: dict[str, Any]) -> None:
    assert dump_flat_yaml(doc) == dump_yaml(doc)


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "status.yaml"
    write_atomic(target, "a: 1\n")
    write_atomic(str(target), b"a: 2\n")
    assert target.read_text() == "a: 2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["status.yaml"]


def test_write_atomic_needs_the_folder(tmp_path: Path) -> None:
    # Callers create the folder on this error instead of before every write.
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "gone" / "status.yaml", "a: 1\n")
    assert list(tmp_path.iterdir()) == []
