"""`hydra/sweeper=hsm`: a thin shell; the work happens in `_sweep` (imported on sweep)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


class HsmSweeper(Sweeper):
    def __init__(
        self,
        max_batch_size: int | None = None,
        params: dict[str, str] | None = None,
        paired: Sequence[Sequence[str]] | None = None,
        num_samples: int | None = None,
        seed: int = 0,
        resume: bool = False,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.params = _plain(params) or {}
        self.paired = _plain(paired) or []
        self.num_samples = num_samples
        self.seed = seed
        self.resume = resume
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.task_function: TaskFunction | None = None

    def setup(
        self,
        *,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.task_function = task_function
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from hydra_plugins.hsm_launcher._sweep import sweep

        return sweep(self, arguments)
