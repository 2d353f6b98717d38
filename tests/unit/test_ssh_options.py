"""hsm.yaml keys of an ssh source: defaults, and one clear error per bad key."""

from __future__ import annotations

import pytest

from hsm_core.errors import ConfigError
from hsm_core.sources.ssh.options import SSHOptions, remote_path
from hsm_core.transport.ssh import command_line


def test_defaults_and_agent_python() -> None:
    opts = SSHOptions.parse("s1", {"host": "server1", "project_dir": "~/proj/"})
    assert (opts.python, opts.agent_python, opts.sync) == ("python3", "python3", "warn")
    assert opts.project_dir == "~/proj"
    assert opts.target.host == "server1" and opts.target.port is None
    absolute = SSHOptions.parse("s1", {"host": "h", "project_dir": "p", "python": "/env/py"})
    assert absolute.agent_python == "/env/py"  # safe: no setup line needed to find it
    via_setup = SSHOptions.parse(
        "s1", {"host": "h", "project_dir": "p", "python": "python", "setup": "conda activate x"}
    )
    assert via_setup.agent_python == "python3" and via_setup.setup == ("conda activate x",)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"project_dir": "p"}, "sources.s1"),  # no host
        ({"host": "h"}, "sources.s1.project_dir"),
        ({"host": "h", "project_dir": "p", "sync": "mirror"}, "sources.s1.sync"),
        ({"host": "h", "project_dir": "p", "port": "22x"}, "sources.s1.port"),
        ({"host": "h", "project_dir": "p", "gpus": "0,1"}, "sources.s1.gpus"),
        (
            {"host": "h", "project_dir": "p", "keepalive_interval": 0},
            "sources.s1.keepalive_interval",
        ),
        ({"host": "h", "project_dir": "p", "key": "/nonexistent/key"}, "sources.s1.key"),
        ({"host": "h", "project_dir": "p", "hostname": "x"}, "sources.s1.hostname"),
    ],
)
def test_bad_keys_name_the_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        SSHOptions.parse("s1", options)
    assert err.value.key == key
    assert "\n" not in str(err.value)


def test_remote_paths_resolve_against_home() -> None:
    assert remote_path("~", "/home/a") == "/home/a"
    assert remote_path("~/p", "/home/a") == "/home/a/p"
    assert remote_path("p/q", "/home/a") == "/home/a/p/q"
    assert remote_path("/srv/p", "/home/a") == "/srv/p"


def test_command_line_quotes_every_word() -> None:
    assert command_line(["echo", "it's", "$(x)", "a b"]) == b"echo 'it'\"'\"'s' '$(x)' 'a b'"
    assert command_line(["printf", "\udcff"]) == b"printf '\xff'"  # raw byte, not UTF-8


def test_agent_timeout_defaults_to_a_minute_and_must_be_positive() -> None:
    assert SSHOptions.parse("s", {"host": "x", "project_dir": "p"}).agent_timeout == 60.0
    with pytest.raises(ConfigError, match="agent_timeout"):
        SSHOptions.parse("s", {"host": "x", "project_dir": "p", "agent_timeout": 0})
