"""PBS dialects: golden scripts, recorded qstat / qsub outputs, the state table.

Golden scripts live in tests/data/pbs/golden_*.sh; after an intended change, regenerate
them with ``HSM_REGEN_GOLDEN=1 pytest tests/unit/test_pbs_dialect.py`` and review the diff.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hsm_core.sources.hpc.pbs import dialect as d
from hsm_core.sources.hpc.pbs.status import (
    FINAL_STATES,
    duration_s,
    map_state,
    parse_records,
    parse_status,
    unknown_ids,
)
from tests.helpers import assert_golden

DATA = Path(__file__).resolve().parents[1] / "data" / "pbs"
FAKES = Path(__file__).resolve().parents[1] / "fakes" / "pbs"


def recorded(name: str) -> str:
    """A recorded output without its leading ``#`` comment block (where it came from)."""
    lines = (DATA / name).read_text().splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


# ------------------------------------------------------------------ golden scripts

ARRAY = d.PBSParams(
    job_name="sweep",
    queue="gpu",
    account="abc123",
    timeout_min=90,
    cpus_per_task=4,
    gpus_per_node=1,
    mem_gb=16,
    array_parallelism=4,
    setup=("module load cuda/12.1", "conda activate ml"),
    directives=("-l place=scatter", "#PBS -W group_list=proj"),
)
SINGLE = d.PBSParams(
    job_name="train lr=0.1",
    timeout_min=5,
    nodes=2,
    cpus_per_task=8,
    mem_gb=1.5,
    export_env=False,
    stderr_to_stdout=True,
)
ARRAY_PATHS = d.ScriptPaths(
    "/shared/sweeps/run 1/logs/%j_%t_log.out",
    "/shared/sweeps/run 1/logs/%j_%t_log.err",
    "/shared/sweeps/run 1/logs",
)
SINGLE_PATHS = d.ScriptPaths(
    "/shared/sweeps/%j/%j_%t_log.out", "/shared/sweeps/%j/%j_%t_log.err", "/shared/sweeps"
)
COMMAND = "/opt/py/bin/python -u -m submitit.core._submit '/shared/sweeps/run 1/logs'"


@pytest.mark.parametrize("dialect", d.DIALECTS)
@pytest.mark.parametrize("kind", ["array", "single"])
def test_golden_script(dialect: d.Dialect, kind: str) -> None:
    if kind == "array":
        text = d.render_script(
            ARRAY, dialect=dialect, command=COMMAND, paths=ARRAY_PATHS, map_count=10
        )
    else:
        text = d.render_script(SINGLE, dialect=dialect, command=COMMAND, paths=SINGLE_PATHS)
    golden = DATA / f"golden_{dialect}_{kind}.sh"
    assert_golden(golden, text)


def test_golden_scripts_use_each_dialects_own_syntax() -> None:
    pro = (DATA / "golden_pro_array.sh").read_text()
    torque = (DATA / "golden_torque_array.sh").read_text()
    assert "#PBS -J 0-9%4" in pro and "-t " not in pro
    assert "#PBS -l select=1:ncpus=4:mem=16gb:ngpus=1" in pro
    assert "#PBS -t 0-9%4" in torque and "select=" not in torque
    assert "#PBS -l nodes=1:ppn=4:gpus=1" in torque and "#PBS -l mem=16gb" in torque
    assert '"$PBS_ARRAY_INDEX"' in pro and '"$PBS_ARRAYID"' in torque
    single = (DATA / "golden_torque_single.sh").read_text()
    assert "#PBS -l mem=3gb" in single  # Torque's mem is for all nodes: 2 x 1.5 GB
    assert "#PBS -N train_lr_0.1" in single and "-V" not in single


