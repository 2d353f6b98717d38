"""`hsm sources test` for an ssh source: connect, then one remote exec for the facts.

Reports what a user checks by hand before a sweep: that the host answers (and how
fast), the task python and its hsm, free disk at the project dir, load, GPUs (through
nvidia-smi when present) and whether the remote project matches the local one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hsm_core.errors import CommandError, HsmError, SourceError
from hsm_core.sources.ssh.options import SSHOptions, remote_path
from hsm_core.sources.ssh.sync import remote_command, verify
from hsm_core.transport.ssh import SSHTransport

PROBE_SCRIPT = r"""
import json, os, shutil, subprocess, sys
root = sys.argv[1]
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
       "hsm": None, "load": list(os.getloadavg()), "cpus": os.cpu_count(),
       "disk_free": None, "gpus": [], "home": os.path.expanduser("~")}
try:
    from importlib import metadata
    out["hsm"] = metadata.version("hsm")
except Exception:
    pass
path = os.path.expanduser(root) if os.path.isdir(os.path.expanduser(root)) else out["home"]
st = os.statvfs(path)
out["disk_free"] = st.f_bavail * st.f_frsize
if shutil.which("nvidia-smi"):
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.used,memory.total",
                            "--format=csv,noheader"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, timeout=20)
        out["gpus"] = [l.strip() for l in q.stdout.decode().splitlines() if l.strip()]
    except Exception as exc:
        out["gpus"] = ["nvidia-smi failed: %s" % exc]
print(json.dumps(out))
"""


@dataclass
class ProbeResult:
    name: str
    ok: bool
    error: str | None = None
    host: str = ""
    connect_ms: float | None = None
    python: str | None = None
    hsm: str | None = None
    disk_free_gb: float | None = None
    load: float | None = None
    cpus: int | None = None
    gpus: list[str] = field(default_factory=list)
    sync: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


async def probe_ssh(name: str, options: Mapping[str, Any], project_root: Path) -> ProbeResult:
    opts = SSHOptions.parse(name, options)
    result = ProbeResult(name, False, host=opts.target.label)
    transport = SSHTransport(opts.target, name=name)
    try:
        t0 = time.perf_counter()
        await transport.connect()
        result.connect_ms = (time.perf_counter() - t0) * 1000
        argv = remote_command(
            opts.python, opts.setup, opts.shell, ["-c", PROBE_SCRIPT, opts.project_dir]
        )
        try:
            out = await transport.run(argv, timeout=60.0)
        except CommandError as exc:
            # The argv holds the whole probe script: name the interpreter, not the script.
            last = exc.stderr.strip().splitlines()[-1:] or ["no output on stderr"]
            result.error = (
                f"`{opts.python}` does not run on {opts.target.label} (exit code "
                f"{exc.exit_code}: {last[0]}); set `python:` of this source in hsm.yaml to "
                "an interpreter that exists there (or add the `setup:` lines that provide it)"
            )
            return result
        facts = json.loads(out.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        result.python = f"{facts['python']} ({facts['executable']})"
        result.hsm = facts["hsm"]
        result.disk_free_gb = facts["disk_free"] / 1e9 if facts["disk_free"] else None
        result.load = facts["load"][0]
        result.cpus = facts["cpus"]
        result.gpus = facts["gpus"]
        gpu_error = check_gpus(opts.gpus, result.gpus, "nvidia-smi found none there")
        if gpu_error:
            result.error = gpu_error
        remote_dir = remote_path(opts.project_dir, facts["home"])
        report = await verify(
            transport,
            source=name,
            host=opts.target.label,
            local_root=project_root,
            remote_dir=remote_dir,
            python=opts.python,
            setup=opts.setup,
            shell=opts.shell,
            policy="warn",  # a test never changes the host
            announce=False,  # the table shows it
        )
        result.sync = report.summary().split(": ", 1)[-1]
        missing_text = report.missing_text() if report.project_missing else None
        missing = project_problem(missing_text, opts.sync, opts.target.label)
        if missing:
            result.error = f"{gpu_error}; {missing}" if gpu_error else missing
        result.ok = not gpu_error and not missing
    except (HsmError, SourceError, ValueError, KeyError, IndexError) as exc:
        result.error = str(exc)
    finally:
        await transport.close()
    return result


def project_problem(missing: str | None, policy: str, host: str) -> str | None:
    """One line if the project is not in project_dir at all (`missing` says how; every
    task would fail there), unless the sweep itself sends it (`sync: push`); else None."""
    if policy == "push" or not missing:
        return None
    return (
        f"{missing} on {host}: every task would fail there; copy the "
        "project there (git clone, rsync), or set `sync: push` for this source in hsm.yaml"
    )


def check_gpus(configured: Sequence[str], found: Sequence[str], none_found: str) -> str | None:
    """Why the configured `gpus:` do not match the GPUs nvidia-smi listed, or None.

    `found` holds nvidia-smi's CSV lines (`index, uuid, name, ...`); a configured id is
    an index or a uuid. `none_found` says why the list is empty."""
    if not configured:
        return None
    ids: set[str] = set()
    for line in found:
        fields = [f.strip() for f in line.split(",")]
        ids.update(f for f in fields[:2] if f)
    missing = [str(g) for g in configured if str(g) not in ids]
    if not missing:
        return None
    listed = ", ".join(map(str, configured))
    if not found:
        return f"gpus: [{listed}] configured, but {none_found}; remove `gpus:` or fix the ids"
    have = ", ".join(sorted({line.split(",")[0].strip() for line in found}))
    return (
        f"gpus: GPU {', '.join(missing)} configured but not present (nvidia-smi lists "
        f"{have}); fix `gpus:` of this source in hsm.yaml"
    )
