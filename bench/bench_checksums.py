"""Benchmark: what the sha256 record of collected files costs, per GB.

Not a test. On one loopback ssh host it runs, alternating and for N rounds (whole
processes, wall clock, medians):

- `hsm run` of one task that writes a SIZE MB file (pulled back by SFTP), with the
  source's `checksums: true` (the agent hashes the folder when the task ends, the
  collector hashes each copy as it arrives) and `checksums: false`;
- `hsm monitor collection SWEEP --verify-integrity` of the `true` sweep (hashes the copy
  here, and the host hashes its copy, at the same time);
- the anchor: coreutils `sha256sum` of the same file, once.

Columns: median wall time, and seconds per GB of file. The task's own write of the file
is in both runs; `on - off` is what the checksums add to a sweep.

    python bench/bench_checksums.py [--rounds 3] [--size-mb 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _timing import Series, Timing, timed
from rich.console import Console
from rich.table import Table

WRITE = """\
import os, sys
mb = int(sys.argv[1])
block = os.urandom(1 << 20)
with open(os.path.join(os.environ["HSM_TASK_DIR"], "results", "big.bin"), "wb") as f:
    for _ in range(mb):
        f.write(block)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--services", type=Path, default=Path("/tmp/hsm-test-services"))
    args = ap.parse_args()
    env = json.loads((args.services / "sshd" / "env.json").read_text())
    host = env["hosts"][0]
    gb = args.size_mb / 1024
    work = Path(tempfile.mkdtemp(prefix="hsm-bench-sums-"))
    remote = f"hsm-bench-sums-{int(time.time())}"
    try:
        proj = work / "proj"
        proj.mkdir()
        (proj / "write.py").write_text(WRITE)
        sources = {
            f"h{on}": {
                "type": "ssh",
                "host": host["alias"],
                "ssh_config": env["ssh_config"],
                "project_dir": f"{remote}/{on}",
                "python": host["python"],
                "sync": "push",
                "max_parallel": 1,
                "checksums": on == "on",
            }
            for on in ("on", "off")
        }
        (proj / "hsm.yaml").write_text(yaml.safe_dump({"sources": sources}))
        sweep = {"grid": {"mb": [args.size_mb]}, "command": ["python3", "write.py", "{mb}"]}
        (proj / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        for cmd in (
            ["git", "init", "-q"],
            ["git", "add", "-A"],
            ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "b"],
        ):
            subprocess.run(cmd, cwd=proj, check=True)  # fmt: skip
        hsm = [sys.executable, "-m", "hsm_core.cli.main"]
        series = Series()
        for r in range(args.rounds):
            for on in ("on", "off") if r % 2 == 0 else ("off", "on"):
                sid = f"{on}{r}"
                series.add(f"run, checksums {on}", timed([*hsm, "run", "-c", "sweep.yaml", "-s",
                           f"h{on}", "--sweep-id", sid], cwd=proj))  # fmt: skip
            series.add("verify-integrity", timed([*hsm, "monitor", "collection", f"on{r}",
                       "--verify-integrity"], cwd=proj))  # fmt: skip
        big = next(proj.glob("sweeps/outputs/on0/tasks/*/results/big.bin"))
        t0 = time.perf_counter()
        subprocess.run(["sha256sum", str(big)], check=True, capture_output=True)
        series.add("sha256sum (anchor)", Timing(time.perf_counter() - t0, 0.0))
        table = Table(title=f"checksums: one task, {args.size_mb} MB file, {args.rounds} rounds")
        for col in ("what", "median wall s", "range", "s per GB"):
            table.add_column(col)
        for name in series.runs:
            w = series.wall(name)
            table.add_row(name, f"{w:.2f}", series.spread(name, 2), f"{w / gb:.2f}")
        added = series.wall("run, checksums on") - series.wall("run, checksums off")
        table.add_row("on - off", f"{added:.2f}", "", f"{added / gb:.2f}")
        Console().print(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["ssh", "-F", env["ssh_config"], host["alias"], "rm", "-rf", remote],
                       check=False)  # fmt: skip


if __name__ == "__main__":
    main()
