"""The task that trains each kind, and [`run_training`]: the one module that knows every [`TrainingTask`], so the
loop (trainer.py) and the tasks (diffusion_task.py, classifier_task.py) need not import each other."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..conversion.presets import KINDS
from .classifier_task import ClassifierTask
from .diffusion_task import DiffusionTask
from .distillation_task import DistillationTask
from .trainer import Trainer, TrainingTask

__all__ = ["TASK_CLASSES", "run_training", "task_for"]

#: The task class of each kind.
TASK_CLASSES: dict[str, type[TrainingTask]] = {
    "diffusion": DiffusionTask, "super_res": DiffusionTask, "classifier": ClassifierTask, "distill": DistillationTask,
}


def task_for(args: argparse.Namespace) -> TrainingTask:
    """The task of ``args.task`` (one of [`~guided_diffusers.conversion.presets.KINDS`])."""
    if args.task not in TASK_CLASSES:
        raise ValueError(f"expected a task in {tuple(TASK_CLASSES)}, got {args.task!r}")
    return TASK_CLASSES[args.task](args)


def run_training(args: argparse.Namespace) -> Path:
    """Run the training of ``args.task`` (``diffusion``, ``super_res``, ``classifier`` or ``distill``), as the scripts do.

    Returns:
        `Path`: the output folder.
    """
    return Trainer(args, task_for(args)).train()
