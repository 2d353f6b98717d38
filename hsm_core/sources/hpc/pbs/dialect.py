"""The two PBS dialects, PBS Pro (and OpenPBS) and Torque, as pure functions: no I/O.

What differs between them, and what this module writes or reads for each:

==================  ==================================  ===================================
                    PBS Pro / OpenPBS ("pro")           Torque ("torque")
==================  ==================================  ===================================
array               ``-J 0-N[%P]`` (``%P`` = at most P  ``-t 0-N[%P]`` (slot limit)
                    running, ``max_run_subjobs``)
resources           ``-l select=N:ncpus=C:mem=Mgb``     ``-l nodes=N:ppn=C[:gpus=G]``,
                    ``[:ngpus=G]`` (per chunk = node)   ``-l mem=<N*M>gb`` (whole job)
job ids             ``123.srv``, ``123[].srv``,         same; Torque < 2.5 wrote
                    ``123[4].srv``                      ``123-4.srv`` for array members
array index         ``$PBS_ARRAY_INDEX``                ``$PBS_ARRAYID``
status command      ``qstat -x -f -F json -t IDS``      ``qstat -f -1 -t IDS`` (``-x`` is
                    (``-x`` adds finished jobs when     XML in Torque; finished jobs stay
                    the server keeps job history)       for ``keep_completed`` seconds)
``--version``       stdout ``pbs_version = 2022.1.3``   stderr ``Version: 6.1.3``
==================  ==================================  ===================================

Both: ``-N`` name, ``-q`` queue, ``-A`` account, ``-l walltime=HH:MM:SS``, ``-j oe``,
``-o`` directory, ``-S`` shell, ``-V`` (export the submitter's environment, as Slurm does
by default). PBS starts a job in ``$HOME``; the script moves to ``$PBS_O_WORKDIR`` (the
directory ``qsub`` ran in) so that a submitted function sees the same working directory
as under Slurm. In the job PBS also sets ``PBS_JOBID``, ``PBS_JOBNAME``,
``PBS_NODEFILE`` (one line per allocated cpu slot) and ``PBS_O_HOST``.

Ids. submitit names files after the job id (``<id>_submitted.pkl``, ``<id>_0_log.out``),
and both sides must agree on it: the submitting side knows what ``qsub`` printed, the job
knows ``$PBS_JOBID``, and the two may spell the server suffix differently. So the
submitit id is the sequence number alone (``123``), and ``123_4`` for array member 4, as
for Slurm. PBS commands get the full id (``123[4].server``) whenever the server suffix is
known (from ``qsub`` or an earlier ``qstat``): a bare number means "at the default server",
which some Torque sites fail to resolve.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

Dialect = Literal["pro", "torque"]
DIALECTS: tuple[Dialect, ...] = ("pro", "torque")
DIALECT_NAMES = {"pro": "PBS Pro", "torque": "Torque"}

_INDEX_VARIABLE = {"pro": "PBS_ARRAY_INDEX", "torque": "PBS_ARRAYID"}
_ARRAY_OPTION = {"pro": "-J", "torque": "-t"}
# A token PBS takes as-is in a directive: queue, account, resource names.
_TOKEN = re.compile(r"^[^\s'\"\\#]+$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_ID = re.compile(r"^(?P<seq>\d+)(?:\[(?P<index>\d*)\]|-(?P<old>\d+))?(?:\.(?P<server>\S+))?$")


@dataclass(frozen=True)
class PBSParams:
    """Submission parameters of one PBS job (or job array); every field has a default.

    The names are those of ``PBSExecutor.update_parameters``; the generic submitit names
    (``timeout_min``, ``mem_gb``, ``nodes``, ``cpus_per_task``, ``gpus_per_node``,
    ``tasks_per_node``) are the same, so ``AutoExecutor`` needs no renaming.
    """

    job_name: str = "submitit"  # -N; characters PBS refuses become "_"
    queue: str | None = None  # -q
    account: str | None = None  # -A
    timeout_min: int = 5  # -l walltime, minutes
    nodes: int = 1  # chunks (pro) / nodes (torque)
    cpus_per_task: int = 1  # ncpus per chunk (pro) / ppn (torque)
    gpus_per_node: int = 0  # ngpus per chunk (pro) / gpus per node (torque)
    mem_gb: float | None = None  # memory per node, GB
    tasks_per_node: int = 1  # one process per job: PBS has no srun; use nodes/cpus
    array_parallelism: int = 256  # at most this many array members running at once
    export_env: bool = True  # -V: the job sees the submitter's environment
    stderr_to_stdout: bool = False  # one log file per job instead of .out + .err
    setup: tuple[str, ...] = ()  # shell lines run before the command (module load ...)
    directives: tuple[str, ...] = ()  # extra "#PBS ..." lines, e.g. "-l place=scatter"

    def __post_init__(self) -> None:
        for name, low in (
            ("timeout_min", 1),
            ("nodes", 1),
            ("cpus_per_task", 1),
            ("gpus_per_node", 0),
            ("array_parallelism", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"PBS parameter {name} must be an integer >= {low}, got {value!r}")
        if self.tasks_per_node != 1:
            raise ValueError(
                "PBS parameter tasks_per_node must be 1: the PBS executor starts one process "
                f"per job (got {self.tasks_per_node!r}); ask for cores with cpus_per_task"
            )
        if self.mem_gb is not None and (
            isinstance(self.mem_gb, bool)
            or not isinstance(self.mem_gb, (int, float))
            or self.mem_gb <= 0
        ):
            raise ValueError(f"PBS parameter mem_gb must be a number > 0, got {self.mem_gb!r}")
        if not isinstance(self.job_name, str) or not self.job_name.strip():
            raise ValueError(
                f"PBS parameter job_name must be a non-empty string, got {self.job_name!r}"
            )
        for name in ("queue", "account"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not _TOKEN.match(value)):
                raise ValueError(
                    f"PBS parameter {name} must be one word without spaces, quotes, '\\' or '#',"
                    f" got {value!r}"
                )
        for name in ("setup", "directives"):
            lines = getattr(self, name)
            if isinstance(lines, str) or not all(isinstance(x, str) for x in lines):
                raise ValueError(f"PBS parameter {name} must be a list of strings, got {lines!r}")
        for directive in self.directives:
            if "\n" in directive or "\r" in directive:
                raise ValueError(f"PBS directive must be one line, got {directive!r}")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> PBSParams:
        """Build from ``executor.parameters``; unknown names raise ValueError naming them."""
        unknown = sorted(set(params) - set(parameter_defaults()))
        if unknown:
            valid = ", ".join(f"{k} (default {v!r})" for k, v in parameter_defaults().items())
            raise ValueError(f"unknown PBS parameter(s) {unknown}; valid parameters: {valid}")
        values = dict(params)
        for name in ("setup", "directives"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
            elif values.get(name) is None:
                values.pop(name, None)
        return cls(**values)


def parameter_defaults() -> dict[str, Any]:
    """Every parameter ``PBSExecutor.update_parameters`` takes, with its default."""
    return {f.name: f.default for f in fields(PBSParams)}


@dataclass(frozen=True)
class ScriptPaths:
    """Where the job writes its logs: submitit's templates (``%j`` job id, ``%A`` array
    id, ``%a`` array index, ``%t`` task) and the folder PBS writes its own transcript to."""

    stdout: str
    stderr: str
    pbs_log_dir: str = field(default="")


def render_script(
    params: PBSParams,
    *,
    dialect: Dialect,
    command: str,
    paths: ScriptPaths,
    map_count: int | None = None,
) -> str:
    """The ``#PBS`` submission script; ``map_count`` makes it an array of that many jobs."""
    if map_count is not None and map_count < 1:
        raise ValueError(f"an array needs at least one member, got map_count={map_count}")
    lines = ["#!/bin/bash", "", "# Parameters"]
    lines += [f"#PBS {d}" for d in _directives(params, dialect, paths, map_count)]
    lines += ["", "# Logs: <submitit job id>_0_log.out/.err, the names submitit reads"]
    lines += _log_lines(params, dialect, paths, map_count)
    if params.setup:
        lines += ["", "# setup", *params.setup]
    lines += ["", "# command", "export SUBMITIT_EXECUTOR=pbs", command, ""]
    return "\n".join(lines)


