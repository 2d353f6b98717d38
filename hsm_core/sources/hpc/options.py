"""The `type: hpc` keys of hsm.yaml, checked once, with one clear line per mistake.

The result, :class:`HPCOptions`, is plain JSON-able data: the login-node side of the
source (``backend``) receives it as is, locally or over ssh, and builds the submitit
executor from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hsm_core.errors import ConfigError
from hsm_core.model import SourceSpec
from hsm_core.sources.hpc import keys as hpc_keys

SCHEDULERS = ("slurm", "pbs")
_OWN_KEYS = (
    "scheduler",
    "partition",
    "queue",
    "account",
    "qos",
    "time",
    "cpus_per_task",
    "gpus_per_task",
    "mem_gb",
    "array_limit",
    "array_parallelism",
    "max_queued",
    "min_refill",
    "python",
    "setup",
    "directives",
    "requeue",
    "pbs_dialect",
    "poll_interval",
    "poll_min",
    "batch_window",
    "vanish_after",
    "ssh",
    "project_dir",
    "remote_dir",
    "login_python",
    "signal",
)
# submitit's names (hpc_keys): `timeout_min` is `time`, `additional_parameters` are
# `directives` in a mapping; the others are typed options of their own.
KEYS: tuple[str, ...] = _OWN_KEYS + tuple(k for k in hpc_keys.SUBMITIT_KEYS if k not in _OWN_KEYS)
DEFAULT_TIME_MIN = 60
DEFAULT_SIGNAL_DELAY_S = 60


@dataclass(frozen=True)
class HPCOptions:
    scheduler: str = "slurm"
    partition: str | None = None  # Slurm partition / PBS queue
    account: str | None = None
    qos: str | None = None
    time_min: int = DEFAULT_TIME_MIN  # scheduler time limit per task, minutes
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    gpus_per_node: int = 0
    mem_gb: float | None = None
    nodes: int = 1
    tasks_per_node: int = 1
    name: str | None = None  # the job name; None: hsm-<sweep id>
    comment: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gres: str | None = None
    cpus_per_gpu: int | None = None
    mem_per_gpu: str | None = None
    mem_per_cpu: str | None = None
    # The "time limit near" warning: this signal, this long before the limit.
    signal: str = "URG"
    signal_delay_s: int = DEFAULT_SIGNAL_DELAY_S
    max_num_timeout: int = 0  # time limits a task may reach and resume after
    stderr_to_stdout: bool = False  # submitit's logs only: the task's stay apart
    srun_args: tuple[str, ...] = ()
    array_limit: int = 1000  # most tasks in one array job (the cluster's MaxArraySize - 1)
    array_parallelism: int = 1  # running at once (the `%` throttle); default max_parallel
    max_queued: int = 1000  # attempts handed to the scheduler at once (queued + running)
    min_refill: int = 100  # fewest tasks of a later array while the scheduler has enough queued
    python: str | None = None  # on the compute nodes; None: the orchestrator's interpreter
    setup: tuple[str, ...] = ()  # shell lines run in the job before the task
    directives: tuple[str, ...] = ()  # raw scheduler flags, e.g. "--constraint=a100"
    requeue: bool = False  # let the scheduler requeue on node failure (else hsm does)
    pbs_dialect: str | None = None  # "pro" | "torque"; None: ask qstat
    poll_interval_s: float = 30.0  # longest pause between two scheduler queries
    poll_min_s: float = 2.0  # first pause after a submission (doubling up to the above)
    batch_window_s: float = 0.3  # collect submits this long into one array
    vanish_after_s: float = 60.0  # unknown to the scheduler this long after submit: LOST
    ssh: Mapping[str, Any] | None = None  # login node to submit from (ssh transport keys)
    project_dir: str | None = None  # the project's copy on the cluster (with ssh)
    remote_dir: str | None = None  # where sweep folders go on the cluster (with ssh)
    login_python: str | None = None  # python with hsm on the login node (with ssh)
    job_name: str = "hsm"
    # Not a config key: False once sacct said accounting is off (squeue is asked then).
    accounting: bool = True

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ssh"] = dict(self.ssh) if self.ssh else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HPCOptions:
        values = dict(data)
        for name in ("setup", "directives", "srun_args"):
            values[name] = tuple(values.get(name) or ())
        return cls(**values)

    @property
    def remote(self) -> bool:
        return self.ssh is not None


def parse_options(spec: SourceSpec) -> HPCOptions:
    """Check the options of an hpc source; raise ConfigError naming the key at fault."""
    opts = dict(spec.options)
    where = f"sources.{spec.name}"

    def key(name: str) -> str:
        return f"{where}.{name}"

    unknown = sorted(set(opts) - set(KEYS) - {"type", "max_parallel", "weight"})
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} for an hpc source",
            key=where,
            hint=f"allowed: {', '.join(KEYS)}",
        )
    scheduler = opts.get("scheduler", "slurm")
    if scheduler not in SCHEDULERS:
        raise ConfigError(
            f"scheduler is {scheduler!r}", key=key("scheduler"), hint="valid: slurm, pbs"
        )
    hpc_keys.check_aliases(opts, where)
    typed = {
        name: hpc_keys.check_value(name, opts.get(name), key(name))
        for name in hpc_keys.SUBMITIT_KEYS
        if name not in ("partition", "account", "qos")  # checked below, as before
    }
    hpc_keys.check_scheduler({**opts, **typed}, scheduler, spec.name, key)
    part_key = "queue" if "queue" in opts else "partition"
    partition = _word(opts.get(part_key), key(part_key))
    qos = _word(opts.get("qos"), key("qos"))
    if qos and scheduler == "pbs":
        raise ConfigError("PBS has no qos", key=key("qos"), hint="use `queue` or `directives`")
    if scheduler == "pbs" and typed["gpus_per_task"] and typed["gpus_per_node"]:
        raise ConfigError(
            "PBS jobs run one task per node: give gpus_per_node or gpus_per_task, not both",
            key=key("gpus_per_node"),
        )
    slots = spec.max_parallel
    array_limit = _int(opts.get("array_limit", 1000), key("array_limit"), 1)
    parallelism = _int(opts.get("array_parallelism", slots), key("array_parallelism"), 1)
    max_queued = _int(opts.get("max_queued", max(slots, array_limit)), key("max_queued"), 1)
    # Slots freed as tasks end are refilled in arrays of at least this many while the
    # scheduler still holds that many waiting: not an sbatch per poll cycle.
    min_refill = _int(opts.get("min_refill", max(1, max_queued // 10)), key("min_refill"), 1)
    dialect = opts.get("pbs_dialect")
    if dialect is not None and (scheduler != "pbs" or dialect not in ("pro", "torque")):
        raise ConfigError(
            f"pbs_dialect is {dialect!r}", key=key("pbs_dialect"), hint="pro or torque, pbs only"
        )
    ssh = _ssh(opts.get("ssh"), key("ssh"))
    if ssh is not None and not opts.get("project_dir"):
        raise ConfigError(
            "an hpc source reached over ssh needs `project_dir` (the project's copy there)",
            key=key("project_dir"),
        )
    for name in ("project_dir", "remote_dir", "login_python"):
        if opts.get(name) is not None and ssh is None:
            raise ConfigError(f"`{name}` only applies with `ssh:`", key=key(name))
    poll_interval = _number(opts.get("poll_interval", 30.0), key("poll_interval"))
    poll_min = _number(opts.get("poll_min", min(2.0, poll_interval)), key("poll_min"))
    if poll_min > poll_interval:
        raise ConfigError(
            f"poll_min ({poll_min:g}) is above poll_interval ({poll_interval:g})",
            key=key("poll_min"),
        )
    requeue = opts.get("requeue", False)
    if not isinstance(requeue, bool):
        raise ConfigError("must be true or false", key=key("requeue"))
    directives = _lines(opts.get("directives"), key("directives"))
    if scheduler == "slurm":
        given = {**typed, "partition": partition, "account": opts.get("account"), "qos": qos}
        if "time" in opts:
            given["timeout_min"] = opts["time"]
        directives = hpc_keys.slurm_extra(
            directives, typed["additional_parameters"] or {}, given, key
        )
    time_key = "timeout_min" if "timeout_min" in opts else "time"
    return HPCOptions(
        scheduler=scheduler,
        partition=partition,
        account=_word(opts.get("account"), key("account")),
        qos=qos,
        time_min=parse_time(opts.get(time_key, DEFAULT_TIME_MIN), key(time_key)),
        cpus_per_task=_int(opts.get("cpus_per_task", 1), key("cpus_per_task"), 1),
        gpus_per_task=_int(opts.get("gpus_per_task", 0), key("gpus_per_task"), 0),
        gpus_per_node=typed["gpus_per_node"] or 0,
        mem_gb=_number(opts["mem_gb"], key("mem_gb")) if opts.get("mem_gb") is not None else None,
        nodes=typed["nodes"] or 1,
        tasks_per_node=typed["tasks_per_node"] or 1,
        name=typed["name"],
        comment=typed["comment"],
        constraint=typed["constraint"],
        exclude=typed["exclude"],
        gres=typed["gres"],
        cpus_per_gpu=typed["cpus_per_gpu"],
        mem_per_gpu=typed["mem_per_gpu"],
        mem_per_cpu=typed["mem_per_cpu"],
        signal=hpc_keys.check_signal(opts.get("signal", "URG"), key("signal")),
        signal_delay_s=_or(typed["signal_delay_s"], DEFAULT_SIGNAL_DELAY_S),
        max_num_timeout=typed["max_num_timeout"] or 0,
        stderr_to_stdout=bool(typed["stderr_to_stdout"]),
        srun_args=tuple(typed["srun_args"] or ()),
        array_limit=array_limit,
        array_parallelism=parallelism,
        max_queued=max_queued,
        min_refill=min_refill,
        python=_text(opts.get("python"), key("python")),
        setup=_lines(opts.get("setup"), key("setup")),
        directives=directives,
        requeue=requeue,
        pbs_dialect=dialect,
        poll_interval_s=poll_interval,
        poll_min_s=poll_min,
        batch_window_s=_number(opts.get("batch_window", 0.3), key("batch_window"), zero=True),
        vanish_after_s=_number(opts.get("vanish_after", 60.0), key("vanish_after")),
        ssh=ssh,
        project_dir=_text(opts.get("project_dir"), key("project_dir")),
        remote_dir=_text(opts.get("remote_dir"), key("remote_dir")),
        login_python=_text(opts.get("login_python"), key("login_python")),
        job_name=f"hsm-{spec.name}",
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def parse_time(value: Any, key: str) -> int:
    """Minutes from `90`, `"90"`, `"MM:SS"`, `"HH:MM:SS"`, `"D-HH"`, `"D-HH:MM[:SS]"`
    (Slurm's formats); seconds round up, since schedulers count whole minutes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError("must be at least 1 minute", key=key)
        return value
    text = str(value).strip() if isinstance(value, str) else ""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ConfigError(
            f"time limit {value!r} is not understood",
            key=key,
            hint='use minutes (90) or "HH:MM:SS" / "D-HH:MM:SS"',
        )
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:
        seconds = int(a) * 60
    minutes = -(-seconds // 60)
    if minutes < 1:
        raise ConfigError("must be at least 1 minute", key=key)
    return minutes


def _ssh(value: Any, key: str) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return {"host": value.strip()}
    if isinstance(value, Mapping) and isinstance(value.get("host"), str):
        from hsm_core.transport.ssh import TARGET_KEYS

        unknown = sorted(set(value) - set(TARGET_KEYS), key=str)
        if unknown:
            raise ConfigError(
                "unknown key for the login node",
                key=f"{key}.{unknown[0]}",
                hint=f"allowed: {', '.join(TARGET_KEYS)}",
            )
        return dict(value)
    raise ConfigError(
        "must be a host name / ~/.ssh/config alias, or a mapping with `host:`", key=key
    )


def _word(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ConfigError(f"must be a name, got {value!r}", key=key)
    text = str(value)
    if not re.fullmatch(r"[A-Za-z0-9_.@+-]+", text):
        raise ConfigError(f"{text!r} is not a plain name (letters, digits, _ . @ + -)", key=key)
    return text


def _text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ConfigError(f"must be a non-empty one-line string, got {value!r}", key=key)
    return value


def _int(value: Any, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"must be a whole number >= {low}, got {value!r}", key=key)
    return value


def _number(value: Any, key: str, *, zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not zero):
        low = ">= 0" if zero else "> 0"
        raise ConfigError(f"must be a number {low}, got {value!r}", key=key)
    return float(value)


def _lines(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise ConfigError("must be a list of strings", key=key)
    for line in value:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"{line!r}: one line per entry", key=key)
    return tuple(value)
