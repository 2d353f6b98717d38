"""Time limits and preemption on the real one-node Slurm: the next attempt goes on where
the last one stopped (same source, same task folder with results/ in place, the Hydra
job's same output dir, HSM_RESUME=1), up to max_num_timeout time limits.

The time-limit test needs minutes: Slurm counts whole minutes and checks limits every
~30 s, so an attempt under `time: 1` runs 60-90 s. Its two sweeps run at once: the
checkpointing Hydra job and the command task that never checkpoints (it replaces the
one-attempt TIMEOUT test). Preemption cannot be triggered on this shared Slurm
(PreemptType=preempt/none): its test plays the real signals on a real job and FAKES only
sacct's final word (a shim rewrites CANCELLED to PREEMPTED for that job), named as such.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hsm_core.model import TaskState
from hsm_core.orchestrate import RunOptions, context_for, run_sweep
from hsm_core.sources.hpc.source import HPCSource
from tests.hydra.util import APPS, job_return, jobs
from tests.integration.test_hpc_hydra import SLURM_POOL
from tests.integration.test_hpc_slurm import hpc_spec, run_hpc, settles_as, started_job
from tests.services import SlurmEnv
from tests.sweep_utils import PY, command_tasks, make_sweep

pytestmark = pytest.mark.slurm

# Notes the attempt and whether it resumes in results/seen (kept across resumed attempts).
SEEN = (
    "import os\n"
    "d = os.environ['HSM_TASK_DIR']\n"
    "r = os.environ.get('HSM_RESUME', '0')\n"
    "with open(os.path.join(d, 'results', 'seen'), 'a') as f:\n"
    "    f.write(os.environ['HSM_ATTEMPT'] + ' ' + r + '\\n')\n"
    "print('attempt', os.environ['HSM_ATTEMPT'], flush=True)\n"
)
NEVER_DONE = SEEN + "import time; time.sleep(600)\n"
DONE_WHEN_RESUMED = SEEN + "import sys, time\nif r == '1': sys.exit(0)\ntime.sleep(300)\n"

STEPS, STEP_S = 10, 10  # 100 s of work: 2 attempts of 60-90 s (3 on a loaded machine)


def _steps(log: Path) -> list[tuple[int, int]]:
    lines = [ln.split() for ln in log.read_text().splitlines()]
    for t in sorted({int(a) for a, _, _ in lines}):
        mine = [(int(s), float(w)) for a, s, w in lines if int(a) == t]
        print(
            f"resume test: A attempt {t}: steps {mine[0][0]}-{mine[-1][0]}, "
            f"{time.strftime('%H:%M:%S', time.localtime(mine[0][1]))}-"
            f"{time.strftime('%H:%M:%S', time.localtime(mine[-1][1]))}"
        )
    return [(int(a), int(s)) for a, s, _ in lines]


@pytest.mark.timeout(600)
def test_time_limits_resume_from_the_checkpoint_until_max_num_timeout(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    # A: a Hydra job that checkpoints every step, through `hydra/launcher=hsm`.
    sweep = tmp_path / "multirun"
    sweep.mkdir()
    app = subprocess.Popen(
        [
            sys.executable,
            str(APPS / "checkpointed.py"),
            "-m",
            f"+steps={STEPS}",
            f"+step_s={STEP_S}",
            "hydra/launcher=hsm",
            *SLURM_POOL,
            "hydra.launcher.timeout_min=1",
            "hydra.launcher.max_num_timeout=2",
            "hydra.launcher.signal_delay_s=30",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.time()
    try:
        # B, meanwhile: a task that never checkpoints, allowed one time limit.
        store = make_sweep(tmp_path, command_tasks([[PY, "-c", NEVER_DONE]]))
        out, _ = run_hpc(store, hpc_spec(slurm_env, time=1, max_num_timeout=1))
        b_wall = time.time() - t0
        _, a_err = app.communicate(timeout=480)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    a_wall = time.time() - t0

    # The shared test Slurm's node may fail meanwhile (other tests stop slurmd): such an
    # attempt is LOST and the task starts afresh, as documented. The checks below hold
    # for the chain of attempts after the last such restart.
    attempts = store.attempts(store.tasks()[0].key)
    b = _after_restarts(attempts)
    tdir = store.task_dir(store.tasks()[0])
    print(f"resume test: B {b_wall:.0f} s: {_timeline(attempts)}")

    # B: two attempts, both at the time limit; the second one says why it stays FAILED.
    assert [a.state for a in b] == [TaskState.FAILED, TaskState.FAILED], attempts
    assert b[0].error == "time limit reached (TIMEOUT)"
    assert b[1].error == (
        "time limit reached 2 times (max_num_timeout=1): "
        "save checkpoints more often or raise timeout_min"
    )
    settles_as(b[1].handle or "", "TIMEOUT")
    n = b[0].attempt
    assert (tdir / "results" / "seen").read_text() == f"{n} 0\n{n + 1} 1\n"  # results/ stayed
    assert (tdir / f"attempt_{n}" / "stdout.log").read_text() == f"attempt {n}\n"  # kept
    assert (tdir / "stdout.log").read_text() == f"attempt {n + 1}\n"
    assert not out.ok

    # A: completed with the right result, each step done once, from the checkpoint on.
    assert app.returncode == 0, a_err[-3000:]
    (job,) = jobs(sweep).values()
    a_attempts = _attempts_of(sweep)
    print(f"resume test: A {a_wall:.0f} s: {_timeline(a_attempts)}")
    a = _after_restarts(a_attempts)
    assert job["state"] == "COMPLETED"
    assert job_return(job["dir"]).return_value == STEPS * (STEPS + 1) // 2
    outdir = sweep / "0"
    done = _steps(outdir / "steps.log")
    start = max(i for i, (_, step) in enumerate(done) if step == 1)  # the last fresh start
    chain = done[start:]
    assert [s for _, s in chain] == list(range(1, STEPS + 1)), done  # none redone
    tries = sorted({t for t, _ in chain})
    assert tries == [x.attempt for x in a], (done, a_attempts)
    assert 2 <= len(tries) <= 3, done
    assert [x.state for x in a] == [TaskState.FAILED] * (len(a) - 1) + [TaskState.COMPLETED]
    assert all((x.error or "") == "time limit reached (TIMEOUT)" for x in a[:-1])
    assert len({x.source for x in a}) == 1
    hydra_log = (outdir / "checkpointed.log").read_text()
    assert f"attempt {tries[0]} starts at step 0 (resumed: False)" in hydra_log
    for t in tries[1:]:
        assert f"attempt {t} starts at step " in hydra_log and "(resumed: True)" in hydra_log
    assert "stop requested" in hydra_log  # the on_stop hook ran on Slurm's warning
    for t in tries[:-1]:
        assert (job["dir"] / f"attempt_{t}" / ".hsm_exit.json").exists()


def _after_restarts(attempts: list) -> list:  # type: ignore[type-arg]
    """The attempts after the last one lost to the shared Slurm itself (node failure)."""
    lost = [i for i, a in enumerate(attempts) if a.state is TaskState.LOST]
    for i in lost:
        assert "NODE_FAIL" in (attempts[i].error or ""), attempts[i]
    return attempts[lost[-1] + 1 :] if lost else attempts


def _attempts_of(sweep: Path) -> list:  # type: ignore[type-arg]
    from hsm_core.store import SweepStore

    store = SweepStore.open(sweep, readonly=True)
    try:
        (task,) = store.tasks()
        return store.attempts(task.key)
    finally:
        store.close()


def _timeline(attempts: list) -> str:  # type: ignore[type-arg]
    def hms(t: float | None) -> str:
        return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"

    return "; ".join(
        f"#{a.attempt} {a.state.value} {hms(a.started)}-{hms(a.ended)} job {a.handle}"
        for a in attempts
    )


@pytest.fixture
def fake_preempted_sacct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FAKE sacct, first on PATH: the real sacct's answer, with CANCELLED rewritten to
    PREEMPTED for the job ids listed in the returned file (what a preemption under
    PreemptMode=CANCEL leaves in the accounting). Everything else is the real Slurm."""
    real = shutil.which("sacct")
    assert real
    shims = tmp_path / "fake-sacct"
    shims.mkdir()
    listed = tmp_path / "preempted_ids"
    listed.write_text("")
    shim = shims / "sacct"
    shim.write_text(
        "#!/bin/sh\n"
        "# FAKE sacct (hsm tests): CANCELLED -> PREEMPTED for the listed job ids\n"
        f'{shlex.quote(real)} "$@" | awk -F"|" -v OFS="|" '
        f'\'BEGIN {{ while ((getline l < "{listed}") > 0) ids[l] = 1 }} '
        '{ if (($1 in ids) && $2 ~ /^CANCELLED/) $2 = "PREEMPTED"; print }\'\n'
    )
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    return listed