def _directives(
    params: PBSParams, dialect: Dialect, paths: ScriptPaths, map_count: int | None
) -> list[str]:
    name = _NAME_UNSAFE.sub("_", params.job_name.strip())
    if not name[0].isalpha():  # PBS wants a letter first
        name = "j" + name
    out = ["-S /bin/bash", f"-N {name}"]
    if params.queue:
        out.append(f"-q {shlex.quote(params.queue)}")
    if params.account:
        out.append(f"-A {shlex.quote(params.account)}")
    out += [f"-l {resource}" for resource in _resources(params, dialect)]
    out.append(f"-l walltime={format_walltime(params.timeout_min)}")
    if map_count is not None:
        array = f"0-{map_count - 1}"
        # Only ask for a limit that limits: older PBS Pro releases reject "%".
        if params.array_parallelism < map_count:
            array += f"%{params.array_parallelism}"
        out.append(f"{_ARRAY_OPTION[dialect]} {array}")
    if params.export_env:
        out.append("-V")
    out.append("-j oe")
    if paths.pbs_log_dir:
        if ":" in paths.pbs_log_dir:
            raise ValueError(
                f"PBS reads 'host:path' in -o, so the log folder cannot contain ':' "
                f"({paths.pbs_log_dir!r}); choose another submitit folder"
            )
        out.append(f"-o {shlex.quote(paths.pbs_log_dir)}")
    for directive in params.directives:
        text = directive.strip()
        text = text[len("#PBS") :].strip() if text.startswith("#PBS") else text
        # PBS Pro arrays are always rerunnable and its qsub refuses "-r n" for them
        # ("cannot submit non-rerunable Array Job"): leave it out rather than fail.
        if dialect == "pro" and map_count is not None and re.fullmatch(r"-r\s*n", text):
            continue
        if text:
            out.append(text)
    return out


