"""The multi-process tests' watchdog (tests/launch.py): a hung run fails with every process's Python stack, each read
from a file of its own."""

from __future__ import annotations

import os
import sys

import pytest
from launch import HungRun, run_with_watchdog

# A parent that starts a child in a session of its own (as torchrun starts its workers), both stuck in a function;
# each marks in the folder sys.argv[1] when it is there.
HUNG = """
import subprocess, sys, time
CHILD = '''
import sys, time
def child_waits_on_a_collective():
    open(sys.argv[1] + "/child", "w").close()
    time.sleep(600)
child_waits_on_a_collective()
'''
def parent_waits_on_its_child():
    subprocess.Popen([sys.executable, "-c", CHILD, sys.argv[1]], start_new_session=True)
    open(sys.argv[1] + "/parent", "w").close()
    time.sleep(600)
parent_waits_on_its_child()
"""
# The run's limit must come once both processes are in their functions: about 0.7 s after the start beside two busy
# processes on the 2-core machine. Where a limit came first (a process had not marked), the run is repeated with the
# next one, so a slow machine makes the test longer, not red; only a machine that cannot start two interpreters in
# two minutes fails it.
LIMITS = (4, 8, 16, 32, 64, 128)


def _hung_run(tmp_path) -> HungRun:
    """The watchdog's error for the first limit that found both processes in their functions."""
    for limit in LIMITS:
        ready = tmp_path / f"ready-after-{limit}"
        ready.mkdir()
        with pytest.raises(HungRun) as raised:
            run_with_watchdog([sys.executable, "-c", HUNG, str(ready)], env=dict(os.environ), timeout=limit)
        both_there = sorted(path.name for path in ready.iterdir()) == ["child", "parent"]
        if both_there and "of its 2 processes" in str(raised.value):
            return raised.value
    pytest.fail(f"the hung run's two processes were not both in their functions within {LIMITS[-1]} s")


def test_a_hung_run_fails_with_every_processs_stack(tmp_path):
    error = _hung_run(tmp_path)
    message = str(error)
    assert message.startswith("timed out after ") and "of its 2 processes (faulthandler, a file each)" in message
    # Two stacks, one per process, each whole: the function each process is stuck in, and not the other's.
    assert len(error.stacks) == 2, message
    stuck_in = sorted(("in parent_waits_on_its_child" in stack, "in child_waits_on_a_collective" in stack) for stack in error.stacks.values())
    assert stuck_in == [(False, True), (True, False)], message
    for pid, stack in error.stacks.items():
        assert stack.startswith("Fatal Python error: Aborted") and stack.count("Current thread") == 1, stack
        assert f"--- process {pid} ---\n{stack}" in message


def test_a_finished_run_is_returned_as_is(tmp_path):
    # The limit only stops a hang: a bare interpreter exits in well under a second.
    result = run_with_watchdog([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], env=dict(os.environ), timeout=600)
    assert (result.returncode, result.stdout) == (3, "out\n")
