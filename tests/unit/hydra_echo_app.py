"""A real Hydra app for the tests: writes its resolved config as JSON to the file $ECHO_OUT.

Resolving with ``throw_on_missing`` means that a value Hydra or OmegaConf would interpret
(an interpolation, ``???``) shows up as a difference or a failure, never as a silent pass.
"""

from __future__ import annotations

import json
import os

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base=None, config_path=None, config_name=None)
def main(cfg: DictConfig) -> None:
    data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    with open(os.environ["ECHO_OUT"], "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
