"""submitit's launcher keys as hpc source options: one table, Slurm and PBS side by side.

A submitit user types ``hydra.launcher.partition=gpu hydra.launcher.mem_gb=32``; the
same names are keys of a ``type: hpc`` source in hsm.yaml or a pool. This module knows
the 27 keys of hydra-submitit-launcher's ``SlurmQueueConf``, checks their values (one
line naming the key at fault), tells which have no PBS equivalent, and turns the raw
sbatch options (``directives``, ``additional_parameters``) into checked ``--name=value``
lines that never repeat an option hsm or a typed key already writes.

No I/O and no heavy import: the launcher's settings and the option parser both use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hsm_core.errors import ConfigError

# hydra-submitit-launcher's SlurmQueueConf (hydra main, plugin 1.4.0.dev9), in its order.
SUBMITIT_KEYS = (
    "submitit_folder",
    "timeout_min",
    "cpus_per_task",
    "gpus_per_node",
    "tasks_per_node",
    "mem_gb",
    "nodes",
    "name",
    "stderr_to_stdout",
    "partition",
    "qos",
    "comment",
    "constraint",
    "exclude",
    "gres",
    "cpus_per_gpu",
    "gpus_per_task",
    "mem_per_gpu",
    "mem_per_cpu",
    "account",
    "signal_delay_s",
    "max_num_timeout",
    "python",
    "additional_parameters",
    "array_parallelism",
    "setup",
    "srun_args",
)

# Keys of hsm's own with the same meaning: give one or the other.
ALIASES = {"timeout_min": "time", "partition": "queue"}

# What PBS (hsm's PBS executor) lacks, and what to do instead.
PBS_LACKS = {
    "qos": "use `queue` or that source's `directives`",
    "comment": "put it in that source's `directives`",
    "constraint": "put a site resource in that source's `directives` (-l ...)",
    "exclude": "put it in that source's `directives`",
    "gres": "put a site resource in that source's `directives` (-l ...)",
    "cpus_per_gpu": "use cpus_per_task",
    "mem_per_gpu": "use mem_gb",
    "mem_per_cpu": "use mem_gb",
    "additional_parameters": "use that source's `directives` (-l ... lines)",
    "srun_args": "PBS jobs run no srun",
}

# Raw sbatch options hsm writes itself, and the key to use instead.
OWNED = {
    "array": "hsm makes the arrays; use array_parallelism for the % throttle",
    "output": "the job's output goes to its task folder (stdout.log)",
    "error": "the job's errors go to its task folder (stderr.log)",
    "open-mode": "hsm appends to submitit's logs",
    "signal": "use signal_delay_s (and signal)",
    "requeue": "use `requeue: true`",
    "no-requeue": "use `requeue: false`",
    "ntasks": "use tasks_per_node (and nodes)",
    "ntasks-per-node": "use tasks_per_node",
    "nodes": "use nodes",
    "wrap": "hsm writes the job's command",
}

# sbatch option -> the typed key that writes it.
TYPED = {
    "job-name": "name",
    "time": "timeout_min",
    "partition": "partition",
    "qos": "qos",
    "account": "account",
    "cpus-per-task": "cpus_per_task",
    "gpus-per-node": "gpus_per_node",
    "gpus-per-task": "gpus_per_task",
    "cpus-per-gpu": "cpus_per_gpu",
    "mem": "mem_gb",
    "mem-per-gpu": "mem_per_gpu",
    "mem-per-cpu": "mem_per_cpu",
    "comment": "comment",
    "constraint": "constraint",
    "exclude": "exclude",
    "gres": "gres",
}
# Written on every job whatever the keys say (a default applies).
ALWAYS = frozenset({"job-name", "time", "cpus-per-task"})

SIGNALS = ("URG", "USR1", "USR2", "TERM", "INT", "HUP", "CONT", "WINCH", "QUIT")
_OPTION = re.compile(r"^--(?P<name>[A-Za-z][A-Za-z0-9-]*)(?:=(?P<value>.+))?$")
_MEM = re.compile(r"^\d+(\.\d+)?[KMGT]?B?$", re.IGNORECASE)


@dataclass(frozen=True)
class Check:
    """How a key's value is checked, and what its error line says it must be."""

    test: Callable[[Any], bool]
    must: str


