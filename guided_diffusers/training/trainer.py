"""The training loop the three scripts share, on accelerate: one process or many (DDP, FSDP, DeepSpeed), mixed
precision, gradient accumulation, EMA, checkpoints that survive a kill, resumption with identical state, logging.

What differs between a diffusion model, an upsampler and a noisy classifier (data, model, loss, evaluation, the
saved folder) is a [`TrainingTask`]; [`Trainer`] runs any of them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..conversion.presets import KINDS
from ..data import (
    EpochShuffledBatchSampler,
    LabelledImages,
    TrainingImageDataset,
    check_global_batch,
    find_unreadable_images,
    images_from_dataset,
    images_from_folder,
    split_held_out,
)
from ..publishing import normalize_file_modes
from .checkpointing import TrainingProgress, check_checkpoint_folders, list_checkpoints, load_checkpoint, resolve_resume_checkpoint, save_checkpoint
from .ema import ExponentialMovingAverage, parse_ema_rates
from .export import publish_folder, push_output_to_hub
from .metrics import MetricsWriter, available_trackers, summarize_terms
from .model_card import render_trained_model_card
from .timestep_samplers import ScheduleSampler, create_named_schedule_sampler
from .validation import BEST_WEIGHTS_DIR, BestScore, load_best_weights, save_best_weights

if TYPE_CHECKING:
    from .builders import ClassifierSetup, DiffusionSetup

__all__ = ["MicroBatchResult", "Trainer", "TrainingSetupError", "TrainingTask", "load_held_out_images", "load_training_images"]

logger = logging.getLogger(__name__)


@dataclass
class MicroBatchResult:
    """What a task computes for one micro-batch.

    Attributes:
        loss (`torch.Tensor`): the scalar to backpropagate.
        terms (`dict[str, torch.Tensor]`): (batch,) detached values to log (their means and per-quartile means).
        timesteps (`torch.Tensor`): (batch,) timesteps of the examples, for the per-quartile logs.
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    timesteps: torch.Tensor


class TrainingSetupError(ValueError):
    """A run refused before training: bad arguments, data or model configuration (the message says which)."""


@dataclass
class _Run:
    """What the set-up hands to the loop."""

    accelerator: Any
    model: nn.Module
    optimizer: Any
    lr_scheduler: Any
    ema: ExponentialMovingAverage | None
    progress: TrainingProgress
    train_images: LabelledImages
    resumed: bool
    state_objects: dict[str, Any] = field(default_factory=dict)
    recent_losses: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    best: BestScore | None = None  # the validation score so far, when the task validates
    validation_model: nn.Module | None = None  # the published weights, refreshed at each validation


def load_training_images(args: argparse.Namespace, require_labels: bool) -> LabelledImages:
    """The training images of ``--train_data_dir`` or ``--dataset_name``."""
    if args.train_data_dir:
        return images_from_folder(args.train_data_dir, label_from=args.label_from, check_agreement=require_labels)
    return images_from_dataset(
        args.dataset_name,
        config_name=args.dataset_config_name,
        image_column=args.image_column,
        label_column=args.label_column,
        require_labels=require_labels,
        cache_dir=args.cache_dir,
    )


def load_held_out_images(args: argparse.Namespace, images: LabelledImages) -> tuple[LabelledImages, LabelledImages | None]:
    """(training images, held-out images or None): ``--validation_data_dir`` labelled with the training images'
    classes, else a ``--validation_split`` share of ``images`` held out (and no longer trained on)."""
    if args.validation_data_dir:
        class_names = [images.id2label[i] for i in range(images.num_classes)] if images.id2label else None
        return images, images_from_folder(args.validation_data_dir, class_names=class_names, label_from=args.label_from)
    if args.validation_split > 0:
        return split_held_out(images, args.validation_split, args.seed)
    return images, None


