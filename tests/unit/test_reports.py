"""Error classification, patterns, performance numbers, the timeline and the HTML page.

Stores are real SQLite journals built through SweepStore's API with chosen times, so every
number below can be worked out by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from hsm_core.model import TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.reporting import gantt, report_html
from hsm_core.reporting.errors_analysis import (
    Category,
    classify,
    exception_line,
    final_exception,
    signal_name,
    traceback_tail,
)
from hsm_core.reporting.failures import analyze
from hsm_core.reporting.monitor import health_lines, snapshot
from hsm_core.reporting.patterns import find_patterns
from hsm_core.reporting.performance import performance
from hsm_core.reporting.reports import analyze_sweep, write_reports, write_reports_safely
from hsm_core.reporting.sweepdata import load_sweep
from hsm_core.store import SweepStore

S, F, L, C = TaskState.RUNNING, TaskState.FAILED, TaskState.LOST, TaskState.COMPLETED

PY_TRACE = """\
Traceback (most recent call last):
  File "train.py", line 9, in <module>
    main()
  File "train.py", line 5, in main
    {line}
{exc}
"""


def trace(exc: str, line: str = "do_it()") -> str:
    return PY_TRACE.format(exc=exc, line=line)


# --------------------------------------------------------------- classification
@pytest.mark.parametrize(
    ("state", "code", "error", "logs", "group"),
    [
        (F, 1, "exit code 1", trace("MemoryError"), ("oom", "host")),
        (
            F,
            1,
            "exit code 1",
            trace("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
            ("oom", "CUDA"),
        ),
        (
            F,
            1,
            "exit code 1",
            trace("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB"),
            ("oom", "CUDA"),
        ),
        (
            F,
            137,
            "OUT_OF_MEMORY",
            "slurmstepd: error: Detected 1 oom-kill event(s) in StepId=38.batch",
            ("oom", "killed by the OOM killer"),
        ),
        (F, 137, "killed by SIGKILL", "Killed\n", ("signal", "SIGKILL")),
        (F, -9, None, "", ("signal", "SIGKILL")),
        (F, 139, None, "Fatal Python error: Segmentation fault\n", ("signal", "SIGSEGV")),
        (F, -15, "timed out after 2 s", "", ("time_limit", "")),
        (
            F,
            None,
            "TIMEOUT",
            "slurmstepd: error: *** JOB 41 ON n1 CANCELLED AT 2026-01-01T00:00:00 "
            "DUE TO TIME LIMIT ***",
            ("time_limit", ""),
        ),
        (
            F,
            1,
            "exit code 1",
            trace("ModuleNotFoundError: No module named 'torch'", "import torch"),
            ("import", ""),
        ),
        (
            F,
            1,
            "exit code 1",
            trace("ImportError: cannot import name 'x' from 'y'"),
            ("import", ""),
        ),
        # A script that does not compile prints no "Traceback" header at all.
        (
            F,
            1,
            "exit code 1",
            '  File "bad.py", line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n',
            ("syntax", ""),
        ),
        (F, 1, None, trace("IndentationError: unexpected indent"), ("syntax", "")),
        (
            F,
            1,
            None,
            trace("FileNotFoundError: [Errno 2] No such file or directory: 'data.csv'"),
            ("file_not_found", ""),
        ),
        (
            F,
            127,
            "exit code 127 (command not found; see stderr.log)",
            "sh: 1: trainx: not found\n",
            ("file_not_found", ""),
        ),
        (
            F,
            2,
            "exit code 2",
            "python: can't open file '/p/nope.py': [Errno 2] No such file or directory\n",
            ("file_not_found", ""),
        ),
        (F, 1, None, trace("ValueError: lr must be > 0"), ("exception", "ValueError")),
        (
            F,
            1,
            None,
            trace("mypkg.errors.DivergedError: loss is nan"),
            ("exception", "mypkg.errors.DivergedError"),
        ),
        (L, None, "ssh h1: connection lost", trace("ValueError: x"), ("host", "")),
        (F, 3, "exit code 3", "some output\n", ("other", "exit code 3")),
    ],
)
def test_classify(
    state: TaskState, code: int | None, error: str | None, logs: str, group: tuple[str, str]
) -> None:
    assert classify(state, code, error, logs).group == group


def test_only_the_final_exception_counts() -> None:
    logs = "WARNING: CUDA out of memory, retrying with a smaller batch\n" + trace(
        "KeyError: 'label'"
    )
    cause = classify(F, 1, "exit code 1", logs)
    assert cause.group == ("exception", "KeyError")
    assert cause.summary == "KeyError: 'label'"


def test_exception_line_after_chained_tracebacks_and_hydra_trailer() -> None:
    text = (
        trace("KeyError: 'a'")
        + "\nDuring handling of the above exception, another exception occurred:\n\n"
        + trace("RuntimeError: wrapped")
        + "\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    )
    assert exception_line(text) == ("RuntimeError", "wrapped")
    assert exception_line("all good\n") is None


def test_traceback_tail_keeps_the_end_of_the_last_traceback() -> None:
    long = "noise\n" + "Traceback (most recent call last):\n" + "  frame\n" * 40 + "ValueError: v\n"
    tail = traceback_tail(long, lines=5)
    assert tail.splitlines() == ["...", "  frame", "  frame", "  frame", "  frame", "ValueError: v"]
    assert "noise" not in traceback_tail(trace("ValueError: v"))


@pytest.mark.parametrize(
    ("code", "name"), [(137, "SIGKILL"), (-9, "SIGKILL"), (143, "SIGTERM"), (1, None), (None, None)]
)
def test_signal_name(code: int | None, name: str | None) -> None:
    assert signal_name(code) == name


def test_every_category_has_a_label_and_a_hint() -> None:
    from hsm_core.reporting.errors_analysis import Cause

    for cat in Category:
        cause = Cause(cat, "x" if cat in (Category.EXCEPTION, Category.OTHER) else "")
        assert cause.label and cause.hint


# --------------------------------------------------------------------- patterns
def _grid() -> dict[str, dict[str, Any]]:
    out = {}
    for bs in (32, 64, 128, 256, 512):
        for lr in (0.1, 0.01):
            for seed in (0, 1):
                p = {"batch_size": bs, "lr": lr, "seed": seed}
                out[task_key(p)] = p
    return out


def test_pattern_every_failure_has_one_value() -> None:
    params = _grid()
    failed = {k for k, p in params.items() if p["batch_size"] == 512}
    top = find_patterns(params, failed, params)[0]
    assert top.text == "batch_size=512"
    assert (top.failed_with, top.failures, top.tasks_with, top.tasks) == (4, 4, 4, 20)
    assert top.support == 1.0 and top.confidence == 1.0 and top.lift == pytest.approx(5.0)


def test_pattern_pair_explains_what_single_values_do_not() -> None:
    params = _grid()
    failed = {k for k, p in params.items() if p["batch_size"] == 512 and p["lr"] == 0.1}
    failed |= {k for k, p in params.items() if p["batch_size"] == 256 and p["lr"] == 0.1}
    found = find_patterns(params, failed, params)
    assert [p.text for p in found] == [
        "batch_size=256 and lr=0.1",
        "batch_size=512 and lr=0.1",
        "lr=0.1",
        "batch_size=256",
        "batch_size=512",
    ]
    lr = found[2]
    assert (lr.support, lr.confidence, lr.lift) == (1.0, 0.4, 2.0)
    pair = found[1]
    assert (pair.support, pair.confidence) == (0.5, 1.0)
    assert all("seed=" not in p.text for p in found)  # seeds fail at the average rate


def test_no_patterns_from_too_few_or_all_failures() -> None:
    params = _grid()
    keys = list(params)
    assert find_patterns(params, keys[:2], keys) == []
    assert find_patterns(params, keys, keys) == []


# ------------------------------------------------------------ stores with times
def make_store(tmp_path: Path, params: list[dict[str, Any]], slots: dict[str, int]) -> SweepStore:
    tasks = [
        TaskSpec(key=task_key(p), num=i + 1, params=p, argv=("true",)) for i, p in enumerate(params)
    ]
    store = SweepStore.create(tmp_path / "sw", sweep_id="sw", kind="command", config={})
    store.add_tasks(tasks)
    store.set_meta(
        "sources", [{"name": n, "type": "local", "max_parallel": k} for n, k in slots.items()]
    )
    return store


def play(
    store: SweepStore,
    num: int,
    attempt: int,
    source: str,
    times: tuple[float, ...],
    end: TaskState | None = None,
    code: int | None = None,
    error: str | None = None,
) -> None:
    """ASSIGNED at times[0], RUNNING at times[1], `end` at times[2] (base-relative)."""
    key = store.tasks()[num - 1].key
    if attempt > 1:
        assert store.new_attempt(key) == attempt
    evs = [TaskEvent(key, attempt, TaskState.ASSIGNED, source, time=BASE + times[0])]
    if len(times) > 1:
        evs.append(TaskEvent(key, attempt, S, source, time=BASE + times[1]))
    if end is not None:
        evs.append(TaskEvent(key, attempt, end, source, BASE + times[2], code, error))
    assert all(store.apply_many(evs))


BASE = 1_800_000_000.0


@pytest.fixture
def timed_store(tmp_path: Path) -> SweepStore:
    """Two sources: a (2 slots), b (1 slot); task 4 is lost on b and re-run on a.

    a: t1 [0 | 1 -> 11] COMPLETED, t2 [0 | 2 -> 4] FAILED (MemoryError), t4#2 [11 | 11.5 -> 21.5]
    b: t4#1 [0 | 1 -> 3] LOST, t3 [3 | 5 -> 25] COMPLETED
    """
    store = make_store(tmp_path, [{"i": i, "bs": 512 if i == 2 else 32} for i in range(1, 5)],
                       {"a": 2, "b": 1})  # fmt: skip
    play(store, 1, 1, "a", (0, 1, 11), C, 0)
    play(store, 2, 1, "a", (0, 2, 4), F, 1, "exit code 1")
    play(store, 4, 1, "b", (0, 1, 3), L, None, "host b unreachable")
    play(store, 3, 1, "b", (3, 5, 25), C, 0)
    play(store, 4, 2, "a", (11, 11.5, 21.5), C, 0)
    (store.task_dir(store.tasks()[1]) / "stderr.log").write_text(trace("MemoryError"))
    return store


def test_performance_numbers(timed_store: SweepStore) -> None:
    perf = performance(load_sweep(timed_store))
    sweep, a, b = perf["sweep"], perf["sources"]["a"], perf["sources"]["b"]
    assert sweep["makespan_s"] == 25.0
    assert (sweep["tasks"], sweep["attempts"], sweep["reruns"], sweep["slots"]) == (4, 5, 1, 3)
    assert sweep["states"]["COMPLETED"] == 3 and sweep["states"]["FAILED"] == 1
    assert sweep["efficiency"] == pytest.approx(round(40 / 75, 4))  # 10+10+20 of 3 slots x 25 s
    assert (a["tasks"], a["attempts"], a["completed"], a["failed"]) == (3, 3, 2, 1)
    assert a["success_rate"] == pytest.approx(round(2 / 3, 4))
    assert a["duration_s"] == {"count": 2, "mean": 10.0, "median": 10.0, "p95": 10.0, "max": 10.0}
    assert a["queue_wait_s"]["count"] == 3 and a["queue_wait_s"]["max"] == 2.0
    assert a["queue_wait_s"]["median"] == 1.0
    assert a["utilisation"] == pytest.approx(22 / 50)  # 10 + 2 + 10 busy of 2 slots x 25 s
    assert (b["lost"], b["success_rate"], b["utilisation"]) == (1, 0.5, pytest.approx(22 / 25))
    assert b["duration_s"]["mean"] == 20.0


def test_error_analysis_groups_and_recovered(timed_store: SweepStore) -> None:
    errors = analyze(load_sweep(timed_store))
    assert (errors.failed, errors.lost, errors.recovered) == (1, 0, 1)
    [group] = errors.groups
    assert group.cause.group == ("oom", "host") and group.count == 1
    f = group.representative
    assert f.name == "task_002" and f.params == {"i": 2, "bs": 512}
    assert f.tail.endswith("MemoryError") and f.tail.startswith("Traceback")
    assert [p.name for p in f.logs] == ["stderr.log"]


def test_timeline_packs_attempts_into_lanes(timed_store: SweepStore) -> None:
    svg = gantt.gantt_svg(load_sweep(timed_store))
    assert ">2 at once<" in svg and ">1 at once<" in svg  # a ran two at once, b one
    shapes = Shapes()
    shapes.feed(svg)
    runs = [c for c in shapes.rect_classes if c != "g-wait"]
    legend = 5
    assert sorted(runs[legend:]) == sorted(
        ["g-COMPLETED", "g-FAILED", "g-LOST", "g-COMPLETED", "g-COMPLETED"]
    )
    tips = [t for t in shapes.titles if t.startswith("task_")]
    assert len(tips) == 5
    assert any(t.startswith("task_004 #1 LOST run 2.0 s, wait 1.0 s") for t in tips), tips


def test_timeline_of_more_attempts_than_pixels_is_aggregated(tmp_path: Path) -> None:
    """5,000 attempts of 0.1 s on 2 slots: bars per pixel run, the failure still shows."""
    n = 5000
    store = make_store(tmp_path, [{"i": i} for i in range(n)], {"a": 2})
    evs = []
    for t in store.tasks():
        step = (t.num - 1) % (n // 2)
        t0 = BASE + 0.1 * step
        end = F if t.num == 1234 else C
        evs += [
            TaskEvent(t.key, 1, TaskState.ASSIGNED, "a", time=t0),
            TaskEvent(t.key, 1, S, "a", time=t0),
            TaskEvent(t.key, 1, end, "a", time=t0 + 0.1, exit_code=0),
        ]
    assert all(store.apply_many(evs))
    svg = gantt.gantt_svg(load_sweep(store))
    shapes = Shapes()
    shapes.feed(svg)
    bars = [c for c in shapes.rect_classes[5:] if c != "g-wait"]
    assert 2 <= len(bars) <= 10, bars  # two lanes, a run on each side of the failure
    assert "g-FAILED" in bars
    assert any("1 failed" in t for t in shapes.titles)
    assert len(svg) < 20_000
    store.close()


class Shapes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rect_classes: list[str] = []
        self.titles: list[str] = []
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "rect":
            self.rect_classes.append(dict(attrs).get("class") or "")
        self._in_title = tag == "title"

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.titles.append(data)
            self._in_title = False


class PageAudit(HTMLParser):
    """Every tag, and every attribute that could load something from elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action") and value:
                self.urls.append(value)
            if name.startswith("on"):
                self.urls.append(f"handler {name}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_self_contained_and_escapes_task_output(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    store = make_store(tmp_path, [{"name": hostile}, {"name": "ok"}], {"local": 1})
    play(store, 1, 1, "local", (0, 1, 2), F, 1, "exit code 1")
    play(store, 2, 1, "local", (2, 2.5, 3), C, 0)
    (store.task_dir(store.tasks()[0]) / "stderr.log").write_text(
        trace('ValueError: <img src="http://example.com/x.png">', line=hostile)
    )
    paths = write_reports(store)
    page = paths.errors_html.read_text(encoding="utf-8")
    audit = PageAudit()
    audit.feed(page)
    assert "script" not in audit.tags and "img" not in audit.tags
    assert "link" not in audit.tags and "iframe" not in audit.tags
    assert all("://" not in u and not u.startswith("handler") for u in audit.urls), audit.urls
    assert audit.tags.count("svg") == 1 and audit.tags.count("style") == 1
    assert hostile in "".join(audit.text)  # shown as text, never run
    assert "exception ValueError" in page
    perf = paths.performance.read_text()
    assert "makespan_s: 3.0" in perf and "exception ValueError: 1" in perf


def test_report_html_render_without_failures(tmp_path: Path) -> None:
    store = make_store(tmp_path, [{"x": 1}], {"local": 1})
    play(store, 1, 1, "local", (0, 1, 2), C, 0)
    a = analyze_sweep(store)
    page = report_html.render(
        performance(a.data), a.errors, [], {}, gantt.gantt_svg(a.data), tmp_path, tmp_path
    )
    assert "No failed or lost task." in page


def test_report_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = make_store(tmp_path, [{"x": 1}], {"local": 1})
    reports = store.sweep_dir / "reports"
    reports.rmdir()
    reports.write_text("a file where the folder should be")
    with caplog.at_level(logging.ERROR, logger="hsm.reports"):
        assert write_reports_safely(store) is None
    assert "could not write the reports" in caplog.text


# ---------------------------------------------------------------------- monitor
def test_snapshot_of_a_running_sweep(tmp_path: Path) -> None:
    now = time.time()
    store = make_store(tmp_path, [{"i": i} for i in range(6)], {"a": 2})
    key = [t.key for t in store.tasks()]
    store.set_meta("orchestrator", {"pid": os.getpid(), "host": socket.gethostname()})
    store.set_meta("started", now - 100)
    for i in (0, 1):  # two done in 10 s each
        store.apply_many(
            [
                TaskEvent(key[i], 1, TaskState.ASSIGNED, "a", time=now - 60),
                TaskEvent(key[i], 1, S, "a", time=now - 50),
                TaskEvent(key[i], 1, C, "a", now - 40, 0),
            ]
        )
    store.apply_many(
        [
            TaskEvent(key[2], 1, TaskState.ASSIGNED, "a", time=now - 5),
            TaskEvent(key[2], 1, S, "a", time=now - 4),
            TaskEvent(key[3], 1, TaskState.ASSIGNED, "a", time=now - 30),
            TaskEvent(key[3], 1, S, "a", time=now - 30),
            TaskEvent(key[4], 1, TaskState.ASSIGNED, "a", time=now - 30),
            TaskEvent(key[4], 1, S, "a", time=now - 29),
            TaskEvent(key[4], 1, F, "a", now - 20, 137, "killed by SIGKILL"),
        ]
    )
    frame = snapshot(store)
    assert frame.active and frame.total == 6 and frame.done == 3 and frame.n_running == 2
    assert [r.name for r in frame.running] == ["task_004", "task_003"]  # longest first
    assert frame.running[0].runtime_s == pytest.approx(30, abs=2)
    assert frame.mean_duration_s == pytest.approx(10.0)
    # 1 queued x 10 s + (10 - 4) s left of task 3 + 0 left of task 4, over 2 slots
    assert frame.eta_s == pytest.approx((10 + 6) / 2, abs=1)
    [fail] = frame.failures
    assert (fail.name, fail.cause) == ("task_005", "killed by SIGKILL")
    names = {s.name: s for s in frame.sources}
    assert names["a"].done == 3 and names["(not placed)"].total == 1


def test_health_lines_follow_disable_and_re_enable(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "health_status.log").write_text(
        "2026-01-01 10:00:00.001 WARNING hsm.health: h1: check failed (1/3): timeout\n"
        "2026-01-01 10:00:05.001 ERROR   hsm.health: h1: disabled: unreachable: timeout\n"
        "2026-01-01 10:00:09.001 WARNING hsm.health: h1: check failed (4/3): timeout\n"
        "2026-01-01 10:00:10.001 INFO    hsm.health: h10: check passed after 2 failed\n"
        "2026-01-01 10:00:11.001 ERROR   hsm.health: h2: disabled: failure rate 80%\n"
        "2026-01-01 10:00:12.001 WARNING hsm.health: h2: re-enabled (ok)\n"
    )
    got = {h.source: h for h in health_lines(tmp_path, ["h1", "h10", "h2", "h3"])}
    assert set(got) == {"h1", "h10", "h2"}
    assert got["h1"].state == "disabled" and "unreachable" in got["h1"].message
    assert got["h1"].when == "10:00:09"
    assert got["h10"].state == "ok" and got["h2"].state == "ok"


def test_final_exception_only_when_the_text_ends_with_one() -> None:
    hydra = trace("KeyError: 'a'") + (
        "\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.\n"
    )
    assert final_exception(hydra) == "KeyError: 'a'"
    syntax = '  File "x.py", line 1\n    a b\n      ^\nSyntaxError: invalid syntax\n'
    assert final_exception(syntax) == "SyntaxError: invalid syntax"
    assert final_exception("ValueError: only logged\nthen exit 3\n") is None
    assert final_exception("all good\n") is None
    assert final_exception(trace("ValueError: " + "x" * 500)).endswith("...")
