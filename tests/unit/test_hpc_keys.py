"""submitit's launcher keys: accepted as `hydra.launcher.<key>` and as source keys, turned
into the sbatch / qsub lines they mean, one clear line where a scheduler lacks one."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from hsm_core.config import HsmConfig
from hsm_core.errors import ConfigError
from hsm_core.model import SourceSpec
from hsm_core.sources.hpc import keys as hpc_keys
from hsm_core.sources.hpc.options import parse_options
from hsm_core.sources.hpc.pbs.scheduler import PBS
from hsm_core.sources.hpc.slurm import Slurm
from hydra_plugins.hsm_launcher._settings import resolve_sources, settings_from
from hydra_plugins.hsm_launcher.config import HsmLauncherConf

# Every key of hydra-submitit-launcher's SlurmQueueConf on hydra's main branch (1.4.0.dev9;
# the installed 1.2.0 lacks `python` and `srun_args`).
SLURM_QUEUE_CONF = {
    "submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node",
    "mem_gb", "nodes", "name", "stderr_to_stdout", "partition", "qos", "comment",
    "constraint", "exclude", "gres", "cpus_per_gpu", "gpus_per_task", "mem_per_gpu",
    "mem_per_cpu", "account", "signal_delay_s", "max_num_timeout", "python",
    "additional_parameters", "array_parallelism", "setup", "srun_args",
}  # fmt: skip

# A value for each key, as a submitit user would write it.
EVERY_KEY: dict[str, Any] = {
    "submitit_folder": "${hydra.sweep.dir}/.submitit/%j",
    "timeout_min": 90,
    "cpus_per_task": 4,
    "gpus_per_node": 2,
    "tasks_per_node": 1,
    "mem_gb": 32,
    "nodes": 1,
    "name": "my_app",
    "stderr_to_stdout": True,
    "partition": "gpu",
    "qos": "high",
    "comment": "paper run",
    "constraint": "a100",
    "exclude": "node[1-3]",
    "gres": "gpu:2",
    "cpus_per_gpu": 2,
    "gpus_per_task": 1,
    "mem_per_gpu": "16G",
    "mem_per_cpu": "4G",
    "account": "proj1",
    "signal_delay_s": 120,
    "max_num_timeout": 3,
    "python": "/opt/venv/bin/python",
    "additional_parameters": {"mail_type": "END", "exclusive": True},
    "array_parallelism": 8,
    "setup": ["module load cuda"],
    "srun_args": ["--cpu-bind=none"],
}


def spec(**options: Any) -> SourceSpec:
    return SourceSpec("cluster", "hpc", 4, options)


def sbatch_lines(opts: Any) -> list[str]:
    text = (
        Slurm(opts)
        .executor("/tmp/hsm-unit-never-written", 8)
        ._make_submission_file_text("CMD", "u")
    )
    return [ln for ln in text.splitlines() if ln.startswith("#SBATCH") or ln.startswith("srun")]


def test_every_submitit_key_is_a_launcher_key_and_a_source_key() -> None:
    assert set(hpc_keys.SUBMITIT_KEYS) == SLURM_QUEUE_CONF
    assert set(EVERY_KEY) == SLURM_QUEUE_CONF
    launcher = {f.name for f in dataclasses.fields(HsmLauncherConf)}
    assert launcher >= SLURM_QUEUE_CONF
    installed = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")
    assert {f.name for f in dataclasses.fields(installed.SlurmQueueConf)} <= launcher
    parse_options(spec(**EVERY_KEY))  # every key, one source entry: no error


def test_submitit_overrides_compose_on_the_hsm_launcher(tmp_path: Path) -> None:
    """What a submitit user types, with only `hydra/launcher=` changed."""
    from hydra import compose, initialize_config_dir

    (tmp_path / "config.yaml").write_text("task: 1\n")
    overrides = [
        "hydra/launcher=hsm",
        "hydra.launcher.timeout_min=3",
        "hydra.launcher.partition=debug",
        "hydra.launcher.mem_gb=32",
        "hydra.launcher.tasks_per_node=null",
        "hydra.launcher.python=/opt/venv/bin/python",
        "hydra.launcher.gres=gpu:1",
        "+hydra.launcher.additional_parameters.comment=x",
        "hydra.launcher.setup=[module load cuda]",
    ]
    with initialize_config_dir(str(tmp_path), version_base=None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    settings = settings_from(cfg.hydra.launcher)
    assert settings.hpc == {
        "timeout_min": 3,
        "partition": "debug",
        "mem_gb": 32.0,
        "python": "/opt/venv/bin/python",
        "gres": "gpu:1",
        "additional_parameters": {"comment": "x"},
        "setup": ["module load cuda"],
    }


def test_launcher_keys_override_the_pools_for_every_hpc_source() -> None:
    pool = {
        "sources": {
            "cluster": {"type": "hpc", "time": 5, "queue": "long", "mem_gb": 4},
            "local": {"type": "local"},
        }
    }
    settings = settings_from({"pool": pool, "timeout_min": 3, "partition": "debug"})
    specs = {s.name: s for s in resolve_sources(settings, HsmConfig(None))}
    assert dict(specs["cluster"].options) == {
        "timeout_min": 3,
        "partition": "debug",
        "mem_gb": 4,
    }
    opts = parse_options(specs["cluster"])
    assert (opts.time_min, opts.partition, opts.mem_gb) == (3, "debug", 4.0)
    assert "timeout_min" not in specs["local"].options


def test_launcher_keys_without_an_hpc_source_only_warn(caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_from({"partition": "gpu"})
    with caplog.at_level(logging.WARNING):
        specs = resolve_sources(settings, HsmConfig(None))
    assert [s.type for s in specs] == ["local"]
    assert "hydra.launcher.partition apply to hpc sources; this run has none" in caplog.text


def test_every_key_becomes_its_sbatch_line() -> None:
    opts = parse_options(spec(**EVERY_KEY))
    lines = sbatch_lines(opts)
    for line in (
        "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --mem=32G",
        "#SBATCH --nodes=1",
        "#SBATCH --job-name=my_app",
        "#SBATCH --partition=gpu",
        "#SBATCH --qos=high",
        "#SBATCH --comment='paper run'",
        "#SBATCH --constraint=a100",
        "#SBATCH --exclude='node[1-3]'",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --cpus-per-gpu=2",
        "#SBATCH --gpus-per-task=1",
        "#SBATCH --mem-per-gpu=16G",
        "#SBATCH --mem-per-cpu=4G",
        "#SBATCH --account=proj1",
        "#SBATCH --signal=URG@120",
        "#SBATCH --mail-type=END",
        "#SBATCH --exclusive",
        "#SBATCH --no-requeue",
    ):
        assert line in lines, (line, lines)
    assert not any(ln.startswith("#SBATCH --error") for ln in lines)  # stderr_to_stdout
    assert lines[-1].startswith("srun") and lines[-1].endswith("--cpu-bind=none CMD")
    assert (opts.python, opts.setup, opts.max_num_timeout) == (
        "/opt/venv/bin/python",
        ("module load cuda",),
        3,
    )
    names = [ln.split("=")[0] for ln in lines if ln.startswith("#SBATCH")]
    assert len(names) == len(set(names)), "an sbatch option written twice"


def test_defaults_write_what_they_wrote_before() -> None:
    lines = sbatch_lines(parse_options(spec()))
    assert "#SBATCH --signal=URG@60" in lines
    assert "#SBATCH --time=60" in lines
    assert "#SBATCH --job-name=hsm-cluster" in lines
    assert not any("gres" in ln or "ntasks" in ln for ln in lines)


def test_ranks_are_srun_tasks_and_a_failing_rank_stops_the_others() -> None:
    lines = sbatch_lines(parse_options(spec(tasks_per_node=2, nodes=2)))
    assert "#SBATCH --ntasks-per-node=2" in lines and "#SBATCH --nodes=2" in lines
    assert lines[-1].endswith("--kill-on-bad-exit=1 CMD")
    mine = sbatch_lines(parse_options(spec(tasks_per_node=2, srun_args=["--kill-on-bad-exit=0"])))
    assert mine[-1].endswith("--kill-on-bad-exit=0 CMD")


def test_a_raw_option_the_keys_do_not_write_passes_through() -> None:
    opts = parse_options(spec(directives=["--constraint=a100"], signal="USR2"))
    lines = sbatch_lines(opts)
    assert "#SBATCH --constraint=a100" in lines
    assert "#SBATCH --signal=USR2@60" in lines


@pytest.mark.parametrize(
    ("options", "key", "text"),
    [
        # Before: two `#SBATCH --job-name` lines, hsm's last (the user's silently lost).
        ({"directives": ["--job-name=mine"]}, "directives", "written by hsm from `name`"),
        (
            {"name": "a", "additional_parameters": {"job_name": "b"}},
            "additional_parameters",
            "--job-name is set twice: by `name` and by `additional_parameters`",
        ),
        # Before: the task function ran twice into one job dir, and "success".
        ({"directives": ["--ntasks-per-node=2"]}, "directives", "use tasks_per_node"),
        ({"additional_parameters": {"signal": "USR1@90"}}, "additional_parameters", "signal"),
        ({"directives": ["--array=0-3"]}, "directives", "hsm makes the arrays"),
        ({"directives": ["--no-requeue"]}, "directives", "requeue"),
        ({"gres": "gpu:1", "directives": ["--gres=gpu:2"]}, "directives", "set twice"),
        (
            {"directives": ["--comment=a"], "additional_parameters": {"comment": "b"}},
            "additional_parameters",
            "in `directives` and in `additional_parameters`",
        ),
        ({"time": 5, "timeout_min": 5}, "", "give `timeout_min` or `time`, not both"),
        ({"timeout_min": "5"}, "timeout_min", "whole number"),
        ({"mem_per_cpu": "lots"}, "mem_per_cpu", "size like"),
        ({"additional_parameters": ["--x"]}, "additional_parameters", "mapping"),
        ({"signal_delay_s": -1}, "signal_delay_s", ">= 0"),
        ({"signal": "KILL"}, "signal", "not one hsm sends"),
        ({"scheduler": "pbs", "tasks_per_node": 2}, "tasks_per_node", "one process per job"),
        ({"scheduler": "pbs", "gres": "gpu:1"}, "gres", "source cluster is PBS, which has no gres"),
        ({"scheduler": "pbs", "srun_args": ["-l"]}, "srun_args", "which has no srun_args"),
        (
            {"scheduler": "pbs", "additional_parameters": {"comment": "x"}},
            "additional_parameters",
            "directives",
        ),
        ({"scheduler": "pbs", "nodes": 2}, "nodes", "one process per job"),
    ],
)
def test_bad_keys_name_the_key_in_one_line(options: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_options(spec(**options))
    assert err.value.key == ("sources.cluster" + (f".{key}" if key else ""))
    assert text in str(err.value)
    assert "\n" not in str(err.value)


def test_a_launcher_key_pbs_lacks_names_the_launcher_key_and_the_source() -> None:
    pool = {"sources": {"pbs": {"type": "hpc", "scheduler": "pbs"}}}
    settings = settings_from({"pool": pool, "gres": "gpu:1"})
    with pytest.raises(ConfigError) as err:
        resolve_sources(settings, HsmConfig(None))
    assert err.value.key == "hydra.launcher.gres"
    assert "source pbs is PBS, which has no gres" in str(err.value)


def test_launcher_values_are_checked_where_they_are_typed() -> None:
    with pytest.raises(ConfigError) as err:
        settings_from({"timeout_min": 0})
    assert err.value.key == "hydra.launcher.timeout_min"


def test_pbs_equivalents_reach_the_qsub_script(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only for the executor's "is this a PBS host?" check: the emulated qsub/qstat.
    fakes = Path(__file__).parents[1] / "fakes" / "pbs"
    monkeypatch.setenv("PATH", f"{fakes}{os.pathsep}{os.environ['PATH']}")
    opts = parse_options(
        spec(
            scheduler="pbs",
            pbs_dialect="pro",
            timeout_min=90,
            cpus_per_task=4,
            gpus_per_node=2,
            mem_gb=32,
            name="my_app",
            partition="workq",
            account="proj1",
            stderr_to_stdout=True,
            setup=["module load cuda"],
        )
    )
    ex = PBS(opts).executor("/tmp/hsm-unit-never-written", 8)
    text = ex._make_submission_file_text("CMD", "u")
    for line in (
        "#PBS -l walltime=01:30:00",
        "#PBS -l select=1:ncpus=4:mem=32gb:ngpus=2",
        "#PBS -N my_app",
        "#PBS -q workq",
        "#PBS -A proj1",
        "#PBS -j oe",
        "module load cuda",
    ):
        assert line in text.splitlines(), (line, text)
