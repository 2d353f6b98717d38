"""Proves how often each job finished: after `sleep` seconds it appends its x to `log`
(O_APPEND: lines of concurrent jobs never mix). `hold`: a file to wait for before that
(the test says when jobs may finish). `linger`: seconds the job process still takes after
the job returned (a log handler slow to close), a window to cancel it in. `end_delay`:
seconds the `SlowEnd` callback (`+hydra.callbacks.slow._target_=__main__.SlowEnd`) takes
in on_job_end, after the job returned and before hsm has recorded it."""

import logging
import os
import time

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SlowEnd(Callback):
    def on_job_end(self, config: DictConfig, job_return: object, **kwargs: object) -> None:
        time.sleep(float(config.end_delay))


class _SlowClose(logging.Handler):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def close(self) -> None:
        time.sleep(self.seconds)
        super().close()


@hydra.main(version_base=None, config_path="conf", config_name="marker")
def main(cfg: DictConfig) -> int:
    time.sleep(float(cfg.sleep))
    deadline = time.monotonic() + 120
    while cfg.hold and not os.path.exists(str(cfg.hold)) and time.monotonic() < deadline:
        time.sleep(0.05)
    fd = os.open(str(cfg.log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{cfg.x}\n".encode())
    finally:
        os.close(fd)
    if cfg.linger:
        logging.getLogger().addHandler(_SlowClose(float(cfg.linger)))
    return int(cfg.x)


if __name__ == "__main__":
    main()
