"""YAML and atomic-write helpers shared by every module that writes a view or a record."""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

# The C dumper is several times faster; views are rewritten often.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def dump_yaml_flow(data: Any) -> str:
    """dump_yaml on one line (flow style, no line width)."""
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=True, width=float("inf"))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


# Strings a YAML 1.1 reader takes as strings when left plain: they start with a letter
# (numbers, dates and `.inf` start with a digit, a sign or a dot) and are no bool or null
# word. Keeping them plain keeps a view greppable as `state: FAILED`, as dump_yaml wrote it.
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]*")
# Compared lowercased: stricter than YAML 1.1, which only knows three spellings of each.
_NOT_PLAIN = frozenset(["y", "n", "yes", "no", "true", "false", "on", "off", "null"])
# Strings that need no escapes: single quotes (as dump_yaml writes them) keep numbers and
# dates ('0123', timestamps) strings.
_SINGLE_QUOTABLE = re.compile(r"[A-Za-z0-9_.:+\-/]+")
# Characters JSON leaves raw that a YAML reader refuses (non-printables) or reads as a line
# break (which a quoted scalar folds): escaped as \uXXXX, which YAML reads back exactly.
# (libyaml refuses a lone surrogate even escaped; the pure-Python reader takes it, and
# dump_yaml could not write one at all.)
_YAML_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")


def _unsafe_escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def _plain(text: str) -> bool:
    return _PLAIN.fullmatch(text) is not None and text.lower() not in _NOT_PLAIN


def scalar(value: Any) -> str | None:
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    if type(value) is not str:
        return None
    if _plain(value):
        return value
    if _SINGLE_QUOTABLE.fullmatch(value):
        return f"'{value}'"
    # A JSON string is a YAML double-quoted scalar: same escapes, \uXXXX included.
    return _YAML_UNSAFE.sub(_unsafe_escape, json.dumps(value, ensure_ascii=False))


def dump_flat_yaml(doc: Mapping[str, Any]) -> str:
    """dump_yaml for a flat mapping of None, int and str values, ~10x faster.

    Views rewritten per task (status.yaml) spend most of their CPU in the YAML dumper;
    this writes the few scalar forms such a document needs by hand. Anything else
    (other value types, keys that would need quoting) goes through dump_yaml."""
    lines = []
    for key, value in doc.items():
        text = scalar(value)
        if text is None or type(key) is not str or not _plain(key):
            return dump_yaml(dict(doc))
        lines.append(f"{key}: {text}\n")
    return "".join(lines) if lines else dump_yaml({})


_counter = itertools.count()
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def write_atomic(path: Path | str, text: str | bytes) -> None:
    """Write via a temp file in the same folder + rename: readers see old or new, never half.

    The folder must exist (FileNotFoundError otherwise): callers that may be first in a
    new folder create it on that error, so the usual write costs no mkdir."""
    data = text.encode() if isinstance(text, str) else text
    dirname, name = os.path.split(os.fspath(path))
    # One writer per file and process (the pid and a counter make the name unique), so
    # no random temp name is needed; 0644 like any file, for whoever reads the folder.
    tmp = os.path.join(dirname, f".{name}.{os.getpid()}.{next(_counter)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o644)
    try:
        try:
            write_fd(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_fd(fd: int, data: bytes) -> None:
    # A raw fd, not a file object: no buffer, and no fstat/ioctl/lseek per file.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_json_atomic(path: Path | str, data: Any) -> None:
    write_atomic(path, json.dumps(data, default=str) + "\n")