def test_pro_arrays_leave_out_not_rerunnable() -> None:
    params = d.PBSParams(directives=("-r n", "-l place=scatter"))
    pro = d.render_script(params, dialect="pro", command="true", paths=ARRAY_PATHS, map_count=3)
    torque = d.render_script(
        params, dialect="torque", command="true", paths=ARRAY_PATHS, map_count=3
    )
    single = d.render_script(params, dialect="pro", command="true", paths=ARRAY_PATHS)
    assert "#PBS -r n" not in pro and "#PBS -l place=scatter" in pro
    assert "#PBS -r n" in torque and "#PBS -r n" in single


def test_the_array_limit_is_only_written_when_it_limits() -> None:
    params = d.PBSParams(array_parallelism=256)
    text = d.render_script(params, dialect="pro", command="true", paths=ARRAY_PATHS, map_count=3)
    assert "#PBS -J 0-2\n" in text


@pytest.mark.parametrize(
    ("dialect", "env"),
    [
        ("pro", {"PBS_JOBID": "1234[5].pbs01", "PBS_ARRAY_INDEX": "5"}),
        ("torque", {"PBS_JOBID": "1234[5].login.example.org", "PBS_ARRAYID": "5"}),
        ("torque", {"PBS_JOBID": "1234-5.oldtorque", "PBS_ARRAYID": "5"}),  # Torque < 2.5
    ],
)
def test_script_logs_under_the_submitit_job_id(
    tmp_path: Path, dialect: d.Dialect, env: dict[str, str]
) -> None:
    """Run the rendered script for real: logs land where submitit looks, cwd is the
    submission directory, setup runs first; quotes and $ in the path stay literal."""
    folder = tmp_path / "it's a $HOME; (folder)"
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    paths = d.ScriptPaths(f"{folder}/%j_%t_log.out", f"{folder}/%j_%t_log.err", str(folder))
    params = d.PBSParams(setup=("echo setup-ran",))
    script = d.render_script(
        params, dialect=dialect, command="pwd; echo to-err >&2", paths=paths, map_count=8
    )
    (tmp_path / "job.sh").write_text(script)
    run_env = {"PATH": os.environ["PATH"], "PBS_O_WORKDIR": str(workdir), **env}
    subprocess.run(["bash", str(tmp_path / "job.sh")], env=run_env, cwd="/", check=True)
    out = (folder / "1234_5_0_log.out").read_text()
    assert out.splitlines() == ["setup-ran", str(workdir)]
    assert (folder / "1234_5_0_log.err").read_text() == "to-err\n"


def test_job_dependent_folder_is_created_by_the_job(tmp_path: Path) -> None:
    paths = d.ScriptPaths(
        f"{tmp_path}/%j/%j_%t_log.out", f"{tmp_path}/%j/%j_%t_log.err", str(tmp_path)
    )
    params = d.PBSParams(stderr_to_stdout=True)
    script = d.render_script(params, dialect="pro", command="echo hi >&2", paths=paths)
    (tmp_path / "job.sh").write_text(script)
    env = {"PATH": os.environ["PATH"], "PBS_O_WORKDIR": str(tmp_path), "PBS_JOBID": "77.s"}
    subprocess.run(["bash", str(tmp_path / "job.sh")], env=env, check=True)
    assert (tmp_path / "77" / "77_0_log.out").read_text() == "hi\n"


# ------------------------------------------------------------------ parameters


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tasks_per_node": 2}, "tasks_per_node must be 1"),
        ({"cpus_per_task": 0}, "cpus_per_task must be an integer >= 1"),
        ({"timeout_min": 1.5}, "timeout_min must be an integer"),
        ({"mem_gb": -1}, "mem_gb must be a number > 0"),
        ({"queue": "gpu; rm -rf /"}, "queue must be one word"),
        ({"directives": ["-l a=1\n echo injected"]}, "directive must be one line"),
        ({"setup": "module load x"}, "setup must be a list of strings"),
        ({"partition": "gpu"}, "unknown PBS parameter(s) ['partition']; valid parameters:"),
    ],
)
def test_bad_parameters_say_what_is_wrong(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match="PBS") as err:
        d.PBSParams.from_dict(params)
    assert message in str(err.value)


