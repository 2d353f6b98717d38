"""An app written for hydra-submitit-launcher (the shape of its example): it asks
submitit where it runs. Under hsm it changes nothing but `hydra/launcher=`."""

import logging
import os
import time

import hydra
import submitit
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(config_path=".", config_name="config", version_base=None)
def my_app(cfg: DictConfig) -> int:
    env = submitit.JobEnvironment()
    log.info(f"Process ID {os.getpid()} executing task {cfg.task}, with {env}")
    time.sleep(1)
    return int(cfg.task) * 10


if __name__ == "__main__":
    my_app()
