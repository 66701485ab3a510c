"""The quick start's distillation (``make demo DEMO_ARGS=--distill``): the digits pipeline distilled by
``guided-diffusers-distill`` into a consistency model (classifier-free guidance folded in, its weight an input) in
demo_output/distilled, judged at 1, 2 and 4 steps beside 250 ancestral steps of its teacher."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .digits import NUM_CLASSES, DigitsJudge, DigitsReference, judge_samples, save_grid

#: The student's step counts the quick start judges, and the teacher's ancestral steps it is held against.
STUDENT_STEPS = (1, 2, 4)
TEACHER_STEPS = 250


@dataclass
class DistillSettings:
    """The distillation's flags (``guided-diffusers-distill``): the best setting measured on the quick start's teacher
    (docs/benchmarks.md): consistency distillation with the consistency models' N = 18 levels, target EMA 0.95 and
    DDIM (Euler) teacher steps, plus the adversarial term at weight 0.01, over w in [1, 3], learning rate 2e-4, the raw
    weights after 1,500 steps. Without the adversarial term the student stays behind the end of the teacher's ODE
    (2 steps: 60.5 against the goal's 48.0); weights 0.005, 0.02 and 0.05, the critic on the noisier levels only, Heun
    teacher steps at equal time, a data term in the teacher's steps, N = 40, progressive distillation and w in [1, 4]
    measured worse.

    Attributes:
        max_train_steps (`int`): optimizer steps (a step costs about two of the teacher's: its classifier-free teacher
            runs on twice the batch, the target network once, the critic on the images and the student's x_0).
    """

    method: str = "consistency"
    max_train_steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 2e-4
    num_discretization_steps: int = 18
    target_ema_rate: float | None = 0.95
    teacher_solver: str = "euler"
    adversarial_weight: float = 0.01
    w_min: float = 1.0
    w_max: float = 3.0
    unconditional_prob: float = 0.1

    def arguments(self, teacher: Path, data: Path, output: Path, guidance_scale: float, seed: int) -> list[str]:
        """The command line of ``guided-diffusers-distill``."""
        return [
            "--teacher", str(teacher), "--train_data_dir", str(data), "--output_dir", str(output), "--seed", str(seed),
            "--method", self.method, "--guidance", "classifier-free", "--w_min", f"{self.w_min:g}", "--w_max", f"{self.w_max:g}",
            "--guidance_scale", f"{guidance_scale:g}", "--unconditional_prob", f"{self.unconditional_prob:g}",
            "--num_discretization_steps", str(self.num_discretization_steps),
            *(["--target_ema_rate", f"{self.target_ema_rate:g}"] if self.target_ema_rate is not None else []),
            "--teacher_solver", self.teacher_solver, "--adversarial_weight", f"{self.adversarial_weight:g}",
            "--max_train_steps", str(self.max_train_steps), "--train_batch_size", str(self.batch_size),
            "--learning_rate", f"{self.learning_rate:g}", "--use_ema", "False", "--lr_scheduler", "constant",
            "--checkpointing_steps", "100000", "--report_to", "none",
        ]  # fmt: skip


@dataclass
class JudgedRow:
    """One setting's samples as the quick start's judge and reference see them."""

    model: str
    steps: int
    mode: str
    guidance_scale: float | None
    accuracy: float | None
    distance: float
    colour_spread: float
    class_share_min: float
    class_share_max: float
    diversity: float
    images_per_second: float


def judge_images(images: np.ndarray, targets: np.ndarray, guided: bool, seconds: float, judge: DigitsJudge,
                 reference: DigitsReference, grid: Path | None, scale: int, **row) -> JudgedRow:
    """Judge samples (NHWC in [0, 1]); an unguided draw larger than ``targets`` gives the class shares over all of it
    and the rest over the first ``len(targets)``, as the quick start's table does."""
    if grid is not None:
        save_grid(images[: len(targets)], NUM_CLASSES, grid, scale=scale)
    return JudgedRow(**judge_samples(images, targets, guided, judge, reference), images_per_second=len(images) / seconds, **row)


def evaluate_distilled(student_dir: Path, teacher_dir: Path, judge: DigitsJudge, reference: DigitsReference, samples_per_class: int,
                       balance_samples: int, guidance_scale: float, seed: int, grids: Path | None, scale: int = 4,
                       teacher: bool = True) -> list[JudgedRow]:
    """The student at 1, 2 and 4 steps and (``teacher``) its teacher at 250 ancestral steps, unguided and with
    classifier-free guidance at ``guidance_scale``, judged on the same labels and seed."""
    from diffusers import DiffusionPipeline

    targets = np.repeat(np.arange(NUM_CLASSES), samples_per_class)
    labels = torch.from_numpy(targets)
    unguided_batch = max(len(targets), balance_samples)
    rows: list[JudgedRow] = []

    def sample(pipe, model: str, steps: int, guided: bool, **kwargs) -> JudgedRow:
        start = time.perf_counter()
        kwargs = dict(class_labels=labels, guidance_scale=guidance_scale, **kwargs) if guided else dict(batch_size=unguided_batch, **kwargs)
        images = pipe(generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images
        seconds = time.perf_counter() - start
        mode = "classifier-free" if guided else "unguided"
        name = f"{model}{steps}_{mode}" + (f"_w{guidance_scale:g}" if guided else "") + f"_seed{seed}.png"
        return judge_images(images, targets, guided, seconds, judge, reference, grids / name if grids else None, scale,
                            model=model, steps=steps, mode=mode, guidance_scale=guidance_scale if guided else None)

    student = DiffusionPipeline.from_pretrained(student_dir)
    student.set_progress_bar_config(disable=True)
    for steps in STUDENT_STEPS:
        for guided in (False, True):
            rows.append(sample(student, "student", steps, guided, num_inference_steps=steps))
    if teacher:
        pipe = DiffusionPipeline.from_pretrained(teacher_dir)
        pipe.set_progress_bar_config(disable=True)
        for guided in (False, True):
            rows.append(sample(pipe, "teacher", TEACHER_STEPS, guided, timestep_respacing=str(TEACHER_STEPS), classifier_scale=0.0))
    return rows


def table(rows: list[JudgedRow]) -> list[str]:
    """The rows as the quick start's markdown table lines."""
    lines = [
        "| model | steps | mode | guidance scale | class accuracy | distance | colour | class share | diversity | images/s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        w = "-" if r.guidance_scale is None else f"{r.guidance_scale:g}"
        accuracy = "-" if r.accuracy is None else f"{r.accuracy:.1%}"
        lines.append(f"| {r.model} | {r.steps} | {r.mode} | {w} | {accuracy} | {r.distance:.1f} | {r.colour_spread:.3f} | "
                     f"{r.class_share_min:.1%}-{r.class_share_max:.1%} | {r.diversity:.3f} | {r.images_per_second:.0f} |")
    return lines
