"""`hsm monitor collection SWEEP [--verify-integrity] [--repair]`: rendering of
hsm_core.collection_check (plain lines: they are read in terminals and grepped in CI)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from hsm_core.errors import ConfigError

if TYPE_CHECKING:
    from hsm_core.collection_check import CollectionReport, TaskCheck


def add_parser(sub: Any) -> None:
    c = sub.add_parser(
        "collection",
        help="are the files tasks wrote on remote hosts all here? (--verify-integrity)",
    )
    c.add_argument("sweep", help="sweep id or folder")
    c.add_argument(
        "--verify-integrity",
        action="store_true",
        help="sha256 of every collected file against the host's record, and against the "
        "host's copies where it is reachable (without: sizes only, no host contact)",
    )
    c.add_argument(
        "--repair", action="store_true", help="pull missing or differing files again (checked)"
    )
    c.add_argument(
        "--offline", action="store_true", help="check against the records only; contact no host"
    )
    c.add_argument("--tasks", help="only these task numbers, e.g. 3,7-9")
    c.add_argument("--limit", type=int, default=20, help="tasks listed per problem (default 20)")
    c.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from hsm_core.collection_check import check_collection
    from hsm_core.sweeps import open_sweep

    if args.repair and args.offline:
        raise ConfigError("--repair pulls from the hosts: it cannot be --offline", key="--repair")
    if args.limit < 0:
        raise ConfigError("must be >= 0", key="--limit")
    with open_sweep(args.sweep) as store:
        report = asyncio.run(
            check_collection(
                store,
                verify=args.verify_integrity,
                repair=args.repair,
                offline=args.offline,
                tasks=args.tasks,
            )
        )
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        _print(report, args)
    return 0 if report.ok else 1


def _n(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(n: int) -> str:
    if n < 0:
        return "a folder"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _print(report: CollectionReport, args: argparse.Namespace) -> None:
    out: list[str] = []
    say = out.append
    how = "sha256" if report.verify else "sizes only (add --verify-integrity for sha256)"
    checked = len(report.tasks)
    files = sum(t.files for t in report.tasks)
    total = sum(t.bytes for t in report.tasks)
    say(
        f"sweep {report.sweep_id}: {checked} collected tasks, {files} files, {_size(total)}; "
        f"checked by {how} in {report.seconds:.1f} s"
    )
    for name, h in sorted(report.hosts.items()):
        if h.reachable is None:
            where = "host not contacted"
        elif h.reachable:
            changed = [t for t in report.tasks if t.source == name and t.host_changed]
            gone = [t for t in report.tasks if t.source == name and t.host == "folder gone"]
            where = "host reachable: its copies match the records"
            if changed or gone:
                where = (
                    f"host reachable: {len(changed)} tasks changed there since they ended, "
                    f"{len(gone)} folders gone there (the records still prove the copies here)"
                )
        else:
            where = f"host unreachable ({h.error}): checked against the records only"
        say(f"  {name}: {h.tasks} tasks; {where}")
    for source, n in sorted(report.in_place.items()):
        if "copied back" in source:
            say(f"  {source}: {n} tasks not checked")
        else:
            say(f"  {source}: {n} tasks wrote their files here directly (nothing collected)")
    if report.not_ended:
        say(f"  {report.not_ended} tasks have not ended with files to collect (not checked)")
    excl = [(rel, size) for t in report.tasks for rel, size in t.excluded.items()]
    if excl:
        names = sorted({rel for rel, _ in excl})
        more = f", ... {len(names) - 3} more names" if len(names) > 3 else ""
        size = sum(s for _, s in excl if s > 0)
        with_excl = sum(1 for t in report.tasks if t.excluded)
        say(
            f"  excluded by `exclude:` (kept on the hosts, not missing): {len(excl)} files, "
            f"{_size(size)} in {with_excl} tasks: {', '.join(names[:3])}{more}"
        )
    limit = args.limit
    shown = 0
    for t in report.tasks:
        lines = _task_lines(t)
        if not lines:
            continue
        shown += 1
        if shown > limit:
            continue
        for line in lines:
            say(f"{t.name} ({t.source}): {line}")
    if shown > limit:
        say(f"... and {shown - limit} more tasks (--limit, or --json for all)")
    bad = [t for t in report.tasks if not t.ok]
    if not bad:
        say(f"all {checked} tasks match" if checked else "no collected task to check")
    else:
        n_missing = sum(len(t.missing) for t in bad)
        n_diff = sum(len(t.differing) for t in bad)
        n_extra = sum(len(t.extra) for t in bad)
        n_unver = sum(t.unverified for t in bad)
        say(
            f"{len(bad)} of {checked} tasks do not match: {_n(n_missing, 'file')} missing, "
            f"{n_diff} differing, {n_extra} extra, {_n(n_unver, 'task')} unverified"
        )
        if (n_missing or n_diff) and not args.repair:
            say(f"to pull them again: hsm monitor collection {report.sweep_id} --repair")
    print("\n".join(out))


def _task_lines(t: TaskCheck) -> list[str]:
    lines: list[str] = []
    if t.unverified:
        why: str | None = (
            t.note or "no record of its files (collected by an older hsm, or checksums off)"
        )
        lines.append(f"unverified: {why}, and its host cannot be asked ({t.host})")
    for rel in t.missing:
        why = t.not_repaired.get(rel)
        lines.append(f"missing: {rel}" + (f" (not repaired: {why})" if why else ""))
    for rel in t.differing:
        why = t.not_repaired.get(rel)
        detail = t.details.get(rel, "")
        lines.append(
            f"differs: {rel}" + (f" ({detail})" if detail else "")
            + (f" (not repaired: {why})" if why else "")
        )  # fmt: skip
    for rel in t.extra:
        lines.append(f"extra: {rel} (here, but not among the files its host listed)")
    for rel in t.repaired:
        lines.append(f"repaired: {rel} (pulled again, sha256 checked)")
    if t.host_changed:
        lines.append("changed on the host since the task ended: " + ", ".join(t.host_changed[:5]))
    return lines
