"""Hydra's own shared plugin test suites (from hydra-core), run against the hsm plugins."""

from __future__ import annotations

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from pytest import mark

LOCAL = ["hydra.launcher.sources=local:2"]


def test_discovery() -> None:
    launchers = [x.__name__ for x in Plugins.instance().discover(Launcher)]
    sweepers = [x.__name__ for x in Plugins.instance().discover(Sweeper)]
    assert "HsmLauncher" in launchers
    assert "HsmSweeper" in sweepers


@mark.parametrize(
    "launcher_name, overrides",
    [
        ("hsm", LOCAL),  # under Hydra's basic sweeper
        ("hsm", [*LOCAL, "hydra/sweeper=hsm"]),
        ("hsm", ["hydra/launcher/pool=local", "hydra/sweeper=hsm"]),  # the built-in pool
        ("basic", ["hydra/sweeper=hsm"]),  # the hsm sweeper drives any launcher
    ],
)
class TestHsmLauncher(LauncherTestSuite):
    pass


@mark.parametrize(
    "launcher_name, overrides",
    [
        ("hsm", [*LOCAL, "hydra.sweeper.max_batch_size=2"]),  # basic sweeper, batches
        ("hsm", [*LOCAL, "hydra/sweeper=hsm", "hydra.sweeper.max_batch_size=2"]),
        ("basic", ["hydra/sweeper=hsm", "hydra.sweeper.max_batch_size=2"]),
    ],
)
class TestBatched(BatchedSweeperTestSuite):
    pass


@mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        ({}, ["-m", "hydra/launcher=hsm", *LOCAL]),
        ({}, ["-m", "hydra/launcher=hsm", "hydra/sweeper=hsm", "hydra/launcher/pool=local"]),
    ],
)
class TestIntegration(IntegrationTestSuite):
    pass
