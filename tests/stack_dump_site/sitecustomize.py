"""Run at the start of every Python process of a watched run (tests/launch.py puts this folder first on PYTHONPATH):
faulthandler writes this process's Python stack, on SIGABRT or a crash, to a file of its own,
``$WATCHDOG_STACK_DIR/<pid>.txt``, so that the stacks of several processes dying at once never interleave."""

import faulthandler
import os

_stack_file = None


def _dump_stacks_to_own_file() -> None:
    global _stack_file
    stack_file = open(os.path.join(os.environ["WATCHDOG_STACK_DIR"], f"{os.getpid()}.txt"), "w")
    faulthandler.enable(file=stack_file, all_threads=True)
    _stack_file = stack_file  # kept open: faulthandler writes to its descriptor when the signal comes


if os.environ.get("WATCHDOG_STACK_DIR"):
    _dump_stacks_to_own_file()
    os.register_at_fork(after_in_child=_dump_stacks_to_own_file)  # a forked child (a DataLoader worker) gets its own
