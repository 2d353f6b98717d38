"""`hsm monitor`, `hsm report` and the end-of-run reports on real sweeps.

The designed-failure sweep runs real Python scripts under `hsm run` on local processes:
each fails the way real jobs fail (a real MemoryError, a real timeout kill, a missing module,
a file that does not compile, a SIGKILL, a missing file, a user exception). The one thing
that cannot happen on purpose on one machine, a host dying under a task, is injected into a
copy of the sweep through SweepStore's API (a LOST attempt, as a source reports it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import struct
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest

from hsm_core.model import TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.store import SweepStore
from tests.browser import chromium_path, load_page
from tests.conftest import service_missing
from tests.services import SSHEnv
from tests.sweep_utils import PY, hsm, hsm_popen, wait_for

SCRIPTS = {
    "ok": 'print("fine")\n',
    "oom": "buf = bytearray(1 << 60)  # an exbibyte: a real MemoryError\n",
    "timeout": "import time\ntime.sleep(60)\n",
    "import": "import hsm_test_no_such_module  # noqa\n",
    "syntax": "def broken(:\n    pass\n",
    "sigkill": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "notfound": 'open("data/no_such_file.csv")\n',
    "valueerror": 'def check(lr):\n    raise ValueError(f"lr {lr} diverged")\ncheck(0.1)\n',
}
# (category, detail) -> the mode of the one task expected in that group
EXPECTED = {
    ("oom", "host"): "oom",
    ("time_limit", ""): "timeout",
    ("import", ""): "import",
    ("syntax", ""): "syntax",
    ("signal", "SIGKILL"): "sigkill",
    ("file_not_found", ""): "notfound",
    ("exception", "ValueError"): "valueerror",
}
LABELS = [
    "out of memory (host)",
    "time limit",
    "missing module / import error",
    "syntax error",
    "killed by SIGKILL",
    "file not found",
    "exception ValueError",
]
EVIDENCE = {  # what the representative traceback tail must show
    "oom": "MemoryError",
    "timeout": "timed out after 2 s",
    "import": "ModuleNotFoundError: No module named 'hsm_test_no_such_module'",
    "syntax": "SyntaxError: invalid syntax",
    "sigkill": "killed by SIGKILL",  # no stderr at all: the reason stands in
    "notfound": "FileNotFoundError: [Errno 2] No such file or directory",
    "valueerror": "ValueError: lr 0.1 diverged",
}


def _sweep_file(root: Path, text: str) -> Path:
    path = root / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def designed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep of eight tasks, seven of which fail, each in its own way."""
    root = tmp_path_factory.mktemp("designed")
    (root / "scripts").mkdir()
    for mode, code in SCRIPTS.items():
        (root / "scripts" / f"{mode}.py").write_text(code)
    modes = ", ".join(SCRIPTS)
    _sweep_file(
        root,
        f"sweep:\n  grid:\n    mode: [{modes}]\n"
        f'command: ["{PY}", "scripts/{{mode}}.py"]\ntimeout: 2\n',
    )
    proc = hsm("run", "-c", "sweep.yaml", "-s", "local:8", "--sweep-id", "designed", cwd=root)
    assert proc.returncode == 1, proc.stderr  # not every task COMPLETED
    return root / "sweeps" / "outputs" / "designed"


def _with_lost_task(designed: Path, dest: Path) -> Path:
    """A copy of the designed sweep plus one task whose host died under it."""
    copy = dest / "designed_lost"
    shutil.copytree(designed, copy)
    store = SweepStore.open(copy)
    try:
        params = {"mode": "lost"}
        [spec] = store.add_tasks([TaskSpec(task_key(params), 0, params, argv=(PY, "-V"))])
        ok = store.apply_many(
            [
                TaskEvent(spec.key, 1, TaskState.ASSIGNED, "local"),
                TaskEvent(spec.key, 1, TaskState.RUNNING, "local", handle="1"),
                TaskEvent(spec.key, 1, TaskState.LOST, "local", error="host stopped answering"),
            ]
        )
        assert all(ok)
    finally:
        store.close()
    return copy


def test_reports_are_written_at_the_end_of_the_run(designed: Path) -> None:
    perf = (designed / "reports" / "performance_analysis.yaml").read_text()
    page = (designed / "reports" / "error_analysis.html").read_text(encoding="utf-8")
    import yaml

    doc = yaml.safe_load(perf)
    assert doc["sweep"]["tasks"] == 8 and doc["sweep"]["states"]["FAILED"] == 7
    assert doc["sources"]["local"]["completed"] == 1 and doc["sources"]["local"]["slots"] == 8
    assert doc["errors"]["groups"] == dict.fromkeys(LABELS, 1)
    for label in LABELS:
        assert label in page
    log = (designed / "logs" / "sweep_aggregated.log").read_text()
    assert "hsm.reports: reports written" in log


