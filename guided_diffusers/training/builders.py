"""The model and diffusion process a training run starts from: new ones from the originals' flags (through
[`guided_diffusers.conversion`], so every flag means what it means to the originals), or a pipeline to fine-tune.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..conversion.flags import (
    classifier_kwargs_from_flags,
    parse_flags,
    scheduler_config_from_diffusion_flags,
    timestep_scale_from_flags,
    unet_kwargs_from_flags,
)
from ..conversion.originals import adm_classifier_config, adm_unet_config
from ..models import ADMClassifier, ADMSuperResUNet2DModel, ADMUNet2DModel
from ..schedulers import GuidedDDPMScheduler
from .args import CLASSIFIER_FLAGS, CLASSIFIER_PROCESS_FLAGS, PROCESS_FLAGS, UNET_FLAGS, given_original_flags
from .losses import LossType, loss_type_from_flags

__all__ = [
    "ClassifierSetup",
    "DiffusionSetup",
    "build_classifier_setup",
    "build_diffusion_setup",
    "check_resolution",
    "map_data_classes",
    "original_flag",
    "wants_fp16",
]

_DEFAULT_RESOLUTION = {"diffusion": 64, "super_res": 256, "classifier": 64}
_DEFAULT_SMALL_SIZE = 64
# Flags that only change how the model runs, not what it is: allowed with --init_pipeline.
_RUNTIME_FLAGS = ("use_checkpoint", "use_fp16", "classifier_use_fp16")
_LOSS_FLAGS = ("use_kl", "rescale_learned_sigmas")


@dataclass
class DiffusionSetup:
    """A denoising model and its diffusion process.

    Attributes:
        model: the U-Net ([`ADMUNet2DModel`], [`ADMSuperResUNet2DModel`] or a diffusers ``UNet2DModel``).
        scheduler ([`GuidedDDPMScheduler`]): the process (its full process trains; its config is saved).
        loss_type ([`LossType`]): the objective.
        resolution (`int`): the image size trained at.
        low_res_size (`int`, *optional*): the low-resolution input's size, for super-resolution.
        id2label (`dict`, *optional*): the fine-tuned pipeline's class names.
        flags (`dict`): the originals' flags given (for the model card).
        label_map (`dict`, *optional*): the fine-tuned model's id of each data class id, when they differ.
    """

    model: nn.Module
    scheduler: Any
    loss_type: LossType
    resolution: int
    low_res_size: int | None = None
    id2label: dict[int, str] | None = None
    flags: dict[str, str] = field(default_factory=dict)
    label_map: dict[int, int] | None = None


@dataclass
class ClassifierSetup:
    """A noisy classifier and the diffusion process whose noise it learns to see through.

    Attributes:
        model ([`ADMClassifier`]): the classifier.
        scheduler ([`GuidedDDPMScheduler`]): the process (q_sample and the timesteps the classifier is given).
        resolution (`int`): the image size trained at.
        id2label (`dict`, *optional*): the fine-tuned classifier's class names.
        flags (`dict`): the originals' flags given (for the model card).
        label_map (`dict`, *optional*): the fine-tuned classifier's id of each data class id, when they differ.
    """

    model: nn.Module
    scheduler: Any
    resolution: int
    id2label: dict[int, str] | None = None
    flags: dict[str, str] = field(default_factory=dict)
    label_map: dict[int, int] | None = None


def original_flag(args: argparse.Namespace, name: str) -> Any:
    """One of the originals' flags, typed (and defaulted) as the original parser does it.

    Raises:
        ValueError: a value of the wrong type, e.g. ``--class_cond maybe``.
    """
    source = getattr(args, "source", "guided-diffusion")
    return parse_flags(given_original_flags(args, (name,)), source)[name]


def wants_fp16(args: argparse.Namespace) -> bool:
    """Whether the originals' ``--use_fp16`` / ``--classifier_use_fp16`` asks for float16 training."""
    name = "classifier_use_fp16" if args.task == "classifier" else "use_fp16"
    return bool(original_flag(args, name))


