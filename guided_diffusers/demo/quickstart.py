"""The quick start: train a small ADM and its noisy classifier on the digits with the project's own training scripts,
then sample with classifier guidance and classifier-free guidance and judge the samples with an independent classifier.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .digits import DIGIT_NAMES, NUM_CLASSES, DigitsJudge, mean_pairwise_distance, save_grid, write_digits_folder

# The folder holding this guided_diffusers (a checkout or site-packages): the launched process imports the same copy.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class QuickstartSettings:
    """What the quick start trains and samples; the defaults fit about 10 minutes on 2 CPU cores."""

    output_dir: Path = Path("demo_output")
    resolution: int = 16
    seed: int = 0
    diffusion_steps: int = 1000
    diffusion_train_steps: int = 1200
    classifier_train_steps: int = 800
    batch_size: int = 64
    samples_per_class: int = 10
    sampling: str = "50"  # ancestral (DDPM) steps, as ADM-G samples; the originals' respacing spec
    classifier_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    guidance_scales: tuple[float, ...] = (2.0, 4.0)
    recommended_classifier_scale: float = 2.0
    retrain: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pipeline_dir(self) -> Path:
        return self.output_dir / "pipeline"


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


def train(settings: QuickstartSettings) -> Path:
    """Train the diffusion model and the classifier (unless a finished pipeline is there), assemble the pipeline folder."""
    from diffusers import DiffusionPipeline

    from .. import ADMClassifier, ClassifierGuidedPipeline

    out = settings.output_dir
    data = write_digits_folder(out / "digits", settings.resolution)
    common = ["--train_data_dir", str(data), "--resolution", str(settings.resolution), "--seed", str(settings.seed),
              "--train_batch_size", str(settings.batch_size), "--report_to", "none", "--checkpointing_steps", "100000",
              "--diffusion_steps", str(settings.diffusion_steps), "--noise_schedule", "cosine", "--lr_scheduler", "linear"]
    for stale in ("diffusion", "classifier"):  # a rerun with --retrain starts both runs afresh
        if (out / stale).exists():
            import shutil

            shutil.rmtree(out / stale)
    _launch("train_diffusion.py", [
        *common, "--output_dir", str(out / "diffusion"), "--max_train_steps", str(settings.diffusion_train_steps),
        "--learning_rate", "2e-3", "--num_channels", "32", "--num_res_blocks", "1", "--channel_mult", "1,2",
        "--attention_resolutions", "8", "--num_head_channels", "32", "--class_cond", "True", "--class_dropout_prob", "0.15",
        "--use_ema", "True", "--ema_rate", "0.995",
    ], settings)
    _launch("train_classifier.py", [
        *common, "--output_dir", str(out / "classifier"), "--max_train_steps", str(settings.classifier_train_steps),
        "--learning_rate", "1e-3", "--classifier_width", "32", "--classifier_depth", "1", "--classifier_channel_mult", "1,2",
        "--classifier_attention_resolutions", "8", "--classifier_pool", "attention", "--adam_weight_decay", "0.05",
        "--validation_split", "0.1",
    ], settings)
    diffusion = DiffusionPipeline.from_pretrained(out / "diffusion")
    classifier = ADMClassifier.from_pretrained(out / "classifier")
    pipeline = ClassifierGuidedPipeline(unet=diffusion.unet, scheduler=diffusion.scheduler, classifier=classifier,
                                        id2label=DIGIT_NAMES, classifier_scale=settings.recommended_classifier_scale)
    pipeline.save_pretrained(settings.pipeline_dir)
    return settings.pipeline_dir


@dataclass
class Row:
    mode: str
    classifier_scale: float
    guidance_scale: float | None
    accuracy: float
    diversity: float
    seconds: float


def evaluate(settings: QuickstartSettings) -> tuple[list[Row], DigitsJudge]:
    """Sample a grid per setting and judge it: accuracy against the asked class, and diversity within a class."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(settings.pipeline_dir)  # its GuidedDDPMScheduler: ancestral sampling
    pipe.set_progress_bar_config(disable=True)
    judge = DigitsJudge.fit(settings.seed)
    targets = np.repeat(np.arange(NUM_CLASSES), settings.samples_per_class)
    labels = torch.from_numpy(targets)

    def run(mode: str, shown_classifier_scale: float, shown_guidance_scale: float | None, **kwargs) -> Row:
        start = time.perf_counter()
        images = pipe(timestep_respacing=settings.sampling, generator=torch.Generator().manual_seed(settings.seed),
                      output_type="np", **kwargs).images
        predictions = judge.predict(images)
        diversity = float(np.mean([mean_pairwise_distance(images[targets == c]) for c in range(NUM_CLASSES)]))
        name = f"{mode}_cs{shown_classifier_scale:g}" + (f"_w{shown_guidance_scale:g}" if shown_guidance_scale is not None else "")
        save_grid(images, NUM_CLASSES, settings.output_dir / "grids" / f"{name}.png")
        accuracy = float((predictions == targets).mean())
        return Row(mode, shown_classifier_scale, shown_guidance_scale, accuracy, diversity, time.perf_counter() - start)

    # Unguided: no label information at all (the model's null class, no classifier).
    rows = [run("unguided", 0.0, None, batch_size=len(targets))]
    # Classifier guidance as ADM-G does it: the class-conditional model plus the noisy classifier's gradient.
    for scale in settings.classifier_scales:
        rows.append(run("classifier", scale, None, class_labels=labels, classifier_scale=scale))
    for weight in settings.guidance_scales:
        rows.append(run("classifier-free", 0.0, weight, class_labels=labels, classifier_scale=0.0, guidance_scale=weight))
    return rows, judge


def report(rows: list[Row], judge: DigitsJudge, settings: QuickstartSettings) -> str:
    """The table, a JSON copy in the output folder, and the final line checks read."""
    lines = [
        f"judge: scikit-learn SVM on the real 8x8 digits, {judge.held_out_accuracy:.1%} on held-out real digits",
        f"{settings.samples_per_class} samples per class, {settings.sampling} ancestral (DDPM) steps; diversity: mean pairwise "
        "distance within a class (8x8, pixels in [0, 1])",
        "",
        "| mode | classifier scale | guidance scale | class accuracy | diversity | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w = "-" if r.guidance_scale is None else f"{r.guidance_scale:g}"
        lines.append(f"| {r.mode} | {r.classifier_scale:g} | {w} | {r.accuracy:.1%} | {r.diversity:.3f} | {r.seconds:.1f} |")
    unguided = rows[0].accuracy
    guided = [r for r in rows if r.mode == "classifier" and r.classifier_scale > 0]
    best = max(guided, key=lambda r: r.accuracy)
    lines += ["", f"quickstart: class accuracy unguided {unguided:.0%}, best guided {best.accuracy:.0%} at classifier scale {best.classifier_scale:g}"]
    (settings.output_dir / "results.json").write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return "\n".join(lines)


def run_quickstart(settings: QuickstartSettings) -> str:
    """Train (or reuse), evaluate, report. Returns the report; its last line is the quickstart line."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    if settings.retrain or not (settings.pipeline_dir / "model_index.json").is_file():
        start = time.perf_counter()
        train(settings)
        print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    else:
        print(f"reusing the trained pipeline in {settings.pipeline_dir} (pass --retrain to train again)", flush=True)
    rows, judge = evaluate(settings)
    return report(rows, judge, settings)
