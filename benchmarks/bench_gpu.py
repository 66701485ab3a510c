"""Guided sampling speed of the full-width 256x256 ADM-G (U-Net and noisy classifier, random weights) on one device.

Measures ms per guided sampling step (U-Net forward, classifier forward and backward, scheduler step) and peak device
memory for every combination of dtype (float32, bfloat16, float16), memory format (contiguous, channels_last) and
torch.compile (off, on) at batch 1 and 8, and writes a markdown table. Attention always runs through diffusers'
``Attention`` with PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels where the device has them).

    python benchmarks/bench_gpu.py --output gpu_table.md            # on a CUDA machine (benchmarks/gpu.sh runs this)
    python benchmarks/bench_gpu.py --layout tiny --device cpu       # a seconds-long check that the script runs

Random weights cost the same as trained ones; guidance uses the classifier scale 1.0 path of the pipeline.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

LAYOUTS = {
    # guided-diffusion's 256x256 class-conditional model and classifier (the README's MODEL_FLAGS / CLASSIFIER_FLAGS)
    "adm-g-256": dict(
        unet=dict(sample_size=256, model_channels=256, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                  attention_downsample_factors=(8, 16, 32), num_head_channels=64, resblock_updown=True,
                  num_classes=1000, out_channels=6),
        classifier=dict(sample_size=256, model_channels=128, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                        attention_downsample_factors=(8, 16, 32), num_head_channels=64, resblock_updown=True,
                        num_classes=1000, pool="attention"),
    ),
    "tiny": dict(
        unet=dict(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                  attention_downsample_factors=(2,), num_head_channels=16, num_classes=10, out_channels=6),
        classifier=dict(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                        attention_downsample_factors=(2,), num_head_channels=16, num_classes=10),
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build(layout: str, dtype: torch.dtype, channels_last: bool, compile_unet: bool, device: torch.device):
    from guided_diffusers import ADMClassifier, ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

    spec = LAYOUTS[layout]
    unet = ADMUNet2DModel(**spec["unet"]).eval().to(device=device, dtype=dtype)
    classifier = ADMClassifier(**spec["classifier"]).eval().to(device=device, dtype=dtype)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
        classifier = classifier.to(memory_format=torch.channels_last)
    if compile_unet:
        unet = torch.compile(unet)
    pipe = ClassifierGuidedPipeline(unet=unet, scheduler=GuidedDDPMScheduler(variance_type="learned_range"),
                                    classifier=classifier)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(pipe, batch: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(ms per guided step, peak device memory in GiB) over ``steps`` steps, after a warm-up call."""
    labels = torch.arange(batch) % pipe.unet.config.num_classes

    def call() -> None:
        pipe(class_labels=labels, num_inference_steps=steps, classifier_scale=1.0, output_type="latent",
             generator=torch.Generator(device="cpu").manual_seed(0))

    call()  # warm-up: kernels, autotuning, compilation
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return 1000 * seconds / steps, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="adm-g-256")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", default="float32,bfloat16,float16")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--steps", type=int, default=5, help="timed guided steps per configuration")
    parser.add_argument("--compile", default="off,on", help="torch.compile settings to try: off, on or both")
    parser.add_argument("--channels_last", default="off,on")
    parser.add_argument("--output", default="", help="markdown file to write the table to (stdout always)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        parser.error(f"expected --dtypes among {', '.join(DTYPES)}, got {', '.join(unknown)}")
    batches = [int(b) for b in args.batches.split(",")]
    switches = {"off": False, "on": True}
    compiles = [switches[c.strip()] for c in args.compile.split(",")]
    formats = [switches[c.strip()] for c in args.channels_last.split(",")]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32; TF32 would be another row
        torch.backends.cudnn.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lines = [
        f"Guided sampling step of the {args.layout} layout (U-Net + classifier gradient + GuidedDDPM step), random "
        f"weights, on {name}, torch {torch.__version__}; {args.steps} timed steps after a warm-up call.",
        "",
        "| dtype | channels_last | torch.compile | batch | ms / step | images x steps / s | peak memory (GiB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for dtype, channels_last, compile_unet in itertools.product(dtypes, formats, compiles):
        pipe = None
        for batch in batches:
            try:
                pipe = pipe or build(args.layout, DTYPES[dtype], channels_last, compile_unet, device)
                ms, peak = measure(pipe, batch, args.steps, device)
                row = f"| {dtype} | {channels_last} | {compile_unet} | {batch} | {ms:.1f} | {batch * 1000 / ms:.2f} | {peak:.2f} |"
            except Exception as error:  # a configuration the device cannot run is a row, not the end of the table
                row = f"| {dtype} | {channels_last} | {compile_unet} | {batch} | failed: {type(error).__name__}: {str(error).splitlines()[0][:80]} | | |"
            lines.append(row)
            print(row, flush=True)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
