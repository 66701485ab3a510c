"""Running a script under `accelerate launch` with several CPU processes, for the multi-process tests, behind a
watchdog that shows where a hung run stands (each process's Python stack, read from a file of its own)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

# Run by every Python process of a watched run: each writes its stack to a file of its own.
_STACK_DUMP_SITE = Path(__file__).resolve().with_name("stack_dump_site")
# How long the processes of a run past its limit get to write their stacks and die (only a failed run waits).
_STACK_DUMP_GRACE = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_cpu_launcher(num_processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command prefix and environment that start ``num_processes`` CPU processes talking over gloo.

    ``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.x (huggingface/accelerate#2741);
    the multi-GPU launcher with ACCELERATE_USE_CPU=1 starts them all on the CPU.
    """
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
    ]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return command, env


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so no process group holds
    them all), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return found


class HungRun(AssertionError):
    """A watched run past its limit; ``stacks`` holds the Python stack each of its processes wrote, by process id."""

    def __init__(self, message: str, stacks: dict[int, str]):
        super().__init__(message)
        self.stacks = stacks


def _running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie has finished, its stack written)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _watched_processes(pid: int, stack_dir: str) -> list[int]:
    """The running processes of the watched run started as ``pid``: those below it, and each Python process that
    opened a stack file in ``stack_dir`` (one whose parent died, in a session of its own, is found only that way)."""
    marker = f"WATCHDOG_STACK_DIR={stack_dir}".encode()
    found = {pid, *_descendants(pid)}
    for path in Path(stack_dir).glob("*.txt"):
        try:
            with open(f"/proc/{path.stem}/environ", "rb") as handle:  # the same pid, not a later process's
                if marker in handle.read().split(b"\0"):
                    found.add(int(path.stem))
        except OSError:
            continue
    return sorted(other for other in found if _running(other))


def _signal(pids: Sequence[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run_with_watchdog(command: Sequence[str], *, env: dict[str, str], timeout: float, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run ``command``; past ``timeout`` seconds, make every one of its processes write its Python stack and fail.

    Every Python process of the run starts with ``stack_dump_site/sitecustomize.py``, which points faulthandler at a
    file of its own (``<pid>.txt`` in a temporary folder); on timeout each process gets SIGABRT, on which faulthandler
    writes the stack of every thread to that file before the process dies. One file per process: stacks written at
    the same moment never interleave (in one shared pipe they did, in about 1 run in 25). The stacks, each under its
    process id, and the tail of what the run printed are the [`HungRun`] error's message.

    Returns:
        `subprocess.CompletedProcess`: the finished run (text stdout and stderr), whatever its exit status.

    Raises:
        HungRun: the run passed ``timeout``; its ``stacks`` maps each process id to the stack it wrote.
    """
    with tempfile.TemporaryDirectory(prefix="watchdog-stacks-") as stack_dir:
        python_path = os.pathsep.join(filter(None, [str(_STACK_DUMP_SITE), env.get("PYTHONPATH")]))
        # PYTHONFAULTHANDLER: a process that skips the site hook (python -I) still writes its stack, to stderr.
        watched_env = dict(env, PYTHONPATH=python_path, WATCHDOG_STACK_DIR=stack_dir, PYTHONFAULTHANDLER="1")
        process = subprocess.Popen(list(command), cwd=cwd, env=watched_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            processes = _watched_processes(process.pid, stack_dir)
            _signal(processes, signal.SIGABRT)
            try:
                stdout, stderr = process.communicate(timeout=_STACK_DUMP_GRACE)
            except subprocess.TimeoutExpired:
                stdout, stderr = "", f"(no output within {_STACK_DUMP_GRACE} s of SIGABRT)"
            # A stack file is complete once its process has died (torchrun's workers are not our children: polled).
            deadline = time.monotonic() + _STACK_DUMP_GRACE
            while any(map(_running, processes)) and time.monotonic() < deadline:
                time.sleep(0.1)
            # Those still alive, and any started after the first look (found by their stack files), are killed.
            _signal([pid for pid in {*processes, *_watched_processes(process.pid, stack_dir)} if _running(pid)], signal.SIGKILL)
            process.wait()
            files = sorted(Path(stack_dir).glob("*.txt"), key=lambda path: int(path.stem))
            stacks = {int(path.stem): path.read_text(errors="replace") for path in files if path.stat().st_size}
            shown = "".join(f"--- process {pid} ---\n{stack}\n" for pid, stack in stacks.items())
            raise HungRun(
                f"timed out after {time.monotonic() - started:.0f} s: {' '.join(map(str, command))[:300]}\n"
                f"the Python stacks of its {len(processes)} processes (faulthandler, a file each), and what they printed:\n"
                f"{shown}--- stderr ---\n{stderr[-30000:]}",
                stacks,
            ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
