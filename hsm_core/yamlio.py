"""YAML and atomic-write helpers shared by every module that writes a view or a record."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import yaml

# The C dumper is several times faster; views are rewritten often.
_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


_counter = itertools.count()


def write_atomic(path: Path | str, text: str | bytes) -> None:
    """Write via a temp file in the same folder + rename: readers see old or new, never half."""
    path = Path(path)
    data = text.encode() if isinstance(text, str) else text
    # One writer per file and process (the pid and a counter make the name unique), so
    # no random temp name is needed; 0644 like any file, for whoever reads the folder.
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}.{next(_counter)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: Path | str, data: Any) -> None:
    write_atomic(path, json.dumps(data, default=str) + "\n")
