"""Training a noisy classifier (``train_classifier.py``) as guided-diffusion's classifier_train does: cross-entropy
on images noised to sampled timesteps (or clean ones with ``--noised False``), top-1/top-5 accuracy logged per
quartile of t, evaluated on held-out images."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .builders import build_classifier_setup
from ..data import EpochShuffledBatchSampler, LabelledImages, TrainingImageDataset
from .metrics import summarize_terms, top_k_correct
from .timestep_samplers import LossAwareSampler
from .trainer import MicroBatchResult, TrainingTask, load_held_out_images, load_training_images

__all__ = ["ClassifierTask"]

logger = logging.getLogger(__name__)


class ClassifierTask(TrainingTask):
    """A noisy classifier ([`ADMClassifier`]); the saved folder holds it (``config.json`` with ``id2label``) and the
    scheduler config of the process whose noise it was trained on."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args, "classifier", loadable_entry="config.json", loss_key="train_loss")
        self.held_out: LabelledImages | None = None
        self.held_out_dataset: TrainingImageDataset | None = None  # set by build when there are held-out images
        self.diffusion: Any = None  # the process the classifier learns to see through (set by build)
        self._held_out_batches: Iterator[list[tuple[int, int]]] | None = None

    def load_images(self) -> tuple[LabelledImages, LabelledImages | None]:
        args = self.args
        images = load_training_images(args, require_labels=True)
        if not images.num_classes or images.num_classes < 2:
            raise ValueError(f"expected at least 2 classes to train a classifier on, got {images.num_classes or 0} in {images.source}")
        images, held_out = load_held_out_images(args, images)
        self.held_out = held_out
        return images, held_out

    def build(self, train_images: LabelledImages) -> nn.Module:
        setup = build_classifier_setup(self.args, train_images.num_classes, train_images.id2label, train_images.named)
        self.diffusion = setup.scheduler.diffusion
        self.adopt_setup(setup, self.diffusion.num_timesteps)
        self.id2label = setup.id2label or train_images.id2label
        if self.held_out is not None:
            self.held_out = self.model_images(self.held_out)
            role = "validation" if self.args.validation_data_dir else "held-out"
            self.held_out_dataset = TrainingImageDataset(self.held_out, self.resolution, role=role, channels=self.image_channels)
        return setup.model

    # -- loss -------------------------------------------------------------------------------------------------------

    def _noised(self, images: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.args.noised:
            return images
        noise = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(images.device) if generator else None
        return self.diffusion.q_sample(images, timesteps, noise=noise)

    def _terms(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, timesteps: torch.Tensor, prefix: str):
        logits = model(images, self.diffusion.model_timesteps(timesteps)).logits.float()
        losses = F.cross_entropy(logits, labels, reduction="none")
        terms = {
            f"{prefix}_loss": losses.detach(),
            f"{prefix}_acc@1": top_k_correct(logits.detach(), labels, 1),
            f"{prefix}_acc@5": top_k_correct(logits.detach(), labels, 5),
        }
        return losses, terms

    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> MicroBatchResult:
        images, labels = batch["pixel_values"], batch["class_labels"]
        if self.args.noised:
            timesteps, weights = self.sampler.sample(images.shape[0], device=images.device)
        else:
            timesteps = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
            weights = torch.ones(images.shape[0], device=images.device)
        losses, terms = self._terms(model, self._noised(images, timesteps), labels, timesteps, "train")
        if self.args.noised and isinstance(self.sampler, LossAwareSampler):
            self.sampler.update_with_local_losses(timesteps, losses.detach())
        return MicroBatchResult((losses * weights).mean(), terms, timesteps)

    # -- evaluation -------------------------------------------------------------------------------------------------

    def _eval_timesteps(self, size: int, generator: torch.Generator) -> torch.Tensor:
        if not self.args.noised:
            return torch.zeros(size, dtype=torch.long)
        return torch.randint(0, self.num_timesteps, (size,), generator=generator)

    def _held_out_batch_size(self, num_processes: int) -> int:
        wanted = self.args.validation_batch_size or self.args.train_batch_size
        return min(wanted, len(self.held_out) // num_processes)

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator, device: torch.device):
        images = batch["pixel_values"].to(device)
        labels = batch["class_labels"].to(device)
        timesteps = self._eval_timesteps(images.shape[0], generator).to(device)
        _, terms = self._terms(model, self._noised(images, timesteps, generator), labels, timesteps, "val")
        return terms, timesteps

    def periodic_evaluation(self, accelerator: Any, model: nn.Module, step: int) -> dict[str, float]:
        """One held-out batch every ``--validation_steps`` steps (at uniform t), as the originals' eval_interval."""
        if self.held_out is None or step % self.args.validation_steps:
            return {}
        batch_size = self._held_out_batch_size(accelerator.num_processes)
        if batch_size < 1:
            if step == self.args.validation_steps:
                logger.warning("held-out split (%d images) smaller than the processes: no periodic evaluation", len(self.held_out))
            return {}
        if self._held_out_batches is None:  # evaluation k (1-based) at step k * validation_steps takes batch k - 1
            sampler = EpochShuffledBatchSampler(
                len(self.held_out), batch_size, num_processes=accelerator.num_processes,
                process_index=accelerator.process_index, seed=self.args.seed + 1, start_batch=step // self.args.validation_steps - 1,
            )
            self._held_out_batches = iter(sampler)
        keys = next(self._held_out_batches)
        batch = torch.utils.data.default_collate([self.held_out_dataset[key] for key in keys])
        generator = torch.Generator().manual_seed((self.args.seed * 1_000_003 + step * 1009 + accelerator.process_index) % 2**62)
        model.eval()
        terms, timesteps = self._evaluate(model, batch, generator, accelerator.device)
        model.train()
        keys = list(terms)
        gathered = accelerator.gather(torch.stack([terms[key] for key in keys] + [timesteps.float()], dim=1)).cpu()
        return summarize_terms({key: gathered[:, i] for i, key in enumerate(keys)}, gathered[:, -1], self.num_timesteps)

    @property
    def validation_steps(self) -> int | None:
        return self.args.evaluation_steps

    @property
    def validation_score(self) -> tuple[str, bool] | None:
        """The noisiest quartile's held-out top-1 accuracy, what guidance leans on most (clean images: the accuracy)."""
        if self.held_out is None:
            return None
        return ("eval_acc@1_q3" if self.args.noised else "eval_acc@1", True)

    def validate(self, accelerator: Any, model: nn.Module, step: int) -> dict[str, float]:
        """The whole held-out split, as after training, logged as ``eval_*``."""
        results = self.final_evaluation(accelerator, model)
        return {"eval_" + key.removeprefix("val_"): value for key, value in results.items() if isinstance(value, (int, float))}

    def final_evaluation(self, accelerator: Any, model: nn.Module) -> dict[str, float]:
        """Loss, top-1 and top-5 accuracy over the whole held-out split (at uniform t when noised), and per quartile."""
        if self.held_out is None:
            return {}
        indices = list(range(accelerator.process_index, len(self.held_out), accelerator.num_processes))
        batch_size = self.args.validation_batch_size or self.args.train_batch_size
        loader = torch.utils.data.DataLoader(
            self.held_out_dataset, batch_size=batch_size, sampler=indices, num_workers=self.args.dataloader_num_workers
        )
        # Rows: all, q0..q3; columns: loss, acc@1, acc@5, count.
        sums = torch.zeros(5, 4, dtype=torch.float64, device=accelerator.device)
        model.eval()
        for number, batch in enumerate(loader):
            generator = torch.Generator().manual_seed((self.args.seed * 1_000_003 + number * 1009 + accelerator.process_index) % 2**62)
            terms, timesteps = self._evaluate(model, batch, generator, accelerator.device)
            values = torch.stack([terms["val_loss"], terms["val_acc@1"], terms["val_acc@5"], torch.ones_like(terms["val_loss"])], dim=1)
            sums[0] += values.sum(dim=0).double()
            quartiles = (4 * timesteps // self.num_timesteps).clamp(0, 3)
            for quartile in range(4):
                sums[1 + quartile] += values[quartiles == quartile].sum(dim=0).double()
        model.train()
        sums = accelerator.reduce(sums, reduction="sum").cpu()
        count = sums[0, 3].item()
        if count == 0:
            return {}
        results = {
            "val_loss": sums[0, 0].item() / count, "val_acc@1": sums[0, 1].item() / count, "val_acc@5": sums[0, 2].item() / count,
            "val_images": int(count), "val_timesteps": "uniform t" if self.args.noised else "t = 0 (clean)",
        }
        for quartile in range(4):
            if sums[1 + quartile, 3] > 0:
                results[f"val_acc@1_q{quartile}"] = sums[1 + quartile, 1].item() / sums[1 + quartile, 3].item()
        return results

    # -- output -----------------------------------------------------------------------------------------------------

    def write_output(self, folder: Path, model: nn.Module, extra_models: dict[str, nn.Module], facts: dict[str, Any]) -> None:
        id2label = {str(index): name for index, name in self.id2label.items()}
        model.register_to_config(id2label=id2label)
        model.save_pretrained(folder, safe_serialization=True)
        self.setup.scheduler.save_config(folder)
        for name, weights in extra_models.items():
            weights.register_to_config(id2label=id2label)
            weights.save_pretrained(folder / "weights" / name, safe_serialization=True)
        self.write_model_card(folder, extra_models, facts, noised=self.args.noised)
