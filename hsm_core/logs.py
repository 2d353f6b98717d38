"""Per-sweep log files, fed by Python logging.

- logs/sweep_aggregated.log: every hsm record, in time order;
- logs/task_assignments.log: which task went where (logger "hsm.assign");
- logs/health_status.log: health events (logger "hsm.health");
- logs/source_utilization.log: utilisation samples (logger "hsm.utilization");
- logs/sources/<name>.log: one per source (loggers "hsm.source.<name>").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


class _Prefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name == self.prefix or record.name.startswith(self.prefix + ".")


# INFO lines reach the files within this many seconds; warnings and errors at once.
FLUSH_INTERVAL_S = 0.5


class _LazyFileHandler(logging.FileHandler):
    """Writes through the file's buffer and flushes a warning at once, the rest with the
    periodic flush: a busy sweep logs a few lines per task, and a write call per line
    (with the thread switches it brings) cost more than the line is worth."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class SweepLogs:
    """Attach file handlers for one sweep to the `hsm` logger; detach with close()."""

    def __init__(self, sweep_dir: Path, source_names: Iterable[str], level: int = logging.INFO):
        self.logger = logging.getLogger("hsm")
        self.logger.setLevel(min(self.logger.level or level, level) if self.logger.level else level)
        logs = Path(sweep_dir) / "logs"
        (logs / "sources").mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter(FORMAT, DATEFMT)
        self.handlers: list[logging.Handler] = []

        def add(path: Path, prefix: str | None) -> None:
            h = _LazyFileHandler(path, encoding="utf-8")
            h.setFormatter(fmt)
            h.setLevel(level)
            if prefix:
                h.addFilter(_Prefix(prefix))
            self.logger.addHandler(h)
            self.handlers.append(h)

        add(logs / "sweep_aggregated.log", None)
        add(logs / "task_assignments.log", "hsm.assign")
        add(logs / "health_status.log", "hsm.health")
        add(logs / "source_utilization.log", "hsm.utilization")
        for name in source_names:
            add(logs / "sources" / f"{name}.log", f"hsm.source.{name}")
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="hsm-logs", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    def flush(self) -> None:
        for h in list(self.handlers):
            h.flush()

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.handlers.clear()
