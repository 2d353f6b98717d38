"""`hsm monitor health`: check every configured source now, with what each check found.

Each source is built from hsm.yaml exactly as a sweep would build it, started, asked for
its `health_check()` and closed, all at once, each step under the configured timeout (a
frozen host must not hang the table). A source counts as disabled after
`health.consecutive_failures` failed checks in a row, the rule the sweep's health monitor
applies; the one-shot command sees one check, `--watch` accumulates them.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsm_core.config import HsmConfig, source_spec
from hsm_core.errors import ConfigError
from hsm_core.sources import make_source
from hsm_core.sources.base import HealthReport, SweepContext


@dataclass(frozen=True)
class SourceCheck:
    name: str
    type: str
    ok: bool
    detail: str
    checked: float
    report: HealthReport | None  # None when the check itself could not run
    failed_in_row: int
    disabled_reason: str | None

    @property
    def state(self) -> str:
        if self.disabled_reason:
            return "disabled"
        return "healthy" if self.ok else "failing"


def configured_sources(config: HsmConfig) -> dict[str, Mapping[str, Any]]:
    """Every source in hsm.yaml, plus `local` (it needs no entry)."""
    entries: dict[str, Mapping[str, Any]] = dict(config.sources)
    entries.setdefault("local", {"type": "local"})
    return entries


async def _check_one(
    name: str, entry: Mapping[str, Any], ctx: SweepContext, timeout_s: float
) -> tuple[bool, str, HealthReport | None]:
    pushes = entry.get("sync") == "push"
    if pushes:
        # Looking must not change anything: never push the working tree from a health check.
        entry = {**entry, "sync": "warn"}
    try:
        source = make_source(source_spec(name, entry), ctx)
    except Exception as exc:  # a module that is missing, a bad option: say so in the row
        return False, f"cannot build the source: {exc}", None
    try:
        # Sources check through the connection they open in start() (ssh: the agent).
        await asyncio.wait_for(source.start(lambda event: None), timeout_s)
        report = await asyncio.wait_for(source.health_check(), timeout_s)
        problem = None
        if report.ok:
            ready = source.check_ready(project_sent=pushes)
            problem = await asyncio.wait_for(ready, timeout_s)
        if problem:
            return False, problem, report
        return report.ok, report.detail, report
    except asyncio.TimeoutError:
        return False, f"no answer within {timeout_s:g} s", None
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}", None
    finally:
        try:
            await asyncio.wait_for(source.close(), timeout_s)
        except Exception:
            pass


async def check_sources(
    config: HsmConfig,
    project_root: Path,
    *,
    names: list[str] | None = None,
    history: dict[str, int] | None = None,
) -> list[SourceCheck]:
    """Check the sources (all, or `names`); `history` carries failed-in-a-row counts
    between calls and is updated in place."""
    entries = configured_sources(config)
    wanted = names or list(entries)
    unknown = [n for n in wanted if n not in entries]
    if unknown:
        raise ConfigError(
            f"unknown source {unknown[0]!r}",
            key="--sources",
            hint=f"sources in {config.where}: {', '.join(sorted(entries))}",
        )
    timeout_s = float(config.health.get("timeout_s", 20.0))
    limit = int(config.health.get("consecutive_failures", 3))
    # A scratch sweep folder: starting a source may create its folders there.
    with tempfile.TemporaryDirectory(prefix="hsm-health-") as scratch:
        ctx = SweepContext("health-check", Path(scratch), project_root, sys.executable)
        results = await asyncio.gather(*(_check_one(n, entries[n], ctx, timeout_s) for n in wanted))
    history = history if history is not None else {}
    now = time.time()
    out = []
    for name, (ok, detail, report) in zip(wanted, results, strict=True):
        history[name] = 0 if ok else history.get(name, 0) + 1
        n = history[name]
        reason = None
        if n >= max(1, limit):
            reason = f"{n} failed checks in a row (limit {limit}): {detail}"
        out.append(
            SourceCheck(
                name=name,
                type=str(entries[name].get("type", "?")),
                ok=ok,
                detail=detail,
                checked=report.time if report else now,
                report=report,
                failed_in_row=n,
                disabled_reason=reason,
            )
        )
    return out
