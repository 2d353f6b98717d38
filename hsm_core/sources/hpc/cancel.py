"""`hsm cancel` of a sweep whose orchestrator is gone: cancel its cluster jobs anyway.

A live orchestrator cancels its own jobs (``HPCSource.cancel``). When it died, the jobs
it submitted keep running or waiting in the queue; their ids are in the journal (the
attempts' handles) and in each hpc source's ``scripts/<source>/jobs.jsonl``. This finds
the unsettled attempts of every hpc source the sweep used and cancels their jobs with
one scheduler call per source, through the same backend as the source (locally, or on
the login node over ssh).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from hsm_core.errors import HsmError, SourceError
from hsm_core.model import Attempt
from hsm_core.sources.hpc.client import BackendClient, LocalBackend, SSHBackend
from hsm_core.sources.hpc.options import parse_options
from hsm_core.sources.hpc.source import LEDGER

log = logging.getLogger(__name__)


def recorded_jobs(sweep_dir: Path, source: str, unsettled: list[Attempt]) -> list[str]:
    """Job ids of these attempts: their handle, else the ledger line of (key, attempt)."""
    ledger: dict[tuple[str, int], str] = {}
    try:
        for line in (sweep_dir / "scripts" / source / LEDGER).read_text().splitlines():
            try:
                rec = json.loads(line)
                ledger[(str(rec["key"]), int(rec["attempt"]))] = str(rec["job"])
            except (ValueError, KeyError, TypeError):
                continue
    except OSError:
        pass
    ids = []
    for att in unsettled:
        jid = att.handle or ledger.get((att.key, att.attempt))
        if jid:
            ids.append(jid)
    return sorted(set(ids))


def cancel_recorded(store: Any) -> int:
    """Cancel the scheduler jobs of the sweep's unsettled hpc attempts; return how many
    job ids were cancelled. A source that cannot be reached is logged, not fatal: the
    journal is settled anyway, and the message says which jobs may still run."""
    from hsm_core.config import load_config, source_spec

    used = [s for s in store.meta("sources") or [] if s.get("type") == "hpc"]
    if not used:
        return 0
    unsettled = [a for a in store.latest_attempts().values() if not a.state.terminal]
    if not unsettled:
        return 0
    try:
        config = load_config(Path(store.meta("project_root") or "."))
    except HsmError as exc:
        log.warning("cannot read hsm.yaml, cluster jobs not cancelled: %s", exc)
        return 0
    done = 0
    for desc in used:
        name = str(desc.get("name"))
        entry = config.sources.get(name)
        mine = [a for a in unsettled if a.source == name]
        ids = recorded_jobs(store.sweep_dir, name, mine)
        if not ids:
            continue
        if entry is None:
            log.warning("source %s is no longer in hsm.yaml: jobs %s not cancelled", name, ids)
            continue
        try:
            opts = parse_options(source_spec(name, entry))
            client: BackendClient = SSHBackend(opts, name) if opts.remote else LocalBackend(opts)
            asyncio.run(_cancel(client, ids))
        except (SourceError, HsmError) as exc:
            log.warning("%s: could not cancel jobs %s: %s", name, " ".join(ids), exc)
            continue
        done += len(ids)
    return done


async def _cancel(client: BackendClient, ids: list[str]) -> None:
    await client.start()
    try:
        await client.call({"op": "cancel", "job_ids": ids})
    finally:
        await client.close()
