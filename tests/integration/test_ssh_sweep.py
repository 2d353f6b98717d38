"""A sweep over two real loopback ssh hosts: placement, HSM_* variables, hostile values
arriving byte-exact, results here while the sweep still runs, cancel."""

from __future__ import annotations

import asyncio
import json
import os
import posixpath
import time
from pathlib import Path

from hsm_core.model import PYTHON, TaskEvent, TaskState
from hsm_core.orchestrate import context_for
from hsm_core.remote_agent import JOURNAL_DIR, Journal
from hsm_core.sources.ssh.source import SSHSource
from tests.helpers import async_wait_for, wait_for
from tests.integration.ssh_support import command_tasks, make_project, new_store, run, ssh_spec
from tests.integration.test_local_engine import SUBMITIT_ENV
from tests.services import SSHEnv
from tests.sweep_utils import (
    LEAVES_BEHIND,
    check_nothing_left_behind,
    check_own_results,
    own_result_tasks,
)

HOSTILE = [
    "it's",
    '"double"',
    "'\"'\"'",
    "\\'",
    "back\\slash",
    "$(touch /tmp/hsm-pwned-ssh)",
    "`touch /tmp/hsm-pwned-ssh`",
    "a; touch /tmp/hsm-pwned-ssh",
    "a && touch /tmp/hsm-pwned-ssh",
    "a | cat",
    "> /tmp/hsm-pwned-ssh",
    "*",
    "~",
    "!event",
    "--leading-dash",
    "-",
    "new\nline",
    "cr\rlf",
    "tab\there",
    "ctl\x01\x1b[31m",
    "%s %d %n {}",
    "rtl \u202eoverride",
    "\u4e2d\u6587 \U0001f600",
    "x" * 20_000,
    "",
    "lone \udcff\udcfe bytes",
    "$HOME ${PATH}",
    "key=value,with,commas",
]


