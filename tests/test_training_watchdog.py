"""The multi-process tests' watchdog (tests/launch.py): a hung run shows every process's Python stack and fails."""

from __future__ import annotations

import os
import sys

import pytest
from launch import run_with_watchdog

# A parent that starts a child in a session of its own (as torchrun starts its workers), both stuck in a function.
HUNG = """
import subprocess, sys, time
def child_waits_on_a_collective():
    time.sleep(600)
def parent_waits_on_its_child():
    subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)
    time.sleep(600)
CHILD = "import time, sys\\n" + "def child_waits_on_a_collective():\\n    time.sleep(600)\\n" + "print('child up', file=sys.stderr, flush=True)\\nchild_waits_on_a_collective()"
parent_waits_on_its_child()
"""


def test_a_hung_run_fails_with_every_processs_stack(tmp_path):
    with pytest.raises(AssertionError) as raised:
        run_with_watchdog([sys.executable, "-c", HUNG], env=dict(os.environ), timeout=4)
    message = str(raised.value)
    assert message.startswith("timed out after ") and "of its 2 processes (faulthandler)" in message
    assert "in parent_waits_on_its_child" in message and "in child_waits_on_a_collective" in message


def test_a_finished_run_is_returned_as_is(tmp_path):
    result = run_with_watchdog([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], env=dict(os.environ), timeout=60)
    assert (result.returncode, result.stdout) == (3, "out\n")
