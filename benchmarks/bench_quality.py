"""Quality against cost on the quick start's digits model: which sampler to pick, measured.

For each sampler and step count and each guidance setting, on the ``make demo`` pipeline (trained first when
``demo_output/pipeline`` is absent):

- class accuracy from the quick start's independent judge (an SVM on the real 8x8 digits);
- the Fréchet distance between the samples and all 1,797 real digits in the judge's input space (8x8 grey vectors),
  with its floor: the distance of as many real digits to all of them (the finite-sample bias); its spread over the seeds;
- the colour spread (max - min over the channels per pixel; the real digits are grey: 0);
- per-class diversity (mean pairwise distance within a class, as the quick start reports it);
- network evaluations per image, U-Net and classifier counted separately (a classifier-free step is two U-Net
  evaluations in one batched forward);
- wall time and images/s.

    python benchmarks/bench_quality.py                                  # the default grid, appended to docs/benchmarks.md
    python benchmarks/bench_quality.py --samplers ddpm:50,dpmpp2m:10 --guidance cg2 --samples_per_class 10 --output ''

Samplers are the package's sampling recipes NAME:STEPS (guided_diffusers.pipelines.recipes): ``ddpm``
(GuidedDDPMScheduler, the originals' respacing "N"), ``ddim`` (GuidedDDIMScheduler, "ddimN"), ``dpmpp2m`` / ``dpmpp3m``
(DPM-Solver++ multistep, order 2 / 3), ``dpmpp2m_sde`` (its SDE variant), ``unipc``, ``euler``, ``heun``; the stock
ones are swapped in the diffusers way (``X.from_config``) and clip x_0 (``clip_denoised=True``: thresholding at 1 for
the multistep solvers; Euler and Heun cannot clip and run unclipped). ``--classifier_dtype bfloat16`` evaluates the
classifier (and so its gradient) in bfloat16; ``--autocast bfloat16`` runs every network under CPU bf16 autocast.
Guidance settings: ``none`` (the class-conditional model alone), ``cgS`` (classifier guidance at scale S), ``cfgW``
(classifier-free guidance at weight W); ``@LOW:HIGH`` after one applies it only at noise levels sigma in (LOW, HIGH]
(the pipeline's ``guidance_interval``, Kynkäänniemi et al. 2024), e.g. ``cg2@0.3:6``. A ``--plot`` PNG draws accuracy and distance against U-Net evaluations.
The distilled student of ``make demo DEMO_ARGS=--distill`` (``--student``, default demo_output/distilled when it exists)
adds ``consistency:N`` or ``progressive:N`` rows (its 1, 2, 4 steps; named by its distillation method) for ``none`` and ``cfgW``; the plot then shows ``cfg2``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BENCHMARKS_DIR = Path(__file__).resolve().parent
if str(BENCHMARKS_DIR) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS_DIR))

from common import DOCS, append_markdown, machine_description  # noqa: E402  (benchmarks/ is not a package)

DEFAULT_SAMPLERS = ("ddpm:250,ddpm:100,ddpm:50,ddpm:25,ddim:50,ddim:25,ddim:10,dpmpp2m:25,dpmpp2m:15,dpmpp2m:10,"
                    "dpmpp2m:5,dpmpp3m:10,dpmpp2m_sde:25,dpmpp2m_sde:15,dpmpp2m_sde:10,dpmpp2m_sde:8,dpmpp2m_sde:5,unipc:25,unipc:15,unipc:10,unipc:5,euler:25,euler:10,heun:13,heun:6")
DEFAULT_GUIDANCE = "none,cg1,cg2,cfg2"


@dataclass
class Row:
    sampler: str
    guidance: str
    unet_evals: float
    classifier_evals: float
    accuracy: float
    distance: float
    distance_spread: float
    colour_spread: float
    diversity: float
    seconds: float
    images_per_second: float


def _guidance_kwargs(setting: str) -> dict:
    """``none``, ``cgS``, ``cfgW``, each optionally ``@LOW:HIGH``: guidance only at noise levels sigma in (LOW, HIGH]."""
    setting, _, interval = setting.partition("@")
    if interval:
        low, _, high = interval.partition(":")
        return {**_guidance_kwargs(setting), "guidance_interval": (float(low), float(high))}
    if setting == "none":
        return {"classifier_scale": 0.0}
    if setting.startswith("cfg"):
        return {"classifier_scale": 0.0, "guidance_scale": float(setting[3:])}
    if setting.startswith("cg"):
        return {"classifier_scale": float(setting[2:])}
    raise ValueError(f"unknown guidance setting {setting!r}; expected none, cgS or cfgW")


class _Counter:
    """Images a module has been run on (a forward hook), to count network evaluations per generated image."""

    def __init__(self, module: torch.nn.Module):
        self.images = 0
        module.register_forward_hook(self._count)

    def _count(self, module, args, output) -> None:
        self.images += args[0].shape[0]


def _judged_seeds(sample: Callable[[int], np.ndarray], seeds: list[int], judge, reference, targets: np.ndarray,
                  prepare: Callable[[], None] = lambda: None) -> tuple[list[float], float]:
    """``sample(seed)`` (NHWC images, one per target) for each seed, after ``prepare()``, judged: the mean class
    accuracy, the mean distance, the distance's range over the seeds, the mean colour spread and the mean diversity
    (in ``Row``'s order), and the seconds ``sample`` took (neither ``prepare`` nor the judging is timed). The
    baseline's rows and the student's are measured alike."""
    from guided_diffusers.demo.digits import NUM_CLASSES, channel_spread, mean_pairwise_distance

    accuracies, distances, spreads, diversities, seconds = [], [], [], [], 0.0
    for seed in seeds:
        prepare()
        start = time.perf_counter()
        images = sample(seed)
        seconds += time.perf_counter() - start
        accuracies.append(float((judge.predict(images) == targets).mean()))
        distances.append(reference.distance(images))
        spreads.append(channel_spread(images))
        diversities.append(float(np.mean([mean_pairwise_distance(images[targets == c]) for c in range(NUM_CLASSES)])))
    scores = [float(np.mean(accuracies)), float(np.mean(distances)), float(np.max(distances) - np.min(distances)),
              float(np.mean(spreads)), float(np.mean(diversities))]
    return scores, seconds


def run(args: argparse.Namespace) -> tuple[list[Row], float, float, str]:
    from diffusers import DiffusionPipeline

    import guided_diffusers  # noqa: F401  (registers the pipeline classes with diffusers)
    from guided_diffusers.demo.digits import NUM_CLASSES, DigitsJudge, DigitsReference
    from guided_diffusers.demo.quickstart import QuickstartSettings, train
    from guided_diffusers.pipelines.recipes import SamplingRecipe

    torch.set_num_threads(args.threads)
    settings = QuickstartSettings(output_dir=Path(args.demo_dir))
    if not (settings.pipeline_dir / "model_index.json").is_file():
        print(f"no trained pipeline in {settings.pipeline_dir}: training it as make demo does", flush=True)
        train(settings)
    pipe = DiffusionPipeline.from_pretrained(settings.pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    if args.classifier_dtype != "float32":
        pipe.classifier.to(getattr(torch, args.classifier_dtype))
    base_config = pipe.scheduler.config
    unet_count, classifier_count = _Counter(pipe.unet), _Counter(pipe.classifier)
    judge = DigitsJudge.fit(0)
    reference = DigitsReference.load()
    floor = reference.floor(NUM_CLASSES * args.samples_per_class)
    targets = np.repeat(np.arange(NUM_CLASSES), args.samples_per_class)
    labels = torch.from_numpy(targets)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    recipes = [SamplingRecipe.parse(sampler) for sampler in args.samplers.split(",")]
    for recipe in recipes:
        for setting in args.guidance.split(","):
            unet_count.images = classifier_count.images = 0

            def fresh_scheduler() -> None:
                pipe.scheduler = recipe.scheduler(base_config)

            def sample(seed: int) -> np.ndarray:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bfloat16"):
                    return pipe(class_labels=labels, output_type="np", generator=torch.Generator().manual_seed(seed),
                                **recipe.call_kwargs(), **_guidance_kwargs(setting)).images

            scores, seconds = _judged_seeds(sample, seeds, judge, reference, targets, fresh_scheduler)
            total = len(seeds) * len(targets)
            row = Row(str(recipe), setting, unet_count.images / total, classifier_count.images / total, *scores,
                      seconds / len(seeds), total / seconds)
            rows.append(row)
            print(_format(row), flush=True)
    pipe.scheduler = SamplingRecipe("ddpm", 1).scheduler(base_config)
    if args.student:
        rows += student_rows(args, judge, reference, targets, seeds)
    return rows, floor, judge.held_out_accuracy, str(settings.pipeline_dir)


def student_rows(args: argparse.Namespace, judge, reference, targets: np.ndarray, seeds: list[int]) -> list[Row]:
    """The distilled student (``--student``, an ADMConsistencyPipeline of guided-diffusers-distill) at each of
    ``--student_steps``, for the guidance settings it takes: ``none`` (w = 1, the conditional student) and ``cfgW``
    (its guidance input; a student with the classifier's guidance folded in takes ``none`` only)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.student)
    pipe.set_progress_bar_config(disable=True)
    unet_count = _Counter(pipe.unet)
    labels = torch.from_numpy(targets)
    rows = []
    for steps in (int(s) for s in args.student_steps.split(",")):
        for setting in args.guidance.split(","):
            if setting.startswith("cg") or "@" in setting or (setting.startswith("cfg") and not pipe.has_guidance_input):
                continue
            kwargs = {"guidance_scale": float(setting[3:]) if setting.startswith("cfg") else 1.0} if pipe.has_guidance_input else {}
            unet_count.images = 0
            scores, seconds = _judged_seeds(
                lambda seed: pipe(class_labels=labels, num_inference_steps=steps, output_type="np",
                                  generator=torch.Generator().manual_seed(seed), **kwargs).images,
                seeds, judge, reference, targets,
            )
            total = len(seeds) * len(targets)
            method = ((pipe.config.get("distillation") or {}).get("method") or "consistency").split()[0]
            row = Row(f"{method}:{steps}", setting, unet_count.images / total, 0.0, *scores, seconds / len(seeds), total / seconds)
            rows.append(row)
            print(_format(row), flush=True)
    return rows


def _format(r: Row) -> str:
    return (f"| {r.sampler} | {r.guidance} | {r.unet_evals:.0f} | {r.classifier_evals:.0f} | {r.accuracy:.1%} | "
            f"{r.distance:.1f} ± {r.distance_spread / 2:.1f} | {r.colour_spread:.3f} | {r.diversity:.3f} | {r.seconds:.1f} | {r.images_per_second:.1f} |")


def plot(rows: list[Row], path: Path, floor: float, guidance: str | None = None) -> None:
    """Accuracy (left) and Fréchet distance (right) against U-Net evaluations per image, one colour per sampler family
    (and guidance setting, unless ``guidance`` keeps one), drawn with PIL (no plotting library needed)."""
    from PIL import Image, ImageDraw

    if guidance is not None:
        rows = [r for r in rows if r.guidance == guidance]

    width, height, margin = 1100, 460, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    series: dict[str, list[Row]] = {}
    for row in rows:
        series.setdefault(row.sampler.split(":")[0] + ("" if guidance is not None else f" {row.guidance}"), []).append(row)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
    max_evals = max(r.unet_evals for r in rows)
    max_distance = max(max(r.distance for r in rows), floor) * 1.05
    low_accuracy = min(0.9, np.floor(min(r.accuracy for r in rows) * 20) / 20)
    title_suffix = f", guidance {guidance}" if guidance is not None else ""
    panels = [("accuracy" + title_suffix, low_accuracy, 1.0, lambda r: r.accuracy, 0),
              ("Frechet distance" + title_suffix, 0.0, max_distance, lambda r: r.distance, 1)]
    panel_width = (width - 3 * margin) // 2
    for title, low, high, value, index in panels:
        left = margin + index * (panel_width + margin)
        top, bottom = margin, height - margin
        draw.rectangle([left, top, left + panel_width, bottom], outline="black")
        draw.text((left, top - 20), f"{title} vs U-Net evaluations per image (log scale, 1 to {max_evals:.0f})", fill="black")

        def xy(evals: float, v: float) -> tuple[float, float]:
            x = left + panel_width * np.log(max(evals, 1.0)) / np.log(max(max_evals, 2.0))
            y = bottom - (bottom - top) * (v - low) / (high - low)
            return x, y

        if title.startswith("Frechet"):
            draw.line([xy(1, floor), xy(max_evals, floor)], fill="#aaaaaa")
            draw.text((xy(1, floor)[0] + 4, xy(1, floor)[1] - 12), f"real digits' floor {floor:.1f}", fill="#777777")
        for k, (label, members) in enumerate(sorted(series.items())):
            colour = palette[k % len(palette)]
            points = sorted((r.unet_evals, value(r)) for r in members)
            if len(points) > 1:
                draw.line([xy(*p) for p in points], fill=colour, width=2)
            for p in points:
                x, y = xy(*p)
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
            if index == 0:
                draw.text((left + 6, top + 6 + 12 * k), label, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo_dir", default="demo_output", help="the quick start's output folder (its pipeline/)")
    parser.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    parser.add_argument("--guidance", default=DEFAULT_GUIDANCE)
    parser.add_argument("--samples_per_class", type=int, default=20)
    parser.add_argument("--seeds", default="0,1", help="the Fréchet distance's spread is over these")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classifier_dtype", choices=["float32", "bfloat16"], default="float32",
                        help="the classifier's dtype (its gradient is evaluated in it)")
    parser.add_argument("--autocast", choices=["none", "bfloat16"], default="none",
                        help="run the whole sampling call (U-Net and classifier) under CPU bf16 autocast")
    parser.add_argument("--student", default=None, help="also the distilled student in this folder (default: demo_output/distilled "
                        "when it exists; '' for none), at --student_steps, as consistency:N or progressive:N rows")
    parser.add_argument("--student_steps", default="1,2,4", help="the student's step counts")
    parser.add_argument("--plot", default=str(DOCS.parent / "images" / "bench_quality.png"), help="PNG path ('' to skip)")
    parser.add_argument("--output", default=str(DOCS), help="markdown file to append to ('' to skip)")
    args = parser.parse_args(argv)
    if args.student is None:
        distilled = Path(args.demo_dir) / "distilled"
        args.student = str(distilled) if (distilled / "model_index.json").is_file() else ""
    rows, floor, judge_accuracy, pipeline_dir = run(args)
    lines = [
        f"### Quality against cost ({pipeline_dir}, {args.samples_per_class} samples per class, seeds {args.seeds}, "
        f"classifier in {args.classifier_dtype}" + (", under bf16 autocast)" if args.autocast == "bfloat16" else ")"),
        "",
        machine_description(),
        "",
        f"Judge: SVM on the real 8x8 digits, {judge_accuracy:.1%} on held-out real ones. Fréchet distance to all 1,797 real "
        f"digits in the judge's 8x8 space (mean ± half the spread over the seeds); its floor, {args.samples_per_class * 10} "
        f"real digits against all: {floor:.1f}. Colour spread: mean max - min over RGB per pixel (0 for grey images). "
        "Evaluations are per generated image.",
        "",
        "| sampler:steps | guidance | U-Net evals | classifier evals | accuracy | Fréchet distance | colour spread | diversity | s / call | images/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[_format(r) for r in rows],
    ]
    if args.plot:
        guidances = args.guidance.split(",")
        # With a student, the classifier-free setting: the student's rows are drawn beside the samplers'.
        shown = "cfg2" if args.student and "cfg2" in guidances else "cg2" if "cg2" in guidances else guidances[0]
        plot(rows, Path(args.plot), floor, shown)
        lines += ["", f"![quality against cost]({Path(args.plot).relative_to(DOCS.parent) if Path(args.plot).is_relative_to(DOCS.parent) else args.plot})"]
    text = "\n".join(lines)
    print(text)
    if args.output:
        append_markdown(Path(args.output), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
