"""Prints a few lines per job (stdout, stderr and console logging); x=2 raises."""

import logging
import sys

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> int:
    x = int(cfg.x)
    for epoch in range(1, 4):
        print(f"epoch {epoch} loss {1 / (epoch + x):.2f}", flush=True)
    print(f"a warning from job x={x}", file=sys.stderr, flush=True)
    log.info("done with x=%d", x)
    if x == 2:
        raise ValueError("boom")
    return x * 2


if __name__ == "__main__":
    main()
