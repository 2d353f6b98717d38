"""The metrics of one task folder: the numbers a completed task produced.

Found in three places, in this order of precedence (a name found in an earlier place
wins):

1. **the Hydra job's return value** (Hydra sweeps): a number is the metric `return`; a
   mapping (dict, DictConfig, dataclass) gives its numbers, nested keys joined by dots.
   hsm's worker records these numbers when the job ends (`return_numbers` in its record),
   so reading them never unpickles a job; an older sweep's `job_return.pkl` is read
   instead.
2. **JSON files the task wrote**: every `*.json` in its `results/` folder
   (`$HSM_TASK_DIR/results/`), in name order, then a `result.json` in the task folder
   itself (hsm keeps its own records elsewhere, see hsm_core.taskdir; an older hsm's
   record there is recognised and skipped): the numbers of a JSON object, nested keys
   joined by dots. The first file that names a metric wins.
3. **what the task printed**, only when 1 and 2 found nothing: the last value of each
   `key=value` (`loss=0.31 acc=0.9`) and of each line that is a whole JSON object, in the
   last 64 KiB of stdout.log (then of stderr.log for names stdout does not have).

Booleans, strings and lists are not metrics. It sits below the store (like taskdir):
the view writer reads each completed task's metrics once, into the journal, and the
reports (hsm_core.reporting.results) read them from there.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hsm_core.model import TaskKind
from hsm_core.taskdir import (
    JOB_RETURN,
    LEGACY_RESULT,
    RESULTS,
    STDERR,
    STDOUT,
    legacy_worker_record,
    read_tail,
    read_worker_record,
)

RETURN = "return"  # the metric name of a Hydra job's scalar return value
MAX_METRICS = 200  # per task: a results file full of numbers is not a table
READ_BYTES = 64 * 1024  # the end of a log holds the last values
JSON_BYTES = 4 * 1024 * 1024  # larger results files are data, not metrics
_DEPTH = 4


_KEY_VALUE = re.compile(
    r"(?:^|(?<=[\s,;(\[{|]))"
    r"(?P<key>[A-Za-z_][\w.\-/]*)\s*=\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf))"
    r"(?=$|[\s,;)\]}|%])",
    re.IGNORECASE,
)


def numbers_of(value: Any, prefix: str = "", depth: int = 0) -> dict[str, float]:
    """The numbers in a value: a number itself (named `prefix`, or `return`), or those of
    a mapping / dataclass, nested names joined with dots. Booleans, text and sequences
    are not numbers here."""
    out: dict[str, float] = {}
    kind = type(value)
    if kind is float or kind is int:  # the usual cases first: ABC checks are slow
        out[prefix or RETURN] = float(value)
        return out
    if kind is str or kind is list or kind is bool or value is None:
        return out
    if kind is not dict and isinstance(value, numbers.Real):
        try:
            out[prefix or RETURN] = float(value)
        except (TypeError, ValueError, OverflowError):
            pass
        return out
    if depth >= _DEPTH:
        return out
    items = value.items() if kind is dict else _items(value)
    if items is None:
        return out
    for k, v in items:
        name = f"{prefix}.{k}" if prefix else str(k)
        for key, number in numbers_of(v, name, depth + 1).items():
            if len(out) >= MAX_METRICS:
                return out
            out.setdefault(key, number)
    return out


def _items(value: Any) -> Iterable[tuple[Any, Any]] | None:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]
    if isinstance(value, Mapping):
        return list(value.items())
    if type(value).__name__ == "DictConfig":  # omegaconf, without importing it
        try:
            return list(value.items())
        except Exception:
            return None
    return None


def printed_numbers(text: str) -> dict[str, float]:
    """The last value of each `key=value` and of each whole-line JSON object's numbers."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{") and stripped.endswith("}"):
            try:
                doc = json.loads(stripped)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                for k, v in numbers_of(doc).items():
                    out.pop(k, None)
                    out[k] = v
                continue
        for m in _KEY_VALUE.finditer(line):
            key = m.group("key")
            out.pop(key, None)  # re-inserted: the order is that of the last values
            out[key] = float(m.group("value"))
    return dict(list(out.items())[-MAX_METRICS:])


def read_metrics(
    task_dir: Path | str, kind: TaskKind, params: Iterable[str]
) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, origin of each) of one task folder, by the precedence above. The one
    function that knows where a task leaves its numbers. (Plain string paths: pathlib
    costs more than the reading on a 100,000-task sweep.)"""
    folder = str(task_dir)
    skip = set(params)
    metrics: dict[str, float] = {}
    origin: dict[str, str] = {}

    def add(found: Mapping[str, float], where: str) -> None:
        for k, v in found.items():
            if k not in skip and k not in metrics and len(metrics) < MAX_METRICS:
                metrics[k] = v
                origin[k] = where

    if kind is TaskKind.HYDRA:
        add(_return_numbers(folder), "return value")
    for rel, doc in _result_files(folder):
        add(numbers_of(doc), rel)
    if not metrics:
        for name in (STDOUT, STDERR):
            add(printed_numbers(_tail(os.path.join(folder, name))), name)
    return metrics, origin


def _read_json(path: str, limit: int = JSON_BYTES) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            return None
        data = os.read(fd, size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except ValueError:
        return None


def _return_numbers(folder: str) -> dict[str, float]:
    record = read_worker_record(Path(folder), legacy=True)
    if record is not None and isinstance(record.get("return_numbers"), dict):
        return {
            str(k): float(v)
            for k, v in record["return_numbers"].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    # A sweep from before hsm recorded the numbers: the pickled JobReturn (slow: a few ms).
    if not os.path.isfile(os.path.join(folder, JOB_RETURN)):
        return {}
    from hsm_core.taskdir import read_job_return

    ret = read_job_return(Path(folder))
    if ret is None or getattr(ret, "status", None) is None:
        return {}
    if getattr(ret.status, "name", "") != "COMPLETED":
        return {}
    return numbers_of(getattr(ret, "_return_value", None))


def _result_files(folder: str) -> list[tuple[str, Any]]:
    """(relative name, JSON object) of the task's own result files: results/*.json in
    name order, then a result.json in the task folder that is not an older hsm's record
    (hsm kept its own there before hsm_core.taskdir's layout)."""
    out: list[tuple[str, Any]] = []
    results = os.path.join(folder, RESULTS)
    try:
        names = sorted(n for n in os.listdir(results) if n.endswith(".json"))
    except OSError:
        names = []
    for name in names:
        doc = _read_json(os.path.join(results, name))
        if isinstance(doc, dict):
            out.append((f"{RESULTS}/{name}", doc))
    own = _read_json(os.path.join(folder, LEGACY_RESULT))
    if isinstance(own, dict) and not _older_hsm_record(own):
        out.append((LEGACY_RESULT, own))
    return out


def _older_hsm_record(doc: dict[str, Any]) -> bool:
    """An older hsm's result.json: its Hydra worker's record, or its agent's exit record
    (`exit_code` with `attempt`, `start`, `end`)."""
    agent = "exit_code" in doc and {"attempt", "start", "end"} <= doc.keys()
    return agent or legacy_worker_record(doc) is not None


def _tail(path: str) -> str:
    """The end of a log, from its first whole line."""
    text = read_tail(Path(path), READ_BYTES)
    if len(text.encode("utf-8", "replace")) >= READ_BYTES and "\n" in text:
        return text.split("\n", 1)[1]
    return text
