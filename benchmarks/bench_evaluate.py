"""Feature-extraction throughput (images/s) of the evaluator's FID Inception, in one process and under
``accelerate launch`` with two, on the CPU.

Each configuration runs this file's worker in fresh processes: the production path
(``guided_diffusers.evaluation.extract_features`` over an ``.npz`` batch: streamed reading, the TF1 resize to 299,
the network, the gather of the shards). Random Inception weights (the real ones cost the same). The timed part is
the extraction alone, between two barriers, after a warm-up forward; process start-up and imports do not count.

    python benchmarks/bench_evaluate.py                   # prints a table, appends it to docs/benchmarks.md
    python benchmarks/bench_evaluate.py --num_images 128 --image_size 256 --no_append
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, append_markdown, machine_description  # noqa: E402


def worker(batch: Path, num_images: int, batch_size: int, out: Path) -> None:
    import numpy as np
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from guided_diffusers.evaluation import NpzImages, compute_activations, extract_features, random_fid_inception

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    model = random_fid_inception(seed=0)
    with torch.inference_mode():
        compute_activations(model, [np.zeros((2, 64, 64, 3), np.uint8)])  # warm-up: kernels chosen, memory touched
    state.wait_for_everyone()
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    pool, _ = extract_features(model, NpzImages(batch, num_images), batch_size, "cpu", state=state if state.num_processes > 1 else None)
    state.wait_for_everyone()
    wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
    if state.is_main_process:
        assert pool.shape == (num_images, 2048)
        out.write_text(json.dumps({"processes": state.num_processes, "threads": torch.get_num_threads(), "wall_s": wall, "main_cpu_s": cpu}))


def run(config: str, batch: Path, args: argparse.Namespace, folder: Path) -> dict:
    out = folder / f"{config}.json"
    worker_args = [str(Path(__file__).resolve()), "--worker", str(batch), "--num_images", str(args.num_images),
                   "--batch_size", str(args.batch_size), "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    if config == "2 processes, 1 thread each":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", *worker_args]
        env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    else:
        command = [sys.executable, *worker_args]
        env.update(OMP_NUM_THREADS="1" if config == "1 process, 1 thread" else str(args.threads))
    subprocess.run(command, env=env, check=True, cwd=ROOT)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the one-process run")
    parser.add_argument("--no_append", action="store_true", help="print only")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.num_images, args.batch_size, args.out)
        return

    import numpy as np

    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        batch = folder / "samples.npz"
        coarse = np.random.default_rng(0).uniform(0, 255, (args.num_images, 8, 8, 3))
        images = np.repeat(np.repeat(coarse, args.image_size // 8, axis=1), args.image_size // 8, axis=2).astype(np.uint8)
        np.savez(batch, images)
        for config in ("1 process, 1 thread", f"1 process, {args.threads} threads", "2 processes, 1 thread each"):
            result = run(config, batch, args, folder)
            rows.append((config, result))
            print(config, result, flush=True)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [
        f"### bench_evaluate: FID Inception feature extraction, {args.num_images} images of {args.image_size}x{args.image_size} "
        f"px, batch {args.batch_size}, random weights",
        "",
        f"{date}, {machine_description()}; load average {load:.1f} at the start (the machine is shared: figures are "
        "indicative). images/s = images over the wall time of `extract_features` between two barriers (reading, the "
        "TF1 resize to 299, the network, the gather), after a warm-up forward; start-up excluded. Two processes: "
        "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`, one thread each.",
        "",
        "| processes | threads per process | wall s | images/s | main process CPU s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for _, result in rows:
        lines.append(
            f"| {result['processes']} | {result['threads']} | {result['wall_s']:.1f} | "
            f"{args.num_images / result['wall_s']:.2f} | {result['main_cpu_s']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        append_markdown(DOCS, table)


if __name__ == "__main__":
    main()