def test_log_folder_with_colon_is_refused() -> None:
    paths = d.ScriptPaths("/a:b/%j_%t_log.out", "/a:b/%j_%t_log.err", "/a:b")
    with pytest.raises(ValueError, match="cannot contain ':'"):
        d.render_script(d.PBSParams(), dialect="pro", command="true", paths=paths)


def test_sizes_and_durations() -> None:
    assert d.format_mem(16) == "16gb" and d.format_mem(1.5) == "1536mb"
    assert d.format_walltime(5) == "00:05:00" and d.format_walltime(1501) == "25:01:00"
    assert duration_s("01:00:04") == 3604 and duration_s("90") == 90 and duration_s("x") is None


# ------------------------------------------------------------------ ids and commands


@pytest.mark.parametrize(
    ("output", "seq", "index", "server"),
    [
        ("1234.pbs01\n", "1234", None, "pbs01"),  # PBS Pro qsub(1B): <seq>.<server>
        ("1234[].pbs01\n", "1234", "", "pbs01"),  # array: <seq>[].<server>
        ("1098[].hostname\n", "1098", "", "hostname"),  # Torque guide, qsub -t 0-4
        ("179.host.example.org\n", "179", None, "host.example.org"),
        ("qsub: waiting for job to start\n42.srv\n", "42", None, "srv"),
    ],
)
def test_qsub_output(output: str, seq: str, index: str | None, server: str) -> None:
    assert d.parse_qsub_output(output) == d.PBSJobId(seq, index, server)


def test_qsub_output_without_an_id_is_an_error() -> None:
    with pytest.raises(ValueError, match="qsub printed no job id"):
        d.parse_qsub_output("qsub: Unknown queue\n")


def test_job_ids_both_ways() -> None:
    assert d.parse_job_id("1234[5].srv") == d.PBSJobId("1234", "5", "srv")
    assert d.parse_job_id("1234-5.srv") == d.PBSJobId("1234", "5", "srv")  # Torque < 2.5
    assert d.parse_job_id("1234[5].srv").submitit_id == "1234_5"  # type: ignore[union-attr]
    assert d.parse_job_id("1234[].srv").submitit_id == "1234"  # type: ignore[union-attr]
    assert d.native_id("1234_5") == "1234[5]" and d.native_id("1234_5", "s") == "1234[5].s"


def test_one_status_command_for_all_jobs() -> None:
    ids = ["12_3", "12_4", "12_0", "9", "100"]
    servers = {"12": "pbs01", "9": "pbs01"}
    assert d.status_command("pro", ids, servers=servers) == [
        "qstat", "-x", "-f", "-F", "json", "-t", "9.pbs01", "12[].pbs01", "100",
    ]  # fmt: skip
    assert d.status_command("pro", ["9"], json=False) == ["qstat", "-x", "-f", "-t", "9"]
    assert d.status_command("torque", ids) == ["qstat", "-f", "-1", "-t", "9", "12[]", "100"]
    assert d.cancel_command(["12_3", "9"], servers) == ["qdel", "12[3].pbs01", "9.pbs01"]


def test_dialect_from_qstat_version() -> None:
    # PBS Pro / OpenPBS print to stdout (PRINT_VERSION_AND_EXIT in pbs_version.h);
    # Torque to stderr ("Version: %s\nCommit: %s" in src/cmds/qstat.c).
    assert d.detect_dialect("pbs_version = 19.1.1\n") == "pro"
    assert d.detect_dialect("Version: 6.1.3\nCommit: 5a6dd2e1a0f3\n") == "torque"
    assert d.detect_dialect("qstat: invalid option -- '-'\nusage: qstat [options]") is None


# ------------------------------------------------------------------ recorded qstat output


