"""The test helper's tolerance of the known exit-time gloo abort is exactly that narrow (hand-written outputs)."""
from __future__ import annotations

import subprocess

from tests.integration.swift_run import EXIT_ABORT, MAIN_DONE, tolerate_exit_abort

ABORT_TAIL = (f"[INFO:swift] {MAIN_DONE}: 2026-12-04\n{EXIT_ABORT}\n"
              "exitcode  : -6 (SIGABRT)\nTraceback (most recent call last):\n")


def _proc(rc: int, stderr: str) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(["swift", "sft"], rc, "", stderr)


def test_only_the_exit_abort_after_a_finished_run_is_tolerated():
    """Tolerated: 2 processes, rank 0 finished main, then the abort (the agent's traceback after it is fine).
    Kept as failures: one process, no finished main, a Python traceback before the abort, another error."""
    ok = tolerate_exit_abort(_proc(1, "warning\n" + ABORT_TAIL), 2)
    assert ok.returncode == 0 and "tolerated the known exit-time gloo abort" in ok.stderr
    assert tolerate_exit_abort(_proc(1, ABORT_TAIL), 1).returncode == 1
    assert tolerate_exit_abort(_proc(1, ABORT_TAIL.replace(MAIN_DONE, "Start time")), 2).returncode == 1
    early_error = "Traceback (most recent call last):\nValueError\n" + ABORT_TAIL
    assert tolerate_exit_abort(_proc(1, early_error), 2).returncode == 1
    assert tolerate_exit_abort(_proc(1, f"{MAIN_DONE}\nRuntimeError: gloo timeout\n"), 2).returncode == 1
    assert tolerate_exit_abort(_proc(0, ""), 2).returncode == 0
