"""Timing helpers shared by the benchmarks (imported as `_timing`: each benchmark is run
as `python bench/NAME.py`, which puts this folder first on sys.path)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Timing:
    wall: float
    cpu: float  # user + sys of the whole process tree


@dataclass
class Series:
    runs: dict[str, list[Timing]] = field(default_factory=dict)

    def add(self, name: str, timing: Timing) -> None:
        self.runs.setdefault(name, []).append(timing)

    def wall(self, name: str) -> float:
        return statistics.median(t.wall for t in self.runs[name])

    def cpu(self, name: str) -> float:
        return statistics.median(t.cpu for t in self.runs[name])

    def spread(self, name: str, digits: int = 3) -> str:
        walls = [t.wall for t in self.runs[name]]
        return f"{min(walls):.{digits}f}-{max(walls):.{digits}f}"


def timed(
    argv: list[str], *, cwd: Path, stdin: str | None = None, env: dict[str, str] | None = None
) -> Timing:
    """Run argv to completion; wall and CPU time of it and all the processes it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        input=stdin,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=bench_environ(env),
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(
            f"benchmark aborted: `{shlex.join(argv)}` exited {proc.returncode}:\n"
            f"{proc.stderr.strip()[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


def bench_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every timed command: this one plus `extra`, minus what makes an
    interpreter behave unlike on a user's machine. PYTHONDONTWRITEBYTECODE (set by some
    sandboxes and CI images) would recompile every module of an editable install at each
    start, so the warm-up run could not leave the bytecode caches later runs read."""
    env = {**os.environ, "NO_COLOR": "1", **(extra or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def file_create_us(directory: Path, n: int = 100) -> float:
    """Median microseconds to make a folder in `directory` and a small file in it, as hsm
    does for each task: how costly file creation is there right now. On ext4 it rises
    many-fold for minutes after a bulk delete, in the folders that new ones are placed
    near (measured here: 20 us quiet, 500 us a minute after a previous benchmark's
    cleanup)."""
    probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=directory))
    times = []
    for i in range(n):
        start = time.perf_counter()
        os.mkdir(probe / str(i))
        fd = os.open(probe / str(i) / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"x" * 64)
        os.close(fd)
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def parallel_env() -> dict[str, str]:
    """GNU parallel creates and deletes two temp files per job in $TMPDIR. On the disk the
    other tools write to, those deletions slow the next tool's file creation (ext4 skips
    recently freed inodes for minutes), so its temp files go to a tmpfs when there is one;
    parallel itself runs as usual, if anything faster."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return {"TMPDIR": str(shm)}
    return {}


def add_place_args(parser: argparse.ArgumentParser) -> None:
    """--services-dir (where the test services keep their state) and --dir (where the
    local sweeps are written), as the ssh benchmarks take them."""
    parser.add_argument(
        "--services-dir",
        type=Path,
        default=Path(os.environ.get("HSM_SERVICES_DIR", "/tmp/hsm-test-services")),
    )
    parser.add_argument(
        "--dir", type=Path, help="where the local sweeps are written (default: system temp)"
    )


def ssh_hosts(services: Path) -> tuple[str, list[str]]:
    """(ssh_config, host aliases) of the loopback test hosts the services dir describes."""
    path = services / "sshd" / "env.json"
    try:
        env = json.loads(path.read_text())
    except OSError:
        raise SystemExit(f"{path} missing: start the hosts with scripts/services/sshd.sh start")
    return env["ssh_config"], [h["alias"] for h in env["hosts"]]


def hsm_argv() -> list[str]:
    """The `hsm` console script beside this interpreter (a version manager's shim on PATH
    would add its own start-up to every call), else the module."""
    script = Path(sys.executable).parent / "hsm"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "hsm_core.cli.main"]
