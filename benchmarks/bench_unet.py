"""ms per forward, peak memory and achieved GFLOP/s of ADMUNet2DModel at a 64x64 ADM-G-like configuration.

Each (batch, dtype) point runs in a fresh process so its peak resident memory is its own. FLOPs of one
forward are counted with torch's FlopCounterMode (convolutions, matmuls, attention); achieved GFLOP/s is
set against this machine's measured dense matmul GFLOP/s in the same dtype.

    python benchmarks/bench_unet.py                       # prints a table, appends it to docs/benchmarks.md
    python benchmarks/bench_unet.py --model_channels 192  # the released 64x64 width
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DOCS, append_markdown, machine_description, matmul_gflops  # noqa: E402  (benchmarks/ is not a package)


def build_model(args: argparse.Namespace):
    import torch

    from guided_diffusers import ADMUNet2DModel

    torch.manual_seed(0)
    # The released 64x64 ADM-G: channel_mult (1, 2, 3, 4), attention at 32/16/8 px, fixed 64-wide heads,
    # BigGAN resampling, AdaGN, class labels, learned sigma; here at an adjustable width.
    return ADMUNet2DModel(
        sample_size=64,
        out_channels=6,
        model_channels=args.model_channels,
        channel_mult=(1, 2, 3, 4),
        num_res_blocks=args.num_res_blocks,
        attention_downsample_factors=(2, 4, 8),
        num_head_channels=args.num_head_channels,
        num_classes=1000,
        use_scale_shift_norm=True,
        resblock_updown=True,
    ).eval()


def measure_point(args: argparse.Namespace) -> dict:
    """One (batch, dtype) point; runs in its own process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    dtype = getattr(torch, args.dtype)
    torch.set_default_dtype(dtype)  # build in the target dtype so a float32 copy never sets the memory high-water mark
    model = build_model(args)
    torch.set_default_dtype(torch.float32)
    x = torch.randn(args.batch, 3, 64, 64, dtype=dtype)
    t = torch.randint(0, 1000, (args.batch,))
    y = torch.randint(0, 1000, (args.batch,))
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        model(x, t, class_labels=y)  # warm-up; sets the memory high-water mark
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with FlopCounterMode(display=False) as counter:
            model(x, t, class_labels=y)
        flops = counter.get_total_flops()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model(x, t, class_labels=y)
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    return dict(
        batch=args.batch,
        dtype=args.dtype,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        ms=seconds * 1e3,
        gflop=flops / 1e9,
        gflops=flops / seconds / 1e9,
        peak_mib=peak_kib / 1024,
        activation_mib=(peak_kib - baseline_kib) / 1024,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_channels", type=int, default=96)
    parser.add_argument("--num_res_blocks", type=int, default=3)
    parser.add_argument("--num_head_channels", type=int, default=32)
    parser.add_argument("--batch_sizes", default="1,4")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(DOCS), help="markdown file to append to ('' to skip)")
    parser.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.point:
        print(json.dumps(measure_point(args)))
        return

    rows = []
    for dtype in args.dtypes.split(","):
        peak = matmul_gflops(dtype)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            command = [sys.executable, __file__, "--point", f"--batch={batch}", f"--dtype={dtype}"] + [
                f"--{k}={getattr(args, k)}" for k in ("model_channels", "num_res_blocks", "num_head_channels", "repeats")
            ]
            result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            result["matmul_gflops"] = peak
            rows.append(result)
            print(f"batch {batch} {dtype}: {result['ms']:.1f} ms", file=sys.stderr)

    title = (
        f"### bench_unet: ADMUNet2DModel, 64x64 ADM-G layout at model_channels={args.model_channels}, "
        f"num_res_blocks={args.num_res_blocks}, head width {args.num_head_channels} "
        f"({rows[0]['params_m']:.1f} M parameters)"
    )
    lines = [
        title,
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine_description()}. Median of {args.repeats} forwards; "
        "peak = the process's peak resident memory, activations = its rise over the loaded model.",
        "",
        "| batch | dtype | ms / forward | GFLOP / forward | achieved GFLOP/s | matmul GFLOP/s | % of matmul | peak MiB | activations MiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['dtype']} | {r['ms']:.1f} | {r['gflop']:.2f} | {r['gflops']:.1f} | "
            f"{r['matmul_gflops']:.1f} | {100 * r['gflops'] / r['matmul_gflops']:.0f}% | {r['peak_mib']:.0f} | {r['activation_mib']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        append_markdown(Path(args.output), table)


if __name__ == "__main__":
    main()