def test_error_groups_are_exact(designed: Path, tmp_path: Path) -> None:
    sweep = _with_lost_task(designed, tmp_path)
    proc = hsm("monitor", "errors", str(sweep), "--json", cwd=tmp_path, check=True)
    doc = json.loads(proc.stdout)
    groups = {(g["category"], g["detail"]): g for g in doc["groups"]}
    assert set(groups) == {*EXPECTED, ("host", "")}
    assert (doc["failed"], doc["lost"]) == (7, 1)
    for group_key, g in groups.items():
        [task] = g["tasks"]
        mode = EXPECTED.get(group_key, "lost")
        assert task["params"] == {"mode": mode}
        assert g["count"] == 1
        if mode == "lost":
            assert (
                task["state"] == "LOST" and "host stopped answering" in g["representative"]["tail"]
            )
            continue
        assert EVIDENCE[mode] in g["representative"]["tail"], (mode, g["representative"])
        assert task["logs"] and all(Path(p).is_file() for p in task["logs"])
        assert Path(task["logs"][0]).name == "stderr.log"
    assert groups[("signal", "SIGKILL")]["tasks"][0]["exit_code"] == 137

    text = hsm("monitor", "errors", str(sweep), cwd=tmp_path, check=True).stdout
    assert "7 failed and 1 lost tasks in 8 groups" in text
    assert "node or host failure (LOST)" in text
    for label in LABELS:
        assert label in text