class TrainingTask(ABC):
    """What one kind of training does; [`Trainer`] calls it in this order: ``load_images``, ``build``,
    ``checkpoint_objects``, ``prepare_validation``, then ``compute_loss`` per micro-batch, ``periodic_evaluation`` per
    step and ``validate`` every ``validation_steps``, then ``final_evaluation`` and ``write_output``.

    Args:
        args (`argparse.Namespace`): the parsed arguments.
        kind (`str`): one of [`~guided_diffusers.conversion.presets.KINDS`]: ``"diffusion"``, ``"super_res"`` or
            ``"classifier"``.
        loadable_entry (`str`): the output entry that makes the folder loadable, published last.
        loss_key (`str`, defaults to ``"loss"``): the logged term shown on the progress bar and in the card.

    Attributes set by ``build`` (through [`adopt_setup`]; before it, the values below):
        setup ([`DiffusionSetup`] or [`ClassifierSetup`]): the model, process and flags (None).
        resolution (`int`): the image size (0).
        num_timesteps (`int`): T of the process, for the per-quartile logs (1).
        sampler ([`ScheduleSampler`]): the timestep sampler, kept in checkpoints (None).
        id2label (`dict`, *optional*): the trained model's class names (None).
        label_map (`dict`, *optional*): data id -> model id when a fine-tuned model numbers the classes otherwise (None).
    """

    def __init__(self, args: argparse.Namespace, kind: str, loadable_entry: str, loss_key: str = "loss"):
        if kind not in KINDS:
            raise ValueError(f"expected a task kind in {KINDS}, got {kind!r}")
        self.args = args
        self.kind = kind
        self.loadable_entry = loadable_entry
        self.loss_key = loss_key
        self.setup: DiffusionSetup | ClassifierSetup | None = None
        self.resolution = 0
        self.num_timesteps = 1
        self.sampler: ScheduleSampler | None = None
        self.id2label: dict[int, str] | None = None
        self.label_map: dict[int, int] | None = None

    def adopt_setup(self, setup: DiffusionSetup | ClassifierSetup, num_timesteps: int) -> None:
        """Take what every task keeps of its built setup, and make the ``--schedule_sampler`` over its T steps."""
        self.setup = setup
        self.label_map = setup.label_map
        self.resolution = setup.resolution
        self.num_timesteps = num_timesteps
        self.sampler = create_named_schedule_sampler(self.args.schedule_sampler, num_timesteps)

    @abstractmethod
    def load_images(self) -> tuple[LabelledImages, LabelledImages | None]:
        """(training images, held-out images or None)."""

    @abstractmethod
    def build(self, train_images: LabelledImages) -> nn.Module:
        """The model to train (and the task's process, sampler, ...); raises on a configuration it cannot train."""

    @property
    def image_channels(self) -> int:
        """The built model's image channels (3 RGB, 1 grey): how the training images are read."""
        return int(self.setup.model.config.in_channels)

    def model_images(self, images: LabelledImages) -> LabelledImages:
        """``images`` labelled with the built model's class ids (matched by name for a fine-tuned model)."""
        return images if self.label_map is None else images.relabelled(self.label_map, self.id2label)

    def checkpoint_objects(self) -> dict[str, Any]:
        """Objects with ``state_dict``/``load_state_dict`` kept in checkpoints, by name (the timestep sampler); their
        states hold tensors, numbers, strings, lists and dicts (saved as safetensors and JSON)."""
        return {"timestep_sampler": self.sampler} if self.sampler is not None else {}

    @abstractmethod
    def compute_loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> MicroBatchResult:
        """The loss of one micro-batch (called on every process; the model is the prepared one)."""

    def optimizer_step_done(self, model: nn.Module, step: int) -> None:
        """Called after optimizer step ``step`` and the EMA update, on every process (a distillation's target network)."""

    def periodic_evaluation(self, accelerator: Any, model: nn.Module, step: int) -> dict[str, float]:
        """Metrics to log after optimizer step ``step`` (called on every process)."""
        return {}

    @property
    def validation_steps(self) -> int | None:
        """Validate every this many steps (and at the last step); None: never."""
        return None

    @property
    def validation_score(self) -> tuple[str, bool] | None:
        """The logged key ``--keep_best`` and ``--early_stopping_patience`` judge, and whether higher is better."""
        return None

    def prepare_validation(self, accelerator: Any, train_images: LabelledImages, output_dir: Path) -> None:
        """Set up what ``validate`` needs once, before the first step (called on every process)."""

    def validate(self, accelerator: Any, model: nn.Module, step: int) -> dict[str, float]:
        """Metrics of ``model`` (a copy holding the weights the run publishes, in eval mode) after step ``step``
        (called on every process; the main process's metrics are logged)."""
        return {}

    def final_evaluation(self, accelerator: Any, model: nn.Module) -> dict[str, float]:
        """Results of the final weights, for the output and its card (called on every process)."""
        return {}

    @abstractmethod
    def write_output(self, folder: Path, model: nn.Module, extra_models: dict[str, nn.Module], facts: dict[str, Any]) -> None:
        """Write the trained model's folder (main process only).

        Args:
            folder (`Path`): an empty folder to write into.
            model: the model with the weights to publish (the first EMA rate's, else the raw ones), on the CPU.
            extra_models (`dict`): further weight sets by name (``model``: raw; ``ema_<rate>``), to save under
                ``weights/``.
            facts (`dict`): ``training`` (settings for the card), ``results``, ``dataset``, ``hub_dataset_id``,
                ``location`` (where the card's example loads from), ``model_name``.
        """

    def write_model_card(self, folder: Path, extra_models: dict[str, nn.Module], facts: dict[str, Any], **card: Any) -> None:
        """README.md of the output folder, from the facts every task shares plus ``card`` (its own)."""
        if self.setup is None:
            raise RuntimeError("internal error: the model card is written before the task was built")
        render_trained_model_card(
            kind=self.kind,
            model_name=facts["model_name"],
            location=facts["location"],
            resolution=self.resolution,
            training=facts["training"],
            dataset=facts["dataset"],
            hub_dataset_id=facts["hub_dataset_id"],
            id2label=self.id2label,
            flags=self.setup.flags,
            num_timesteps=self.num_timesteps,
            results=facts["results"],
            extra_weights=tuple(extra_models),
            license=self.args.license,
            **card,
        ).save(folder / "README.md")