def test_sweep_over_two_hosts(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    tasks = command_tasks([["python3", "echo.py", f"value-{i}"] for i in range(12)])
    store = new_store(tmp_path / "sweep", project, tasks)
    specs = [ssh_spec(ssh_env, "h1"), ssh_spec(ssh_env, "h2")]

    outcome = asyncio.run(run(store, specs))

    assert outcome.counts[TaskState.COMPLETED] == 12, outcome.counts
    latest = store.latest_attempts()
    assert {a.source for a in latest.values()} == {"h1", "h2"}
    for task in store.tasks():
        tdir = store.sweep_dir / "tasks" / task.name
        assert (tdir / "stdout.log").read_bytes() == task.argv[2].encode()
        assert not (tdir / "result.json").exists()  # hsm's record is in the agent's journal
        env = json.loads((tdir / "results" / "env.json").read_text())
        host = latest[task.key].source
        project_dir = next(s for s in specs if s.name == host).options["project_dir"]
        assert env["HSM_SWEEP_ID"] == store.sweep_id
        assert env["HSM_TASK_ID"] == task.name
        remote_sweep = f"{project_dir}/.hsm/sweeps/{store.sweep_id}"
        assert env["HSM_TASK_DIR"] == f"{remote_sweep}/tasks/{task.name}"
        assert env["HSM_SWEEP_DIR"] == remote_sweep
        assert env["cwd"] == project_dir  # tasks run in the remote project copy
        # Really started through that host's sshd (server address of the session).
        assert env["SSH_CONNECTION"].split()[2] == ssh_env.host(host).address
        assert not (tdir / ".hsm_pid.json").exists()  # agent bookkeeping stays remote
    store.close()


def test_submitit_job_environment_works_on_an_ssh_host(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    store = new_store(tmp_path / "sweep", project, command_tasks([[PYTHON, "-c", SUBMITIT_ENV]]))
    outcome = asyncio.run(run(store, [ssh_spec(ssh_env, "h1")]))
    assert outcome.counts[TaskState.COMPLETED] == 1, outcome.counts
    (task,) = store.tasks()
    out = (store.sweep_dir / "tasks" / task.name / "stdout.log").read_text().split()
    assert out == ["LocalJobEnvironment", task.name, "0", "0", "1", "1", task.name]
    store.close()


def test_hostile_values_arrive_byte_exact(ssh_env: SSHEnv, tmp_path: Path) -> None:
    marker = Path("/tmp/hsm-pwned-ssh")
    marker.unlink(missing_ok=True)
    project = make_project(tmp_path / "proj")
    params = [{"i": i} if "\udcff" in v else {"i": i, "v": v} for i, v in enumerate(HOSTILE)]
    tasks = command_tasks([["python3", "echo.py", v] for v in HOSTILE], params)
    store = new_store(tmp_path / "sweep", project, tasks)
    specs = [ssh_spec(ssh_env, "h1"), ssh_spec(ssh_env, "h2")]

    outcome = asyncio.run(run(store, specs))

    assert outcome.counts[TaskState.COMPLETED] == len(HOSTILE), outcome.counts
    for task, value in zip(sorted(store.tasks(), key=lambda t: t.num), HOSTILE, strict=True):
        got = (store.sweep_dir / "tasks" / task.name / "stdout.log").read_bytes()
        assert got == os.fsencode(value), (task.name, value[:40])
    assert not marker.exists(), "a parameter value was run as shell code"
    store.close()


def test_results_are_local_before_the_sweep_ends(ssh_env: SSHEnv, tmp_path: Path) -> None:
    """Each finished folder is here when its COMPLETED is recorded, while others run."""
    project = make_project(tmp_path / "proj")
    argvs = [["sh", "-c", "echo fast-$0", str(i)] for i in range(3)]
    argvs.append(["sh", "-c", "sleep 3; echo slow"])
    tasks = command_tasks(argvs)
    store = new_store(tmp_path / "sweep", project, tasks)
    seen: dict[str, tuple[float, bool]] = {}
    names = {t.key: t.name for t in tasks}

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.COMPLETED:
            tdir = store.sweep_dir / "tasks" / names[ev.key]
            here = (tdir / "stdout.log").is_file()
            seen[names[ev.key]] = (time.monotonic(), here)

    outcome = asyncio.run(run(store, [ssh_spec(ssh_env, "h1", slots=4)], listener=listener))
    end = time.monotonic()

    assert outcome.counts[TaskState.COMPLETED] == 4
    assert all(here for _, here in seen.values()), seen
    for name in ("task_001", "task_002", "task_003"):
        assert end - seen[name][0] > 1.5, f"{name} collected only at the end"
        out = (store.sweep_dir / "tasks" / name / "stdout.log").read_text()
        assert out.startswith("fast-")
    store.close()


def test_cancel_kills_the_remote_process_group(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    # A task with a grandchild: cancel must take the whole group.
    tasks = command_tasks([["sh", "-c", "sleep 60 & sleep 60; wait"] for _ in range(2)])
    store = new_store(tmp_path / "sweep", project, tasks)
    spec = ssh_spec(ssh_env, "h1", kill_grace=1)
    ctx = context_for(store)
    source = SSHSource(spec, ctx)
    running: set[str] = set()

    def listener(ev: TaskEvent) -> None:
        if ev.state is TaskState.RUNNING:
            running.add(ev.key)

    async def scenario() -> tuple[object, list[int]]:
        holder: dict[str, object] = {}
        job = asyncio.create_task(
            run(
                store,
                [spec],
                sources=[source],
                listener=listener,
                engine_hook=lambda e: holder.setdefault("engine", e),
            )
        )
        await async_wait_for(lambda: len(running) == 2, timeout=15, message="2 tasks running")
        # The agent's journal of what it started (hosts share this filesystem).
        journal = Journal(posixpath.join(source.sweep_dir, JOURNAL_DIR)).refresh()
        pgids = [rec["pid"] for rec in journal.starts.values()]
        assert len(pgids) == 2
        holder["engine"].cancel()  # type: ignore[attr-defined]
        return await asyncio.wait_for(job, 20), pgids

    outcome, pgids = asyncio.run(scenario())

    assert outcome.counts[TaskState.CANCELLED] == 2, outcome.counts  # type: ignore[attr-defined]
    wait_for(lambda: not live_members(pgids), timeout=10, message="remote groups gone")
    store.close()


def live_members(pgids: list[int]) -> list[int]:
    """Processes (not zombies) in these process groups; the hosts share our /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) in pgids:
            found.append(int(entry))
    return found


def test_large_outputs_by_sftp_and_excluded_globs(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    script = (
        'cd "$HSM_TASK_DIR/results" && head -c 300000 /dev/urandom > big.bin && '
        "cp big.bin $0 && echo skip > model.ckpt && mkdir -p deep/er && echo d > deep/er/f"
    )
    tasks = command_tasks([["sh", "-c", script, "/tmp/hsm-ssh-big-copy"]])
    store = new_store(tmp_path / "sweep", project, tasks)
    spec = ssh_spec(ssh_env, "h1", inline_max=4096, exclude=["*.ckpt"])

    outcome = asyncio.run(run(store, [spec]))

    assert outcome.counts[TaskState.COMPLETED] == 1
    results = store.sweep_dir / "tasks" / "task_001" / "results"
    assert (results / "big.bin").read_bytes() == Path("/tmp/hsm-ssh-big-copy").read_bytes()
    assert (results / "deep" / "er" / "f").read_text() == "d\n"
    assert not (results / "model.ckpt").exists()
    Path("/tmp/hsm-ssh-big-copy").unlink()
    store.close()


def test_setup_lines_and_one_gpu_per_running_task(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    # The setup line's variable, the task's argv and the GPU of each task end up in stdout.
    script = 'echo "$HSM_MARK|$0|$CUDA_VISIBLE_DEVICES"; sleep 0.3'
    tasks = command_tasks([["sh", "-c", script, f"it's {i}"] for i in range(4)])
    store = new_store(tmp_path / "sweep", project, tasks)
    spec = ssh_spec(ssh_env, "h1", slots=4, setup=["export HSM_MARK='set up'", "cd ."], gpus=[3, 5])

    outcome = asyncio.run(run(store, [spec]))

    assert outcome.counts[TaskState.COMPLETED] == 4
    remote_sweep = f"{spec.options['project_dir']}/.hsm/sweeps/{store.sweep_id}"
    journal = Journal(posixpath.join(remote_sweep, JOURNAL_DIR)).refresh()  # same filesystem
    spans: list[tuple[float, float, str]] = []
    for task in store.tasks():
        tdir = store.sweep_dir / "tasks" / task.name
        mark, arg, gpu = (tdir / "stdout.log").read_text().strip().split("|")
        assert (mark, arg) == ("set up", task.argv[3])
        record = journal.exits[(f"{remote_sweep}/tasks/{task.name}", 1)]
        spans.append((record["start"], record["end"], gpu))
    assert sorted(g for _, _, g in spans) == ["3", "3", "5", "5"]
    for a in spans:  # tasks sharing a GPU never overlap: 2 GPUs, 2 at a time
        for b in spans:
            if a is not b and a[2] == b[2]:
                assert a[1] <= b[0] or b[1] <= a[0], (a, b)
    store.close()


def test_a_tasks_own_result_json_is_collected_and_decides_nothing(
    ssh_env: SSHEnv, tmp_path: Path
) -> None:
    """On a host too, the exit status the agent saw decides, and the task's own
    result.json comes back as one of its files (issue 11, item 5)."""
    project = make_project(tmp_path / "proj")
    store = new_store(tmp_path / "sweep", project, own_result_tasks("python3"))
    asyncio.run(run(store, [ssh_spec(ssh_env, "h1", slots=4)]))
    check_own_results(store)
    store.close()


def test_what_a_task_leaves_behind_ends_with_it(ssh_env: SSHEnv, tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj")
    store = new_store(tmp_path / "sweep", project, command_tasks([LEAVES_BEHIND] * 2))
    asyncio.run(run(store, [ssh_spec(ssh_env, "h1", slots=2)]))
    check_nothing_left_behind(store)  # the loopback host shares this machine's processes
    store.close()