def states(dialect: d.Dialect, name: str) -> dict[str, str]:
    return {k: v["State"] for k, v in parse_status(dialect, recorded(name)).items()}


def test_pro_json_with_history_and_an_array() -> None:
    assert states("pro", "pro_qstat_xf_json.txt") == {
        "1": "PENDING",
        "2": "RUNNING",
        "3": "COMPLETED",
        "4": "FAILED",
        "5": "CANCELLED",  # qdel: substate 91, Exit_status 271
        "6": "TIMEOUT",  # Exit_status -29
        "7": "RUNNING",  # the array itself: B
        "7_0": "COMPLETED",  # X, Exit_status 0
        "7_1": "RUNNING",
        "7_2": "PENDING",
        "8": "PENDING",  # held
    }
    info = parse_status("pro", recorded("pro_qstat_xf_json.txt"))
    assert info["7_0"]["NativeID"] == "7[0].vbox" and info["4"]["ExitStatus"] == "1"
    assert info["4"]["Comment"].endswith("and failed")


def test_pro_json_that_does_not_parse_is_still_read() -> None:
    assert states("pro", "pro_qstat_json_invalid.txt") == {"53": "PENDING", "54": "COMPLETED"}
    assert states("pro", "pro_qstat_json_pp1240.txt") == {"11": "RUNNING", "12": "FAILED"}


def test_pro_text_output() -> None:
    assert states("pro", "pro_qstat_xf_text.txt") == {"4": "RUNNING", "5": "FAILED"}
    attrs = dict(parse_records(recorded("pro_qstat_xf_text.txt")))["4.scheduler"]
    assert attrs["Variable_List"].endswith("PBS_O_HOST=execute-1.internal.cloudapp.net")
    assert "PBS_O_LOGNAME=john.john" in attrs["Variable_List"]  # folded lines joined


def test_torque_text_outputs() -> None:
    # exit_status -1: the job never started (JOB_EXEC_FAIL1), not the task's fault
    assert states("torque", "torque_qstat_f_exit_status.txt") == {"179": "NODE_FAIL"}
    assert states("torque", "torque_qstat_f1t_array.txt") == {
        "1098_0": "COMPLETED",
        "1098_1": "FAILED",
        "1098_2": "CANCELLED",  # 271 = 256 + SIGTERM, well inside its walltime
        "1098_3": "RUNNING",
        "1098_4": "PENDING",
        "1098_5": "TIMEOUT",  # -11
        "1098_6": "OUT_OF_MEMORY",  # -10
        "1099": "CANCELLED",  # deleted while queued: no exit_status
        "1100": "TIMEOUT",  # killed by signal after using its whole walltime
    }


def test_unknown_job_lines() -> None:
    stderr = (
        "qstat: Unknown Job Id 17.pbs01\n"  # PBS Pro
        "qstat: Unknown Job Id Error 18[].login.example.org\n"  # Torque
        "qstat: 19.pbs01 Job has finished, use -x or -H to obtain historical job information\n"
        "qstat: cannot connect to server pbs01 (errno=111)\n"
    )
    assert unknown_ids(stderr, ["17.pbs01", "18[]", "19", "20"]) == {"17", "18", "19"}
    assert unknown_ids("qstat: cannot connect to server 20 (errno=111)\n", ["20"]) == set()


# ------------------------------------------------------------------ the state table


