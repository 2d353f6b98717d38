"""Checks before the first task of `hsm run`: what would make every task fail, found here.

A sweep started from the wrong folder, naming a script or an interpreter that does not
exist, or giving a Hydra app keys it does not have, used to fail every task one by one.
What can be checked on this machine is checked before anything starts, and the first
problem stops the run with one line (a ConfigError: exit code 2):

- the task folder (`cwd:`) and the `script:` exist under the project root;
- with the local source: the interpreter (`python:`) or each program (`command:`'s first
  word) is found, as the local agent would find it;
- with the local source and a Hydra `script:`: Hydra composes the configuration of a few
  points (`<python> <script> --cfg job key=value ...`, which prints the job's config and
  runs nothing), so that an unknown key or a missing config group is caught once.

Remote sources see their own copy of the project and their own PATH: only the first
check says anything about them. `hsm run --no-check` skips all of this.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hsm_core.errors import ConfigError
from hsm_core.model import PYTHON, SourceSpec, TaskSpec

if TYPE_CHECKING:
    from hsm_core.sweepfile import SweepDefinition

HYDRA_CHECKS = 4  # points whose configuration Hydra composes, at most (in parallel)
HYDRA_TIMEOUT_S = 60.0
_HYDRA_APP = re.compile(r"@(?:hydra\.)?main\(")
_NOISE = (
    "Set the environment variable HYDRA_FULL_ERROR",
    "full_key:",
    "object_type=",
    "Config search path:",
)


@dataclass(frozen=True)
class CheckReport:
    """What the checks did (for tests and `--debug`)."""

    hydra_points: int
    seconds: float


def check_sweep(
    definition: SweepDefinition,
    tasks: Sequence[TaskSpec],
    root: Path,
    specs: Sequence[SourceSpec],
    *,
    hydra: bool = True,
) -> CheckReport:
    """Raise ConfigError naming the sweep file on the first problem that would make every
    task fail; `hydra=False` skips the (slower) Hydra composition check."""
    t0 = time.monotonic()
    where = definition.source_name
    cwd = (root / definition.cwd).resolve()
    if not cwd.is_dir():
        raise ConfigError(
            f"the task folder {cwd} does not exist",
            file=where,
            key="cwd",
            hint=f"tasks run in the project root ({root}) or the sweep file's `cwd:` below "
            "it: run hsm from the project's folder, or pass --project-root",
        )
    if definition.script is not None:
        script = cwd / definition.script
        if not script.is_file():
            raise ConfigError(
                f"{definition.script} not found in {cwd}",
                file=where,
                key="script",
                hint="tasks run from the project root, the current folder unless "
                "--project-root says otherwise: run hsm from the folder that holds the "
                "script's path, or fix `script:`",
            )
    local = any(s.type == "local" for s in specs)
    if not local or not tasks:
        return CheckReport(0, time.monotonic() - t0)
    path = os.environ.get("PATH", os.defpath)
    for program in _programs(definition, tasks):
        if program != PYTHON and _find(program, cwd, path) is None:
            key = "python" if definition.script is not None else "command"
            raise ConfigError(
                f"{program!r} is not found on this machine"
                + ("" if "/" in program else " (not on PATH)"),
                file=where,
                key=key,
                hint=f"fix `{key}:` (a path relative to the task folder, or a program on "
                "PATH); the local source starts it as given",
            )
    points = 0
    if hydra and definition.script is not None and _is_hydra_app(cwd / definition.script):
        chosen = _covering(definition, tasks)
        points = len(chosen)
        _check_hydra(chosen, cwd, where)
    return CheckReport(points, time.monotonic() - t0)


def _programs(definition: SweepDefinition, tasks: Sequence[TaskSpec]) -> Iterable[str]:
    """The programs the tasks start: from the sweep file when its first word names no
    parameter (a grid of a million points is not walked for one name), else each task's."""
    from hsm_core import overrides as ov

    if definition.script is not None:
        return [definition.python]
    first = ov.Template((definition.command or ("",))[0])
    if not first.names:
        return [first.render({})]
    return dict.fromkeys(t.argv[0] for t in tasks if t.argv)


def _find(program: str, cwd: Path, path: str) -> str | None:
    if "/" in program:
        full = cwd / os.path.expanduser(program)
        return str(full) if full.is_file() and os.access(full, os.X_OK) else None
    return shutil.which(program, path=path)


def _is_hydra_app(script: Path) -> bool:
    """Only a script that declares `@hydra.main` gets `--cfg job`: any other program
    would run for real with those arguments."""
    try:
        text = script.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return "hydra" in text and bool(_HYDRA_APP.search(text))


def _covering(definition: SweepDefinition, tasks: Sequence[TaskSpec]) -> list[TaskSpec]:
    """The first task, then tasks that between them use every value of each parameter
    whose values are words (config group choices such as model=mlp pick files), up to
    HYDRA_CHECKS."""
    chosen = [tasks[0]]
    wanted = {
        k: {v for t in tasks for v in [t.params.get(k)] if isinstance(v, str)}
        for k in definition.params
    }
    seen = {k: {tasks[0].params.get(k)} for k in wanted}
    for t in itertools.islice(tasks, 1, None):
        if len(chosen) >= HYDRA_CHECKS:
            break
        new = [k for k, values in wanted.items() if t.params.get(k) in values - seen[k]]
        if new:
            chosen.append(t)
            for k in wanted:
                seen[k].add(t.params.get(k))
    return chosen


def _check_hydra(tasks: Sequence[TaskSpec], cwd: Path, where: str) -> None:
    def compose(task: TaskSpec) -> tuple[TaskSpec, list[str], subprocess.CompletedProcess[str]]:
        argv = [sys.executable if a == PYTHON else a for a in task.argv]
        argv = [*argv[:2], "--cfg", "job", *argv[2:]]
        env = {**os.environ, **dict(task.env)}
        try:
            done = subprocess.run(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=HYDRA_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired:
            # A slow import is no proof of a problem: let the tasks tell.
            done = subprocess.CompletedProcess(argv, 0, "", "")
        return task, argv, done

    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        results = list(pool.map(compose, tasks))
    for task, argv, done in results:
        if done.returncode == 0:
            continue
        params = " ".join(f"{k}={v}" for k, v in task.params.items())
        if len(params) > 160:
            params = params[:157] + "..."
        raise ConfigError(
            f"{task.name} ({params}) would fail: Hydra says: {_why(done.stderr or done.stdout)}",
            file=where,
            hint=f"checked with `{shlex.join(argv)}`; fix the sweep file (or the app), or "
            "skip these checks with --no-check",
        )


def _why(text: str) -> str:
    """One line from a failed `--cfg job`: the exception line of a traceback, else
    Hydra's own message without its boilerplate."""
    from hsm_core.reporting.errors_analysis import exception_line

    if "Traceback (most recent call last):" in text:
        exc = exception_line(text)
        if exc:
            return f"{exc[0]}: {exc[1]}".rstrip(": ")
    lines: list[str] = []
    listing = False  # indented lines under a "...:" header are one list
    skipping = False  # the indented lines under a noise header go with it
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE) or (skipping and raw[:1].isspace()):
            skipping = skipping or line.startswith(_NOISE)
            continue
        skipping = False
        if raw[:1].isspace() and lines and (listing or lines[-1].endswith(":")):
            lines[-1] += (", " if listing else " ") + line
            listing = True
        else:
            lines.append(line)
            listing = False
    if not lines:
        return "it exited with an error and printed nothing"
    said = " ".join(ln if ln.endswith((".", ":")) else ln + "." for ln in lines[:3])
    return said[:400]
