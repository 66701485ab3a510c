"""The multi-process tests' watchdog (tests/launch.py): a hung run fails with every process's Python stack, each read
from a file of its own."""

from __future__ import annotations

import os
import sys

import pytest
from launch import HungRun, run_with_watchdog

# A parent that starts a child in a session of its own (as torchrun starts its workers), both stuck in a function.
HUNG = """
import subprocess, sys, time
CHILD = '''
import time
def child_waits_on_a_collective():
    time.sleep(600)
child_waits_on_a_collective()
'''
def parent_waits_on_its_child():
    subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    time.sleep(600)
parent_waits_on_its_child()
"""
# The run's limit: both processes must be stuck in their functions by then. Two bare interpreters started one after
# the other took at most 0.7 s beside two busy processes on the 2-core machine; 8 s leaves a margin of 10.
HUNG_AFTER = 8


def test_a_hung_run_fails_with_every_processs_stack(tmp_path):
    with pytest.raises(HungRun) as raised:
        run_with_watchdog([sys.executable, "-c", HUNG], env=dict(os.environ), timeout=HUNG_AFTER)
    message = str(raised.value)
    assert message.startswith("timed out after ") and "of its 2 processes (faulthandler, a file each)" in message
    # Two stacks, one per process, each whole: the function each process is stuck in, and not the other's.
    stacks = raised.value.stacks
    assert len(stacks) == 2, message
    stuck_in = sorted(("in parent_waits_on_its_child" in stack, "in child_waits_on_a_collective" in stack) for stack in stacks.values())
    assert stuck_in == [(False, True), (True, False)], message
    for pid, stack in stacks.items():
        assert stack.startswith("Fatal Python error: Aborted") and stack.count("Current thread") == 1, stack
        assert f"--- process {pid} ---\n{stack}" in message


def test_a_finished_run_is_returned_as_is(tmp_path):
    result = run_with_watchdog([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], env=dict(os.environ), timeout=60)
    assert (result.returncode, result.stdout) == (3, "out\n")
