"""`hsm results SWEEP` and the Results section of the HTML report, on real sweeps: the
example app under `hsm run` and under Hydra's launcher, command tasks that print or
write their numbers, and a big synthetic sweep for the size of the page."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from hsm_core.model import TaskEvent, TaskSpec, TaskState, task_key
from hsm_core.reporting import results_svg
from hsm_core.store import SweepStore
from tests.browser import chromium_path, load_page, png_pixels
from tests.conftest import service_missing
from tests.sweep_utils import PY, hsm

REPO = Path(__file__).resolve().parents[2]


def _table(stdout: str) -> list[dict[str, str]]:
    lines = stdout.strip().splitlines()
    head = lines[0].split()
    return [dict(zip(head, ln.split(), strict=True)) for ln in lines[1:]]


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's quick start: the example sweep (12 tasks) on local processes."""
    tmp = tmp_path_factory.mktemp("example")
    out = tmp / "sweep"
    res = hsm(
        "run", "--config", "example_app/sweeps/example.yaml", "--sources", "local:2",
        "--output-dir", str(out), "--no-progress",
        cwd=REPO, env={"XDG_STATE_HOME": str(tmp / "st")},
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    return out


def _metrics_files(sweep: Path) -> dict[str, dict[str, object]]:
    return {
        d.name: json.loads((d / "results" / "metrics.json").read_text())
        for d in sorted((sweep / "tasks").iterdir())
    }


def test_results_lists_every_task_with_its_parameters_and_metrics(
    example: Path, tmp_path: Path
) -> None:
    res = hsm("results", str(example), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = _table(res.stdout)
    assert [r["task"] for r in rows] == [f"task_{i:03d}" for i in range(1, 13)]
    head = res.stdout.splitlines()[0].split()
    # parameters, then the numbers of results/metrics.json, without the echoes of
    # parameters (seed, epochs by name; lr repeats optim.lr) and without non-numbers
    assert head == ["task", "state", "optim.lr", "seed", "model", "epochs", "loss", "accuracy",
                    "train_seconds"]  # fmt: skip
    files = _metrics_files(example)
    for r in rows:
        assert r["state"] == "COMPLETED"
        assert float(r["loss"]) == pytest.approx(files[r["task"]]["loss"], rel=1e-5)
    assert "metrics of 12 of 12 completed tasks, from results/metrics.json (12)" in res.stderr


def test_sort_best_csv_and_json(example: Path, tmp_path: Path) -> None:
    files = _metrics_files(example)
    by_loss = sorted(files, key=lambda n: files[n]["loss"])
    best = hsm("results", str(example), "--sort", "loss", "--best", "3", cwd=tmp_path)
    assert [r["task"] for r in _table(best.stdout)] == by_loss[:3]
    top = hsm("results", str(example), "--sort", "accuracy", "--desc", "--best", "1", cwd=tmp_path)
    most = max(files.values(), key=lambda d: d["accuracy"])["accuracy"]
    assert float(_table(top.stdout)[0]["accuracy"]) == pytest.approx(most, rel=1e-5)
    by_param = hsm("results", str(example), "--sort", "model", cwd=tmp_path)
    models = [r["model"] for r in _table(by_param.stdout)]
    assert models == sorted(models)

    out = hsm("results", str(example), "--csv", "--metrics", "loss", cwd=tmp_path).stdout
    table = list(csv.DictReader(io.StringIO(out)))
    assert list(table[0]) == ["task", "state", "optim.lr", "seed", "model", "epochs", "loss"]
    assert {r["task"]: float(r["loss"]) for r in table} == {n: d["loss"] for n, d in files.items()}

    doc = json.loads(hsm("results", str(example), "--json", cwd=tmp_path).stdout)
    assert len(doc) == 12 and doc[0]["params"] == {
        "optim.lr": 0.05, "seed": 0, "model": "linear", "epochs": 20,
    }  # fmt: skip
    assert doc[0]["metrics"]["loss"] == files["task_001"]["loss"]
    assert doc[0]["origin"]["loss"] == "results/metrics.json"


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--best", "3"], "--best: needs --sort KEY"),
        (["--sort", "nope"], "--sort: no metric or parameter 'nope'"),
        (["--metrics", "loss,nope"], "--metrics: no metric 'nope'"),
        (["--best", "0", "--sort", "loss"], "--best: must be a whole number >= 1"),
    ],
)
def test_bad_options_are_one_line(
    example: Path, tmp_path: Path, args: list[str], said: str
) -> None:
    res = hsm("results", str(example), *args, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and said in res.stderr
    if "nope" in said:
        assert "loss" in res.stderr and "accuracy" in res.stderr  # what there is


PRINTS = r"""
import json, os, sys
i = int(sys.argv[1])
print("loading data")
print(f"epoch=1 loss={1.0 + i} acc=0.5")
print(f"epoch=2 loss={0.5 + i} acc=0.75, lr=3e-4")
print(json.dumps({"val": {"loss": 0.25 + i}, "note": "text", "ok": True}))
if i == 2:
    out = os.path.join(os.environ["HSM_TASK_DIR"], "results")
    json.dump({"loss": 9.0, "extra": {"depth": 3}}, open(os.path.join(out, "b.json"), "w"))
    json.dump({"loss": 7.0}, open(os.path.join(out, "a.json"), "w"))
    json.dump([1, 2], open(os.path.join(out, "c.json"), "w"))
    own = os.path.join(os.environ["HSM_TASK_DIR"], "result.json")  # the task's own name
    json.dump({"loss": 5.0, "epochs": 12}, open(own, "w"))
if i == 3:
    sys.exit(1)
"""


def test_metrics_from_files_win_over_printed_lines_and_failed_tasks_have_none(
    tmp_path: Path,
) -> None:
    (tmp_path / "p.py").write_text(PRINTS)
    (tmp_path / "s.yaml").write_text(
        yaml.safe_dump({"grid": {"i": [1, 2, 3]}, "command": [PY, "p.py", "{i}"]})
    )
    run = hsm("run", "-c", "s.yaml", "--sweep-id", "pr", "--no-progress", cwd=tmp_path)
    assert run.returncode == 1  # task 3 fails
    doc = {d["task"]: d for d in json.loads(hsm("results", "pr", "--json", cwd=tmp_path).stdout)}
    printed = doc["task_001"]
    assert printed["metrics"] == {"epoch": 2.0, "loss": 1.5, "acc": 0.75, "lr": 3e-4,
                                  "val.loss": 1.25}  # fmt: skip
    assert set(printed["origin"].values()) == {"stdout.log"}
    files = doc["task_002"]  # results/ in name order (a.json's loss wins), then result.json
    assert files["metrics"] == {"loss": 7.0, "extra.depth": 3.0, "epochs": 12.0}
    assert files["origin"] == {
        "loss": "results/a.json", "extra.depth": "results/b.json", "epochs": "result.json",
    }  # fmt: skip
    assert doc["task_003"]["state"] == "FAILED" and doc["task_003"]["metrics"] == {}


def test_a_hydra_sweep_reports_the_return_value_first(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    run = subprocess.run(
        [PY, str(REPO / "example_app" / "train.py"), "-m", "hydra/launcher=hsm",
         f"hydra.sweep.dir={sweep}", "optim.lr=0.1,0.01", "seed=1,2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "st")},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    res = hsm("results", str(sweep), "--json", cwd=tmp_path)
    doc = json.loads(res.stdout)
    assert len(doc) == 4
    for row in doc:
        m = row["metrics"]
        assert next(iter(m)) == "return" and row["origin"]["return"] == "return value"
        assert m["return"] == pytest.approx(m["loss"])  # train.py returns its final loss
    # The worker recorded the numbers: reading them never unpickles a job.
    records = [
        json.loads(p.read_text())
        for p in sweep.glob("tasks/task_*/*.json")
        if p.name in (".hsm_result.json", "result.json")
    ]
    assert records and all("return_numbers" in r for r in records if r.get("status"))
    head = hsm("results", str(sweep), cwd=tmp_path).stdout.splitlines()[0].split()
    assert head[:5] == ["task", "state", "optim.lr", "seed", "return"]


# ------------------------------------------------------------------ HTML report
class _Svg(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.classes: list[str] = []  # tag.class of every element
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.urls += [v for k, v in a.items() if k in ("src", "href") and v]
        cls = f"{tag}.{a.get('class') or ''}"
        self.classes.append(cls)


def _count(page: _Svg, prefix: str) -> int:
    return sum(c.startswith(prefix) for c in page.classes)


@pytest.fixture(scope="module")
def plotted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A command sweep of 24 tasks: a numeric parameter on a log scale, a word-valued one,
    a seed; two metrics in results/ and its report."""
    tmp = tmp_path_factory.mktemp("plotted")
    (tmp / "m.py").write_text(
        "import json, math, os, sys\n"
        "lr, opt, seed = float(sys.argv[1]), sys.argv[2], int(sys.argv[3])\n"
        "cost = {'sgd': 0.5, 'adam': 0.1, 'rms': 0.3}[opt]\n"
        "loss = abs(math.log10(lr) + 2.5) + cost + seed / 10\n"
        "out = os.path.join(os.environ['HSM_TASK_DIR'], 'results', 'metrics.json')\n"
        "json.dump({'loss': loss, 'accuracy': 1 / (1 + loss)}, open(out, 'w'))\n"
    )
    (tmp / "s.yaml").write_text(
        yaml.safe_dump(
            {
                "grid": {"lr": [1e-4, 1e-3, 1e-2, 1e-1], "opt": ["sgd", "adam", "rms"],
                         "seed": [0, 1]},
                "command": [PY, "m.py", "{lr}", "{opt}", "{seed}"],
            }
        )
    )  # fmt: skip
    run = hsm("run", "-c", "s.yaml", "-s", "local:2", "--sweep-id", "plots", cwd=tmp)
    assert run.returncode == 0, run.stdout + run.stderr
    return tmp / "sweeps" / "outputs" / "plots"


def test_the_report_plots_each_metric_against_each_parameter(plotted: Path) -> None:
    html = (plotted / "reports" / "error_analysis.html").read_text()
    page = _Svg()
    page.feed(html)
    assert not {"script", "img", "link"} & {c.split(".")[0] for c in page.classes}
    assert all("://" not in u for u in page.urls)
    # 2 metrics x (lr, seed: scatter; opt: boxes)
    assert _count(page, "svg.rplot scatter") == 4 and _count(page, "svg.rplot box") == 2
    assert _count(page, "rect.bx") == 2 * 3  # a box per optimiser, per metric
    assert _count(page, "circle.pt") == 6 * 24  # every task is a point in each plot
    assert _count(page, "polyline.pl") == 24 and _count(page, "svg.pcoords") == 1
    assert "loss vs lr" in html and "(log)" in html and "loss by opt" in html
    assert '<td>loss</td><td class="n">24</td>' in html


def _blue_and_red(png: bytes) -> tuple[int, int]:
    width, _, rows, bpp = png_pixels(png)
    blue = red = 0
    for row in rows:
        for i in range(0, width * bpp, bpp):
            r, g, b = row[i], row[i + 1], row[i + 2]
            blue += b > r + 50 and b > g + 20
            red += r > g + 80 and r > b + 60
    return blue, red


def test_the_plots_render_in_headless_chromium(plotted: Path, tmp_path: Path) -> None:
    if chromium_path() is None:
        service_missing("chromium is not installed (Debian package `chromium`)")
    report = load_page(
        plotted / "reports" / "error_analysis.html",
        evaluate={
            "plots": "document.querySelectorAll('svg.rplot').length",
            "drawn": "[...document.querySelectorAll('svg.rplot circle.pt')]"
            ".filter(c => c.getBoundingClientRect().width > 0).length",
            "lines": "document.querySelectorAll('svg.pcoords polyline').length",
            "pc_w": "document.querySelector('svg.pcoords').getBoundingClientRect().width",
        },
        clips={
            "scatter": "svg.rplot.scatter",
            "box": "svg.rplot.box",
            "pcoords": "svg.pcoords",
        },
    )
    assert report.problems == []
    assert report.values["plots"] == 6 and report.values["drawn"] == 6 * 24
    assert report.values["lines"] == 24 and report.values["pc_w"] > 400
    for name, png in report.clips.items():
        (tmp_path / f"{name}.png").write_bytes(png)
        blue, red = _blue_and_red(png)
        # points or boxes (blue) and the median line or the high end of the colours (red)
        assert blue > 50 and red > 20, (name, blue, red)


def _synthetic(sweep_dir: Path, n: int) -> None:
    """n COMPLETED tasks with metrics files, through the store's own API."""
    specs = []
    for i in range(n):
        params = {"lr": [1e-4, 1e-3, 1e-2, 1e-1][i % 4], "model": ["a", "b", "c"][i % 3],
                  "seed": i}  # fmt: skip
        specs.append(TaskSpec(key=task_key(params), num=i + 1, params=params, argv=("true",)))
    store = SweepStore.create(sweep_dir, sweep_id="big", kind="command", config={})
    store.add_tasks(specs)
    events = []
    for s in specs:
        events += [
            TaskEvent(s.key, 1, TaskState.ASSIGNED, "local"),
            TaskEvent(s.key, 1, TaskState.RUNNING, "local", handle="1"),
            TaskEvent(s.key, 1, TaskState.COMPLETED, "local", exit_code=0),
        ]
    store.apply_many(events)
    for i, s in enumerate(specs):
        out = store.task_dir(s) / "results"
        out.mkdir(parents=True)
        loss = math.sin(i) + 2
        (out / "m.json").write_text(json.dumps({"loss": loss, "acc": 1 / loss, "ms": i % 97}))
    store.close()


def test_the_results_section_stays_small_with_many_tasks(tmp_path: Path) -> None:
    sweep = tmp_path / "big"
    _synthetic(sweep, 3000)
    res = hsm("report", str(sweep), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    html = (sweep / "reports" / "error_analysis.html").read_text()
    section = html.split("<h2>Results</h2>", 1)[1].split("<h2>", 1)[0]
    page = _Svg()
    page.feed(section)
    plots = _count(page, "svg.rplot")
    assert plots == 3 * 3  # loss, acc, ms x lr, model, seed
    assert _count(page, "circle.pt") == plots * results_svg.POINTS  # a sample each
    assert _count(page, "polyline.pl") == results_svg.LINES
    assert len(section.encode()) < 250_000, len(section.encode())
    assert f"a fixed sample of {results_svg.POINTS} of the 3,000 tasks" in section
    rows = hsm("results", str(sweep), "--sort", "loss", "--best", "2", cwd=tmp_path).stdout
    best = _table(rows)
    losses = sorted(math.sin(i) + 2 for i in range(3000))
    assert [float(r["loss"]) for r in best] == pytest.approx(losses[:2], rel=1e-5)
