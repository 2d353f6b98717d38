"""The cloudpickled Hydra payload: what a job needs to run later, in another process or host.

Two files per launch: one shared part per `launch()` call (task function, Hydra context,
master config, Hydra singleton state incl. custom resolvers) under `payload/`, and one
small part per job (overrides, job num/id, optionally the composed config) in the job's
task folder. `python -m hsm_core.hydra.worker` reads both.

Pickling is checked before anything is submitted; a failure names the object that could
not be pickled and what to do about it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.errors import HsmError
from hsm_core.taskdir import JOB_PAYLOAD
from hsm_core.yamlio import write_atomic

JOB_FILE = JOB_PAYLOAD  # the name hsm_launcher knows it by
PAYLOAD_DIR = "payload"
FORMAT = 1


class PayloadError(HsmError):
    """Part of the Hydra job cannot be pickled."""


@dataclass
class SweepPart:
    """Shared by every job of one launch() call."""

    task_function: Any
    hydra_context: Any
    config: Any  # the master (multirun) config
    singleton_state: Any
    sweep_dir: str  # absolute, on the launching machine
    project_root: str
    script_dir: str  # the app's directory relative to project_root (for imports)
    versions: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT


@dataclass
class JobPart:
    num: int
    job_id: str
    overrides: list[str]
    sweep_file: str  # shared part, relative to the sweep dir
    config: Any = None  # composed job config when composed at launch (remote sources)
    # Where the app's own modules are: needed before the shared part can be unpickled.
    script_dir: str = ""  # absolute, on the launching machine
    script_rel: str = "."  # relative to the project root (for a remote copy of it)
    format: int = FORMAT


def versions() -> dict[str, str]:
    """What must match wherever the payload is unpickled (module attributes: instant,
    unlike package metadata lookups)."""
    import importlib

    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for dist, module in (
        ("hsm", "hsm_core"),
        ("hydra-core", "hydra"),
        ("omegaconf", "omegaconf"),
        ("cloudpickle", "cloudpickle"),
    ):
        try:
            out[dist] = str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            out[dist] = "missing"
    return out


def dumps(obj: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return data


def dump_sweep_part(part: SweepPart) -> bytes:
    """Pickle the shared part, or raise PayloadError naming the culprit."""
    try:
        return dumps(part)
    except Exception as exc:
        raise explain_failure(part, exc) from None


def write_sweep_part(sweep_dir: Path, data: bytes) -> str:
    """Store under a content name, so relaunches with the same code share one file."""
    rel = f"{PAYLOAD_DIR}/hydra_{hashlib.sha256(data).hexdigest()[:16]}.pkl"
    path = sweep_dir / rel
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data)
    return rel


def write_job_part(task_dir: Path, part: JobPart) -> None:
    task_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(task_dir / JOB_FILE, dumps(part))


def load(path: Path) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)


# --------------------------------------------------------------- diagnosis
def explain_failure(part: SweepPart, exc: Exception) -> PayloadError:
    found = None
    top = ""
    for top, obj in _parts(part):
        found = _find(obj, top, 0)
        if found is not None:
            break
    if found is None:
        what, culprit, err = "the Hydra job payload", None, exc
    else:
        what, culprit, err = found
        if what != top:
            what = f"{what}, in {top}"
    kind = f" (a {type(culprit).__module__}.{type(culprit).__qualname__})" if culprit else ""
    return PayloadError(
        f"cannot pickle {what}{kind}: {_one_line(err)}",
        "hsm saves every job as a cloudpickled payload so that it can run in another "
        "process or host; create that object inside the task function, or define it in an "
        "importable module (pickled by reference)",
    )


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def _parts(part: SweepPart) -> Iterator[tuple[str, Any]]:
    fn = part.task_function
    yield _describe_function(fn, "the task function"), fn
    state = part.singleton_state or {}
    for name, resolver in dict(state.get("omegaconf_resolvers") or {}).items():
        yield f"the OmegaConf resolver {name!r}", resolver
    yield "Hydra's singleton state", state
    yield "the Hydra context (config loader, callbacks)", part.hydra_context
    yield "the multirun config", part.config


def _describe_function(fn: Any, role: str) -> str:
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    if code is None:
        return f"{role} {name}"
    return f"{role} {name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"


def _picklable(obj: Any) -> Exception | None:
    try:
        dumps(obj)
    except Exception as exc:
        return exc
    return None


def _find(obj: Any, label: str, depth: int) -> tuple[str, Any, Exception] | None:
    err = _picklable(obj)
    if err is None:
        return None
    if depth < 5:
        for child_label, child in _children(obj, label):
            found = _find(child, child_label, depth + 1)
            if found is not None:
                return found
    return label, obj, err


def _children(obj: Any, label: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, types.FunctionType):
        fn = obj
        for name in sorted(_global_names(fn.__code__)):
            if name in fn.__globals__:
                yield f"the global {name!r} used by {fn.__qualname__}", fn.__globals__[name]
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
            try:
                yield f"the variable {var!r} captured by {fn.__qualname__}", cell.cell_contents
            except ValueError:  # empty cell
                continue
        for i, default in enumerate(fn.__defaults__ or ()):
            yield f"default #{i + 1} of {fn.__qualname__}", default
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{label}[{k!r}]", v
    elif isinstance(obj, list | tuple | set | frozenset):
        for i, v in enumerate(obj):
            yield f"{label}[{i}]", v
    elif isinstance(obj, types.MethodType):
        yield f"{label}.__self__", obj.__self__
    elif hasattr(obj, "__dict__") and not isinstance(obj, type | types.ModuleType):
        for k, v in vars(obj).items():
            yield f"{label}.{k}", v


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def unpicklable_warning(err: PayloadError) -> str:
    return (
        f"{err.message}. The jobs run here anyway (forked from this process), but this sweep "
        "cannot be resumed by `hsm complete` or sent to remote sources"
    )


def app_fingerprint(task_function: Any) -> str:
    """Hash of the app's script: an hsm sweep resumes on its own only with unchanged code."""
    import inspect

    try:
        path = inspect.getsourcefile(task_function)
        data = Path(path).read_bytes() if path else b""
    except (TypeError, OSError):
        data = b""
    name = getattr(task_function, "__qualname__", "")
    return hashlib.sha256(name.encode() + b"\0" + data).hexdigest()[:16]