def test_preempted_job_resumes_where_it_was_without_counting(
    tmp_path: Path, slurm_env: SlurmEnv, fake_preempted_sacct: Path
) -> None:
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", DONE_WHEN_RESUMED]]))
    tdir = store.task_dir(store.tasks()[0])

    async def scenario() -> str:
        ctx = context_for(store)
        spec = hpc_spec(slurm_env, max_num_timeout=0)  # preemptions do not count
        run = asyncio.create_task(
            run_sweep(
                store, ctx, [spec], RunOptions(), sources=[HPCSource(spec, ctx)],
                handle_signals=False,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while (jid := started_job(tdir)) is None or not (tdir / "results" / "seen").exists():
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.1)
        # A preemption's signals: the warning (preempt_send_user_signal), then the end.
        fake_preempted_sacct.write_text(jid + "\n")
        for argv in (["scancel", "--signal=URG", jid], ["scancel", jid]):
            proc = await asyncio.create_subprocess_exec(*argv)
            assert await proc.wait() == 0
        out = await asyncio.wait_for(run, 120)
        assert out.ok
        return jid

    preempted = asyncio.run(scenario())
    attempts = store.attempts(store.tasks()[0].key)
    assert [a.state for a in attempts] == [TaskState.LOST, TaskState.COMPLETED]
    assert attempts[0].error == "preempted (PREEMPTED)" and attempts[0].handle == preempted
    assert (tdir / "results" / "seen").read_text() == "1 0\n2 1\n"
    assert "will be stopped soon" in (tdir / "attempt_1" / "stderr.log").read_text()


def test_a_job_killed_after_its_task_started_is_reported_so(
    tmp_path: Path, slurm_env: SlurmEnv
) -> None:
    # The wrapper itself dies (SIGKILL to the job's whole process tree, as the OOM
    # killer or a node's cleanup does): no exit record, sacct says FAILED.
    kill_all = (
        "import os, signal\n"
        "os.kill(os.getppid(), signal.SIGKILL)\n"  # the job wrapper
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    store = make_sweep(tmp_path, command_tasks([[PY, "-c", kill_all]]))
    run_hpc(store, hpc_spec(slurm_env))
    (att,) = store.attempts(store.tasks()[0].key)
    assert att.state is TaskState.FAILED
    assert (att.error or "").startswith("the job was killed after its task started (FAILED"), att
    assert json.loads((store.task_dir(store.tasks()[0]) / ".hsm_job.json").read_text())
