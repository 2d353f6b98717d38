"""Values reach the task exactly: as Hydra overrides (checked with Hydra's own parser and
through a real Hydra app in a subprocess) and as argv elements of `command:` templates
(checked through a real subprocess; no shell ever sees them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hsm_core.errors import ConfigError
from hsm_core.overrides import (
    Template,
    TemplateError,
    format_override,
    format_value,
    is_hydra_key,
    parse_command,
    placeholder_text,
)

APP = Path(__file__).with_name("hydra_echo_app.py")

HOSTILE_STRINGS = [
    "$(rm -rf ~)", "; echo pwned", "`id`", "| cat /etc/passwd", "&& reboot", "'", '"',
    "'\"", "a'b\"c", "'quoted'", '"double"', "\\", "\\\\", "a\\", "trailing\\\\", "\\'",
    '\\"', "a\\\\'b", "\\\\\\\"x", "\n", "line1\nline2", "\r\n", "\t", "tab\there", "a,b",
    "a=b", "k=v,k2=v2", "é☃中", "emoji 🎉", "\u00a0nbsp", "", " ", "  ", " lead", "trail ",
    "null", "NULL", "None", "~", "true", "False", "TRUE", "yes", "1e-3", "1", "-1", "+1",
    "0x10", "1_000", ".5", "1.", "inf", "-inf", "+inf", "nan", "NaN", "???", "[1,2]", "[]",
    "{a: 1}", "{}", "${oc.env:HOME}", "${x", "${}", "a ${b} c", "\\${x}", "\\\\${x}",
    "$", "$HOME", "${", "x)", "(", "choice(a,b)", "range(1,3)", "int(3)", "a:b", ":", "@",
    "~x", "+x", "#comment", "%s", "*", "?", "|", ">", "<", "!", "--flag", "-", "plain",
    "snake_case-1", "_", "a/b.c", "/abs/path with space",
]  # fmt: skip
HOSTILE_STRINGS.remove("???")  # OmegaConf's "missing" marker has no escape: refused below
OTHER_VALUES: list[Any] = [
    0, 1, -7, 10**20, 1.5, -0.0, 0.1, 1e-3, 1e20, 1e-300, float("inf"), float("-inf"),
    float("nan"), True, False, None, [], {}, [1, "a b", None, [True, 1.5], "${x}"],
    {"a": 1, "b c": ["x", "${y}"], "n": {"m": None, "l": []}},
    {"weird:key=1,": "v", "\\": 1, "a b": "'", "$x": "${y}", "${k}": 2, "1a": "(", "[]": 0},
    ["'", '"', ",", "=", "\n", "é", "", "null", "1"],
]  # fmt: skip
VALUES: list[Any] = HOSTILE_STRINGS + OTHER_VALUES
IDS = [f"{i}:{ascii(v)[:24]}" for i, v in enumerate(VALUES)]


def typed(value: Any) -> str:
    """JSON text: tells 1 from 1.0 from true from "1", and NaN equals NaN."""
    return json.dumps(value, ensure_ascii=False)


@pytest.fixture(scope="module")
def parser() -> OverridesParser:
    return OverridesParser.create()


@pytest.mark.parametrize("value", VALUES, ids=IDS)
def test_hydra_parser_and_omegaconf_read_back_the_value(parser: OverridesParser, value: Any):
    override = parser.parse_override(format_override("model.k", value))
    assert override.key_or_group == "model.k"
    assert not override.is_sweep_override()
    parsed = override.value()
    if "${" not in typed(value):  # Hydra alone gives it back; OmegaConf escapes aside
        assert typed(parsed) == typed(value)
    # ...and OmegaConf, the second reader, resolves it the way an app reads cfg.model.k
    cfg = OmegaConf.create({"k": parsed})
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(container, dict)
    got = container["k"]
    assert typed(got) == typed(value)


@pytest.fixture(scope="module")
def echoed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """One real Hydra run receiving every value as an override of an existing key."""
    d = tmp_path_factory.mktemp("echo app")  # a space in the path, for good measure
    keys = [f"v{i}" for i in range(len(VALUES))]
    (d / "echo.yaml").write_text("".join(f"{k}: null\n" for k in keys), encoding="utf-8")
    out = d / "out.json"
    argv = [
        sys.executable, str(APP), "--config-dir", str(d), "--config-name", "echo",
        format_override("hydra.run.dir", str(d / "run")), "hydra.output_subdir=null",
        "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
        *(format_override(k, v) for k, v in zip(keys, VALUES, strict=True)),
    ]  # fmt: skip
    env = {**os.environ, "ECHO_OUT": str(out)}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = json.dumps(dict(zip(keys, VALUES, strict=True)), ensure_ascii=False)
    return out.read_text(encoding="utf-8"), expected


def test_hydra_app_receives_all_values_byte_exact(echoed: tuple[str, str]):
    got, expected = echoed
    assert got == expected


@pytest.mark.parametrize("i", range(len(VALUES)), ids=IDS)
def test_hydra_app_receives_each_value(echoed: tuple[str, str], i: int):
    assert typed(json.loads(echoed[0])[f"v{i}"]) == typed(VALUES[i])


def test_plain_identifiers_stay_unquoted_for_readable_commands():
    assert format_override("model", "resnet") == "model=resnet"
    assert format_override("a.b", [1, "x", None, True]) == "a.b=[1,x,null,true]"
    assert format_override("lr", 1e-3) == "lr=0.001"
    assert format_override("s", "true") == "s='true'"
    assert format_override("s", "it's") == 's="it\'s"'


@pytest.mark.parametrize(
    "value",
    ["???", ["a", "???"], {"a": "???"}, {"é": 1}, {"a'b": 1}, {"1": 1}, {"true": 1},
     {"null": 1}, {"1.5": 1}, {"-inf": 1}, {1: "int key"}, {"": 1}, b"bytes", {1, 2}, object()],
    ids=repr,
)  # fmt: skip
def test_unrepresentable_values_raise_config_error_naming_the_key(value: Any):
    with pytest.raises(ConfigError) as err:
        format_override("model.weird", value)
    assert "model.weird" in str(err.value)
    assert err.value.key == "model.weird"


KEYS = [
    "a", "a.b", "a_b-c", "a.0", "0.a", "$x", "a.$b", "+a.b", "++a", "db/mysql", "hydra/launcher",
    "db@pkg", "group/opt@a.b", "x1.y2", "_x", "a b", "a=b", "", "1", ".a", "a..b", "-a", "a/",
    "~a", "a.", "é", "a,b", "+", "a/b.c", "a@", "a:b", "a[0]",
]  # fmt: skip


# Hydra parses these, but they set no sweep parameter (global package, deletion): refused.
REFUSED_ON_PURPOSE = {"", "~a", "+", "a@"}


@pytest.mark.parametrize("key", KEYS)
def test_key_check_agrees_with_hydra(parser: OverridesParser, key: str):
    try:
        parser.parse_override(f"{key}=1")
        hydra_ok = True
    except Exception:
        hydra_ok = False
    assert is_hydra_key(key) == (hydra_ok and key not in REFUSED_ON_PURPOSE)


def test_bad_key_is_a_config_error():
    with pytest.raises(ConfigError, match="a b"):
        format_override("a b", 1)


def test_format_value_of_floats_round_trips():
    for x in (0.1, 1 / 3, 2.5e-308, 1.7976931348623157e308, 5e-324, -2.0):
        assert float(format_value(x)) == x


# --- command: templates ------------------------------------------------------------------


def test_template_substitutes_and_keeps_literal_braces():
    t = Template("--lr={model.lr} {{not a placeholder}} {x}{x}")
    assert t.names == ("model.lr", "x", "x")
    assert (
        t.render({"model.lr": 0.5, "x": [1, "a"]}) == '--lr=0.5 {not a placeholder} [1,"a"][1,"a"]'
    )
    assert Template("no placeholders").render({}) == "no placeholders"


def test_placeholder_text_is_str_for_scalars_and_json_for_containers():
    assert [placeholder_text(v) for v in (1, 1.5, "é x", True, None)] == [
        "1", "1.5", "é x", "True", "None"
    ]  # fmt: skip
    assert placeholder_text({"a": ["b", 1]}) == '{"a":["b",1]}'


def test_unknown_placeholder_names_it_and_lists_the_params():
    with pytest.raises(TemplateError) as err:
        parse_command(["prog", "--x={lrr}"], ["lr", "seed"])
    assert "{lrr}" in str(err.value) and "lr, seed" in str(err.value)
    assert err.value.index == 1


def test_string_command_is_split_once_at_load_time():
    assert parse_command("prog --name '{name} x' \"{seed}\"", ["name", "seed"]) == (
        "prog", "--name", "{name} x", "{seed}"
    )  # fmt: skip
    with pytest.raises(TemplateError, match="cannot split"):
        parse_command("prog 'unclosed", [])


def test_command_values_arrive_in_argv_byte_exact_and_no_shell_runs(tmp_path: Path):
    marker = tmp_path / "pwned"
    values = [
        *VALUES, "???", f"$(touch {marker})", f"; touch {marker}", f"`touch {marker}`",
        f"| touch {marker}", f"&& touch {marker}", f"\ntouch {marker}", f"'; touch {marker}; '",
    ]  # fmt: skip
    templates = [Template("{v}"), Template("--opt={v} tail"), Template("{{{v}}}")]
    argv = [t.render({"v": v}) for v in values for t in templates]
    expected = [
        s.format(placeholder_text(v)) for v in values for s in ("{}", "--opt={} tail", "{{{}}}")
    ]
    script = "import json, sys; sys.stdout.write(json.dumps(sys.argv[1:]))"
    proc = subprocess.run(
        [sys.executable, "-c", script, *argv], capture_output=True, timeout=60, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected
    assert not marker.exists()