def _resources(params: PBSParams, dialect: Dialect) -> list[str]:
    if dialect == "pro":
        chunk = f"select={params.nodes}:ncpus={params.cpus_per_task}"
        if params.mem_gb is not None:
            chunk += f":mem={format_mem(params.mem_gb)}"
        if params.gpus_per_node:
            chunk += f":ngpus={params.gpus_per_node}"
        return [chunk]
    nodes = f"nodes={params.nodes}:ppn={params.cpus_per_task}"
    if params.gpus_per_node:
        nodes += f":gpus={params.gpus_per_node}"
    out = [nodes]
    if params.mem_gb is not None:  # Torque's mem is for the whole job
        out.append(f"mem={format_mem(params.mem_gb * params.nodes)}")
    return out


def _log_lines(
    params: PBSParams, dialect: Dialect, paths: ScriptPaths, map_count: int | None
) -> list[str]:
    lines = [
        "_submitit_seq=${PBS_JOBID%%.*}",
        "_submitit_seq=${_submitit_seq%%\\[*}",
        "_submitit_seq=${_submitit_seq%%-*}",
    ]
    if map_count is None:
        lines.append('_submitit_job="$_submitit_seq"')
    else:
        index = _INDEX_VARIABLE[dialect]
        lines.append(f'_submitit_index="${index}"')
        lines.append('_submitit_job="${_submitit_seq}_${_submitit_index}"')
    out = shell_path(paths.stdout)
    err = "&1" if params.stderr_to_stdout else shell_path(paths.stderr)
    lines.append(f"mkdir -p {shell_path(os.path.dirname(paths.stdout))}")
    lines.append(f"exec >>{out} 2>{err}" if params.stderr_to_stdout else f"exec >>{out} 2>>{err}")
    lines.append('cd "$PBS_O_WORKDIR"')
    return lines


