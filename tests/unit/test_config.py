"""hsm.yaml and the --sources syntax: what is accepted, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsm_core.config import HsmConfig, load_config, parse_config, parse_sources
from hsm_core.errors import ConfigError

CONFIG = {
    "sources": {
        "local": {"type": "local", "max_parallel": 4, "gpus": [0, 1]},
        "server1": {"type": "ssh", "host": "server1", "max_parallel": 8, "project_dir": "/p"},
        "cluster": {"type": "hpc", "scheduler": "slurm", "max_parallel": 32},
    },
    "health": {"interval_s": 60},
}


def _cfg() -> HsmConfig:
    return parse_config(CONFIG, "hsm.yaml")


def test_sources_by_type_name_and_slots() -> None:
    specs = parse_sources("local:2,ssh:server1:3,hpc:cluster", _cfg())
    assert [(s.name, s.type, s.max_parallel) for s in specs] == [
        ("local", "local", 2),
        ("server1", "ssh", 3),
        ("cluster", "hpc", 32),
    ]
    assert specs[0].options["gpus"] == [0, 1]
    assert specs[1].options["project_dir"] == "/p"


def test_name_alone_takes_configured_slots() -> None:
    (spec,) = parse_sources("server1", _cfg())
    assert spec.max_parallel == 8 and spec.type == "ssh"


def test_local_needs_no_entry() -> None:
    (spec,) = parse_sources("local:3", HsmConfig(None))
    assert (spec.type, spec.max_parallel) == ("local", 3)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("local:0", "slot count"),
        ("local:x", "slot count"),
        ("ssh:nobody:2", "unknown source 'nobody'"),
        ("hpc:server1", "is a ssh source"),
        ("local,local:2", "named twice"),
        ("ssh:server1:2:3", "too many"),
        ("local,,server1", "empty entry"),
    ],
)
def test_bad_sources(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_sources(text, _cfg())
    assert needle in str(err.value)
    assert str(err.value).startswith("--sources")


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ([1, 2], "must be a mapping"),
        ({"sourcez": {}}, "unknown key 'sourcez'"),
        ({"sources": {"a": {"type": "cloud"}}}, "sources.a.type: type is 'cloud'"),
        ({"sources": {"a": {"type": "local", "max_parallel": 0}}}, "sources.a.max_parallel"),
        ({"sources": {"a": {"type": "ssh"}}}, "sources.a.host"),
        ({"health": {"interval": 3}}, "unknown key 'interval'"),
        ({"strategy": "fastest"}, "unknown strategy 'fastest'"),
    ],
)
def test_bad_config_names_file_and_key(data: object, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data, "proj/hsm.yaml")
    msg = str(err.value)
    assert msg.startswith("proj/hsm.yaml") and needle in msg


def test_project_file_wins_over_user_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "xdg" / "hsm"
    user.mkdir(parents=True)
    (user / "hsm.yaml").write_text("sources: {u: {type: local}}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    proj = tmp_path / "proj"
    proj.mkdir()
    assert "u" in load_config(proj).sources
    (proj / "hsm.yaml").write_text("sources: {p: {type: local}}\n")
    assert set(load_config(proj).sources) == {"p"}
    (proj / "hsm.yaml").write_text("sources: [\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(proj)
