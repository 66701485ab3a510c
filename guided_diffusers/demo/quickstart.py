"""The quick start: train a small ADM and its noisy classifier on the digits with the project's own training scripts,
then sample with classifier guidance and classifier-free guidance (the 50-step ancestral baseline and the fast recipe)
and judge the samples: class accuracy from an independent classifier, Fréchet distance to the real digits, colour,
class balance, and the time of each phase.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..pipelines.recipes import FAST_RECIPE, SamplingRecipe
from ..publishing import write_text_atomically, write_folder_atomically
from .digits import (
    DIGIT_NAMES,
    NUM_CLASSES,
    DigitsJudge,
    DigitsReference,
    judge_samples,
    save_grid,
    write_digits_folder,
)

# The folder holding this guided_diffusers (a checkout or site-packages): the launched process imports the same copy.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
TRAINING_CURVE_PLOT = "training_curve.png"


@dataclass
class QuickstartSettings:
    """What the quick start trains and samples; the defaults fit about 10 minutes on 2 CPU cores.

    The digits are 8x8 and grey, so the models are too: trained at the data's own size (no upscaled pixels to learn)
    with one image channel (``--in_channels 1``: the samples are grey by construction, as the data).
    """

    output_dir: Path = Path("demo_output")
    resolution: int = 8
    in_channels: int = 1
    seed: int = 0
    diffusion_steps: int = 1000
    diffusion_train_steps: int = 3000
    classifier_train_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-3
    ema_rate: float = 0.995
    class_dropout_prob: float = 0.15
    samples_per_class: int = 20
    # Every this many diffusion steps, the Fréchet distance of samples_per_class * 10 fast-recipe samples of the EMA
    # weights to the digits (the training's validation, in the judge's space): the curve of "Knowing when to stop".
    validation_steps: int = 250
    # Unguided rows draw this many samples for the class shares: with 200, a perfectly balanced model has a class
    # outside 5-15% in 12% of runs (multinomial draws), with 1000 in 0.001%. Their distance, grid and diversity use
    # the first samples_per_class * 10.
    balance_samples: int = 1000
    baseline: str = "ddpm:50"  # ancestral (DDPM) steps, as ADM-G samples (the originals' respacing "50")
    fast: str = str(FAST_RECIPE)  # the fast recipe of the quality benchmark
    classifier_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    guidance_scales: tuple[float, ...] = (2.0, 4.0)
    recommended_classifier_scale: float = 2.0
    recommended_guidance_scale: float = 2.0
    retrain: bool = False
    distill: bool = False  # also distil the pipeline into a 1-4 step student (demo_output/distilled) and judge it
    distill_train_steps: int = 1500
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pipeline_dir(self) -> Path:
        return self.output_dir / "pipeline"

    @property
    def distilled_dir(self) -> Path:
        return self.output_dir / "distilled"


def _launch(script: str, arguments: list[str], settings: QuickstartSettings) -> None:
    """A training command line through ``accelerate launch`` (one process here; the same line scales out), as the
    package's module (``-m guided_diffusers.cli.train_diffusion``), so an installed wheel runs it too."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    if not torch.cuda.is_available():
        command.append("--cpu")
    module = "guided_diffusers.cli." + script.removesuffix(".py")
    command += ["-m", module, *arguments]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", **settings.extra_env)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(PACKAGE_ROOT), env.get("PYTHONPATH")) if x)
    print(f"$ accelerate launch -m {module} " + " ".join(arguments), flush=True)
    subprocess.run(command, check=True, env=env)


