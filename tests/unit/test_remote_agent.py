"""The remote agent driven directly over pipes (real processes, no ssh): launch, exit
events with inline files, kill of the whole group, timeout, re-attach by a new agent.

Every op these tests send and every event the agent answers with is checked against the
protocol's TypedDicts (remote_agent.ConfigOp ... ErrorEvent), which the orchestrator's
side is type-checked with: the types cannot drift from what travels."""

from __future__ import annotations

import base64
import functools
import json
import os
import signal
import subprocess
import sys
import time
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from hsm_core import remote_agent
from hsm_core.remote_agent import Journal
from hsm_core.sources.ssh.agent import agent_source
from tests.helpers import wait_for


def journal(root: Path) -> Journal:
    return Journal(str(root / "journal")).refresh()


def _members(union: Any) -> dict[str, type]:
    """The TypedDicts of a union by their tag (`op` or `ev`)."""
    out = {}
    for cls in typing.get_args(union):
        hints = _hints(cls)
        tag = hints.get("op", hints.get("ev"))
        (name,) = typing.get_args(tag)
        out[name] = cls
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # Literal is imported for the checker only: the agent runs where typing may lack it.
    return typing.get_type_hints(cls, localns={"Literal": Literal})


def _problems(value: Any, tp: Any, where: str) -> list[str]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return []
    if origin in (typing.Union, types.UnionType):
        fits = [a for a in args if not _problems(value, a, where)]
        return [] if fits else [f"{where}: {value!r} is not {tp}"]
    if origin is Literal:
        return [] if value in args else [f"{where}: {value!r} is not one of {args}"]
    if tp is type(None):
        return [] if value is None else [f"{where}: {value!r} is not null"]
    if typing.is_typeddict(tp):
        return _fits(value, tp, where)
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: {value!r} is not a list"]
        return [p for i, v in enumerate(value) for p in _problems(v, args[0], f"{where}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: {value!r} is not an object"]
        return [p for k, v in value.items() for p in _problems(v, args[1], f"{where}.{k}")]
    ok = (int, float) if tp is float else tp  # JSON has one kind of number
    if not isinstance(value, ok) or (isinstance(value, bool) and tp is not bool):
        return [f"{where}: {value!r} is not {tp.__name__}"]
    return []


def _fits(msg: Any, cls: Any, where: str) -> list[str]:
    if not isinstance(msg, dict):
        return [f"{where}: {msg!r} is not an object"]
    hints = _hints(cls)
    missing = sorted(cls.__required_keys__ - set(msg))
    unknown = sorted(set(msg) - set(hints))
    out = [f"{where}: missing {missing}"] if missing else []
    out += [f"{where}: unknown {unknown}"] if unknown else []
    return out + [p for k in set(msg) & set(hints) for p in _problems(msg[k], hints[k], k)]


OPS = _members(remote_agent.Op)
EVENTS = {**_members(remote_agent.Event), "hello": remote_agent.HelloEvent}


def check_message(msg: dict[str, Any], kinds: dict[str, type]) -> None:
    tag = msg.get("op", msg.get("ev"))
    assert tag in kinds, f"no TypedDict for {tag!r}: {msg}"
    problems = _fits(msg, kinds[tag], kinds[tag].__name__)
    assert not problems, problems


def test_the_message_check_finds_what_does_not_fit() -> None:
    check_message({"ev": "started", "id": "a", "pid": 3}, EVENTS)
    wrong: list[dict[str, Any]] = [
        {"ev": "started", "id": "a"},  # a key missing
        {"ev": "started", "id": "a", "pid": 3, "host": "x"},  # a key the type lacks
        {"ev": "started", "id": "a", "pid": "3"},  # a value of the wrong type
        {"ev": "exit", "id": "a", "record": None, "error": None, "files": {}, "large": [[{}]]},
        {"ev": "begun", "id": "a"},  # a kind of its own
    ]
    for bad in wrong:
        with pytest.raises(AssertionError):
            check_message(bad, EVENTS)
    assert set(OPS) == {"config", "launch", "kill", "scan", "ping"}


class Agent:
    def __init__(self, root: Path) -> None:
        # Started from its source text, as the ssh source does.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", agent_source()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.hello = self.recv()
        self.send(op="config", journal=str(root / "journal"))

    def send(self, **msg: Any) -> None:
        check_message(msg, OPS)
        self.send_unchecked(msg)

    def send_unchecked(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "agent exited"
        event: dict[str, Any] = json.loads(line)
        check_message(event, EVENTS)
        return event

    def until(self, ev: str, job: str) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            event = self.recv()
            if event.get("ev") == ev and event.get("id") == job:
                return event
        raise AssertionError(f"no {ev} for {job}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    a.send(op="config", slots=2, grace=1, exclude=["*.ckpt"])
    yield a
    a.close()


def launch(agent: Agent, job: str, d: Path, argv: list[str], **extra: Any) -> None:
    agent.send(
        op="launch",
        id=job,
        attempt=extra.pop("attempt", 1),
        dir=str(d),
        cwd=str(d.parent),
        argv=argv,
        env={"HSM_TASK_DIR": str(d), "PATH": os.environ["PATH"]},
        **extra,
    )


def test_exit_event_carries_the_folder(agent: Agent, tmp_path: Path) -> None:
    d = tmp_path / "t1"
    script = 'printf "%s" "$0" > "$HSM_TASK_DIR/results/v"; echo out; echo err >&2; exit 3'
    launch(agent, "j1", d, ["sh", "-c", script, "it's $(x) \udcff"], files={"in.txt": "aGk="})
    started = agent.until("started", "j1")
    done = agent.until("exit", "j1")

    assert started["pid"] > 0
    assert done["record"]["exit_code"] == 3 and done["record"]["attempt"] == 1
    files = {k: base64.b64decode(v) for k, v in done["files"].items()}
    assert files["stdout.log"] == b"out\n" and files["stderr.log"] == b"err\n"
    assert files["results/v"] == b"it's $(x) \xff"
    assert files["in.txt"] == b"hi"
    # The exit record is the agent's, in its journal: nothing of hsm's in the task folder.
    assert set(files) == {"stdout.log", "stderr.log", "results/v", "in.txt"}
    assert journal(tmp_path).exits[(str(d), 1)]["exit_code"] == 3  # the record stays on the host


def test_large_and_excluded_files(agent: Agent, tmp_path: Path) -> None:
    agent.send(op="config", slots=2, inline_max=1000, exclude=["*.ckpt"])
    d = tmp_path / "t2"
    script = "echo '{}' > .hsm_result.json; head -c 5000 /dev/zero > big.bin; echo x > model.ckpt"
    launch(agent, "j2", d, ["sh", "-c", f"cd {d} && {script}"])
    done = agent.until("exit", "j2")

    assert ".hsm_result.json" in done["files"]  # hsm's worker record: always inline, first
    assert [e[0] for e in done["large"]] == ["big.bin"]
    assert not any("ckpt" in name for name in done["files"])


def test_kill_takes_the_whole_group(agent: Agent, tmp_path: Path) -> None:
    d = tmp_path / "t3"
    launch(agent, "j3", d, ["sh", "-c", "sleep 60 & echo $! > child; wait"])
    agent.until("started", "j3")
    child = wait_for(lambda: (d.parent / "child").read_text().strip(), retry_on=(OSError,))
    agent.send(op="kill", ids=["j3"])
    done = agent.until("exit", "j3")

    assert done["record"]["cancelled"] is True
    assert done["record"]["exit_code"] == 128 + 15
    wait_for(lambda: not _alive(int(child)), timeout=5, message="grandchild killed")


def test_timeout_escalates_to_sigkill(agent: Agent, tmp_path: Path) -> None:
    d = tmp_path / "t4"
    launch(agent, "j4", d, ["sh", "-c", "trap '' TERM; sleep 30"], timeout=1)
    done = agent.until("exit", "j4")
    assert done["record"]["timed_out"] is True
    assert done["record"]["exit_code"] == 128 + 9


def test_queued_launch_waits_for_a_slot_and_can_be_cancelled(agent: Agent, tmp_path: Path) -> None:
    agent.send(op="config", slots=1, grace=1)
    launch(agent, "a", tmp_path / "a", ["sleep", "30"])
    launch(agent, "b", tmp_path / "b", ["true"])
    agent.until("started", "a")
    agent.send(op="kill", ids=["b", "a"])
    queued = agent.until("exit", "b")
    assert queued["record"]["cancelled"] and queued["record"]["queued"]
    assert not (tmp_path / "b").exists()  # never started
    assert agent.until("exit", "a")["record"]["cancelled"]


def test_files_a_launch_carries_are_written_on_receipt(agent: Agent, tmp_path: Path) -> None:
    """A shared payload travels with the first launch that needs it: it must be on disk
    for the later ones even when that first launch never starts (killed while queued)."""
    agent.send(op="config", slots=1, grace=1)
    shared = tmp_path / "payload" / "hydra_x.pkl"
    launch(agent, "a", tmp_path / "a", ["sleep", "30"])
    launch(agent, "b", tmp_path / "b", ["true"], files={str(shared): "c2hhcmVk"})
    agent.until("started", "a")
    agent.send(op="kill", ids=["b"])
    assert agent.until("exit", "b")["record"]["queued"]
    assert shared.read_bytes() == b"shared"
    launch(agent, "c", tmp_path / "c", ["sh", "-c", f"cat {shared}"])
    agent.send(op="kill", ids=["a"])
    agent.until("exit", "a")
    done = agent.until("exit", "c")
    assert base64.b64decode(done["files"]["stdout.log"]) == b"shared"


def test_a_new_agent_reattaches_after_the_first_one_dies(tmp_path: Path) -> None:
    first = Agent(tmp_path)
    first.send(op="config", slots=2)
    d_run, d_done = tmp_path / "run", tmp_path / "done"
    gate = tmp_path / "gate"  # r runs until the second agent has seen it running
    wait = f'while [ ! -e "{gate}" ]; do sleep 0.05; done; echo late'
    launch(first, "r", d_run, ["sh", "-c", wait])
    launch(first, "d", d_done, ["sh", "-c", "echo early"])
    first.until("started", "r")
    first.until("exit", "d")
    assert first.proc.stdin is not None
    first.proc.stdin.close()  # the orchestrator side goes away: the tasks must not

    second = Agent(tmp_path)
    try:
        second.send(
            op="scan",
            tasks=[
                {"id": "r", "attempt": 1, "dir": str(d_run)},
                {"id": "d", "attempt": 1, "dir": str(d_done)},
                {"id": "gone", "attempt": 1, "dir": str(tmp_path / "never")},
                {"id": "old", "attempt": 2, "dir": str(d_done)},  # record is attempt 1
            ],
        )
        events = {}
        while len(events) < 4:
            e = second.recv()
            events[e["id"]] = e
        assert events["r"]["ev"] == "running"
        assert events["d"]["ev"] == "exit" and events["d"]["record"]["exit_code"] == 0
        assert events["gone"]["record"] is None and events["gone"]["never_started"]
        assert events["old"]["record"] is None and events["old"]["never_started"]
        gate.touch()
        late = second.until("exit", "r")  # watched through a pidfd, not a child
        assert base64.b64decode(late["files"]["stdout.log"]) == b"late\n"
        assert late["record"]["exit_code"] == 0  # written by the first agent
        assert first.proc.wait(10) == 0, "the first agent ends once its task has"
    finally:
        second.close()


def test_agent_outlives_its_orchestrator_until_its_tasks_end(tmp_path: Path) -> None:
    a = Agent(tmp_path)
    a.send(op="config", slots=1)
    d = tmp_path / "t"
    launch(a, "x", d, ["sh", "-c", "sleep 0.5; echo done"])
    launch(a, "queued", tmp_path / "q", ["true"])
    a.until("started", "x")
    assert a.proc.stdin is not None and a.proc.stdout is not None
    a.proc.stdin.close()
    a.proc.stdout.close()  # writing events now fails: the agent must carry on regardless
    assert a.proc.wait(20) == 0
    record = journal(tmp_path).exits[(str(d), 1)]
    assert record["exit_code"] == 0 and (d / "stdout.log").read_text() == "done\n"
    assert not (tmp_path / "q").exists(), "a launch still queued must not start after EOF"


# Waits until the test creates `go` beside the task folders (the launch's cwd).
WAIT_FOR_GO = "while [ ! -e go ]; do sleep 0.02; done; "


def test_a_task_whose_agent_was_killed_is_recorded_by_its_keeper(tmp_path: Path) -> None:
    first = Agent(tmp_path)
    first.send(op="config", slots=1)
    assert first.hello["keeper"] == first.proc.pid  # the process we started keeps the agent
    d = tmp_path / "t"
    launch(first, "x", d, ["sh", "-c", WAIT_FOR_GO + "exit 3"])
    first.until("started", "x")
    os.kill(first.hello["pid"], signal.SIGKILL)  # the agent, not its keeper
    second = Agent(tmp_path)
    try:
        second.send(op="scan", tasks=[{"id": "x", "attempt": 1, "dir": str(d)}])
        assert second.recv()["ev"] == "running"
        (tmp_path / "go").touch()
        done = second.until("exit", "x")
        assert done["record"]["exit_code"] == 3 and done["record"]["keeper"] is True
        assert first.proc.wait(10) == 128 + 9  # the keeper ends with its last orphan
    finally:
        second.close()


def test_a_task_whose_agent_and_keeper_were_killed_is_reported_lost(tmp_path: Path) -> None:
    first = Agent(tmp_path)
    first.send(op="config", slots=1)
    d = tmp_path / "t"
    launch(first, "x", d, ["sh", "-c", WAIT_FOR_GO])
    first.until("started", "x")
    first.proc.kill()  # nobody is left to write the exit record
    os.kill(first.hello["pid"], signal.SIGKILL)
    first.proc.wait()
    second = Agent(tmp_path)
    try:
        second.send(op="scan", tasks=[{"id": "x", "attempt": 1, "dir": str(d)}])
        assert second.recv()["ev"] == "running"
        (tmp_path / "go").touch()
        gone = second.until("exit", "x")
        assert gone["record"] is None and not gone.get("never_started")
        assert "without an exit record" in gone["error"]
    finally:
        second.close()


def test_adopted_tasks_hold_their_slots(tmp_path: Path) -> None:
    """A new agent that watches another's running tasks starts nothing in their slots."""
    first = Agent(tmp_path)
    first.send(op="config", slots=2)
    a, b = tmp_path / "a", tmp_path / "b"
    launch(first, "a", a, ["sh", "-c", WAIT_FOR_GO])
    launch(first, "b", b, ["sh", "-c", WAIT_FOR_GO])
    first.until("started", "a")
    first.until("started", "b")
    os.kill(first.hello["pid"], signal.SIGKILL)
    second = Agent(tmp_path)
    try:
        second.send(op="config", slots=2)
        second.send(op="scan", tasks=[{"id": "a", "attempt": 1, "dir": str(a)}])
        assert second.recv()["ev"] == "running"
        launch(second, "c", tmp_path / "c", ["true"])
        launch(second, "d", tmp_path / "d", ["true"])
        events = [second.recv() for _ in range(3)]
        # One slot is held by "a" (adopted): "d" waits until "c" (or "a") is over.
        kinds = [(e["ev"], e["id"]) for e in events]
        assert kinds[0] == ("started", "c"), kinds
        assert ("started", "d") not in kinds[:2], kinds
    finally:
        (tmp_path / "go").touch()
        second.close()


def test_what_a_task_leaves_behind_ends_with_it(agent: Agent, tmp_path: Path) -> None:
    """A background child in the task's group, and one that left it (setsid), are
    stopped once the task has exited normally (issue 11, item 8)."""
    d = tmp_path / "t"
    script = "sleep 60 & echo $! > same; setsid sleep 61 & echo $! > own; sleep 0.3; exit 0"
    launch(agent, "x", d, ["sh", "-c", f"cd {d}; {script}"])
    done = agent.until("exit", "x")
    assert done["record"]["exit_code"] == 0
    same, own = (int((d / n).read_text()) for n in ("same", "own"))
    wait_for(lambda: not _alive(same), timeout=10, message="the group's leftover stopped")
    wait_for(lambda: not _alive(own), timeout=10, message="the setsid leftover stopped")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stream_sends_whole_lines_as_they_come_and_the_rest_before_exit(
    agent: Agent, tmp_path: Path
) -> None:
    d = tmp_path / "t1"
    go = tmp_path / "go"
    script = f'echo one; echo two >&2; while [ ! -e {go} ]; do sleep 0.05; done; printf "tail"'
    agent.send(op="config", stream=True)
    launch(agent, "j1", d, ["sh", "-c", script])
    events: list[dict[str, Any]] = []
    while {e.get("stream") for e in events if e.get("ev") == "out"} != {"stdout", "stderr"}:
        events.append(agent.recv())  # both lines arrive while the task waits for `go`
    assert not any(e.get("ev") == "exit" for e in events)
    go.touch()
    while events[-1].get("ev") != "exit":
        events.append(agent.recv())
    out = [(e["stream"], e["text"]) for e in events if e.get("ev") == "out"]
    assert out == [("stdout", "one\n"), ("stderr", "two\n"), ("stdout", "tail")]


def test_no_stream_unless_asked(agent: Agent, tmp_path: Path) -> None:
    d = tmp_path / "t1"
    launch(agent, "j1", d, ["sh", "-c", "echo one; sleep 0.5; echo two"])
    events = [agent.recv()]
    while events[-1].get("ev") != "exit":
        events.append(agent.recv())
    assert [e["ev"] for e in events] == ["started", "exit"]


def test_the_keeper_names_a_task_its_agent_could_not_journal(tmp_path: Path) -> None:
    """An agent killed between a launch line and the start line leaves a task only its
    environment names (or, ended already, its start time): the keeper finds it."""
    from hsm_core import remote_agent as ra

    keeper = ra.Keeper(agent=None, paths_fd=-1)
    d = str(tmp_path / "t")
    launch = {"ticks": ra.ticks_now()}
    env = {**os.environ, "HSM_TASK_DIR": d, "HSM_ATTEMPT": "2"}
    live = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    other = subprocess.Popen(["sleep", "30"], env={**env, "HSM_ATTEMPT": "1"})
    try:
        assert keeper.find_launched((d, 2), launch, known=set()) == live.pid
    finally:
        for p in (live, other):
            p.kill()
            p.wait()
    ended = subprocess.Popen(["true"], start_new_session=True)  # a zombie until waited for
    wait_for(lambda: (ra.proc_stat(ended.pid) or ("",))[0] == "Z", timeout=10)
    try:
        assert keeper.find_launched((d, 3), launch, known=set()) == ended.pid
        assert keeper.find_launched((d, 3), launch, known={ended.pid}) is None
    finally:
        ended.wait()


def test_a_launch_without_its_start_holds_its_slot_until_the_keeper_says(tmp_path: Path) -> None:
    """A new agent that finds only a launch line (its agent died in between) waits for
    the keeper's word: the task's start line (then it watches it), or `unstarted`."""
    from hsm_core import remote_agent as ra

    me, my_start = os.getpid(), ra.proc_stat(os.getpid())[1]  # type: ignore[index]
    journal = tmp_path / "journal"
    journal.mkdir()
    path = journal / ra.journal_name(ra.boot_id(), 1, "0")  # an agent long gone
    d_run, d_none = str(tmp_path / "run"), str(tmp_path / "none")
    who = {"keeper": me, "keeper_start": my_start, "start": time.time()}
    lines = [{"e": "launch", "dir": d, "attempt": 1, **who} for d in (d_run, d_none)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    agent = Agent(tmp_path)
    task = subprocess.Popen(["sh", "-c", WAIT_FOR_GO], cwd=tmp_path, start_new_session=True)
    try:
        agent.send(op="config", slots=2)
        tasks = [{"id": "r", "attempt": 1, "dir": d_run}, {"id": "n", "attempt": 1, "dir": d_none}]
        agent.send(op="scan", tasks=tasks)
        launch(agent, "c", tmp_path / "c", ["true"])  # both slots held: it must wait
        start = {"e": "start", "dir": d_run, "attempt": 1, "pid": task.pid, **who}
        start["pid_start"] = ra.proc_stat(task.pid)[1]  # type: ignore[index]
        with open(path, "a") as f:
            f.write(json.dumps(start) + "\n")
            f.write(
                json.dumps({"e": "unstarted", "dir": d_none, "attempt": 1, "time": time.time()})
            )
            f.write("\n")
        first = [agent.recv() for _ in range(2)]
        assert {(e["ev"], e["id"]) for e in first} == {("running", "r"), ("exit", "n")}
        assert next(e for e in first if e["id"] == "n")["never_started"] is True
        assert agent.recv()["id"] == "c"  # started once "n" gave its slot back
    finally:
        (tmp_path / "go").touch()
        task.wait()
        agent.close()


def test_the_rarer_messages_fit_their_types_too(agent: Agent, tmp_path: Path) -> None:
    """Pong, error, an exit with sums of a hashed large file, a launch that fails: each
    is checked by `recv` like every event above."""
    agent.send(op="ping", seq=7, path=str(tmp_path))
    pong = agent.recv()
    assert pong["ev"] == "pong" and pong["seq"] == 7 and pong["disk_free"] > 0
    agent.send(op="config", inline_max=10, checksums=True)
    d = tmp_path / "t"
    launch(agent, "big", d, ["sh", "-c", f"cd {d} && echo 0123456789abc > big && mkdir x.ckpt"])
    done = agent.until("exit", "big")
    assert "big" in done["sums"] and [e[0] for e in done["large"]] == ["big"]
    assert done["excluded"] == [["x.ckpt/", -1]]  # a folder
    launch(agent, "bad", Path("/dev/null/t"), ["true"])
    failed = agent.until("exit", "bad")
    assert failed["launch_error"] and failed["record"] is None
    agent.send_unchecked({"op": "nonsense"})
    assert agent.recv() == {"ev": "error", "id": None, "msg": "unknown op 'nonsense'"}
