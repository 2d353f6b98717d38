"""`hydra/launcher=hsm`: a thin shell; the work happens in `_core` (imported on launch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class HsmLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        # Nested nodes (pool, health) arrive as DictConfig; _core converts them.
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from hydra_plugins.hsm_launcher._core import launch

        jobs = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        return launch(self, jobs)

    def launch_numbered(self, jobs: Sequence[tuple[int, Sequence[str]]]) -> Sequence[JobReturn]:
        """Run jobs whose numbers need not be consecutive (the hsm sweeper's resume)."""
        from hydra_plugins.hsm_launcher._core import launch

        return launch(self, [(n, list(o)) for n, o in jobs], summary=False)