def train(settings: QuickstartSettings) -> dict[str, float]:
    """Train the diffusion model and the classifier, assemble the pipeline folder; returns each phase's seconds."""
    from diffusers import DiffusionPipeline

    from .. import ADMClassifier, ClassifierGuidedPipeline

    out = settings.output_dir
    times: dict[str, float] = {}
    start = time.perf_counter()
    data = write_digits_folder(out / "digits", settings.resolution)
    times["data"] = time.perf_counter() - start
    half = settings.resolution // 2  # attention at the lower level
    common = ["--train_data_dir", str(data), "--resolution", str(settings.resolution), "--seed", str(settings.seed),
              "--train_batch_size", str(settings.batch_size), "--report_to", "none", "--checkpointing_steps", "100000",
              "--diffusion_steps", str(settings.diffusion_steps), "--noise_schedule", "cosine", "--lr_scheduler", "linear",
              "--in_channels", str(settings.in_channels)]
    for stale in ("diffusion", "classifier"):  # a rerun with --retrain starts both runs afresh
        if (out / stale).exists():
            import shutil

            shutil.rmtree(out / stale)
    start = time.perf_counter()
    _launch("train_diffusion.py", [
        *common, "--output_dir", str(out / "diffusion"), "--max_train_steps", str(settings.diffusion_train_steps),
        "--learning_rate", f"{settings.learning_rate:g}", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
        "--attention_resolutions", str(half), "--num_head_channels", "32", "--class_cond", "True",
        "--class_dropout_prob", f"{settings.class_dropout_prob:g}", "--use_ema", "True", "--ema_rate", f"{settings.ema_rate:g}",
        "--validation_steps", str(settings.validation_steps), "--validation_samples", str(settings.samples_per_class * NUM_CLASSES),
        "--validation_batch_size", str(settings.samples_per_class * NUM_CLASSES),
    ], settings)
    times["diffusion training"] = time.perf_counter() - start
    start = time.perf_counter()
    _launch("train_classifier.py", [
        *common, "--output_dir", str(out / "classifier"), "--max_train_steps", str(settings.classifier_train_steps),
        "--learning_rate", "1e-3", "--classifier_width", "32", "--classifier_depth", "1", "--classifier_channel_mult", "1,2",
        "--classifier_attention_resolutions", str(half), "--classifier_pool", "attention", "--adam_weight_decay", "0.05",
        "--validation_split", "0.1",
    ], settings)
    times["classifier training"] = time.perf_counter() - start
    diffusion = DiffusionPipeline.from_pretrained(out / "diffusion")
    classifier = ADMClassifier.from_pretrained(out / "classifier")
    pipeline = ClassifierGuidedPipeline(unet=diffusion.unet, scheduler=diffusion.scheduler, classifier=classifier,
                                        id2label=DIGIT_NAMES, classifier_scale=settings.recommended_classifier_scale)
    write_folder_atomically(settings.pipeline_dir, pipeline.save_pretrained)  # whole, with the umask's file modes
    return times


@dataclass
class TrainingCurve:
    """The diffusion training's log: the validation distance and the loss by step, and what validating cost."""

    steps: list[int]
    distances: list[float]
    loss_steps: list[int]
    losses: list[float]
    validation_seconds: float

    @classmethod
    def read(cls, metrics_path: Path) -> TrainingCurve:
        entries = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
        validated = [e for e in entries if "val_frechet_distance" in e]
        return cls([e["step"] for e in validated], [e["val_frechet_distance"] for e in validated], [e["step"] for e in entries],
                   [e["loss"] for e in entries], sum(e.get("val_seconds", 0.0) for e in validated))

    def smoothed_losses(self, window: int = 100) -> list[float]:
        """The loss's running mean over the last ``window`` steps (one step's loss is a draw of a few timesteps)."""
        sums = np.cumsum([0.0, *self.losses])
        return [(sums[k + 1] - sums[max(0, k + 1 - window)]) / min(k + 1, window) for k in range(len(self.losses))]

    def plot(self, floor: float, path: Path) -> Path:
        from .plot import BLUE, GREY, Panel, save_curves

        best = int(np.argmin(self.distances))
        distance = Panel(
            f"Frechet distance to the real digits ({len(self.steps)} validations, fast recipe, judge's 8x8 space; log scale)",
            [(self.steps, self.distances, BLUE, 2)], level=(floor, f"floor {floor:.1f}"), log_scale=True,
            labels=[(self.steps[best], self.distances[best], f"best {self.distances[best]:.1f}")],
        )
        loss = Panel("loss (grey: each step; blue: mean of the last 100 steps; log scale)",
                     [(self.loss_steps, self.losses, GREY, 1), (self.loss_steps, self.smoothed_losses(), BLUE, 2)],
                     log_scale=True)
        return save_curves([distance, loss], max(self.loss_steps), path)


@dataclass
class Row:
    """One sampled setting and what the judge and the reference say about its samples."""

    sampler: str
    mode: str
    classifier_scale: float
    guidance_scale: float | None
    accuracy: float | None  # None for unguided samples: no class was asked
    distance: float
    colour_spread: float
    class_share_min: float
    class_share_max: float
    diversity: float
    seconds: float