def _level_sizes(resolution: int, levels: int) -> list[int]:
    return [resolution // 2**level for level in range(levels)]


def check_resolution(resolution: int, num_levels: int, attention_resolutions: str, attention_flag: str) -> None:
    """Refuse a resolution the architecture cannot take, and attention resolutions that are not a level's.

    Args:
        resolution (`int`): the image size.
        num_levels (`int`): the U-Net's levels (``len(channel_mult)``); each but the last halves the size.
        attention_resolutions (`str`): the originals' comma-separated attention resolutions.
        attention_flag (`str`): the flag's name, for the message.
    """
    factor = 2 ** (num_levels - 1)
    if resolution % factor:
        raise ValueError(
            f"expected --resolution divisible by {factor} ({num_levels} levels, each but the last halving it), got {resolution}"
        )
    sizes = _level_sizes(resolution, num_levels)
    wanted = [int(part) for part in str(attention_resolutions).split(",") if part.strip()]
    off_levels = [size for size in wanted if size not in sizes]
    if off_levels:
        raise ValueError(
            f"expected --{attention_flag} among the levels' resolutions {sizes} at --resolution {resolution}, got {off_levels}"
        )


def _refuse_architecture_flags(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    given = [name for name in names if getattr(args, name, None) is not None and name not in _RUNTIME_FLAGS + _LOSS_FLAGS]
    if given:
        raise ValueError(
            "expected no model or process flags with --init_pipeline (its model and process are fine-tuned as they are), "
            f"got {', '.join('--' + name for name in given)}"
        )


def _id2label_from_config(value: Any) -> dict[int, str] | None:
    return {int(key): str(name) for key, name in value.items()} if value else None


def map_data_classes(
    data_id2label: dict[int, str] | None, named: bool, model_id2label: dict[int, str] | None, model_classes: int, what: str
) -> dict[int, int] | None:
    """The fine-tuned model's id of each data class: by name when both sides have names, else the data's ids as
    they are. None when every id stays.

    Args:
        data_id2label (`dict`, *optional*): the data's classes.
        named (`bool`): whether the data's classes have names (not bare integer ids).
        model_id2label (`dict`, *optional*): the model's classes (its ``id2label``).
        model_classes (`int`): the model's number of classes.
        what (`str`): the model, for messages (``"--init_pipeline model"``).

    Raises:
        ValueError: a data class name the model lacks (adding classes is not supported), or more classes than the
            model has.
    """
    if not data_id2label:
        return None
    if named and model_id2label:
        model_ids = {name: index for index, name in model_id2label.items()}
        lacking = [name for name in data_id2label.values() if name not in model_ids]
        if lacking:
            raise ValueError(
                f"expected the data's classes among the {what}'s {len(model_ids)} classes (matched by name to its id2label), "
                f"got {len(lacking)} it lacks: {lacking[:5]} (new classes cannot be added to a trained model: rename them "
                "to its classes, leave them out, or train a new model)"
            )
        label_map = {data_id: model_ids[name] for data_id, name in data_id2label.items()}
        return None if all(data_id == model_id for data_id, model_id in label_map.items()) else label_map
    if len(data_id2label) > model_classes:
        raise ValueError(f"expected at most {model_classes} classes (the {what}'s) in the data, got {len(data_id2label)}")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Diffusion models
# ---------------------------------------------------------------------------------------------------------------------


def build_diffusion_setup(
    args: argparse.Namespace, num_classes: int | None, data_id2label: dict[int, str] | None = None, named_classes: bool = True
) -> DiffusionSetup:
    """The U-Net and process of ``train_diffusion.py`` / ``train_super_res.py``.

    Args:
        args: the parsed arguments (``args.task`` is ``"diffusion"`` or ``"super_res"``).
        num_classes (`int`, *optional*): the data's classes (the label embedding's size for ``--class_cond True``).
        data_id2label (`dict`, *optional*): the data's classes, matched by name to an ``--init_pipeline``'s.
        named_classes (`bool`, defaults to True): False when the data's classes are bare integer ids.

    Raises:
        ValueError: unknown or ill-typed flags, a resolution the architecture cannot take, labels missing for a
            class-conditional model, or a pipeline of the wrong kind.
    """
    if args.init_pipeline:
        return _diffusion_setup_from_pipeline(args, num_classes, data_id2label, named_classes)
    super_res = args.task == "super_res"
    given = given_original_flags(args, UNET_FLAGS + PROCESS_FLAGS)
    resolution = args.resolution or _DEFAULT_RESOLUTION[args.task]
    if super_res:
        if "channel_mult" in given:
            raise ValueError(
                "expected no --channel_mult for a super-resolution model (the originals derive its levels from --large_size), got "
                f"{given['channel_mult']!r}"
            )
        small_size = args.small_size or _DEFAULT_SMALL_SIZE
        if small_size >= resolution or resolution % small_size:
            raise ValueError(f"expected --small_size to divide --large_size {resolution} and be smaller, got {small_size}")
        flags = {**given, "large_size": resolution, "small_size": small_size}
    else:
        small_size = None
        flags = {**given, "image_size": resolution}
    values = parse_flags(flags, args.source)
    kwargs = unet_kwargs_from_flags(flags, args.source)
    check_resolution(resolution, len(kwargs["channel_mult"]), values["attention_resolutions"], "attention_resolutions")
    if values["class_cond"]:
        if not num_classes:
            raise ValueError("expected labelled images (--label_column, or file-name prefixes) for --class_cond True, got none")
        kwargs["num_classes"] = num_classes
    elif args.class_dropout_prob > 0:
        raise ValueError(f"expected --class_cond True for --class_dropout_prob {args.class_dropout_prob}, got an unconditional model")
    _set_image_channels(kwargs, args, "out_channels", 2 if values["learn_sigma"] else 1)
    config = adm_unet_config(kwargs)
    config["class_dropout_prob"] = args.class_dropout_prob
    config["timestep_scale"] = timestep_scale_from_flags(values)
    model = (ADMSuperResUNet2DModel if super_res else ADMUNet2DModel)(**config)
    if values["use_checkpoint"]:
        model.enable_gradient_checkpointing()
    process = {name: values[name] for name in ("learn_sigma", "sigma_small", "noise_schedule", "predict_xstart")}
    scheduler = GuidedDDPMScheduler(**scheduler_config_from_diffusion_flags({"steps": values["diffusion_steps"], **process}))
    loss_type = loss_type_from_flags(values["use_kl"], values["rescale_learned_sigmas"])
    _check_vb_defined(scheduler, loss_type, values)
    return DiffusionSetup(model, scheduler, loss_type, resolution, small_size, None, {"source": args.source, **flags})


def _set_image_channels(kwargs: dict[str, Any], args: argparse.Namespace, output_key: str | None = None, outputs_per_channel: int = 1) -> None:
    """A new model's image channels from ``--in_channels`` (the originals' constructors fix 3), and the U-Net's output
    channels with them (twice as many with learned sigma)."""
    channels = getattr(args, "in_channels", None)
    if channels is None:
        return
    kwargs["in_channels"] = channels
    if output_key is not None:
        kwargs[output_key] = channels * outputs_per_channel


def _check_vb_defined(scheduler: Any, loss_type: LossType, values: dict[str, Any]) -> None:
    """The variational-bound term needs alpha_bar_t > 0 at every t; a linear schedule of 20 steps ends at beta = 1."""
    if not (loss_type.is_vb or values["learn_sigma"]):
        return
    if float(scheduler.diffusion.betas.max()) >= 1.0:
        raise ValueError(
            f"expected betas below 1 for the vb loss term (learned sigma or --use_kl), got beta = 1 with the "
            f"{values['noise_schedule']} schedule at --diffusion_steps {values['diffusion_steps']}; use more steps or --noise_schedule cosine"
        )


def _diffusion_setup_from_pipeline(
    args: argparse.Namespace, num_classes: int | None, data_id2label: dict[int, str] | None, named_classes: bool
) -> DiffusionSetup:
    from diffusers import DiffusionPipeline

    _refuse_architecture_flags(args, UNET_FLAGS + PROCESS_FLAGS + ("in_channels",))
    pipeline = DiffusionPipeline.from_pretrained(args.init_pipeline)
    unet, scheduler = getattr(pipeline, "unet", None), getattr(pipeline, "scheduler", None)
    if unet is None or scheduler is None:
        raise ValueError(f"expected a pipeline with a unet and a scheduler in --init_pipeline, got {type(pipeline).__name__}")
    if not hasattr(scheduler, "diffusion"):
        raise ValueError(
            "expected a guided scheduler (GuidedDDPMScheduler / GuidedDDIMScheduler) in --init_pipeline, got "
            f"{type(scheduler).__name__}"
        )
    super_res = isinstance(unet, ADMSuperResUNet2DModel)
    if super_res != (args.task == "super_res"):
        wanted = "a super-resolution" if args.task == "super_res" else "a non-super-resolution"
        raise ValueError(f"expected {wanted} pipeline in --init_pipeline, got {type(pipeline).__name__} with {type(unet).__name__}")
    resolution = unet.config.sample_size
    if args.resolution is not None and args.resolution != resolution:
        raise ValueError(f"expected --resolution {resolution} (the --init_pipeline model's sample_size), got {args.resolution}")
    small_size = None
    if super_res:
        small_size = args.small_size or pipeline.config.get("low_res_size")
        if not small_size:
            raise ValueError("expected --small_size for an upsampling pipeline without low_res_size in its config, got none")
    model_classes = getattr(unet.config, "num_classes", None)
    id2label = _id2label_from_config(pipeline.config.get("id2label"))
    label_map = None
    if model_classes:
        if not num_classes:
            raise ValueError(f"expected labelled images for the class-conditional --init_pipeline ({model_classes} classes), got none")
        data_id2label = data_id2label or {index: str(index) for index in range(num_classes)}
        label_map = map_data_classes(data_id2label, named_classes, id2label, model_classes, "--init_pipeline model")
    if args.class_dropout_prob > 0 and not getattr(unet.config, "class_dropout_prob", 0.0) > 0:
        raise ValueError("expected an --init_pipeline model with a null class (trained with label dropout) for --class_dropout_prob, got none")
    given = given_original_flags(args, _LOSS_FLAGS)
    values = parse_flags(given, args.source)
    if original_flag(args, "use_checkpoint") and getattr(unet, "_supports_gradient_checkpointing", False):
        unet.enable_gradient_checkpointing()
    unet.train()
    return DiffusionSetup(
        unet, scheduler, loss_type_from_flags(values["use_kl"], values["rescale_learned_sigmas"]), resolution, small_size,
        id2label, {"init_pipeline": args.init_pipeline, **given}, label_map,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Noisy classifiers
# ---------------------------------------------------------------------------------------------------------------------


def build_classifier_setup(
    args: argparse.Namespace, num_classes: int, data_id2label: dict[int, str] | None = None, named_classes: bool = True
) -> ClassifierSetup:
    """The noisy classifier and process of ``train_classifier.py``.

    Args:
        args: the parsed arguments.
        num_classes (`int`): the data's classes (the classifier's outputs).
        data_id2label (`dict`, *optional*): the data's classes, matched by name to an ``--init_pipeline``'s.
        named_classes (`bool`, defaults to True): False when the data's classes are bare integer ids.
    """
    if args.init_pipeline:
        return _classifier_setup_from_pretrained(args, num_classes, data_id2label, named_classes)
    given = given_original_flags(args, CLASSIFIER_FLAGS + CLASSIFIER_PROCESS_FLAGS)
    resolution = args.resolution or _DEFAULT_RESOLUTION["classifier"]
    flags = {**given, "image_size": resolution}
    values = parse_flags(flags, "guided-diffusion")
    kwargs = classifier_kwargs_from_flags(flags)
    check_resolution(resolution, len(kwargs["channel_mult"]), values["classifier_attention_resolutions"], "classifier_attention_resolutions")
    kwargs["out_channels"] = num_classes
    _set_image_channels(kwargs, args)
    model = ADMClassifier(**adm_classifier_config(kwargs), timestep_scale=timestep_scale_from_flags(values))
    process = {"steps": values["diffusion_steps"], "noise_schedule": values["noise_schedule"]}
    scheduler = GuidedDDPMScheduler(**scheduler_config_from_diffusion_flags(process))
    return ClassifierSetup(model, scheduler, resolution, None, flags)


def _classifier_setup_from_pretrained(
    args: argparse.Namespace, num_classes: int, data_id2label: dict[int, str] | None, named_classes: bool
) -> ClassifierSetup:
    _refuse_architecture_flags(args, CLASSIFIER_FLAGS + CLASSIFIER_PROCESS_FLAGS + ("in_channels",))
    source = args.init_pipeline
    folder = Path(source)
    if folder.is_dir():
        from_pipeline = (folder / "model_index.json").is_file()
    else:  # a Hub id: a classifier repository, else a pipeline with a classifier
        try:
            model = ADMClassifier.from_pretrained(source)
            from_pipeline = False
        except OSError:
            from_pipeline = True
    if from_pipeline:
        from diffusers import DiffusionPipeline

        pipeline = DiffusionPipeline.from_pretrained(source)
        model = getattr(pipeline, "classifier", None)
        if model is None:
            raise ValueError(f"expected a pipeline with a classifier (or an ADMClassifier folder) in --init_pipeline, got {type(pipeline).__name__} without one")
        scheduler = pipeline.scheduler
        id2label = _id2label_from_config(pipeline.config.get("id2label"))
    else:
        if folder.is_dir():
            model = ADMClassifier.from_pretrained(source)
        try:
            scheduler = GuidedDDPMScheduler.from_pretrained(source)
        except OSError:
            scheduler = None
        id2label = _id2label_from_config(model.config.get("id2label"))
    if scheduler is None or not hasattr(scheduler, "diffusion"):
        raise ValueError(f"expected the process the classifier trains under (a guided scheduler) in --init_pipeline {source!r}, got none")
    data_id2label = data_id2label or {index: str(index) for index in range(num_classes)}
    label_map = map_data_classes(data_id2label, named_classes, id2label, model.config.num_classes, "--init_pipeline classifier")
    resolution = model.config.sample_size
    if args.resolution is not None and args.resolution != resolution:
        raise ValueError(f"expected --resolution {resolution} (the --init_pipeline classifier's sample_size), got {args.resolution}")
    model.train()
    return ClassifierSetup(
        model, GuidedDDPMScheduler.from_config(scheduler.config), resolution, id2label, {"init_pipeline": source}, label_map
    )

