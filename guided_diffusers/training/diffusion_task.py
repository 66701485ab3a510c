"""Training a diffusion model (``train_diffusion.py``) or an ADM-U upsampler (``train_super_res.py``): the
originals' losses and timestep sampling; the upsampler learns from the target downsampled by area averaging."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..pipelines import ADMUpsamplingPipeline, ClassifierGuidedPipeline
from .builders import build_diffusion_setup, original_flag
from ..data import LabelledImages
from .losses import training_losses
from .timestep_samplers import LossAwareSampler
from .trainer import MicroBatchResult, TrainingTask, load_held_out_images, load_training_images
from .validation import REFERENCE_CACHE, DiffusionValidation

__all__ = ["DiffusionTask"]


class DiffusionTask(TrainingTask):
    """A diffusion model (``args.task == "diffusion"``) or a super-resolution model (``"super_res"``).

    The saved folder is a [`ClassifierGuidedPipeline`] / [`ADMUpsamplingPipeline`] with the process's scheduler and
    the data's class names as ``id2label``.
    """

    def __init__(self, args: argparse.Namespace):
        if args.task not in ("diffusion", "super_res"):
            raise ValueError(f"expected a diffusion or super_res task for DiffusionTask, got {args.task!r}")
        super().__init__(args, args.task, loadable_entry="model_index.json")
        self.num_classes: int | None = None
        self.null_class: int | None = None
        self.held_out: LabelledImages | None = None
        self.validation: DiffusionValidation | None = None  # set by prepare_validation with --validation_steps

    def load_images(self) -> tuple[LabelledImages, LabelledImages | None]:
        images = load_training_images(self.args, require_labels=bool(original_flag(self.args, "class_cond")))
        images, self.held_out = load_held_out_images(self.args, images)
        return images, self.held_out

    def build(self, train_images: LabelledImages) -> nn.Module:
        setup = build_diffusion_setup(self.args, train_images.num_classes, train_images.id2label, train_images.named)
        self.adopt_setup(setup, setup.scheduler.config.num_train_timesteps)
        self.num_classes = getattr(setup.model.config, "num_classes", None) or None
        self.null_class = self.num_classes if self.num_classes and self.args.class_dropout_prob > 0 else None
        self.id2label = (setup.id2label or train_images.id2label) if self.num_classes else None
        if self.held_out is not None:
            self.held_out = self.model_images(self.held_out)
        return setup.model

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> MicroBatchResult:
        images = batch["pixel_values"]
        timesteps, weights = self.sampler.sample(images.shape[0], device=images.device)
        model_kwargs: dict[str, torch.Tensor] = {}
        if self.num_classes:
            labels = batch["class_labels"]
            if self.null_class is not None:  # label dropout for classifier-free guidance
                dropped = torch.rand(labels.shape, device=labels.device) < self.args.class_dropout_prob
                labels = torch.where(dropped, torch.full_like(labels, self.null_class), labels)
            model_kwargs["class_labels"] = labels
        if self.setup.low_res_size is not None:
            size = self.setup.low_res_size
            model_kwargs["low_res"] = F.interpolate(images, size=(size, size), mode="area")
        losses = training_losses(
            self.setup.scheduler, model, images, timesteps, loss_type=self.setup.loss_type, model_kwargs=model_kwargs
        )
        if isinstance(self.sampler, LossAwareSampler):
            self.sampler.update_with_local_losses(timesteps, losses["loss"].detach())
        # Logged as the originals log them: each term times its importance weight.
        terms = {key: (value * weights).detach() for key, value in losses.items()}
        return MicroBatchResult((losses["loss"] * weights).mean(), terms, timesteps)

    # -- validation -------------------------------------------------------------------------------------------------

    @property
    def validation_steps(self) -> int | None:
        return self.args.validation_steps

    @property
    def validation_score(self) -> tuple[str, bool] | None:
        """The Fréchet distance of the samples when there are some, else the held-out bits/dim; lower is better."""
        if self.args.validation_samples > 0:
            return ("val_frechet_distance", False)
        return ("val_bpd", False) if self.held_out is not None else None

    def prepare_validation(self, accelerator: Any, train_images: LabelledImages, output_dir: Path) -> None:
        """The feature space and the reference statistics (read from the logging folder's cache when they are there)."""
        args = self.args
        if not args.validation_steps:
            return
        self.validation = DiffusionValidation.prepare(
            accelerator, scheduler=self.setup.scheduler, resolution=self.resolution, channels=self.image_channels,
            num_classes=self.num_classes, low_res_size=self.setup.low_res_size, train_images=train_images, held_out=self.held_out,
            num_samples=args.validation_samples, batch_size=args.validation_batch_size or args.train_batch_size,
            bpd_evaluations=args.validation_bpd_timesteps, inception_weights=args.inception_weights, seed=args.seed,
            output_dir=output_dir, cache_path=output_dir / args.logging_dir / REFERENCE_CACHE,
        )

    def validate(self, accelerator: Any, model: nn.Module, step: int) -> dict[str, float]:
        """The grid, the distance and the held-out bits/dim of the published weights."""
        return self.validation.run(accelerator, model, step)

    def write_output(self, folder: Path, model: nn.Module, extra_models: dict[str, nn.Module], facts: dict[str, Any]) -> None:
        scheduler = self.setup.scheduler
        if self.kind == "super_res":
            pipeline = ADMUpsamplingPipeline(unet=model, scheduler=scheduler, low_res_size=self.setup.low_res_size, id2label=self.id2label)
        else:
            pipeline = ClassifierGuidedPipeline(unet=model, scheduler=scheduler, id2label=self.id2label)
        pipeline.save_pretrained(folder, safe_serialization=True)
        for name, weights in extra_models.items():
            weights.save_pretrained(folder / "weights" / name, safe_serialization=True)
        self.write_model_card(folder, extra_models, facts, conditional=bool(self.num_classes), low_res_size=self.setup.low_res_size)
