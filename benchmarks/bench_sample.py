"""images/s and peak memory of ClassifierGuidedPipeline sampling at small ADM-G configurations.

Two tables:

1. sampling: GuidedDDPMScheduler and GuidedDDIMScheduler, with and without classifier guidance, float32 and bfloat16,
   at a 32x32 ADM-G layout (class-conditional learned-sigma U-Net and a noisy classifier with attention pooling).
2. levers: what makes a step cheaper on this CPU, at the 64x64 ADM-G layout, DDIM with classifier guidance and with
   classifier-free guidance: channels_last, bf16 autocast of the U-Net and classifier, torch.compile (inductor) of the
   U-Net, each against the float32 baseline, with the largest image difference to the baseline (same seed) and the
   network forwards per step (the classifier-free step is one batched U-Net forward; the classifier-guided step one
   U-Net forward and one classifier forward and backward, nothing recomputed).
3. attention: our attention path (diffusers' ``Attention`` with its SDPA processor, as ADMUNet2DModel builds it)
   against a straightforward einsum-softmax implementation swapped onto the same modules, float32 and bfloat16,
   at a 64x64 layout whose attention runs over 32x32 = 1024 positions, where the attention cost shows.

Each point runs in a fresh process, so its peak resident memory (ru_maxrss) is its own; the machine description and
dense matmul GFLOP/s come from benchmarks/common.py.

    python benchmarks/bench_sample.py                   # prints the tables, appends them to docs/benchmarks.md
    python benchmarks/bench_sample.py --steps 10 --batch 4 --output ''
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))

from common import DOCS, append_markdown, machine_description, matmul_gflops  # noqa: E402  (benchmarks/ is not a package)

NO_GPU_NOTE = "No GPU was available for these runs: GPU figures (fp16/bf16, flash SDPA, torch.compile) are not measured yet."


@dataclass(frozen=True)
class Layout:
    """A small ADM-G configuration: the U-Net and its classifier share the level layout."""

    sample_size: int
    model_channels: int
    channel_mult: tuple[int, ...]
    attention_downsample_factors: tuple[int, ...]
    num_head_channels: int = 32
    num_res_blocks: int = 1
    classifier_channels: int = 32

    def describe(self, with_classifier: bool = True) -> str:
        positions = ", ".join(f"{self.sample_size // f}x{self.sample_size // f}" for f in self.attention_downsample_factors)
        text = (
            f"{self.sample_size}x{self.sample_size} ADM-G layout: U-Net model_channels={self.model_channels}, "
            f"channel_mult={self.channel_mult}, num_res_blocks={self.num_res_blocks}, attention at {positions} px "
            f"(head width {self.num_head_channels}), 1000 classes, learned sigma, AdaGN, BigGAN resampling"
        )
        if with_classifier:
            text += f"; classifier model_channels={self.classifier_channels}, attention pooling"
        return text


LAYOUTS = {
    "adm32": Layout(sample_size=32, model_channels=64, channel_mult=(1, 2, 2), attention_downsample_factors=(2, 4)),
    "adm64": Layout(sample_size=64, model_channels=64, channel_mult=(1, 2, 3, 4), attention_downsample_factors=(2, 4, 8)),
}


class EinsumAttnProcessor:
    """A straightforward attention for diffusers' ``Attention``: q k^T by einsum, softmax in float32, then by v.

    As the originals' QKVAttention computes it (q and k each scaled by d^-1/4), with the module's own GroupNorm,
    projections and residual, so swapping it in changes only how attention itself is computed.
    """

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        import torch

        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("EinsumAttnProcessor supports self-attention without a mask only")
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        tokens = hidden_states.view(batch, channels, height * width)
        if attn.group_norm is not None:
            tokens = attn.group_norm(tokens)
        tokens = tokens.transpose(1, 2)  # (batch, positions, channels)
        heads = attn.heads
        query, key, value = (proj(tokens) for proj in (attn.to_q, attn.to_k, attn.to_v))
        head_dim = query.shape[-1] // heads
        query, key, value = (t.reshape(batch, -1, heads, head_dim) for t in (query, key, value))
        scale = head_dim**-0.25
        weights = torch.einsum("bqhd,bkhd->bhqk", query * scale, key * scale)
        weights = torch.softmax(weights.float(), dim=-1).to(value.dtype)
        out = torch.einsum("bhqk,bkhd->bqhd", weights, value).reshape(batch, -1, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out))
        out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_attention_processor(processor_class: type, *models: Any) -> int:
    """Put a ``processor_class()`` on every diffusers ``Attention`` module of ``models``; returns how many."""
    from diffusers.models.attention_processor import Attention

    count = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, Attention):
                module.set_processor(processor_class())
                count += 1
    return count


def build_pipeline(layout: Layout, scheduler_name: str, with_classifier: bool, null_class: bool = False) -> Any:
    """The [`ClassifierGuidedPipeline`] of one point, its models built (randomly initialised) in the default dtype.

    Args:
        layout: the U-Net / classifier configuration.
        scheduler_name: ``"ddpm"`` (GuidedDDPMScheduler) or ``"ddim"`` (GuidedDDIMScheduler).
        with_classifier: include the noisy classifier (for guided points).
        null_class: give the U-Net a null class (``class_dropout_prob`` > 0), for classifier-free guidance.
    """
    import torch

    from guided_diffusers import (
        ADMClassifier,
        ADMUNet2DModel,
        ClassifierGuidedPipeline,
        GuidedDDIMScheduler,
        GuidedDDPMScheduler,
    )

    torch.manual_seed(0)
    common = dict(sample_size=layout.sample_size, channel_mult=layout.channel_mult, num_res_blocks=layout.num_res_blocks,
                  attention_downsample_factors=layout.attention_downsample_factors,
                  num_head_channels=layout.num_head_channels, use_scale_shift_norm=True, resblock_updown=True)
    unet = ADMUNet2DModel(out_channels=6, model_channels=layout.model_channels, num_classes=1000,
                          class_dropout_prob=0.1 if null_class else 0.0, **common).eval()
    classifier = None
    if with_classifier:
        classifier = ADMClassifier(model_channels=layout.classifier_channels, num_classes=1000, pool="attention", **common).eval()
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)  # the scheduler's tables in float32/float64 as always
    scheduler_class = GuidedDDIMScheduler if scheduler_name == "ddim" else GuidedDDPMScheduler
    scheduler = scheduler_class(num_train_timesteps=1000, variance_type="learned_range")
    torch.set_default_dtype(dtype)
    return ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier)


def time_largest_attention(unet: Any, layout: Layout, batch: int, repeats: int = 5) -> dict:
    """CPU ms of the U-Net's first attention module (the most positions) alone, on the input it gets in a forward."""
    import torch
    from diffusers.models.attention_processor import Attention

    module = next(m for m in unet.modules() if isinstance(m, Attention))
    captured = {}
    handle = module.register_forward_pre_hook(lambda _, inputs: captured.setdefault("input", inputs[0].detach().clone()))
    x = torch.randn(batch, 3, layout.sample_size, layout.sample_size, dtype=unet.dtype)
    with torch.no_grad():
        unet(x, torch.full((batch,), 500), class_labels=torch.arange(batch))
        handle.remove()
        hidden = captured["input"]
        module(hidden)
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            module(hidden)
            best = min(best, time.process_time() - start)
    return dict(ms=1e3 * best, positions=int(hidden.shape[-2] * hidden.shape[-1]), heads=int(module.heads))