def evaluate(settings: QuickstartSettings) -> tuple[list[Row], DigitsJudge, float]:
    """Sample a grid per setting and judge it; returns the rows, the judge and the distance's floor."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(settings.pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    base_config = pipe.scheduler.config
    judge = DigitsJudge.fit(settings.seed)
    reference = DigitsReference.load()
    targets = np.repeat(np.arange(NUM_CLASSES), settings.samples_per_class)
    labels = torch.from_numpy(targets)
    floor = reference.floor(len(targets), settings.seed)

    def run(recipe: SamplingRecipe, mode: str, shown_classifier_scale: float, shown_guidance_scale: float | None, **kwargs) -> Row:
        pipe.scheduler = recipe.scheduler(base_config)
        start = time.perf_counter()
        images = pipe(generator=torch.Generator().manual_seed(settings.seed), output_type="np", **recipe.call_kwargs(),
                      **kwargs).images
        seconds = time.perf_counter() - start
        figures = judge_samples(images, targets, mode != "unguided", judge, reference)
        seconds *= min(1.0, len(targets) / len(images))  # an unguided draw for the shares: timed on the common count
        name = f"{recipe.sampler}{recipe.steps}_{mode}_cs{shown_classifier_scale:g}" + (
            f"_w{shown_guidance_scale:g}" if shown_guidance_scale is not None else "")
        save_grid(images[: len(targets)], NUM_CLASSES, settings.output_dir / "grids" / f"{name}.png",
                  scale=max(2, 32 // settings.resolution))
        return Row(str(recipe), mode, shown_classifier_scale, shown_guidance_scale, seconds=seconds, **figures)

    rows = []
    baseline, fast = SamplingRecipe.parse(settings.baseline), SamplingRecipe.parse(settings.fast)
    # Unguided: no label information at all (the model's null class, no classifier).
    rows.append(run(baseline, "unguided", 0.0, None, batch_size=max(len(targets), settings.balance_samples)))
    # Classifier guidance as ADM-G does it: the class-conditional model plus the noisy classifier's gradient.
    for scale in settings.classifier_scales:
        rows.append(run(baseline, "classifier", scale, None, class_labels=labels, classifier_scale=scale))
    for weight in settings.guidance_scales:
        rows.append(run(baseline, "classifier-free", 0.0, weight, class_labels=labels, classifier_scale=0.0, guidance_scale=weight))
    # The fast recipe at the recommended settings, beside the baseline.
    rows.append(run(fast, "unguided", 0.0, None, batch_size=max(len(targets), settings.balance_samples)))
    rows.append(run(fast, "classifier", settings.recommended_classifier_scale, None, class_labels=labels,
                    classifier_scale=settings.recommended_classifier_scale))
    rows.append(run(fast, "classifier-free", 0.0, settings.recommended_guidance_scale, class_labels=labels, classifier_scale=0.0,
                    guidance_scale=settings.recommended_guidance_scale))
    return rows, judge, floor


def _pick(rows: list[Row], sampler: str, mode: str, classifier_scale: float = 0.0, guidance_scale: float | None = None) -> Row:
    return next(r for r in rows if (r.sampler, r.mode, r.classifier_scale, r.guidance_scale) == (sampler, mode, classifier_scale, guidance_scale))


def report(rows: list[Row], judge: DigitsJudge, floor: float, times: dict[str, float], settings: QuickstartSettings,
           curve: TrainingCurve | None = None) -> str:
    """The table, the training curve's lines (when ``curve``, plotted by [`training_curve`]), a JSON copy in the output
    folder, and the final line checks read (``key=value`` pairs)."""
    baseline, fast = str(SamplingRecipe.parse(settings.baseline)), str(SamplingRecipe.parse(settings.fast))
    n = settings.samples_per_class * NUM_CLASSES
    lines = [
        f"judge: scikit-learn SVM on the real 8x8 digits, {judge.held_out_accuracy:.1%} on held-out real digits",
        f"{settings.samples_per_class} samples per class ({n} per row). distance: Fréchet distance to all 1,797 real digits "
        f"in the judge's 8x8 grey space; its floor ({n} real digits against all) is {floor:.1f}. colour: mean max - min over "
        "the channels per pixel (real digits: 0). class share: the judge's least and most frequent class (unguided: over "
        f"{max(n, settings.balance_samples)} samples). diversity: mean "
        "pairwise distance within a class (8x8, pixels in [0, 1]). samplers: NAME:STEPS (guided_diffusers.pipelines.recipes)",
        "",
        "| sampler | mode | classifier scale | guidance scale | class accuracy | distance | colour | class share | diversity | seconds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w = "-" if r.guidance_scale is None else f"{r.guidance_scale:g}"
        accuracy = "-" if r.accuracy is None else f"{r.accuracy:.1%}"
        lines.append(f"| {r.sampler} | {r.mode} | {r.classifier_scale:g} | {w} | {accuracy} | {r.distance:.1f} | "
                     f"{r.colour_spread:.3f} | {r.class_share_min:.1%}-{r.class_share_max:.1%} | {r.diversity:.3f} | {r.seconds:.1f} |")
    scale, weight = settings.recommended_classifier_scale, settings.recommended_guidance_scale
    unguided, guided, free = (_pick(rows, baseline, "unguided"), _pick(rows, baseline, "classifier", scale),
                              _pick(rows, baseline, "classifier-free", 0.0, weight))
    fast_guided, fast_free = _pick(rows, fast, "classifier", scale), _pick(rows, fast, "classifier-free", 0.0, weight)
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items())
    lines += ["", f"times: {phases}"]
    if curve is not None:
        lines += [*curve_lines(curve, floor, times, settings.output_dir / TRAINING_CURVE_PLOT), ""]
    lines += [
        "quickstart: "
        f"accuracy_classifier={guided.accuracy:.3f} accuracy_free={free.accuracy:.3f} "
        f"distance_unguided={unguided.distance:.1f} distance_classifier={guided.distance:.1f} distance_free={free.distance:.1f} "
        f"distance_floor={floor:.1f} colour_spread={max(r.colour_spread for r in rows):.3f} "
        f"class_share_unguided={unguided.class_share_min:.3f}-{unguided.class_share_max:.3f} "
        f"fast={fast} fast_accuracy_classifier={fast_guided.accuracy:.3f} fast_accuracy_free={fast_free.accuracy:.3f} "
        f"fast_distance_classifier={fast_guided.distance:.1f} "
        f"fast_speedup={guided.seconds / fast_guided.seconds:.1f}x classifier_scale={scale:g} guidance_scale={weight:g} "
        + " ".join(f"seconds_{name.replace(' ', '_')}={seconds:.0f}" for name, seconds in times.items()),
    ]
    results = {"rows": [r.__dict__ for r in rows], "distance_floor": floor, "times": times,
               "judge_held_out_accuracy": judge.held_out_accuracy, "baseline": baseline, "fast": fast}
    if curve is not None:
        results["training_curve"] = {"steps": curve.steps, "distances": curve.distances, "validation_seconds": curve.validation_seconds}
    write_text_atomically(settings.output_dir / "results.json", json.dumps(results, indent=2))
    return "\n".join(lines)


def check_demo_extra() -> None:
    """The quick start's digits and judge are scikit-learn's (the ``[demo]`` extra): refused in one line, before any work."""
    if importlib.util.find_spec("sklearn") is None:
        raise ModuleNotFoundError(
            "expected scikit-learn installed for the quick start (its digits and its judge), got it missing: install the "
            "[demo] extra (pip install \"./guided-diffusers[demo]\" from a checkout) or pip install scikit-learn"
        )


def curve_lines(curve: TrainingCurve, floor: float, times: dict[str, float], plot: Path) -> list[str]:
    """The report's lines on the training curve: the distance by step, the best, and what validating cost (when this
    run trained: ``times`` has each phase's seconds)."""
    best = int(np.argmin(curve.distances))
    lines = [
        f"training curve ({plot}): distance of the EMA weights' fast-recipe samples by step: "
        + ", ".join(f"{step} {distance:.1f}" for step, distance in zip(curve.steps, curve.distances)),
        f"best {curve.distances[best]:.1f} at step {curve.steps[best]} (floor {floor:.1f})",
    ]
    training = times.get("diffusion training")
    if training:
        spent, total = curve.validation_seconds, sum(times.values())
        lines.append(f"validation: {len(curve.steps)} evaluations, {spent:.1f} s in all ({spent / len(curve.steps):.2f} s each; "
                     f"{spent / (training - spent):.1%} added to the diffusion training, {spent / (total - spent):.1%} to the whole run)")
    return lines


