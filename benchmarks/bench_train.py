"""Training throughput (images/s) of scripts/train_diffusion.py for a small ADM configuration, in fp32 and bf16.

Each precision runs the real training script in fresh processes (accelerate fixes the precision per process) on a
synthetic image folder: data loading, forward, the hybrid loss, backward, AdamW and the EMA update all count.
images/s comes from CPU time (a long run minus a short one, so imports, set-up and saving cancel out), which stays
meaningful on a shared machine with one thread; the wall-clock figure logged by the script is reported beside it.

    python benchmarks/bench_train.py                      # prints a table, appends it to docs/benchmarks.md
    python benchmarks/bench_train.py --resolution 64 --num_channels 128 --train_batch_size 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DOCS, append_markdown, machine_description  # noqa: E402


def make_image_folder(folder: Path, count: int, size: int) -> None:
    """``count`` random RGB images, a little larger than ``size`` (so they are resized and cropped), in 10 classes."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        pixels = rng.integers(0, 256, (size + 8, size + 4, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"class{k % 10}_{k:04d}.png")


def model_flags(args: argparse.Namespace) -> list[str]:
    # An ADM-G layout at CIFAR scale: BigGAN resampling, AdaGN, fixed-width heads, class labels, learned sigma.
    return [
        "--num_channels", str(args.num_channels), "--num_res_blocks", str(args.num_res_blocks),
        "--channel_mult", args.channel_mult, "--attention_resolutions", args.attention_resolutions,
        "--num_head_channels", "32", "--resblock_updown", "True", "--use_scale_shift_norm", "True",
        "--class_cond", "True", "--learn_sigma", "True", "--diffusion_steps", "1000", "--noise_schedule", "cosine",
    ]  # fmt: skip


def run_training(args: argparse.Namespace, precision: str, steps: int, data: Path, output: Path) -> float:
    """One training run of ``steps`` steps in a fresh process; returns the CPU seconds it used."""
    command = [
        sys.executable, str(ROOT / "scripts" / "train_diffusion.py"), "--train_data_dir", str(data), "--output_dir", str(output),
        "--resolution", str(args.resolution), "--train_batch_size", str(args.train_batch_size),
        "--max_train_steps", str(steps), "--checkpointing_steps", str(10**9),
        "--mixed_precision", precision, "--report_to", "none", *model_flags(args),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS=str(args.threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        sys.exit(f"error: the {precision} run failed:\n{result.stderr[-3000:]}")
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure(args: argparse.Namespace, precision: str, data: Path, work: Path) -> dict:
    """images/s from CPU time: a short and a long run differ only by their extra steps, so set-up, imports and the
    final save cancel out; and wall-clock images/s, the median logged by the long run after its warm-up steps."""
    short = run_training(args, precision, args.warmup_steps, data, work / f"short-{precision}")
    long_output = work / f"long-{precision}"
    long = run_training(args, precision, args.warmup_steps + args.steps, data, long_output)
    logged = [json.loads(line) for line in (long_output / "logs" / "metrics.jsonl").read_text().splitlines()]
    wall = [step["samples_per_second"] for step in logged[args.warmup_steps :]]
    from safetensors.torch import load_file

    params = sum(tensor.numel() for tensor in load_file(long_output / "unet" / "diffusion_pytorch_model.safetensors").values())
    return dict(
        precision=precision,
        cpu_images_per_second=args.steps * args.train_batch_size / (long - short),
        wall_images_per_second=statistics.median(wall),
        params_m=params / 1e6,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--num_channels", type=int, default=64)
    parser.add_argument("--num_res_blocks", type=int, default=2)
    parser.add_argument("--channel_mult", default="1,2,2,2")
    parser.add_argument("--attention_resolutions", default="16,8")
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--warmup_steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the runs (1: CPU-time figures stay meaningful on a shared machine)")
    parser.add_argument("--precisions", default="no,bf16", help="accelerate mixed-precision modes: no (fp32), bf16, fp16")
    parser.add_argument("--output", default=str(DOCS), help="markdown file to append to ('' to skip)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)  # so the machine line states the runs' thread count
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_image_folder(work / "data", 4 * args.train_batch_size, args.resolution)
        for precision in args.precisions.split(","):
            result = measure(args, precision, work / "data", work)
            rows.append(result)
            print(f"{precision}: {result['cpu_images_per_second']:.1f} images/s", file=sys.stderr)

    load = os.getloadavg()[0]
    title = (
        f"### bench_train: train_diffusion.py, {args.resolution}x{args.resolution} ADM (num_channels {args.num_channels}, "
        f"channel_mult {args.channel_mult}, {args.num_res_blocks} res blocks, attention at {args.attention_resolutions}, head width 32, "
        f"BigGAN resampling, AdaGN, class labels, learned sigma, cosine schedule; {rows[0]['params_m']:.1f} M parameters), batch {args.train_batch_size}"
    )
    lines = [
        title,
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine_description()}; the runs use OMP_NUM_THREADS={args.threads}, one process; "
        f"load average {load:.1f} at the end (the machine is shared: figures are indicative). A step is data loading, "
        "forward, the hybrid loss, backward, AdamW and the EMA update. images/s (CPU) = the extra images of a "
        f"{args.warmup_steps + args.steps}-step run over a {args.warmup_steps}-step one, divided by the extra CPU time "
        "(robust to the other load); images/s (wall) = the median of the logged samples/s after the warm-up steps.",
        "",
        "| precision | images/s (CPU) | images/s (wall) |",
        "|---|---:|---:|",
    ]
    names = {"no": "fp32", "bf16": "bf16 (accelerate autocast)", "fp16": "fp16 (accelerate autocast)"}
    for row in rows:
        lines.append(f"| {names.get(row['precision'], row['precision'])} | {row['cpu_images_per_second']:.1f} | {row['wall_images_per_second']:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.output:
        append_markdown(Path(args.output), table)


if __name__ == "__main__":
    main()
