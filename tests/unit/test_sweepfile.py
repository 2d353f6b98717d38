"""The sweep file: expansion, validation, and the values' journey into real task processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsm_core.errors import ConfigError
from hsm_core.model import PYTHON, TaskKind, task_key
from hsm_core.sources.base import task_argv
from hsm_core.sweepfile import SweepDefinition, load_sweep_file, parse_sweep

APP = Path(__file__).with_name("hydra_echo_app.py")
ARGV_ECHO = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def parse(data: dict[str, Any]) -> SweepDefinition:
    return parse_sweep({"script": "train.py", **data}, "s.yaml")


# --- expansion -----------------------------------------------------------------------------


def test_grid_is_cartesian_in_file_order_with_nested_keys_flattened():
    sweep = parse({"grid": {"b": [1, 2], "model": {"lr": [0.1, 0.2], "opt": {"name": ["x"]}}}})
    assert sweep.params == ["b", "model.lr", "model.opt.name"]
    assert sweep.points == [
        {"b": 1, "model.lr": 0.1, "model.opt.name": "x"},
        {"b": 1, "model.lr": 0.2, "model.opt.name": "x"},
        {"b": 2, "model.lr": 0.1, "model.opt.name": "x"},
        {"b": 2, "model.lr": 0.2, "model.opt.name": "x"},
    ]


def test_scalar_is_a_fixed_value_and_list_values_stay_values():
    sweep = parse({"grid": {"seed": 7, "dims": [[64, 128], [32]], "opt": [{"lr": 1}]}})
    assert sweep.points == [
        {"seed": 7, "dims": [64, 128], "opt": {"lr": 1}},
        {"seed": 7, "dims": [32], "opt": {"lr": 1}},
    ]


def test_paired_groups_zip_and_combine_as_cartesian_product_after_the_grid():
    sweep = parse(
        {
            "grid": {"seed": [1, 2]},
            "paired": [
                {"arch": {"depth": [2, 4], "width": [64, 32]}},
                {"data": {"name": ["a", "b", "c"], "size": [1, 2, 3]}},
            ],
        }
    )
    assert len(sweep.points) == 2 * 2 * 3
    assert sweep.points[:4] == [
        {"seed": 1, "depth": 2, "width": 64, "name": "a", "size": 1},
        {"seed": 1, "depth": 2, "width": 64, "name": "b", "size": 2},
        {"seed": 1, "depth": 2, "width": 64, "name": "c", "size": 3},
        {"seed": 1, "depth": 4, "width": 32, "name": "a", "size": 1},
    ]
    assert sweep.points[-1] == {"seed": 2, "depth": 4, "width": 32, "name": "c", "size": 3}


def test_one_paired_item_with_several_group_maps_is_one_zipped_group():
    sweep = parse({"paired": [{"g1": {"a": [1, 2]}, "g2": {"m": {"b": ["x", "y"]}}}]})
    assert sweep.points == [{"a": 1, "m.b": "x"}, {"a": 2, "m.b": "y"}]


def test_sweep_wrapper_is_optional_and_equivalent(tmp_path: Path):
    wrapped = load_sweep_file(
        write(tmp_path, "sweep:\n  grid: {a: [1, 2]}\n  paired: [{g: {b: [3]}}]\nscript: t.py\n")
    )
    flat = load_sweep_file(write(tmp_path, "grid: {a: [1, 2]}\npaired: [{g: {b: [3]}}]\n"
                                           "script: t.py\n", "flat.yaml"))  # fmt: skip
    assert wrapped.points == flat.points == [{"a": 1, "b": 3}, {"a": 2, "b": 3}]
    assert wrapped.raw["sweep"]["grid"] == {"a": [1, 2]}


def test_metadata_defaults_and_options(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = write(
        tmp_path,
        "defaults: ['override hydra/launcher: basic']\n"
        "metadata: {description: smoke, tags: [a, b]}\n"
        "grid: {lr: [1e-3, '1e-3', 2024-01-01]}\n"
        "script: train.py\npython: /opt/py/bin/python\nenv: {SEED: '{lr}', N: 3}\n"
        "cwd: sub/dir\ntimeout: '01:30:00'\nmax_retries: 2\n",
    )
    with caplog.at_level(logging.WARNING):
        sweep = load_sweep_file(path)
    assert "defaults" in caplog.text
    assert sweep.metadata == {"description": "smoke", "tags": ["a", "b"]}
    # YAML numbers as OmegaConf reads them; dates stay text
    assert [p["lr"] for p in sweep.points] == [0.001, "1e-3", "2024-01-01"]
    assert (sweep.python, sweep.cwd, sweep.timeout_s, sweep.max_retries) == (
        "/opt/py/bin/python", "sub/dir", 5400.0, 2
    )  # fmt: skip
    task = sweep.to_tasks()[1]
    assert task.argv == ("/opt/py/bin/python", "train.py", "lr='1e-3'")
    assert task.env == (("SEED", "1e-3"), ("N", "3"))
    assert (task.cwd, task.timeout_s) == ("sub/dir", 5400.0)


@pytest.mark.parametrize(
    ("timeout", "seconds"),
    [(90, 90.0), (2.5, 2.5), ("00:01:30", 90.0), ("1:30", 90.0), ("1-00:00:00", 86400.0)],
)
def test_timeout_forms(timeout: Any, seconds: float):
    assert parse({"timeout": timeout}).timeout_s == seconds


def test_script_tasks_use_this_interpreter_and_hydra_overrides():
    sweep = parse({"grid": {"name": ["a b", "plain"], "+extra.x": [None]}})
    # No `python:` in the file: each source puts its own interpreter in argv[0].
    assert sweep.python == PYTHON and sweep.max_retries is None
    tasks = sweep.to_tasks(start_num=5)
    assert [t.num for t in tasks] == [5, 6]
    assert tasks[0].argv == (PYTHON, "train.py", "name='a b'", "+extra.x=null")
    assert task_argv(tasks[0], "/opt/py", "/s", "/s/t")[0] == "/opt/py"
    assert tasks[1].argv[2:] == ("name=plain", "+extra.x=null")
    assert all(t.kind is TaskKind.COMMAND and t.key == task_key(t.params) for t in tasks)
    assert tasks[0].name == "task_005"


def test_command_templates_list_and_string():
    listed = parse_sweep(
        {"grid": {"lr": [0.5], "tags": [["a", "b c"]]}, "command": ["prog", "--lr={lr}", "{tags}"]},
        "s.yaml",
    )
    assert listed.to_tasks()[0].argv == ("prog", "--lr=0.5", '["a","b c"]')
    text = parse_sweep(
        {"grid": {"name": ["x y"]}, "command": "prog --name '{name}' '{{literal}}'"}, "s.yaml"
    )
    assert text.command == ("prog", "--name", "{name}", "{{literal}}")
    assert text.to_tasks()[0].argv == ("prog", "--name", "x y", "{literal}")


def test_task_keys_survive_editing_the_sweep_file():
    before = {t.key: t.params for t in parse({"grid": {"a": [1, 2], "b": ["x"]}}).to_tasks()}
    after = {t.key: t.params for t in parse({"grid": {"a": [0, 1, 2, 3], "b": ["x"]}}).to_tasks()}
    assert set(before) < set(after)
    assert all(after[k] == p for k, p in before.items())


def test_ten_thousand_points_expand_to_ten_thousand_distinct_tasks():
    """A grid of 100 x 10 x 2 by a paired axis of 5: every point once, in order, each
    value where it belongs (its speed is bench/bench_expand.py's business)."""
    data = {
        "grid": {"a": list(range(100)), "b": [0.1 * i for i in range(10)], "c": ["x", "y"]},
        "paired": [{"g": {"d": [1, 2, 3, 4, 5], "e": ["p q", "r", "s", "t", "u"]}}],
    }
    for extra in ({"script": "train.py"}, {"command": ["prog", "--a={a}", "{e}", "{d}{b}{c}"]}):
        definition = parse_sweep({**data, **extra}, "big.yaml")
        assert definition.size == 10_000
        tasks = definition.to_tasks()
        assert len(tasks) == 10_000 and len({t.key for t in tasks}) == 10_000
        assert [t.num for t in tasks] == list(range(1, 10_001))
        points = {(p["a"], p["b"], p["c"], p["d"], p["e"]) for p in (t.params for t in tasks)}
        assert len(points) == 10_000
        last = tasks[-1]
        assert (last.params["a"], last.params["c"], last.params["d"]) == (99, "y", 5)
        if "command" in extra:
            assert last.argv == ("prog", "--a=99", "u", f"5{last.params['b']}y")
        assert [t.key for t in definition.iter_tasks(limit=3)] == [t.key for t in tasks[:3]]


# --- validation ----------------------------------------------------------------------------

BAD = [
    ("- just\n- a list\n", None, "must be a mapping"),
    ("", None, "empty file"),
    ("grid: {a: [1]}\nscript: t.py\nsweeps: {}\n", "sweeps", "allowed: sweep, grid"),
    ("sweep: {grid: {a: [1]}, scrip: t.py}\nscript: t.py\n", "sweep.scrip", "allowed:"),
    ("sweep: [1]\nscript: t.py\n", "sweep", "mapping"),
    ("grid: {a: [1]}\nscript: t.py\ncomplete: old\n", "complete", "hsm complete"),
    ("grid: [1, 2]\nscript: t.py\n", "grid", "mapping"),
    ("grid: {a: !!binary aGk=}\nscript: t.py\n", "grid.a", "unsupported value type bytes"),
    ("grid: {a: [!!set {x}]}\nscript: t.py\n", "grid.a", "unsupported value type"),
    ("grid: {a: []}\nscript: t.py\n", "grid.a", "empty list"),
    ("grid: {a: {}}\nscript: t.py\n", "grid.a", "empty mapping"),
    ("grid: {a: [1, 1]}\nscript: t.py\n", "grid.a", "appears twice"),
    ("grid: {a: [{1: x}]}\nscript: t.py\n", "grid.a", "must be strings"),
    ("sweep: {grid: {a: [1]}}\ngrid: {b: [2]}\nscript: t.py\n", "grid", "inside and outside"),
    ("grid: {a.b: [1], a: {b: [2]}}\nscript: t.py\n", "grid.a.b", "also set by grid.a.b"),
    ("paired: {g: {a: [1]}}\nscript: t.py\n", "paired", "list of groups"),
    ("paired: [[1]]\nscript: t.py\n", "paired[0]", "mapping"),
    ("paired: [{g: {a: 1}}]\nscript: t.py\n", "paired[0].g.a", "non-empty list"),
    ("paired: [{grp: {a: [1, 2], b: [1, 2, 3]}}]\nscript: t.py\n", "paired[0].grp",
     "equal lengths, got a: 2, b: 3"),
    ("paired: [{g: {a: [1, 1], b: [2, 2]}}]\nscript: t.py\n", "paired[0].g", "appears twice"),
    ("grid: {a: [1]}\npaired: [{g: {a: [2]}}]\nscript: t.py\n", "paired[0].g", "also set"),
    ("grid: {a: [1]}\n", "script/command", "missing"),
    ("grid: {a: [1]}\nscript: t.py\ncommand: [x]\n", "script/command", "both"),
    ("grid: {a: [1]}\nscript: [t.py]\n", "script", "path"),
    ("grid: {a: [1]}\ncommand: [prog, '--x={b}']\n", "command[1]",
     "unknown placeholder {b}; the sweep's params are: a"),
    ("grid: {a: [1]}\ncommand: \"prog '{a}\"\n", "command", "cannot split"),
    ("grid: {a: [1]}\ncommand: []\n", "command", "non-empty"),
    ("grid: {a: [1]}\ncommand: [prog, [x]]\n", "command[1]", "strings or numbers"),
    ("grid: {a: [1]}\ncommand: [prog]\npython: py\n", "python", "only applies to `script:`"),
    ("grid: {'a b': [1]}\nscript: t.py\n", "grid.a b", "not a Hydra override key"),
    ("grid: {a: ['???']}\nscript: t.py\n", "grid.a", "missing value"),
    ("paired: [{g: {a: [1], b: [{'é': 1}]}}]\nscript: t.py\n", "paired[0].g.b", "dict key"),
    ("grid: {a: [1]}\nscript: t.py\nenv: [A]\n", "env", "mapping"),
    ("grid: {a: [1]}\nscript: t.py\nenv: {A-B: x}\n", "env.A-B", "variable name"),
    ("grid: {a: [1]}\nscript: t.py\nenv: {A: [x]}\n", "env.A", "string or a number"),
    ("grid: {a: [1]}\nscript: t.py\nenv: {A: '{nope}'}\n", "env.A", "unknown placeholder"),
    ("grid: {a: [1]}\nscript: t.py\ncwd: /abs\n", "cwd", "relative"),
    ("grid: {a: [1]}\nscript: t.py\nmetadata: [x]\n", "metadata", "mapping"),
    ("grid: {a: [1]}\nscript: t.py\ntimeout: soon\n", "timeout", "duration"),
    ("grid: {a: [1]}\nscript: t.py\ntimeout: -5\n", "timeout", "duration"),
    ("grid: {a: [1]}\nscript: t.py\nmax_retries: -1\n", "max_retries", ">= 0"),
    ("grid: {a: [1]}\nscript: t.py\nmax_retries: true\n", "max_retries", ">= 0"),
    ("grid:\n  a: [1]\n  a: [2]\nscript: t.py\n", None, "line 3, column 3: key 'a' given twice"),
    ("grid: {a: [1, 2}\nscript: t.py\n", None, "YAML syntax error at line 1"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "message"), BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_sweep_files_name_file_key_and_problem(
    tmp_path: Path, text: str, key: str | None, message: str
):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_sweep_file(path)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(str(path) + (f":{key}: " if key else ": ")), line
    assert message in line
    assert err.value.file == str(path) and err.value.key == key


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such sweep file") as err:
        load_sweep_file(tmp_path / "nope.yaml")
    assert err.value.file == str(tmp_path / "nope.yaml")


def test_unknown_key_lists_the_allowed_ones(tmp_path: Path):
    with pytest.raises(ConfigError) as err:
        load_sweep_file(write(tmp_path, "grid: {a: [1]}\nscript: t.py\nsweeps: {}\n"))
    assert "allowed: sweep, grid, paired, metadata, defaults, script, command" in str(err.value)


# --- the values' journey into real processes ---------------------------------------------

HOSTILE = [
    "$(touch PWNED)", "; touch PWNED", "`touch PWNED`", "a b", "it's", 'say "hi"', "a,b", "a=b",
    "é☃中", "", "null", "true", "1e-3", " lead", "trail ", "[1,2]", "${oc.env:HOME}", "\\",
    "line\nbreak", "tab\t", "{curly}",
]  # fmt: skip


def run_tasks(sweep: SweepDefinition, root: Path) -> list[subprocess.CompletedProcess[str]]:
    procs = []
    for task in sweep.to_tasks():
        env = {**os.environ, **dict(task.env)}
        procs.append(
            subprocess.run(
                task_argv(task, sys.executable, str(root), str(root)),
                cwd=root / task.cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
        )
    return procs


def test_script_sweep_values_reach_a_real_hydra_app_exactly(tmp_path: Path):
    values = [*HOSTILE, 3, 1.5, 1e-3, True, None, [1, "x y", [None]], {"k": "v w", "n": [1.5]}]
    grid: dict[str, Any] = {f"v{i}": [v] for i, v in enumerate(values)}
    grid["hydra.run.dir"] = str(tmp_path / "run dir")
    grid["hydra.output_subdir"] = None
    grid["hydra/job_logging"] = "disabled"
    sweep = parse_sweep(
        {
            "grid": {f"+{k}" if k.startswith("v") else k: v for k, v in grid.items()},
            "paired": [{"tags": {"+tag": ["t 1", "t'2"], "+n": [1, 2]}}],
            "script": str(APP),
            "env": {"ECHO_OUT": "out_{+n}.json"},
        },
        "hostile.yaml",
    )
    procs = run_tasks(sweep, tmp_path)
    assert [p.returncode for p in procs] == [0, 0], procs[0].stderr[-2000:]
    for n, point in ((1, sweep.points[0]), (2, sweep.points[1])):
        got = (tmp_path / f"out_{n}.json").read_text(encoding="utf-8")
        expected = {k[1:]: v for k, v in point.items() if k.startswith("+")}
        assert got == json.dumps(expected, ensure_ascii=False)  # byte-exact, types included
    assert not (tmp_path / "PWNED").exists()


def test_command_sweep_values_reach_argv_exactly_and_no_shell_runs(tmp_path: Path):
    sweep = parse_sweep(
        {
            "grid": {"v": HOSTILE, "n": [1]},
            "command": [sys.executable, "-c", ARGV_ECHO, "{v}", "--opt={v}", "{n}"],
            "env": {"HSM_TEST_V": "{v}"},
        },
        "cmd.yaml",
    )
    procs = run_tasks(sweep, tmp_path)
    assert all(p.returncode == 0 for p in procs)
    assert [json.loads(p.stdout) for p in procs] == [[v, f"--opt={v}", "1"] for v in HOSTILE]
    assert [dict(t.env)["HSM_TEST_V"] for t in sweep.to_tasks()] == HOSTILE
    assert not (tmp_path / "PWNED").exists()
