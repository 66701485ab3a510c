"""Running a script under `accelerate launch` with several CPU processes, for the multi-process tests, behind a
watchdog that shows where a hung run stands."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence


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


def run_with_watchdog(command: Sequence[str], *, env: dict[str, str], timeout: float, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run ``command``; past ``timeout`` seconds, make every one of its processes print its Python stack and fail.

    The processes run with ``PYTHONFAULTHANDLER=1``; on timeout each gets SIGABRT, on which faulthandler writes the
    stack of every thread to stderr before the process dies. Those stacks are the AssertionError's message.

    Returns:
        `subprocess.CompletedProcess`: the finished run (text stdout and stderr), whatever its exit status.
    """
    process = subprocess.Popen(list(command), cwd=cwd, env=dict(env, PYTHONFAULTHANDLER="1"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        processes = [*_descendants(process.pid), process.pid]
        for pid in processes:
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        try:
            stdout, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            stdout, stderr = "", "(no output within 60 s of SIGABRT)"
        for pid in [*_descendants(process.pid), process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait()
        raise AssertionError(
            f"timed out after {time.monotonic() - started:.0f} s: {' '.join(map(str, command))[:300]}\n"
            f"the Python stacks of its {len(processes)} processes (faulthandler), and what they printed:\n{stderr[-30000:]}"
        ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