def run_quickstart(settings: QuickstartSettings) -> str:
    """Train (or reuse), evaluate, report. Returns the report; its last line is the quickstart line.

    Raises:
        ModuleNotFoundError: scikit-learn (the ``[demo]`` extra) is missing; nothing is written.
    """
    check_demo_extra()
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    if settings.retrain or not (settings.pipeline_dir / "model_index.json").is_file():
        times.update(train(settings))
        print(f"trained in {sum(times.values()):.0f} s", flush=True)
    else:
        print(f"reusing the trained pipeline in {settings.pipeline_dir} (pass --retrain to train again)", flush=True)
    start = time.perf_counter()
    rows, judge, floor = evaluate(settings)
    times["sampling and judging"] = time.perf_counter() - start
    text = report(rows, judge, floor, times, settings, training_curve(settings, floor))
    if not settings.distill:
        return text
    *lines, last = text.splitlines()  # the quickstart line stays the last
    return "\n".join([*lines, "", run_distillation(settings, judge), "", last])


def training_curve(settings: QuickstartSettings, floor: float) -> TrainingCurve | None:
    """The diffusion training's validation curve, plotted as ``training_curve.png`` (None for a pipeline trained
    without validation)."""
    metrics = settings.output_dir / "diffusion" / "logs" / "metrics.jsonl"
    curve = TrainingCurve.read(metrics) if metrics.is_file() else None
    if curve is None or not curve.steps:
        return None
    curve.plot(floor, settings.output_dir / TRAINING_CURVE_PLOT)
    return curve


