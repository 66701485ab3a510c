"""Running a script under `accelerate launch` with several CPU processes, for the multi-process tests."""

from __future__ import annotations

import os
import socket
import sys


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
