"""Why did a task fail? Classify one FAILED or LOST attempt from what it left behind.

Inputs are plain facts: the attempt's final state, its exit code, the one-line error the
source reported (which carries scheduler states such as TIMEOUT or NODE_FAIL) and the text
of its logs (stderr, tracebacks). Nothing here reads files or the store, so every rule is
easy to test on recorded text.

Order matters: a LOST attempt is the infrastructure's fault whatever its logs say; a time
limit kills with a signal, so it is checked before the signal; an exception named in a
traceback is more precise than the exit code the interpreter then returned.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from enum import Enum

from hsm_core.model import TaskState

TAIL_LINES = 15  # lines of a traceback kept as the representative tail


class Category(str, Enum):
    OOM = "oom"
    TIME_LIMIT = "time_limit"
    IMPORT = "import"
    SYNTAX = "syntax"
    SIGNAL = "signal"
    HOST = "host"
    FILE_NOT_FOUND = "file_not_found"
    EXCEPTION = "exception"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


HINTS: dict[Category, str] = {
    Category.OOM: "lower the memory use (batch size, model size) or ask for more memory "
    "(mem_gb on clusters)",
    Category.TIME_LIMIT: "raise the sweep file's `timeout:` or the cluster's `time:`, "
    "or make the task shorter",
    Category.IMPORT: "install the module where the task runs (the source's `python:` and "
    "`setup:`), or check that the remote project copy is in sync",
    Category.SYNTAX: "fix the code; on remote sources check that the project copy is in sync",
    Category.SIGNAL: "a signal ended the task; see its stderr.log and the host's records",
    Category.HOST: "the host or node failed, not the task; hsm re-queues such tasks: "
    "check `hsm monitor health` and run `hsm complete SWEEP`",
    Category.FILE_NOT_FOUND: "check paths: tasks run in the project root (or the sweep "
    "file's `cwd:`) on every source",
    Category.EXCEPTION: "the task's own code raised; see the traceback",
    Category.OTHER: "see the task's stderr.log",
}

_SIGNAL_HINTS = {
    "SIGKILL": "killed from outside, most often by the kernel's OOM killer (check `dmesg` "
    "or the scheduler's memory records) or by a scheduler enforcing a limit",
    "SIGSEGV": "a crash in native code (an extension module, a driver, a bad library build)",
    "SIGBUS": "a crash in native code or a file mapped from a disk that went away",
    "SIGABRT": "the process aborted itself (a failed C assertion, a fatal library error)",
    "SIGTERM": "asked to stop from outside: a scheduler, a pre-emption or a user",
}


@dataclass(frozen=True)
class Cause:
    """A classified failure. `detail` splits a category into groups (the exception
    class, the signal name, host vs CUDA memory); `summary` is one line of evidence."""

    category: Category
    detail: str = ""
    summary: str = ""

    @property
    def group(self) -> tuple[str, str]:
        return (self.category.value, self.detail)

    @property
    def label(self) -> str:
        c, d = self.category, self.detail
        if c is Category.OOM:
            return f"out of memory ({d})" if d else "out of memory"
        if c is Category.SIGNAL:
            return f"killed by {d}" if d else "killed by a signal"
        if c is Category.EXCEPTION:
            return f"exception {d}"
        if c is Category.OTHER:
            return d or "unknown"
        return {
            Category.TIME_LIMIT: "time limit",
            Category.IMPORT: "missing module / import error",
            Category.SYNTAX: "syntax error",
            Category.HOST: "node or host failure (LOST)",
            Category.FILE_NOT_FOUND: "file not found",
        }[c]

    @property
    def hint(self) -> str:
        if self.category is Category.SIGNAL:
            return _SIGNAL_HINTS.get(self.detail, HINTS[Category.SIGNAL])
        return HINTS[self.category]


# -------------------------------------------------------------------- text rules
_TRACEBACK = "Traceback (most recent call last):"
# A Python exception line: `pkg.mod.SomeError: message` (or the bare class name).
_EXC_LINE = re.compile(
    r"^(?P<cls>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Fault))"
    r"(?::\s?(?P<msg>.*))?$"
)
_CUDA_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|"
    r"cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY|RESOURCE_EXHAUSTED: OOM",
)
# The kernel's or a scheduler's word that memory ran out (the task itself only sees SIGKILL).
_KILLER_OOM = re.compile(
    r"oom[-_ ]kill|OUT_OF_MEMORY|Out of memory|out-of-memory|"
    r"exceeded (?:its )?mem(?:ory)? limit|mem(?:ory)? limit exceeded|Killed process \d+",
    re.IGNORECASE,
)
_TIME_LIMIT = re.compile(
    r"timed out|\bTIMEOUT\b|DUE TO TIME LIMIT|time limit|walltime .*exceeded|"
    r"exceeded (?:its )?walltime",
    re.IGNORECASE,
)
_NOT_FOUND = re.compile(
    r"No such file or directory|can't open file|command not found|FileNotFoundError",
)
_FATAL_SIGNAL = {
    "Segmentation fault": "SIGSEGV",
    "Bus error": "SIGBUS",
    "Floating point exception": "SIGFPE",
    "Aborted": "SIGABRT",
}

_SYNTAX_CLASSES = {"SyntaxError", "IndentationError", "TabError"}
_IMPORT_CLASSES = {"ImportError", "ModuleNotFoundError"}


def exception_line(text: str) -> tuple[str, str] | None:
    """(class, message) of the last Python exception in `text`, or None.

    After the last "Traceback" header the first unindented line names the exception
    (Hydra's trailing "Set the environment variable HYDRA_FULL_ERROR=1" comes after it).
    A script that does not even compile prints no header, so the fallback is the last
    line anywhere that looks like `SomeError: message`."""
    lines = text.splitlines()
    start = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(_TRACEBACK):
            start = i + 1
            break
    if start is not None:
        for line in lines[start:]:
            if line and not line[0].isspace():
                m = _EXC_LINE.match(line.rstrip())
                if m:
                    return _short(m.group("cls")), (m.group("msg") or "").strip()
                break
    for line in reversed(lines):
        m = _EXC_LINE.match(line.rstrip())
        if m:
            return _short(m.group("cls")), (m.group("msg") or "").strip()
    return None


def final_exception(text: str, max_len: int = 200) -> str | None:
    """`ValueError: boom` when `text` (the end of a task's stderr) ends the way a Python
    program that died of an exception ends: the exception line of its last traceback,
    or a last line like one (a SyntaxError has no traceback header). None otherwise: a
    line that only looks like one, further up, names no cause."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    found = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(_TRACEBACK):
            found = next((ln for ln in lines[i + 1 :] if not ln[0].isspace()), None)
            break
    candidates = [found] if found else lines[-1:]
    for line in candidates:
        m = _EXC_LINE.match(line or "")
        if m:
            cls, msg = _short(m.group("cls")), (m.group("msg") or "").strip()
            one = f"{cls}: {msg}" if msg else cls
            return one if len(one) <= max_len else one[: max_len - 3] + "..."
    return None


def _short(cls: str) -> str:
    # `torch.cuda.OutOfMemoryError` and `builtins.ValueError` group with their short names
    # only when the prefix is a module path; keep the dotted name for user classes.
    return cls.rsplit(".", 1)[-1] if cls.startswith(("builtins.", "__main__.")) else cls


def traceback_tail(text: str, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines from the last traceback (or of the text if there is none)."""
    all_lines = text.rstrip().splitlines()
    start = 0
    for i in range(len(all_lines) - 1, -1, -1):
        if all_lines[i].startswith(_TRACEBACK):
            start = i
            break
    chunk = all_lines[start:]
    if len(chunk) > lines:
        chunk = ["...", *chunk[-lines:]]
    return "\n".join(chunk)


def signal_name(exit_code: int | None) -> str | None:
    """SIGxxx for a signal death: -N from Python's subprocess, 128+N from a shell."""
    if exit_code is None:
        return None
    num = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 128 + 65 else 0
    if num <= 0:
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def classify(
    state: TaskState,
    exit_code: int | None,
    error: str | None,
    logs: str = "",
) -> Cause:
    """Classify one finished attempt (FAILED or LOST) from its exit code, its reported
    error line and the text of its logs."""
    error = error or ""
    text = f"{logs}\n{error}" if logs else error
    if state is TaskState.LOST:
        return Cause(Category.HOST, "", error or "the source lost the task")
    exc = exception_line(logs) if logs else None
    summary = f"{exc[0]}: {exc[1]}".rstrip(": ") if exc else error
    if _TIME_LIMIT.search(error) or (not exc and _TIME_LIMIT.search(text)):
        return Cause(Category.TIME_LIMIT, "", error or _first_match(_TIME_LIMIT, text))
    # With a traceback only its final exception counts: a log line that mentions memory
    # earlier does not make a later ValueError an out-of-memory failure.
    if _CUDA_OOM.search(summary if exc else text):
        return Cause(Category.OOM, "CUDA", summary or _first_match(_CUDA_OOM, text))
    if exc:
        cls, _ = exc
        short = cls.rsplit(".", 1)[-1]
        if short == "MemoryError":
            return Cause(Category.OOM, "host", summary)
        if short in _IMPORT_CLASSES:
            return Cause(Category.IMPORT, "", summary)
        if short in _SYNTAX_CLASSES:
            return Cause(Category.SYNTAX, "", summary)
        if short == "FileNotFoundError":
            return Cause(Category.FILE_NOT_FOUND, "", summary)
        return Cause(Category.EXCEPTION, cls, summary)
    sig = signal_name(exit_code) or _signal_from_text(text)
    if _KILLER_OOM.search(text) and sig in (None, "SIGKILL", "SIGTERM"):
        return Cause(Category.OOM, "killed by the OOM killer", _first_match(_KILLER_OOM, text))
    if sig:
        return Cause(Category.SIGNAL, sig, error or f"killed by {sig}")
    if exit_code == 127 or _NOT_FOUND.search(text):
        return Cause(Category.FILE_NOT_FOUND, "", _first_match(_NOT_FOUND, text) or error)
    detail = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    return Cause(Category.OTHER, detail, error or _last_line(logs))


def _signal_from_text(text: str) -> str | None:
    for words, sig in _FATAL_SIGNAL.items():
        if words in text:
            return sig
    m = re.search(r"killed by (SIG[A-Z0-9]+)", text)
    if m:
        return m.group(1)
    return None


def _first_match(rx: re.Pattern[str], text: str) -> str:
    for line in text.splitlines():
        if rx.search(line):
            return line.strip()
    return ""


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""