def run_distillation(settings: QuickstartSettings, judge: DigitsJudge) -> str:
    """Distil the pipeline (unless demo_output/distilled exists and no --retrain) and judge the student beside its
    teacher; returns the table and a ``distilled:`` line of ``key=value`` pairs."""
    from .distilled import DistillSettings, evaluate_distilled, table

    seconds = None
    if settings.retrain or not (settings.distilled_dir / "model_index.json").is_file():
        if settings.distilled_dir.exists():
            import shutil

            shutil.rmtree(settings.distilled_dir)
        start = time.perf_counter()
        _launch("distill.py", DistillSettings(max_train_steps=settings.distill_train_steps).arguments(settings.pipeline_dir, settings.output_dir / "digits", settings.distilled_dir,
                                                          settings.recommended_guidance_scale, settings.seed), settings)
        seconds = time.perf_counter() - start
    else:
        print(f"reusing the distilled student in {settings.distilled_dir}", flush=True)
    rows = evaluate_distilled(settings.distilled_dir, settings.pipeline_dir, judge, DigitsReference.load(), settings.samples_per_class,
                              settings.balance_samples, settings.recommended_guidance_scale, settings.seed, settings.output_dir / "grids")
    teacher = {r.mode: r for r in rows if r.model == "teacher"}
    pairs = " ".join(
        f"student{r.steps}_{'free' if r.accuracy is not None else 'unguided'}_distance={r.distance:.1f}"
        + (f" student{r.steps}_accuracy_free={r.accuracy:.3f}" if r.accuracy is not None else "")
        for r in rows if r.model == "student"
    )
    lines = [
        f"distilled: a consistency model distilled from the pipeline (classifier-free guidance folded in, w = "
        f"{settings.recommended_guidance_scale:g} here), in {settings.distilled_dir}; the teacher at 250 ancestral steps beside it",
        "",
        *table(rows),
        "",
        f"distilled: {pairs} teacher_free_distance={teacher['classifier-free'].distance:.1f} "
        f"teacher_accuracy_free={teacher['classifier-free'].accuracy:.3f} teacher_unguided_distance={teacher['unguided'].distance:.1f}"
        + (f" seconds_distillation={seconds:.0f}" if seconds is not None else ""),
    ]
    results = {"rows": [r.__dict__ for r in rows], "seconds_distillation": seconds}
    write_text_atomically(settings.output_dir / "distilled_results.json", json.dumps(results, indent=2))
    return "\n".join(lines)