def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in vars(args).items()}


def _fresh_copy(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A new CPU float32 model of ``model``'s class and config holding ``state_dict``."""
    config = dict(model.config)
    accepted = inspect.signature(type(model).__init__).parameters
    init = {key: value for key, value in config.items() if key in accepted}
    extra = {key: value for key, value in config.items() if key not in accepted and not key.startswith("_")}
    copy = type(model).from_config(init)
    if extra:
        copy.register_to_config(**extra)
    copy.load_state_dict({key: value.detach().to("cpu", torch.float32) for key, value in state_dict.items()})
    return copy.eval()


class Trainer:
    """Runs a [`TrainingTask`] with the loop arguments of [`build_parser`](guided_diffusers.training.args).

    Args:
        args (`argparse.Namespace`): the parsed and checked arguments.
        task ([`TrainingTask`]): what to train.
    """

    def __init__(self, args: argparse.Namespace, task: TrainingTask):
        self.args = args
        self.task = task

    # -- setup ------------------------------------------------------------------------------------------------------

    def _accelerator(self, output_dir: Path) -> Any:
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        from .builders import wants_fp16

        args = self.args
        mixed_precision = args.mixed_precision or ("fp16" if wants_fp16(args) else None)
        trackers = available_trackers(args.report_to)
        accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            mixed_precision=mixed_precision,
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        )
        if accelerator.gradient_accumulation_steps != args.gradient_accumulation_steps:
            raise ValueError(
                f"expected accelerate's gradient accumulation ({accelerator.gradient_accumulation_steps}, from "
                "ACCELERATE_GRADIENT_ACCUMULATION_STEPS or a DeepSpeed config) to equal --gradient_accumulation_steps "
                f"{args.gradient_accumulation_steps}; pass --gradient_accumulation_steps {accelerator.gradient_accumulation_steps} or leave it out"
            )
        main_process = accelerator.is_main_process
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING if main_process else logging.ERROR)
        logging.getLogger("guided_diffusers").setLevel(logging.INFO if main_process else logging.ERROR)
        return accelerator

    def _check_images(self, accelerator: Any, images: LabelledImages, what: str) -> None:
        """Every process decodes its share of the images; all raise the same error if any is unreadable."""
        from accelerate.utils import gather_object

        indices = list(range(accelerator.process_index, len(images), accelerator.num_processes))
        problems = gather_object(find_unreadable_images(images, indices))
        if problems:
            shown = "; ".join(problems[:5]) + ("; ..." if len(problems) > 5 else "")
            raise ValueError(f"expected readable {what} images, got {len(problems)} unreadable: {shown}")

    def _check_distributed_support(self, accelerator: Any) -> None:
        from accelerate.utils import DistributedType

        # What needs whole parameters, and how to do without it.
        steps_flag = "--evaluation_steps" if self.task.kind == "classifier" else "--validation_steps"
        wanting = {flag: remedy for flag, on, remedy in (("--use_ema", self.args.use_ema, "pass --use_ema False"),
                                                          (steps_flag, self.task.validation_steps, f"leave out {steps_flag}"))
                   if on}
        if not wanting:
            return
        sharded = accelerator.distributed_type == DistributedType.FSDP
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            sharded = accelerator.state.deepspeed_plugin.zero_stage == 3
        if sharded:
            raise ValueError(
                f"expected whole parameters on every process for {' and '.join(wanting)} (DDP, or DeepSpeed ZeRO stage 1-2), "
                f"got sharded parameters ({accelerator.distributed_type}); {' and '.join(wanting.values())}"
            )

    # -- the run ----------------------------------------------------------------------------------------------------

    def train(self) -> Path:
        """Train, checkpointing as asked, and write the trained model's folder into ``--output_dir``.

        Returns:
            `Path`: ``--output_dir``.

        Raises:
            TrainingSetupError: bad arguments, data or model configuration, found before training starts.
        """
        try:
            run = self._set_up()
        except (ValueError, OSError) as error:
            raise TrainingSetupError(str(error)) from error
        self._loop(run)
        self._write_output(run)
        accelerator = run.accelerator
        # Drop the prepared model (DDP's reducer holds the process group) while every process is still here: freed
        # after the last process had exited, it left the main process of 1 in 4 two-process CPU runs here blocked in the
        # gloo group's destructor for good (faulthandler stacks, tests/launch.py).
        del run
        accelerator.free_memory()
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return Path(self.args.output_dir)

    def _set_up(self) -> _Run:
        """Everything before the first step: data checks, model, optimizer, resumption."""
        from accelerate.utils import DistributedType, set_seed
        from diffusers.optimization import get_scheduler

        args, task = self.args, self.task
        output_dir = Path(args.output_dir)
        check_checkpoint_folders(output_dir)
        resume = resolve_resume_checkpoint(output_dir, args.resume_from_checkpoint)
        existing = list_checkpoints(output_dir)
        if resume is None and existing:
            raise ValueError(
                f"expected an --output_dir without checkpoints for a new run, got {existing[-1][1].name} in {str(output_dir)!r} "
                "(pass --resume_from_checkpoint latest to continue it, or another --output_dir)"
            )
        accelerator = self._accelerator(output_dir)
        if args.resume_from_checkpoint == "latest" and resume is None:
            logger.info("no checkpoint in %s yet: starting a new run", output_dir)

        with accelerator.main_process_first():
            train_images, held_out = task.load_images()
        self._check_images(accelerator, train_images, "training")
        if held_out is not None:
            self._check_images(accelerator, held_out, "validation" if getattr(args, "validation_data_dir", None) else "held-out")
        check_global_batch(len(train_images), args.train_batch_size, accelerator.num_processes)

        set_seed(args.seed)  # the same initial weights on every process
        model = task.build(train_images)
        train_images = task.model_images(train_images)
        set_seed(args.seed, device_specific=True)  # each process its own noise, timesteps and dropout
        self._check_distributed_support(accelerator)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
            weight_decay=args.adam_weight_decay, eps=args.adam_epsilon,
        )
        # accelerate steps a prepared scheduler once per process and optimizer step.
        lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
            num_training_steps=args.max_train_steps * accelerator.num_processes,
        )
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = args.train_batch_size
        model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)

        progress = TrainingProgress(accelerator.num_processes, args.train_batch_size, args.gradient_accumulation_steps, args.seed)
        ema = ExponentialMovingAverage(accelerator.unwrap_model(model).parameters(), parse_ema_rates(args.ema_rate)) if args.use_ema else None
        state_objects = {"progress": progress, **task.checkpoint_objects(), **({"ema": ema} if ema is not None else {})}
        if resume is not None:
            load_checkpoint(accelerator, resume, model, optimizer, lr_scheduler, state_objects)
            logger.info("resumed from %s at step %d", resume, progress.global_step)
            changes = progress.shape_changes()
            if changes:
                logger.warning("the run's shape changed since the checkpoint (%s): the data order differs from an uninterrupted run", ", ".join(changes))
        task.prepare_validation(accelerator, train_images, output_dir)
        best = self._best_score(accelerator, output_dir, progress.global_step, resume is not None)
        if accelerator.log_with:  # accelerate creates the trackers (on the main process) only here
            accelerator.init_trackers(task.kind, config=_tracker_config(args))
        return _Run(accelerator, model, optimizer, lr_scheduler, ema, progress, train_images, resume is not None, state_objects, best=best)

    def _best_score(self, accelerator: Any, output_dir: Path, step: int, resumed: bool) -> BestScore | None:
        """The task's validation score so far: replayed from the run's own log on resume (the main process reads it)."""
        from accelerate.utils import broadcast_object_list

        if self.task.validation_score is None or not self.task.validation_steps:
            return None
        metric, higher_is_better = self.task.validation_score
        best = BestScore(metric, higher_is_better, self.args.early_stopping_patience)
        if accelerator.is_main_process:
            if resumed:
                best.replay(output_dir / self.args.logging_dir / "metrics.jsonl", step)
            else:  # weights kept by an earlier run in this folder are not this run's
                shutil.rmtree(output_dir / BEST_WEIGHTS_DIR, ignore_errors=True)
            if self.args.keep_best:
                logger.info("--keep_best: the published weights will be those of %s", best.describe())
        return broadcast_object_list([best])[0]

    def _loop(self, run: _Run) -> None:
        """Optimizer steps up to ``--max_train_steps``, logging each and checkpointing every ``--checkpointing_steps``."""
        from tqdm.auto import tqdm

        args, task = self.args, self.task
        accelerator, model, optimizer, lr_scheduler, ema, progress = (
            run.accelerator, run.model, run.optimizer, run.lr_scheduler, run.ema, run.progress
        )
        output_dir = Path(args.output_dir)
        dataset = TrainingImageDataset(
            run.train_images, task.resolution, random_crop=args.random_crop, random_flip=args.random_flip, seed=args.seed,
            channels=task.image_channels,
        )
        sampler = EpochShuffledBatchSampler(
            len(run.train_images), args.train_batch_size, num_processes=accelerator.num_processes,
            process_index=accelerator.process_index, seed=args.seed, start_batch=progress.micro_batches_done,
        )
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, num_workers=args.dataloader_num_workers,
            pin_memory=accelerator.device.type == "cuda", generator=torch.Generator(),  # never draws from the global RNG
        )
        writer = MetricsWriter(accelerator, output_dir / args.logging_dir / "metrics.jsonl")
        writer.truncate_after(progress.global_step)
        global_batch = args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        # The time left is the mean pace since the start (smoothing 0), so it counts the validations' share too.
        bar = tqdm(total=args.max_train_steps, initial=min(progress.global_step, args.max_train_steps), desc="steps", smoothing=0,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed} elapsed, {remaining} left, {rate_fmt}{postfix}]",
                   disable=not accelerator.is_local_main_process)
        last_checkpoint = progress.global_step if run.resumed else None
        if progress.global_step >= args.max_train_steps:
            logger.info("step %d already reaches --max_train_steps %d: nothing to train", progress.global_step, args.max_train_steps)

        if run.best is not None and run.best.should_stop:
            logger.info("stopped early at step %d already: %s", progress.global_step, self._stop_reason(run.best))
        model.train()
        batches = iter(loader)
        while progress.global_step < args.max_train_steps and not (run.best is not None and run.best.should_stop):
            start = time.perf_counter()
            results: list[MicroBatchResult] = []
            grad_norm = None
            for _ in range(args.gradient_accumulation_steps):
                batch = {key: value.to(accelerator.device, non_blocking=True) for key, value in next(batches).items()}
                with accelerator.accumulate(model):
                    result = task.compute_loss(model, batch)
                    accelerator.backward(result.loss)
                    if accelerator.sync_gradients and args.max_grad_norm:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                results.append(result)
            if not accelerator.sync_gradients:
                raise RuntimeError("internal error: the optimizer step did not fall on the last micro-batch")
            if ema is not None and not accelerator.optimizer_step_was_skipped:
                ema.update(accelerator.unwrap_model(model).parameters())
            progress.global_step += 1
            step = progress.global_step
            task.optimizer_step_done(accelerator.unwrap_model(model), step)
            seconds = time.perf_counter() - start

            metrics = self._step_metrics(accelerator, results)
            metrics.update(lr=lr_scheduler.get_last_lr()[0], samples_per_second=global_batch / seconds, samples=step * global_batch)
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            metrics.update(task.periodic_evaluation(accelerator, model, step))
            if task.validation_steps and (step % task.validation_steps == 0 or step == args.max_train_steps):
                metrics.update(self._validate(run, step))
            writer.log(metrics, step)
            run.recent_losses.append(metrics[task.loss_key])
            bar.update(1)
            bar.set_postfix({task.loss_key: f"{metrics[task.loss_key]:.4g}", "lr": f"{metrics['lr']:.3g}"})
            if step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, output_dir, step, state_objects=run.state_objects, total_limit=args.checkpoints_total_limit,
                                summary=self._summary(accelerator))
                last_checkpoint = step
            if run.best is not None and run.best.should_stop:
                logger.info("stopping early after step %d: %s", step, self._stop_reason(run.best))
        bar.close()
        if progress.global_step > 0 and last_checkpoint != progress.global_step:
            save_checkpoint(accelerator, output_dir, progress.global_step, state_objects=run.state_objects,
                            total_limit=args.checkpoints_total_limit, summary=self._summary(accelerator))

    # -- validation -------------------------------------------------------------------------------------------------

    @staticmethod
    def _stop_reason(best: BestScore) -> str:
        return f"no better {best.metric} than step {best.best_step}'s {best.best:.4g} in {best.since_best} evaluations (--early_stopping_patience)"

    def _published_weights(self, run: _Run) -> nn.Module:
        """A copy of the model on the device holding the weights the run publishes (the first EMA rate's, else the raw
        ones), made once and refreshed."""
        unwrapped = run.accelerator.unwrap_model(run.model)
        state = unwrapped.state_dict()
        if run.ema is not None:
            names = [name for name, _ in unwrapped.named_parameters()]
            state = {**state, **dict(zip(names, run.ema.average()))}
        if run.validation_model is None:
            run.validation_model = _fresh_copy(unwrapped, state).to(run.accelerator.device)
        else:
            run.validation_model.load_state_dict(state)
        return run.validation_model.eval().requires_grad_(False)

    def _validate(self, run: _Run, step: int) -> dict[str, float]:
        """The task's validation of the published weights (every process), its cost, the best score and the kept
        weights. Its random draws come from its own generators: the training's random stream is as without it."""
        from accelerate.utils import broadcast_object_list

        accelerator = run.accelerator
        start = time.perf_counter()
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            model = self._published_weights(run)
            metrics = self.task.validate(accelerator, model, step)
        metrics = broadcast_object_list([metrics])[0]  # one verdict on every process
        metrics["val_seconds"] = time.perf_counter() - start
        best = run.best
        if best is not None and best.metric in metrics and best.update(step, metrics[best.metric]) and self.args.keep_best:
            if accelerator.is_main_process:
                save_best_weights(model, Path(self.args.output_dir), step, best.metric, best.best)
            accelerator.wait_for_everyone()
        logger.info("validation at step %d took %.1f s: %s", step, metrics["val_seconds"],
                    ", ".join(f"{key} {value:.4g}" for key, value in metrics.items() if key != "val_seconds"))
        return metrics

    # -- pieces -----------------------------------------------------------------------------------------------------

    def _step_metrics(self, accelerator: Any, results: list[MicroBatchResult]) -> dict[str, float]:
        """The step's terms from every process: means and per-quartile means."""
        keys = list(results[0].terms)
        columns = [torch.cat([result.terms[key].detach().float().reshape(-1) for result in results]) for key in keys]
        columns.append(torch.cat([result.timesteps.detach().float().reshape(-1) for result in results]))
        gathered = accelerator.gather(torch.stack(columns, dim=1)).cpu()
        terms = {key: gathered[:, index] for index, key in enumerate(keys)}
        return summarize_terms(terms, gathered[:, -1], self.task.num_timesteps)

    def _summary(self, accelerator: Any) -> dict[str, Any]:
        args = self.args
        return {
            "task": self.task.kind,
            "max_train_steps": args.max_train_steps,
            "num_processes": accelerator.num_processes,
            "train_batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "seed": args.seed,
        }

    def _training_facts(self, accelerator: Any, steps: int, recent_losses: deque[float]) -> dict[str, Any]:
        args = self.args
        schedule = args.lr_scheduler + (f", {args.lr_warmup_steps} warm-up steps" if args.lr_warmup_steps else "")
        facts = {
            "optimizer steps": steps,
            "batch": f"{args.train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes} "
            f"({args.train_batch_size} per micro-batch x {args.gradient_accumulation_steps} accumulated x {accelerator.num_processes} processes)",
            "resolution": self.task.resolution,
            "learning rate": f"{args.learning_rate:g} ({schedule})",
            "optimizer": f"AdamW (betas {args.adam_beta1}, {args.adam_beta2}; weight decay {args.adam_weight_decay:g}; eps {args.adam_epsilon:g})",
            "gradient clipping": f"{args.max_grad_norm:g}" if args.max_grad_norm else "none",
            "mixed precision": accelerator.mixed_precision,
            "EMA": f"rates {args.ema_rate}" if args.use_ema else "none",
            "timestep sampler": args.schedule_sampler,
            "augmentation": ", ".join(name for name, on in (("random crop", args.random_crop), ("random flip", args.random_flip)) if on) or "none",
            "seed": args.seed,
        }
        if recent_losses:
            facts[f"final {self.task.loss_key} (mean of the last {len(recent_losses)} steps)"] = f"{sum(recent_losses) / len(recent_losses):.4g}"
        return facts

    def _validation_facts(self, run: _Run, kept: bool) -> dict[str, Any]:
        """The card's lines on the validation score: the best, the published weights' step, an early stop."""
        best = run.best
        if best is None or best.best_step is None:
            return {}
        facts = {f"best {best.metric}": f"{best.best:.4g} at step {best.best_step} ({best.evaluations} evaluations)"}
        if kept:
            facts["published weights"] = f"step {best.best_step}'s (--keep_best); the last step's are under weights/"
        if best.should_stop:
            facts["early stopping"] = self._stop_reason(best)
        return facts

    def _write_output(self, run: _Run) -> None:
        """Evaluate the final weights and publish the trained model's folder (EMA weights when kept)."""
        args = self.args
        accelerator, model, ema = run.accelerator, run.model, run.ema
        output_dir = Path(args.output_dir)
        accelerator.wait_for_everyone()
        unwrapped = accelerator.unwrap_model(model)
        raw_state = accelerator.get_state_dict(model)  # a collective under FSDP / ZeRO-3: every process calls it
        if accelerator.is_main_process:  # a copy: the tensors share storage with the parameters the EMA overwrites
            raw_state = {key: value.detach().to("cpu", copy=True) for key, value in raw_state.items()}
        states: dict[str, dict[str, torch.Tensor]] = {}
        if ema is not None:
            names = [name for name, _ in unwrapped.named_parameters()]
            for rate in ema.rates:
                states[f"ema_{rate}"] = {**raw_state, **dict(zip(names, ema.average(rate)))} if accelerator.is_main_process else {}
            ema.copy_to(unwrapped.parameters(), ema.rates[0])  # the final evaluation sees the published weights
        kept = None
        if args.keep_best and run.best is not None and run.best.best_step is not None:
            kept = load_best_weights(output_dir, run.best)
            unwrapped.load_state_dict(kept)
        results = self.task.final_evaluation(accelerator, model)
        if accelerator.is_main_process:
            if kept is not None:  # the best weights published; the last step's (raw and every EMA rate) kept beside
                primary_state, extra_states = kept, {"model": raw_state, **states}
            elif ema is not None:
                primary_state = states.pop(f"ema_{ema.rates[0]}")
                extra_states = {"model": raw_state, **states}
            else:
                primary_state, extra_states = raw_state, {}
            primary = _fresh_copy(unwrapped, primary_state)
            extra = {name: _fresh_copy(unwrapped, state) for name, state in extra_states.items()}
            training = self._training_facts(accelerator, run.progress.global_step, run.recent_losses)
            training.update(self._validation_facts(run, kept is not None))
            location = args.hub_model_id or (output_dir.name if args.push_to_hub else str(output_dir))
            facts = {
                "training": training,
                "results": results,
                "dataset": run.train_images.source,
                "hub_dataset_id": run.train_images.hub_dataset_id,
                "location": location,
                "model_name": (args.hub_model_id or output_dir.name).split("/")[-1],
            }
            staging = output_dir / ".output.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            self.task.write_output(staging, primary, extra, facts)
            with open(staging / "training_args.json", "w") as handle:
                json.dump(_tracker_config(args), handle, indent=2, sort_keys=True)
            if results:
                with open(staging / "eval_results.json", "w") as handle:
                    json.dump(results, handle, indent=2, sort_keys=True)
            normalize_file_modes(staging)  # safetensors writes 0600 whatever the umask
            publish_folder(staging, output_dir, self.task.loadable_entry)
            logger.info("saved the trained model to %s", output_dir)
            if args.push_to_hub:
                url = push_output_to_hub(output_dir, args.hub_model_id or output_dir.name, token=args.hub_token, private=args.hub_private_repo)
                logger.info("pushed to %s", url)