def _is_int(low: int) -> Check:
    return Check(
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
        f"a whole number >= {low}",
    )


def _is_text(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip()) and "\n" not in v and "\r" not in v


def _is_word(v: Any) -> bool:
    return (
        isinstance(v, str | int)
        and not isinstance(v, bool)
        and bool(re.fullmatch(r"[A-Za-z0-9_.@+-]+", str(v)))
    )


def _is_lines(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(_is_text(x) for x in v)


TEXT = Check(_is_text, "a non-empty one-line string")
WORD = Check(_is_word, "a plain name (letters, digits, _ . @ + -)")
LINES = Check(_is_lines, "a list of one-line strings")
FLAG = Check(lambda v: isinstance(v, bool), "true or false")
MEM = Check(lambda v: isinstance(v, str) and bool(_MEM.match(v)), 'a size like "4G" or "512M"')
NUMBER = Check(
    lambda v: isinstance(v, int | float) and not isinstance(v, bool) and v > 0, "a number > 0"
)
MAPPING = Check(lambda v: isinstance(v, Mapping), "a mapping of sbatch options: {comment: x}")

CHECKS: Mapping[str, Check] = {
    "submitit_folder": TEXT,
    "timeout_min": _is_int(1),
    "cpus_per_task": _is_int(1),
    "gpus_per_node": _is_int(0),
    "tasks_per_node": _is_int(1),
    "mem_gb": NUMBER,
    "nodes": _is_int(1),
    "name": TEXT,
    "stderr_to_stdout": FLAG,
    "partition": WORD,
    "qos": WORD,
    "comment": TEXT,
    "constraint": TEXT,
    "exclude": TEXT,
    "gres": TEXT,
    "cpus_per_gpu": _is_int(1),
    "gpus_per_task": _is_int(0),
    "mem_per_gpu": MEM,
    "mem_per_cpu": MEM,
    "account": WORD,
    "signal_delay_s": _is_int(0),
    "max_num_timeout": _is_int(0),
    "python": TEXT,
    "additional_parameters": MAPPING,
    "array_parallelism": _is_int(1),
    "setup": LINES,
    "srun_args": LINES,
}


def check_value(name: str, value: Any, key: str) -> Any:
    """The value, checked (None passes: "not set"); ConfigError naming `key` if wrong."""
    if value is None:
        return None
    check = CHECKS[name]
    if name in ("setup", "srun_args") and isinstance(value, str):
        value = [value]
    if not check.test(value):
        raise ConfigError(f"must be {check.must}, got {value!r}", key=key)
    if name in ("setup", "srun_args"):
        return list(value)
    if name == "additional_parameters":
        return dict(value)
    return value


def launcher_keys(params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The submitit keys set on the launcher (`hydra.launcher.<key>`), checked.

    Unset keys (None, an empty additional_parameters) are left out: they must not
    override a pool's or hsm.yaml's value. `submitit_folder` is accepted and dropped:
    hsm keeps submitit's files in the sweep folder's scripts/<source>/.
    """
    out: dict[str, Any] = {}
    for name in SUBMITIT_KEYS:
        value = check_value(name, params.get(name), f"{where}.{name}")
        if value is None or name == "submitit_folder":
            continue
        if name == "additional_parameters" and not value:
            continue
        out[name] = value
    return out


def merge(entry: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """A source entry with the launcher's keys on top; the launcher's `timeout_min`
    replaces the entry's `time`, its `partition` the entry's `queue`."""
    merged = dict(entry)
    for name, value in keys.items():
        alias = ALIASES.get(name)
        if alias is not None:
            merged.pop(alias, None)
        merged[name] = value
    return merged


def check_aliases(opts: Mapping[str, Any], where: str) -> None:
    for name, alias in ALIASES.items():
        if name in opts and alias in opts:
            raise ConfigError(
                f"give `{name}` or `{alias}`, not both", key=where, hint=f"keep `{name}`"
            )


def check_scheduler(
    keys: Mapping[str, Any], scheduler: str, source: str, where: Callable[[str], str]
) -> None:
    """A key the source's scheduler has no equivalent of: one line naming both."""
    if scheduler != "pbs":
        return
    for name in SUBMITIT_KEYS:
        value = keys.get(name)
        if name in PBS_LACKS and value not in (None, [], {}, ()):
            raise ConfigError(
                f"source {source} is PBS, which has no {name}",
                key=where(name),
                hint=PBS_LACKS[name],
            )
    for name in ("tasks_per_node", "nodes"):
        if (keys.get(name) or 1) > 1:
            raise ConfigError(
                f"source {source} is PBS, where hsm runs one process per job",
                key=where(name),
                hint="ask for cores with cpus_per_task",
            )


def sbatch_option(line: str, key: str) -> tuple[str, str | bool]:
    """`--constraint=a100` -> ("constraint", "a100"); `--exclusive` -> ("exclusive", True)."""
    m = _OPTION.match(line.strip())
    if not m:
        raise ConfigError(
            f"directive {line!r} is not a long sbatch option",
            key=key,
            hint='write them as "--name=value" or "--flag", e.g. "--constraint=a100"',
        )
    return m.group("name"), m.group("value") if m.group("value") is not None else True


def _parameter(name: Any, value: Any, key: str) -> tuple[str, str | bool]:
    """An `additional_parameters` entry as submitit writes it: `_` -> `-`, true -> a flag."""
    option = str(name).replace("_", "-")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", option):
        raise ConfigError(f"{name!r} is not an sbatch option name", key=key)
    if value is True:
        return option, True
    if value is None or value is False or isinstance(value, Mapping | list | tuple):
        raise ConfigError(f"{option}: must be a value or true, got {value!r}", key=key)
    text = str(value)
    if not _is_text(text):
        raise ConfigError(f"{option}: must be one line, got {value!r}", key=key)
    return option, text


def slurm_extra(
    directives: tuple[str, ...],
    additional: Mapping[str, Any],
    typed: Mapping[str, Any],
    key: Callable[[str], str],
) -> tuple[str, ...]:
    """The raw sbatch options of a Slurm source as `--name[=value]` lines, each option
    once: none that hsm owns, none a set typed key (or a default) already writes."""
    found: dict[str, str] = {}
    lines: list[str] = []
    given = [(sbatch_option(d, key("directives")), "directives") for d in directives] + [
        (_parameter(n, v, key("additional_parameters")), "additional_parameters")
        for n, v in additional.items()
    ]
    for (option, value), origin in given:
        if option in OWNED:
            raise ConfigError(
                f"--{option} cannot be given as a raw option", key=key(origin), hint=OWNED[option]
            )
        owner = TYPED.get(option)
        if owner is not None and typed.get(owner) in (None, 0) and option in ALWAYS:
            raise ConfigError(
                f"--{option} is written by hsm from `{owner}`",
                key=key(origin),
                hint=f"set `{owner}` instead",
            )
        if owner is not None and typed.get(owner) not in (None, 0):
            raise ConfigError(
                f"--{option} is set twice: by `{owner}` and by `{origin}`",
                key=key(origin),
                hint=f"keep `{owner}`",
            )
        if option in found:
            raise ConfigError(
                f"--{option} is set twice: in `{found[option]}` and in `{origin}`",
                key=key(origin),
                hint="keep one",
            )
        found[option] = origin
        lines.append(f"--{option}" if value is True else f"--{option}={value}")
    return tuple(lines)


def check_signal(value: Any, key: str) -> str:
    text = str(value).upper().removeprefix("SIG") if isinstance(value, str) else ""
    if text not in SIGNALS:
        hint = ", ".join(SIGNALS)
        raise ConfigError(f"signal {value!r} is not one hsm sends", key=key, hint=hint)
    return text
