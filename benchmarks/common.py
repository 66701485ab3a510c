"""What the benchmark scripts share: the machine's description, its dense matmul rate, and appending to the docs."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine_description() -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def matmul_gflops(dtype_name: str, size: int = 1024, seconds: float = 1.0) -> float:
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def append_markdown(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` (created with the benchmarks header), through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else "# Benchmarks\n\nMeasured by the scripts in benchmarks/; each run appends its table.\n"
    from guided_diffusers.publishing import write_text_atomically

    write_text_atomically(path, existing + "\n" + text + "\n")
