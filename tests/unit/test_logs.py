"""Sweep log files: warnings are on disk at once, other lines within the flush interval,
and everything once the logs are closed."""

from __future__ import annotations

import logging
from pathlib import Path

from hsm_core.logs import FLUSH_INTERVAL_S, SweepLogs
from tests.helpers import wait_for


def test_lines_reach_the_files(tmp_path: Path) -> None:
    logs = SweepLogs(tmp_path, ["h1"])
    aggregated = tmp_path / "logs" / "sweep_aggregated.log"
    try:
        logging.getLogger("hsm.source.h1").warning("host h1 is slow")
        # Flushed by the call itself: no waiting.
        assert "host h1 is slow" in aggregated.read_text()
        assert "host h1 is slow" in (tmp_path / "logs" / "sources" / "h1.log").read_text()

        logging.getLogger("hsm.assign").info("task_001 -> h1 (attempt 1)")
        wait_for(
            lambda: "task_001 -> h1" in aggregated.read_text(),
            timeout=FLUSH_INTERVAL_S * 10,
            message="an INFO line flushed by the periodic flush",
        )
        logging.getLogger("hsm.assign").info("task_002 -> h1 (attempt 1)")
    finally:
        logs.close()
    assert "task_002 -> h1" in (tmp_path / "logs" / "task_assignments.log").read_text()
    assert "task_002" not in (tmp_path / "logs" / "health_status.log").read_text()