def test_analyze_patterns_names_the_guilty_value(tmp_path: Path) -> None:
    code = "import sys\nif sys.argv[1] == '512':\n    bytearray(1 << 60)\n"
    (tmp_path / "train.py").write_text(code)
    _sweep_file(
        tmp_path,
        "grid:\n  batch_size: [64, 128, 256, 512]\n  seed: [0, 1, 2]\n"
        f'command: ["{PY}", "train.py", "{{batch_size}}", "{{seed}}"]\n',
    )
    run = hsm("run", "-c", "sweep.yaml", "-s", "local:4", "--sweep-id", "bs", cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    proc = hsm("monitor", "errors", "bs", "--analyze-patterns", cwd=tmp_path, check=True)
    assert "3 failed and 0 lost tasks in 1 group" in proc.stdout
    assert (
        "batch_size=512: in 3 of 3 failures (support 100%); 3 of 3 tasks with it failed "
        "(confidence 100%, lift 4.0)"
    ) in proc.stdout
    assert "seed=" not in proc.stdout.split("parameter values the failures go with")[1]


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.rects: list[str] = []
        self.summaries: list[list[str]] = []  # text pieces of each <summary>
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        self.urls += [v for k, v in a.items() if k in ("src", "href") and v]
        if tag == "rect":
            self.rects.append(a.get("class") or "")
        if tag == "summary":
            self._in_summary = True
            self.summaries.append([])

    def handle_data(self, data: str) -> None:
        if self._in_summary and data.strip():
            self.summaries[-1].append(data.strip())

    def handle_endtag(self, tag: str) -> None:
        if tag == "summary":
            self._in_summary = False


def test_html_report_parses_and_is_self_contained(designed: Path) -> None:
    page = _Page()
    page.feed((designed / "reports" / "error_analysis.html").read_text(encoding="utf-8"))
    assert page.tags[0] == "html" and page.tags.count("svg") == 1
    assert not {"script", "img", "link", "iframe", "object"} & set(page.tags)
    assert page.urls and all("://" not in u for u in page.urls)  # only relative log links
    for u in page.urls:
        assert (designed / "reports" / u).resolve().is_file(), u
    bars = [c for c in page.rects if c.startswith("g-") and c != "g-wait"][5:]  # after legend
    assert sorted(bars) == ["g-COMPLETED"] + ["g-FAILED"] * 7
    groups = [parts for parts in page.summaries if parts[0].isdigit()]  # count, then label
    assert sorted(parts[1] for parts in groups) == sorted(LABELS)
    assert all(parts[0] == "1" for parts in groups)


def test_html_report_renders_in_headless_chromium(designed: Path, tmp_path: Path) -> None:
    if chromium_path() is None:
        service_missing("chromium is not installed (Debian package `chromium`)")
    # The detector must be able to fail: a page with a console error and a remote image.
    control = tmp_path / "control.html"
    control.write_text(
        "<!DOCTYPE html><p>x</p><script>console.error('control-error')</script>"
        '<img src="http://hsm-test.invalid/x.png">'
    )
    seen = load_page(control).problems
    assert any("control-error" in p for p in seen) and any("hsm-test.invalid" in p for p in seen)

    report = load_page(
        designed / "reports" / "error_analysis.html",
        width=1200,
        evaluate={
            "groups": "document.querySelectorAll('details[open] > summary').length",
            "bars": "document.querySelectorAll('svg rect[class^=\"g-\"]').length",
            "chart_w": "document.querySelector('svg').getBoundingClientRect().width",
            "title": "document.title",
        },
    )
    assert report.problems == []
    assert report.values["groups"] == 7
    assert report.values["bars"] >= 5 + 8  # legend + one bar per attempt (+ waiting parts)
    assert report.values["chart_w"] > 500
    assert "errors and timeline" in report.values["title"]
    shot = tmp_path / "error_analysis.png"
    shot.write_bytes(report.screenshot)
    assert report.screenshot[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", report.screenshot[16:24])
    assert 1150 <= width <= 1200 and height > 1000  # whole page (less a scrollbar)


def test_watch_once_while_the_sweep_runs_and_ctrl_c_leaves_it_alone(tmp_path: Path) -> None:
    _sweep_file(
        tmp_path,
        f'grid:\n  i: [1, 2, 3]\ncommand: ["{PY}", "-c", "import time; time.sleep(60)", "{{i}}"]\n',
    )
    run = hsm_popen("run", "-c", "sweep.yaml", "-s", "local:2", "--sweep-id", "live", cwd=tmp_path)
    watcher = None
    try:

        def frame() -> str | None:
            proc = hsm("monitor", "watch", "live", "--once", cwd=tmp_path)
            # Two in flight, both started (ASSIGNED ones show no runtime yet).
            ok = proc.returncode == 0 and "running (2)" in proc.stdout
            ok = ok and len(re.findall(r"task_00[12]\s+local\s+running\s", proc.stdout)) == 2
            return proc.stdout if ok else None

        out = wait_for(
            frame, timeout=30, interval=0.2, message="watch --once never showed 2 running"
        )
        assert out is not None
        assert "sweep live  running" in out
        assert re.search(r"task_001\s+local\s+running\s+\d+:\d\d", out), out
        assert re.search(r"task_002\s+local\s+running\s+\d+:\d\d", out), out
        assert "pending 1" in out and "ETA" in out
        assert re.search(r"local\s+\S+\s+0/2\s+2\s", out), out  # settled/total, running

        # A live watcher interrupted with Ctrl-C leaves; the sweep goes on untouched.
        watcher = hsm_popen("monitor", "watch", "live", "--refresh", "0.2", cwd=tmp_path)
        sweep_dir = tmp_path / "sweeps" / "outputs" / "live"
        wait_for(lambda: _has_open(watcher.pid, sweep_dir / "sweep.db"), timeout=20)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=20)
        assert watcher.returncode == 0, err
        assert run.poll() is None
        again = hsm("monitor", "watch", "live", "--once", cwd=tmp_path, check=True).stdout
        assert "running (2)" in again
    finally:
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
        run.send_signal(signal.SIGINT)  # hsm run cancels its tasks on Ctrl-C
        run.communicate(timeout=60)
    after = hsm("monitor", "watch", "live", "--once", cwd=tmp_path, check=True).stdout
    assert "not running" in after and "cancelled 3" in after


def _has_open(pid: int, path: Path) -> bool:
    """True once process `pid` holds `path` open (the watcher is past start-up, in its loop)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in fds.iterdir())
    except OSError:
        return False


def _corrupt_db(path: Path) -> None:
    path.mkdir()
    (path / "sweep.db").write_bytes(b"this is not a database, just bytes" * 100)


def _db_without_tables(path: Path) -> None:
    path.mkdir()
    conn = sqlite3.connect(path / "sweep.db")
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('sweep_id', '\"x\"')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: None, id="missing"),
        pytest.param(lambda p: p.mkdir(), id="empty-folder"),
        pytest.param(_corrupt_db, id="corrupt-db"),
        pytest.param(_db_without_tables, id="db-without-tables"),
    ],
)
@pytest.mark.parametrize(
    "argv",
    [
        ("monitor", "watch", "{}", "--once"),
        ("monitor", "errors", "{}"),
        ("monitor", "errors", "{}", "--analyze-patterns"),
        ("report", "{}"),
    ],
    ids=["watch", "errors", "patterns", "report"],
)
def test_bad_sweep_folder_is_one_clear_line(
    tmp_path: Path, make: Callable[[Path], object], argv: tuple[str, ...]
) -> None:
    target = tmp_path / "sweep"
    make(target)
    proc = hsm(*(a.format(target) for a in argv), cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hsm: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(target) in lines[0] or "sweep" in lines[0]


def test_health_lists_every_configured_source(tmp_path: Path) -> None:
    (tmp_path / "hsm.yaml").write_text("sources:\n  local: {type: local, max_parallel: 2}\n")
    proc = hsm("monitor", "health", "--project-root", str(tmp_path), cwd=tmp_path, check=True)
    assert "local" in proc.stdout and "healthy" in proc.stdout
    assert "local: local machine" in proc.stdout
    bad = hsm(
        "monitor", "health", "--sources", "nope", "--project-root", str(tmp_path), cwd=tmp_path
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "nope" in bad.stderr


def test_health_of_ssh_hosts_up_and_down(tmp_path: Path, ssh_env: SSHEnv) -> None:
    h1 = ssh_env.host("h1")
    (tmp_path / "hsm.yaml").write_text(
        "sources:\n"
        f"  h1: {{type: ssh, host: h1, ssh_config: {ssh_env.ssh_config}, python: {h1.python},"
        # push: a sweep sends the project, so its absence in project_dir is no fault.
        f" project_dir: {h1.project_dir}/t_monitor_health, sync: push}}\n"
        f"  gone: {{type: ssh, host: 127.0.0.9, port: 2299, ssh_config: {ssh_env.ssh_config},"
        " project_dir: /tmp/none, connect_timeout: 1, reconnect_window: 1}\n"
        "health: {timeout_s: 10}\n"
    )
    proc = hsm("monitor", "health", "--project-root", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 1  # one source is down
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert "healthy" in rows["h1"] and "ssh" in rows["h1"]
    assert "failing" in rows["gone"]
    assert "gone: " in proc.stdout and "127.0.0.9" in proc.stdout


def test_report_command_rewrites_both_files(designed: Path, tmp_path: Path) -> None:
    sweep = _with_lost_task(designed, tmp_path)
    for name in ("performance_analysis.yaml", "error_analysis.html"):
        (sweep / "reports" / name).unlink()
    proc = hsm("report", str(sweep), cwd=tmp_path, check=True)
    assert "performance_analysis.yaml" in proc.stdout
    page = (sweep / "reports" / "error_analysis.html").read_text(encoding="utf-8")
    assert "node or host failure (LOST)" in page
    assert "reruns: 0" in (sweep / "reports" / "performance_analysis.yaml").read_text()


def test_watch_on_a_finished_sweep_is_one_static_frame(designed: Path, tmp_path: Path) -> None:
    proc = hsm("monitor", "watch", str(designed), cwd=tmp_path, check=True)
    out = proc.stdout
    assert "not running" in out and "8/8 settled (100%)" in out
    assert "recent failures (7)" in out and "time limit" in out  # the newest first
    assert "1 more: hsm monitor errors designed" in out


def test_hydra_multirun_gets_the_same_reports_and_groups(tmp_path: Path) -> None:
    from tests.hydra.util import EXAMPLE, HSM, run_app

    sweep = tmp_path / "multirun"
    res = run_app(
        EXAMPLE, [*HSM, "seed=0,1", "fail=null,oom,exception", "epochs=3"], sweep_dir=sweep
    )
    assert res.returncode != 0  # Hydra re-raises the first failed job's exception
    for name in ("performance_analysis.yaml", "error_analysis.html"):
        assert (sweep / "reports" / name).is_file()
    proc = hsm("monitor", "errors", str(sweep), "--json", cwd=tmp_path, check=True)
    doc = json.loads(proc.stdout)
    groups = {(g["category"], g["detail"]): g for g in doc["groups"]}
    assert set(groups) == {("oom", "host"), ("exception", "RuntimeError")}
    oom = groups[("oom", "host")]
    assert sorted(t["params"]["seed"] for t in oom["tasks"]) == ["0", "1"]  # override text
    assert {t["params"]["fail"] for t in oom["tasks"]} == {"oom"}
    assert "MemoryError: deliberate failure (fail=oom)" in oom["representative"]["tail"]
    frame = hsm("monitor", "watch", str(sweep), "--once", cwd=tmp_path, check=True).stdout
    assert "not running" in frame and "6/6 settled" in frame
