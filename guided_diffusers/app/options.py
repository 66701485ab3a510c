"""What a pipeline folder offers the web demo: loading it, its classes, which guidance it supports, step defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import null_class_id
from ..pipelines.labels import class_names
from ..pipelines.pipeline_classifier_guided import ClassifierGuidedPipeline
from ..pipelines.recipes import FAST_RECIPE
from ..schedulers.scheduling_utils import GuidedSchedulerMixin

#: The class choice meaning "no label": unconditional sampling.
UNCONDITIONAL = "none"

__all__ = ["UNCONDITIONAL", "PipelineOptions", "load_pipeline", "parse_class_choice"]


def load_pipeline(path: str | Path) -> ClassifierGuidedPipeline:
    """Load a pipeline folder for the demo, offline, refusing what the demo cannot drive with a one-line message.

    Args:
        path: a folder written by ``save_pretrained`` (``make demo`` writes ``demo_output/pipeline``).
    """
    folder = Path(path)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"expected a pipeline folder with model_index.json at {folder}, found none")
    from diffusers import DiffusionPipeline  # our pipeline classes are registered with it: the app is in guided_diffusers

    pipeline = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
    if not isinstance(pipeline, ClassifierGuidedPipeline):
        raise ValueError(f"expected a ClassifierGuidedPipeline folder at {folder}, got a {type(pipeline).__name__}")
    if not isinstance(pipeline.scheduler, GuidedSchedulerMixin):
        raise ValueError(
            f"expected a GuidedDDPMScheduler or GuidedDDIMScheduler in {folder}, got {type(pipeline.scheduler).__name__}"
        )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@dataclass(frozen=True)
class PipelineOptions:
    """The controls a pipeline calls for.

    Args:
        class_choices: (label shown, value) pairs for the class dropdown; the value is a class id as a string, or
            ``UNCONDITIONAL``.
        default_class: the value selected at first.
        has_classifier: classifier guidance is possible.
        has_null_class: classifier-free guidance is possible (the U-Net was trained with label dropout).
        default_classifier_scale: the folder's recommended classifier scale (0 without a classifier).
        num_train_timesteps: T, the most sampling steps.
        default_scheduler: ``"fast"`` (the fast recipe, ``FAST_RECIPE``) for a folder without its own respacing,
            else ``"ddpm"`` (the folder's recommended ancestral respacing).
        default_steps: the folder's respacing step count, else the fast recipe's steps (at most T).
        image_size: the samples' side in pixels.
    """

    class_choices: tuple[tuple[str, str], ...]
    default_class: str
    has_classifier: bool
    has_null_class: bool
    default_classifier_scale: float
    num_train_timesteps: int
    default_steps: int
    image_size: int
    default_scheduler: str = "ddpm"

    @classmethod
    def from_pipeline(cls, pipeline: ClassifierGuidedPipeline) -> PipelineOptions:
        """Read the options off a loaded pipeline.

        Args:
            pipeline: the loaded pipeline.
        """
        unet_config = pipeline.unet.config
        num_classes = pipeline.num_classes
        has_classifier = pipeline.classifier is not None
        has_null_class = null_class_id(pipeline.unet) is not None
        # Unconditional needs no label: an unconditional U-Net, or a conditional one with a null class.
        allows_unconditional = not getattr(unet_config, "num_classes", None) or has_null_class
        id2label = {str(k): v for k, v in (class_names(pipeline.config.get("id2label"), num_classes) or {}).items()}
        choices: list[tuple[str, str]] = []
        if allows_unconditional:
            choices.append(("none (unconditional)", UNCONDITIONAL))
        for class_id in range(num_classes or 0):
            name = id2label.get(str(class_id))
            choices.append((f"{class_id}: {name}" if name else str(class_id), str(class_id)))
        # Start on a class when there is one, so guidance is visible from the first click.
        default_class = next((value for _, value in choices if value != UNCONDITIONAL), UNCONDITIONAL)
        scheduler = pipeline.scheduler
        num_train_timesteps = int(scheduler.config.num_train_timesteps)
        respacing = scheduler.config.get("timestep_respacing")
        # The fast recipe by default (the quality benchmark's pick), unless the folder recommends its own respacing.
        default_scheduler = "ddpm" if respacing else "fast"
        if respacing:
            default_steps = scheduler.num_inference_steps
        else:
            default_steps = min(num_train_timesteps, FAST_RECIPE.steps)
        classifier_scale = float(pipeline.config.get("classifier_scale") or 1.0) if has_classifier else 0.0
        return cls(
            class_choices=tuple(choices),
            default_class=default_class,
            has_classifier=has_classifier,
            has_null_class=has_null_class,
            default_classifier_scale=classifier_scale,
            num_train_timesteps=num_train_timesteps,
            default_steps=int(default_steps),
            image_size=int(unet_config.sample_size),
            default_scheduler=default_scheduler,
        )


def parse_class_choice(value: Any) -> int | None:
    """The dropdown value as a class id, or None for unconditional.

    Args:
        value: a class id (int or digits) or ``UNCONDITIONAL`` / None.
    """
    if value is None or value == UNCONDITIONAL:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a class id or {UNCONDITIONAL!r}, got {value!r}") from None