def measure_point(args: argparse.Namespace) -> dict:
    """One point; runs in its own process."""
    import torch

    torch.set_num_threads(args.threads)
    layout = LAYOUTS[args.layout]
    guided = args.guidance == "classifier"
    torch.set_default_dtype(getattr(torch, args.dtype))  # build in the target dtype: no float32 copy sets the peak
    pipeline = build_pipeline(layout, args.scheduler, guided, null_class=args.guidance == "cfg")
    torch.set_default_dtype(torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    models = [pipeline.unet, *([pipeline.classifier] if guided else [])]
    swapped = set_attention_processor(EinsumAttnProcessor, *models) if args.attention == "einsum" else 0
    labels = list(range(args.batch))
    lever = args.lever or "baseline"
    if lever == "channels_last":
        for model in models:
            model.to(memory_format=torch.channels_last)
    compile_seconds = None
    if lever == "compile":
        pipeline.unet = torch.compile(pipeline.unet)
    forwards = {"unet": 0, "classifier": 0}  # counted outside the compiled graph: hooks on the outer modules

    def counter(name: str):
        def count(*_: Any) -> None:
            forwards[name] += 1

        return count

    pipeline.unet.register_forward_pre_hook(counter("unet"))
    if guided:
        pipeline.classifier.register_forward_pre_hook(counter("classifier"))
    guidance_kwargs = dict(classifier_scale=1.0 if guided else 0.0, guidance_scale=2.0 if args.guidance == "cfg" else None)

    def sample(steps: int):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=lever == "bf16_autocast")
        with autocast:
            return pipeline(class_labels=labels, num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                            output_type="pt", **guidance_kwargs).images

    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    warm_start = time.perf_counter()
    sample(1)  # warm-up (and, for torch.compile, the compilation)
    if lever == "compile":
        compile_seconds = time.perf_counter() - warm_start
    forwards.update(unet=0, classifier=0)
    wall_times, cpu_times = [], []
    for _ in range(args.repeats):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        images = sample(args.steps)
        cpu_times.append(time.process_time() - cpu_start)
        wall_times.append(time.perf_counter() - wall_start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if not torch.isfinite(images).all():
        raise RuntimeError("sampling produced non-finite images")
    calls = args.repeats * args.steps
    per_step = {name: count / calls for name, count in forwards.items()}
    if args.images_out:
        torch.save(images.float().cpu(), args.images_out)
    attention_block = time_largest_attention(pipeline.unet, layout, args.batch) if args.attention_block else None
    max_diff = None
    if swapped:
        # The same computation: one U-Net forward under each processor.
        from diffusers.models.attention_processor import AttnProcessor2_0

        x = torch.randn(args.batch, 3, layout.sample_size, layout.sample_size, generator=torch.Generator().manual_seed(1))
        x, t, y = x.to(pipeline.unet.dtype), torch.full((args.batch,), 500), torch.tensor(labels)
        with torch.no_grad():
            einsum_out = pipeline.unet(x, t, class_labels=y).sample.float()
            set_attention_processor(AttnProcessor2_0, pipeline.unet)
            sdpa_out = pipeline.unet(x, t, class_labels=y).sample.float()
        max_diff = float((einsum_out - sdpa_out).abs().max())
    cpu_seconds, wall_seconds = min(cpu_times), min(wall_times)
    return dict(
        layout=args.layout, scheduler=args.scheduler, guidance=args.guidance, dtype=args.dtype, attention=args.attention,
        batch=args.batch, steps=args.steps, threads=args.threads, ms_per_step=1e3 * cpu_seconds / args.steps,
        images_per_s=args.batch / cpu_seconds, wall_images_per_s=args.batch / wall_seconds, attention_block=attention_block,
        peak_mib=peak_kib / 1024, sampling_mib=(peak_kib - baseline_kib) / 1024, max_abs_diff_vs_sdpa=max_diff,
        attention_modules=swapped, lever=lever, compile_seconds=compile_seconds, forwards_per_step=per_step,
        params_m=sum(p.numel() for p in pipeline.unet.parameters()) / 1e6,
        classifier_params_m=sum(p.numel() for p in pipeline.classifier.parameters()) / 1e6 if guided else None,
    )


def run_point(**point: Any) -> dict:
    """Run one point in a fresh interpreter and return its measurements."""
    command = [sys.executable, __file__, "--point"] + [f"--{key}={value}" for key, value in point.items()]
    threads = str(point.get("threads", 1))
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"point {point} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def sampling_table(rows: list[dict], layout: Layout, header: str) -> list[str]:
    """The markdown lines of the sampling table."""
    lines = [
        f"### bench_sample: ClassifierGuidedPipeline sampling, {layout.describe()} "
        f"({rows[0]['params_m']:.1f} M + {max(r['classifier_params_m'] or 0 for r in rows):.1f} M parameters)",
        "",
        header,
        "",
        "| scheduler | guidance | dtype | batch | steps | ms / step | images/s | images/s (wall) | peak MiB | sampling MiB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scheduler'].upper()} | {'classifier (scale 1)' if r['guidance'] == 'classifier' else 'none'} | "
            f"{r['dtype']} | {r['batch']} | {r['steps']} | {r['ms_per_step']:.0f} | {r['images_per_s']:.3f} | "
            f"{r['wall_images_per_s']:.3f} | {r['peak_mib']:.0f} | {r['sampling_mib']:.0f} |"
        )
    return lines


def levers_table(rows: list[dict], layout: Layout, header: str, images: dict[tuple[str, str], Any]) -> list[str]:
    """The markdown lines of the levers table; ``images`` holds each point's final images, for the difference."""
    lines = [
        f"### bench_sample: CPU levers, DDIM, {layout.describe()} ({rows[0]['params_m']:.1f} M + "
        f"{max(r['classifier_params_m'] or 0 for r in rows):.1f} M parameters)",
        "",
        header + " Speedup = baseline ms / lever ms at the same guidance. Max |diff|: the largest difference of the final "
        "images (in [-1, 1], same seed) to the float32 baseline's. Forwards / step: U-Net and classifier module calls "
        "per sampling step (classifier-free: conditional and null batches in one forward).",
        "",
        "| guidance | lever | batch | steps | ms / step | speedup | max abs diff | U-Net forwards / step | classifier forwards / step | compile s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["guidance"]: r for r in rows if r["lever"] == "baseline"}
    for r in rows:
        reference = base[r["guidance"]]
        diff = float((images[(r["guidance"], r["lever"])] - images[(r["guidance"], "baseline")]).abs().max())
        guidance = {"classifier": "classifier (scale 1)", "cfg": "classifier-free (2)"}.get(r["guidance"], "none")
        compiled = f"{r['compile_seconds']:.0f}" if r["compile_seconds"] is not None else ""
        lines.append(
            f"| {guidance} | {r['lever']} | {r['batch']} | {r['steps']} | {r['ms_per_step']:.0f} | "
            f"{reference['ms_per_step'] / r['ms_per_step']:.2f}x | {diff:.1e} | {r['forwards_per_step']['unet']:g} | "
            f"{r['forwards_per_step']['classifier']:g} | {compiled} |"
        )
    return lines


def attention_table(rows: list[dict], layout: Layout, header: str) -> list[str]:
    """The markdown lines of the attention table."""
    block = rows[0]["attention_block"]
    lines = [
        f"### bench_sample: attention path, SDPA (ours) vs einsum, DDIM without guidance, {layout.describe(False)} "
        f"({rows[0]['params_m']:.1f} M parameters)",
        "",
        header + f" Attention block: CPU ms of the {block['positions']}-position attention module alone "
        f"({block['heads']} heads, batch {rows[0]['batch']}, best of 5). SDPA speedup = einsum time / SDPA time. "
        "Max abs diff: the largest output difference of one U-Net forward under einsum against SDPA.",
        "",
        "| attention | dtype | batch | steps | ms / step | images/s | SDPA speedup | attention block ms | SDPA speedup (block) "
        "| peak MiB | sampling MiB | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sdpa = {r["dtype"]: r for r in rows if r["attention"] == "sdpa"}
    for r in rows:
        base = sdpa.get(r["dtype"]) if r["attention"] == "einsum" else None
        speedup = f"{r['ms_per_step'] / base['ms_per_step']:.2f}x" if base is not None else ""
        block_speedup = f"{r['attention_block']['ms'] / base['attention_block']['ms']:.2f}x" if base is not None else ""
        diff = f"{r['max_abs_diff_vs_sdpa']:.1e}" if r["max_abs_diff_vs_sdpa"] is not None else ""
        name = "SDPA (diffusers Attention, AttnProcessor2_0)" if r["attention"] == "sdpa" else "einsum + float32 softmax"
        lines.append(
            f"| {name} | {r['dtype']} | {r['batch']} | {r['steps']} | {r['ms_per_step']:.0f} | {r['images_per_s']:.3f} | "
            f"{speedup} | {r['attention_block']['ms']:.1f} | {block_speedup} | {r['peak_mib']:.0f} | "
            f"{r['sampling_mib']:.0f} | {diff} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=2, help="images per sampling call")
    parser.add_argument("--steps", type=int, default=5, help="sampling steps per call (the figures scale per step)")
    parser.add_argument("--attention_steps", type=int, default=4, help="sampling steps per call in the attention table")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per point (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point (1: CPU time is compute time)")
    parser.add_argument("--tables", default="sampling,levers,attention")
    parser.add_argument("--levers", default="baseline,channels_last,bf16_autocast,compile",
                        help="levers of the levers table (baseline first)")
    parser.add_argument("--lever_steps", type=int, default=10, help="sampling steps per call in the levers table")
    parser.add_argument("--output", default=str(DOCS), help="markdown file to append to ('' to skip)")
    parser.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    for name in ("layout", "scheduler", "guidance", "dtype", "attention", "lever", "images_out"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    parser.add_argument("--attention_block", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.point:
        print(json.dumps(measure_point(args)))
        return
    dtypes = args.dtypes.split(",")
    tables = args.tables.split(",")
    levers = args.levers.split(",")
    unknown = (sorted(set(tables) - {"sampling", "levers", "attention"}) + sorted(set(dtypes) - {"float32", "bfloat16"})
               + sorted(set(levers) - {"baseline", "channels_last", "bf16_autocast", "compile"}))
    if levers[0] != "baseline":
        unknown.append("levers must start with baseline")
    if unknown or min(args.batch, args.steps, args.attention_steps, args.repeats, args.threads) < 1:
        sys.exit(f"error: expected tables in sampling,levers,attention, levers in baseline,channels_last,bf16_autocast,compile, dtypes in float32,bfloat16 and positive counts, got {unknown or vars(args)}")

    started = time.perf_counter()
    load_1min = os.getloadavg()[0]
    import torch

    torch.set_num_threads(args.threads)  # the matmul reference and the description with the points' thread count
    gflops = {dtype: matmul_gflops(dtype) for dtype in dtypes}
    header = (
        f"{datetime.now(timezone.utc):%Y-%m-%d}, {machine_description()}; dense matmul "
        + ", ".join(f"{g:.0f} GFLOP/s {d}" for d, g in gflops.items())
        + f"; load average {load_1min:.1f} at the start (the machine is shared: figures are indicative)"
        + f". ms / step and images/s from the process's CPU time (with {args.threads} thread(s), robust to the other "
        f"load), images/s (wall) from the clock; fastest of {args.repeats} timed sampling calls after a 1-step warm-up, "
        "each point in a fresh process. Peak = the process's peak resident memory, sampling = its rise over the loaded "
        "models. images/s is at the steps shown (at S steps: images/s x steps / S)."
    )
    common = dict(batch=args.batch, repeats=args.repeats, threads=args.threads)
    out: list[str] = []
    if "sampling" in tables:
        rows = []
        for dtype in dtypes:
            for scheduler in ("ddpm", "ddim"):
                for guidance in ("none", "classifier"):
                    rows.append(run_point(layout="adm32", scheduler=scheduler, guidance=guidance, dtype=dtype,
                                          attention="sdpa", steps=args.steps, **common))
                    print(f"sampling {scheduler} {guidance} {dtype}: {rows[-1]['ms_per_step']:.0f} ms/step", file=sys.stderr)
        out += sampling_table(rows, LAYOUTS["adm32"], header) + [""]
    if "levers" in tables:
        import tempfile

        rows, images = [], {}
        with tempfile.TemporaryDirectory() as folder:
            for guidance in ("classifier", "cfg"):
                for lever in levers:
                    path = Path(folder) / f"{guidance}_{lever}.pt"
                    rows.append(run_point(layout="adm64", scheduler="ddim", guidance=guidance, dtype="float32", attention="sdpa",
                                          steps=args.lever_steps, lever=lever, images_out=str(path), **common))
                    images[(guidance, lever)] = torch.load(path, weights_only=True)
                    print(f"lever {lever} {guidance}: {rows[-1]['ms_per_step']:.0f} ms/step", file=sys.stderr)
        out += levers_table(rows, LAYOUTS["adm64"], header, images) + [""]
    if "attention" in tables:
        rows = []
        for dtype in dtypes:
            for attention in ("sdpa", "einsum"):
                rows.append(run_point(layout="adm64", scheduler="ddim", guidance="none", dtype=dtype,
                                      attention=attention, steps=args.attention_steps, attention_block=1, **common))
                print(f"attention {attention} {dtype}: {rows[-1]['ms_per_step']:.0f} ms/step", file=sys.stderr)
        out += attention_table(rows, LAYOUTS["adm64"], header) + [""]
    out.append(NO_GPU_NOTE if not _cuda_available() else "CPU figures; this benchmark does not measure the GPU.")
    text = "\n".join(line for line in out).rstrip() + "\n"
    print(text)
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.output:
        append_markdown(Path(args.output), text.rstrip())


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
