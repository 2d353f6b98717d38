"""Typed configs of the hsm launcher and sweeper, registered in Hydra's ConfigStore.

Hydra imports this module at every start-up (plugin scan), so it holds dataclasses only.

Source pools: `hydra/launcher/pool=<name>` on the command line picks a pool from the
config group `hydra/launcher/pool` (built-in: `local`; users add
`<config dir>/hydra/launcher/pool/<name>.yaml`). The pool lands in `hydra.launcher.pool`.
Being a `hydra/` choice, it is launcher configuration, not a parameter of the jobs: it is
not in their overrides, their output dir names or multirun.yaml's task overrides.

No `from __future__ import annotations` here: Hydra's plugin scan executes this module
before it is in sys.modules, and dataclasses then cannot resolve string annotations.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

POOL_GROUP = "hydra/launcher/pool"


@dataclass
class HealthConf:
    # null: the value of hsm.yaml's `health:` (or hsm's default)
    interval_s: float | None = None
    consecutive_failures: int | None = None
    failure_rate: float | None = None
    min_tasks: int | None = None


@dataclass
class PoolConf:
    name: str = "local"
    # name -> the keys of an hsm.yaml `sources:` entry ({type: local, max_parallel: 2}, ...)
    sources: dict[str, Any] = field(default_factory=lambda: {"local": {"type": "local"}})


@dataclass
class HsmLauncherConf:
    _target_: str = "hydra_plugins.hsm_launcher.launcher.HsmLauncher"
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"pool": "local"}])
    # "local:2,server1:8": same syntax as `hsm run --sources`; names come from the pool,
    # then from hsm.yaml. Empty: every source of the pool at its configured size.
    sources: str | None = None
    pool: Any = None
    strategy: str | None = None  # null: hsm.yaml's, else least_loaded
    max_retries: int | None = None  # null: hsm.yaml's, else 0
    max_parallel: int | None = None  # over all sources together
    timeout_s: float | None = None  # per job
    health: HealthConf = field(default_factory=HealthConf)
    sync: str | None = None  # warn | fail | push, for every remote source of the run
    # true: a source that cannot start stops the launch; false: the jobs run on the
    # sources that started and the others are tried again; null: hsm.yaml's (false)
    require_all_sources: bool | None = None
    # Local jobs prepared (forked, composed) ahead of a free slot, waiting at the gate.
    ahead: int = 2
    progress: bool = True
    # Jobs' output on the terminal: failed (each failed job's last lines), all (every line,
    # prefixed by the job: [#3] ...), none. At most output_rate lines a second.
    output: str = "failed"
    output_rate: float = 20.0
    # hydra-submitit-launcher's keys, for every hpc source of the run (over the pool's
    # and hsm.yaml's values). null: not set here (the source's value, else its default:
    # see docs/hpc.md). submitit_folder is accepted and not used.
    submitit_folder: str | None = None
    timeout_min: int | None = None
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int | None = None
    mem_gb: float | None = None
    nodes: int | None = None
    name: str | None = None
    stderr_to_stdout: bool | None = None
    partition: str | None = None
    qos: str | None = None
    comment: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    gres: str | None = None
    cpus_per_gpu: int | None = None
    gpus_per_task: int | None = None
    mem_per_gpu: str | None = None
    mem_per_cpu: str | None = None
    account: str | None = None
    signal_delay_s: int | None = None
    max_num_timeout: int | None = None
    python: str | None = None
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    array_parallelism: int | None = None
    setup: list[str] | None = None
    srun_args: list[str] | None = None
    signal: str | None = None  # hsm's: the warning signal (default URG)


@dataclass
class HsmSweeperConf:
    _target_: str = "hydra_plugins.hsm_launcher.sweeper.HsmSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    # Groups of keys whose sweeps are zipped instead of crossed: [[model.lr, batch_size]]
    paired: list[list[str]] | None = None
    num_samples: int | None = None  # random points from the space (without replacement)
    seed: int = 0
    resume: bool = False


def _register() -> None:
    cs = ConfigStore.instance()
    cs.store(group="hydra/launcher", name="hsm", node=HsmLauncherConf, provider="hsm")
    cs.store(group="hydra/sweeper", name="hsm", node=HsmSweeperConf, provider="hsm")
    cs.store(group=POOL_GROUP, name="local", node=PoolConf, provider="hsm")


_register()