_TEMPLATE_TOKEN = re.compile(r"(%[jAat])")
_TOKEN_VALUE = {
    "%j": '"$_submitit_job"',
    "%A": '"$_submitit_seq"',
    "%a": '"$_submitit_index"',
    "%t": "0",
}


def shell_path(template: str) -> str:
    """One shell word for a submitit path template: literal parts quoted, ids expanded."""
    parts = [p for p in _TEMPLATE_TOKEN.split(template) if p]
    return "".join(_TOKEN_VALUE.get(p) or shlex.quote(p) for p in parts) or "''"


def format_walltime(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def format_mem(gb: float) -> str:
    """PBS size: whole gigabytes as ``16gb``, anything else in megabytes (``1536mb``)."""
    if float(gb).is_integer():
        return f"{int(gb)}gb"
    return f"{round(gb * 1024)}mb"


@dataclass(frozen=True)
class PBSJobId:
    """A PBS job identifier, split: ``123[4].server`` -> seq 123, index 4."""

    seq: str
    index: str | None = None  # "" for the array itself ("123[]"), None for a plain job
    server: str | None = None

    @property
    def submitit_id(self) -> str:
        return f"{self.seq}_{self.index}" if self.index else self.seq


def parse_job_id(text: str) -> PBSJobId | None:
    match = _ID.match(text.strip())
    if match is None:
        return None
    index = match.group("index")
    if index is None:
        index = match.group("old")
    return PBSJobId(match.group("seq"), index, match.group("server"))


def parse_qsub_output(text: str) -> PBSJobId:
    """The job id ``qsub`` printed (``123.server`` or ``123[].server`` for an array)."""
    for line in text.splitlines():
        job = parse_job_id(line)
        if job is not None:
            return job
    raise ValueError(f"qsub printed no job id (expected e.g. '123.server'): {text.strip()!r}")


def native_id(submitit_id: str, server: str | None = None) -> str:
    """The id PBS commands take for a submitit id: ``123_4`` -> ``123[4].server``."""
    seq, _, index = submitit_id.partition("_")
    base = f"{seq}[{index}]" if index else seq
    return f"{base}.{server}" if server else base


def query_ids(submitit_ids: Iterable[str], servers: Mapping[str, str] | None = None) -> list[str]:
    """The ids one ``qstat`` call needs: each array once (``123[]``), plain jobs as is,
    with the server suffix ``qsub`` printed when it is known (``servers``: seq -> server).
    """
    wanted = {(i.split("_")[0], "_" in i) for i in submitit_ids}
    out = []
    for seq, array in sorted(wanted, key=lambda w: (int(w[0]), w[1])):
        server = (servers or {}).get(seq)
        out.append(f"{seq}{'[]' if array else ''}{'.' + server if server else ''}")
    return out


def status_command(
    dialect: Dialect,
    submitit_ids: Iterable[str],
    *,
    json: bool = True,
    servers: Mapping[str, str] | None = None,
) -> list[str]:
    """One ``qstat`` for all the given jobs, finished ones included where PBS can."""
    ids = query_ids(submitit_ids, servers)
    if dialect == "pro":
        return ["qstat", "-x", "-f", *(["-F", "json"] if json else []), "-t", *ids]
    return ["qstat", "-f", "-1", "-t", *ids]


def cancel_command(
    submitit_ids: Iterable[str], servers: Mapping[str, str] | None = None
) -> list[str]:
    return ["qdel", *(native_id(i, (servers or {}).get(i.split("_")[0])) for i in submitit_ids)]


def detect_dialect(version_output: str) -> Dialect | None:
    """Which PBS answered ``qstat --version`` (stdout and stderr together)."""
    if re.search(r"pbs_version\s*=", version_output):
        return "pro"
    if re.search(r"^\s*Version:\s*\S", version_output, re.MULTILINE):
        return "torque"
    return None