@pytest.mark.parametrize(
    ("dialect", "attrs", "state"),
    [
        ("pro", {"job_state": "Q"}, "PENDING"),
        ("pro", {"job_state": "W"}, "PENDING"),
        ("pro", {"job_state": "B"}, "RUNNING"),
        ("pro", {"job_state": "S"}, "SUSPENDED"),
        ("torque", {"job_state": "E"}, "COMPLETING"),
        ("pro", {"job_state": "F", "substate": "91", "Exit_status": "0"}, "CANCELLED"),
        ("pro", {"job_state": "F", "substate": "92", "Exit_status": "0"}, "COMPLETED"),
        ("pro", {"job_state": "X", "Exit_status": "-27"}, "OUT_OF_MEMORY"),
        ("pro", {"job_state": "F", "Exit_status": "-28"}, "TIMEOUT"),  # cput
        ("pro", {"job_state": "F", "Exit_status": "-20"}, "NODE_FAIL"),  # MoM lost
        ("pro", {"job_state": "F", "Exit_status": "-11"}, "NODE_FAIL"),  # Pro: rerun, not walltime
        ("torque", {"job_state": "C", "exit_status": "-11"}, "TIMEOUT"),
        ("torque", {"job_state": "C", "exit_status": "137"}, "FAILED"),  # the shell's child
        ("pro", {"job_state": "Z"}, "UNKNOWN"),
    ],
)
def test_state_table(dialect: d.Dialect, attrs: dict[str, str], state: str) -> None:
    assert map_state(dialect, attrs) == state


def test_final_states_are_the_ones_a_job_ends_in() -> None:
    assert {"RUNNING", "PENDING", "SUSPENDED", "COMPLETING", "UNKNOWN"}.isdisjoint(FINAL_STATES)
    assert {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "VANISHED"} <= FINAL_STATES


def test_fakes_are_named_as_fakes() -> None:
    for name in ("qsub", "qstat", "qdel"):
        text = (FAKES / name).read_text()
        assert f"FAKE PBS {name}" in text and os.access(FAKES / name, os.X_OK)


# ------------------------------------------------------------------ the submitit classes


def test_job_environment_reads_the_pbs_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import submitit

    from hsm_core.sources.hpc.pbs.executor import PBSJobEnvironment

    nodefile = tmp_path / "nodes"
    nodefile.write_text("n1\nn1\nn2\nn2\n")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "pbs")
    monkeypatch.setenv("PBS_JOBID", "1234[7].pbs01.example.org")
    monkeypatch.setenv("PBS_ARRAY_INDEX", "7")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    env = submitit.JobEnvironment()  # found through the plugin entry point
    assert isinstance(env, PBSJobEnvironment)
    assert (env.job_id, env.array_job_id, env.array_task_id) == ("1234_7", "1234", "7")
    assert env.hostnames == ["n1", "n2"] and env.global_rank == 0 and env.num_tasks == 1
    monkeypatch.delenv("PBS_ARRAY_INDEX")
    monkeypatch.setenv("PBS_JOBID", "99.torque-server")  # a plain Torque job
    assert PBSJobEnvironment().job_id == "99"


def test_executor_parameters_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hsm_core.sources.hpc.pbs.executor import PBSExecutor

    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")  # qsub, qstat
    ex = PBSExecutor(tmp_path / "logs", dialect="torque", python="/opt/py/bin/python")
    ex.update_parameters(queue="batch", cpus_per_task=2)
    with pytest.raises(ValueError, match="unknown PBS parameter"):
        ex.update_parameters(partition="gpu")
    with pytest.raises(ValueError, match="cpus_per_task must be an integer >= 1"):
        ex.update_parameters(cpus_per_task=0)
    assert ex.parameters == {"queue": "batch", "cpus_per_task": 2}  # nothing half-applied
    text = ex._make_submission_file_text(ex._submitit_command_str, "uid")
    assert "#PBS -q batch" in text and "#PBS -l nodes=1:ppn=2" in text
    assert text.rstrip().endswith(f"/opt/py/bin/python -u -m submitit.core._submit {ex.folder}")
    with pytest.raises(ValueError, match="unknown PBS dialect 'sge'"):
        PBSExecutor(tmp_path, dialect="sge")
    monkeypatch.setenv("PATH", str(tmp_path))  # no qsub here
    with pytest.raises(RuntimeError, match='Could not find "qsub" and "qstat"'):
        PBSExecutor(tmp_path, dialect="pro")
