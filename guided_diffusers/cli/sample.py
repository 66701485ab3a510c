"""Sample from a pipeline folder: the originals' image_sample, classifier_sample and super_res_sample in one command.

    guided-diffusers-sample --pipeline DIR --num_samples 16 --batch_size 4 --timestep_respacing 250 --output_dir out/
    accelerate launch --num_processes 2 -m guided_diffusers.cli.sample --pipeline DIR --num_samples 100 --classifier_scale 1.0 ...
    guided-diffusers-sample --pipeline UPSAMPLER_DIR --base_samples samples_16x64x64x3.npz --num_samples 16

Writes samples_NxHxWxC.npz (arr_0: uint8 NHWC with the model's C channels, 1 for grey; arr_1: labels for
class-conditional runs) and one PNG per sample (grey or RGB) into --output_dir, which must be new or empty
(--overwrite replaces it whole: one run's samples are never mixed with another's). Every argument is checked before
the pipeline's weights are loaded, and the output place is taken (a temporary folder made) before any sampling; if the
finished samples cannot be moved into --output_dir at the end, they are kept beside it and the error says where.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..conversion.flags import str2bool
from .common import exit_on


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a pipeline folder or Hub id (ClassifierGuidedPipeline or ADMUpsamplingPipeline)")
    parser.add_argument("--output_dir", default="samples")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir (as a whole, once the new samples are written)")
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="sample k uses seed + k, whatever the number of processes")
    parser.add_argument("--class_labels", default=None, help="comma-separated ids or names, cycled over the samples (default: random classes)")
    parser.add_argument("--classifier_scale", type=float, default=0.0)
    parser.add_argument("--guidance_scale", type=float, default=None, help="classifier-free guidance weight")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--timestep_respacing", default=None, help='the originals\' spec: "250", "ddim25", "10,15,20"')
    steps.add_argument("--num_inference_steps", type=int, default=None)
    parser.add_argument("--use_ddim", action="store_true", help="sample with GuidedDDIMScheduler (as the originals' --use_ddim True)")
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--clip_denoised", type=str2bool, default=True)
    parser.add_argument("--base_samples", default=None, help="for an upsampling pipeline: an .npz of low-resolution images (arr_0) and labels (arr_1)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    return parser.parse_args(argv)


def _label_values(text: str) -> list[int | str]:
    """``--class_labels`` as ids and names: integers are ids (a negative one is refused), anything else a name."""
    values: list[int | str] = []
    for part in (v.strip() for v in text.split(",")):
        if not part:
            raise ValueError(f"expected comma-separated class ids or names in --class_labels, got an empty entry in {text!r}")
        try:
            number = float(part)
        except ValueError:
            values.append(part)
            continue
        if not number.is_integer() or number < 0:
            raise ValueError(f"expected class ids >= 0 (integers) or class names in --class_labels, got {part!r}")
        values.append(int(number))
    return values


def _load_config(pipeline: str, subfolder: str | None = None) -> dict[str, Any] | None:
    """A component's config (or model_index.json) without loading weights; None when the folder has no such part."""
    from diffusers import DiffusionPipeline

    from .. import ADMUNet2DModel, GuidedDDPMScheduler

    reader = {None: DiffusionPipeline, "scheduler": GuidedDDPMScheduler}.get(subfolder, ADMUNet2DModel)
    try:
        return dict(reader.load_config(pipeline, subfolder=subfolder) if subfolder else reader.load_config(pipeline))
    except (OSError, ValueError) as error:
        if subfolder is not None:
            return None
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"expected a pipeline folder or Hub id at --pipeline {pipeline!r}, got none there ({reason})") from None


def check_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Every check that needs no weights: numbers, the output folder, the base samples, the labels and the respacing
    against the pipeline's configs. Returns what sampling needs (``labels``, ``upsampling``).

    Raises:
        ValueError: one line naming what was expected and what came.
    """

    import numpy as np

    from ..pipelines.batch_sampling import check_output_dir
    from ..pipelines.labels import resolve_class_labels
    from ..schedulers import space_timesteps

    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError(f"expected --num_samples and --batch_size >= 1, got {args.num_samples} and {args.batch_size}")
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        raise ValueError(f"expected --num_inference_steps >= 1, got {args.num_inference_steps}")
    for name in ("classifier_scale", "guidance_scale", "eta"):
        value = getattr(args, name)
        if value is not None and not np.isfinite(value):
            raise ValueError(f"expected a finite --{name}, got {value}")
    output = check_output_dir(args.output_dir, args.overwrite)
    if not output.resolve().parent.is_dir():
        raise ValueError(f"expected --output_dir in an existing folder, got {args.output_dir!r}")

    index = _load_config(args.pipeline)
    upsampling = index.get("_class_name") == "ADMUpsamplingPipeline"
    unet = _load_config(args.pipeline, "unet") or {}
    if args.base_samples is not None:
        if not upsampling:
            raise ValueError(f"expected --base_samples only for an ADMUpsamplingPipeline, got a {index.get('_class_name')} at --pipeline")
        check_base_samples(args.base_samples, args.num_samples, int(unet.get("in_channels", 3)))
    elif upsampling:
        raise ValueError("expected --base_samples (an .npz of low-resolution images, arr_0) for an upsampling pipeline, got none")

    num_classes = unet.get("num_classes")
    if not num_classes and args.classifier_scale:
        num_classes = (_load_config(args.pipeline, "classifier") or {}).get("num_classes")
    labels = None
    if args.class_labels is not None:
        values = _label_values(args.class_labels)
        if not num_classes:
            num_classes = (_load_config(args.pipeline, "classifier") or {}).get("num_classes")
        if not num_classes:
            raise ValueError("expected no --class_labels for an unconditional pipeline without a classifier, got some")
        labels = resolve_class_labels(values, num_classes, index.get("id2label")).tolist()
    if upsampling and num_classes and labels is None:
        with np.load(args.base_samples) as data:
            if "arr_1" not in data.files:
                raise ValueError(f"expected labels (arr_1) in --base_samples {args.base_samples!r} for the class-conditional upsampler "
                                 "(or --class_labels), got none")
            check_label_array(data["arr_1"], num_classes, args.base_samples)

    scheduler = _load_config(args.pipeline, "scheduler") or {}
    spec = args.timestep_respacing if args.timestep_respacing is not None else args.num_inference_steps
    if spec is not None and "num_train_timesteps" in scheduler:
        space_timesteps(int(scheduler["num_train_timesteps"]), str(spec))
    return {"labels": labels, "upsampling": upsampling}


def check_base_samples(path: str, num_samples: int, channels: int = 3) -> None:
    """``--base_samples``: a readable .npz with ``arr_0`` uint8 NHWC images of the upsampler's ``channels`` (3: RGB,
    1: grey), at least ``num_samples`` of them, and integer labels ``arr_1`` (one per image) if any."""
    import zipfile

    import numpy as np

    try:
        with np.load(path) as data:
            files = set(data.files)
            if "arr_0" not in files:
                raise ValueError(f"expected arr_0 (uint8 NHWC images) in --base_samples {path!r}, got arrays {sorted(files)}")
            images = data["arr_0"]
            labels = data["arr_1"] if "arr_1" in files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(error).startswith("expected"):
            raise
        raise ValueError(f"expected an .npz file of images at --base_samples {path!r}, got one numpy cannot read ({type(error).__name__})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != channels:
        kind = {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")
        raise ValueError(f"expected arr_0 of --base_samples as uint8 NHWC {kind} images, got {images.dtype} of shape {images.shape}")
    if len(images) < num_samples:
        raise ValueError(f"expected at least {num_samples} (--num_samples) base samples, got {len(images)} in {path!r}")
    if labels is not None:
        check_label_array(labels, None, path)
        if len(labels) != len(images):
            raise ValueError(f"expected one label (arr_1) per image in --base_samples {path!r}, got {len(labels)} for {len(images)}")


def check_label_array(labels: Any, num_classes: int | None, path: str) -> None:
    """Labels read from a file: a 1-D integer array, each in [0, num_classes) when that is known."""
    import numpy as np

    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected arr_1 of {path!r} as 1-D integer labels, got {labels.dtype} of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or (num_classes and labels.max() >= num_classes)):
        raise ValueError(f"expected labels in [0, {num_classes or 'num_classes'}) in arr_1 of {path!r}, got {labels.min()}..{labels.max()}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    checked = exit_on((ValueError,), lambda: check_arguments(args))

    import torch
    from accelerate import Accelerator
    from diffusers import DiffusionPipeline

    import guided_diffusers.pipelines  # noqa: F401  (registers the pipeline classes with diffusers)
    from guided_diffusers import GuidedDDIMScheduler
    from guided_diffusers.pipelines.batch_sampling import SamplingJob, reserve_output_dir, run_sampling_job

    accelerator = Accelerator()
    # The output place first (an unwritable one is refused before the weights load and anything is sampled).
    reservation = exit_on((ValueError,), lambda: reserve_output_dir(args.output_dir, args.overwrite)) if accelerator.is_main_process else None
    try:
        pipeline = exit_on((OSError, ValueError, TypeError), lambda: DiffusionPipeline.from_pretrained(args.pipeline, dtype=getattr(torch, args.dtype)))
        if args.use_ddim:
            pipeline.scheduler = GuidedDDIMScheduler.from_config(pipeline.scheduler.config)
        pipeline = pipeline.to(accelerator.device)
        pipeline.set_progress_bar_config(disable=not accelerator.is_local_main_process)
        job = SamplingJob(
            num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed, class_labels=checked["labels"],
            classifier_scale=args.classifier_scale, guidance_scale=args.guidance_scale,
            num_inference_steps=args.num_inference_steps, timestep_respacing=args.timestep_respacing, eta=args.eta,
            clip_denoised=args.clip_denoised, base_samples=args.base_samples,
        )
        path = exit_on((ValueError,), lambda: run_sampling_job(pipeline, job, args.output_dir, accelerator, args.overwrite, reservation))
    finally:
        if reservation is not None:
            reservation.release()
    if path is not None:
        channels = pipeline.unet.config.in_channels
        pngs = "" if channels in (1, 3) else f" (no PNGs: a PNG holds 1 or 3 channels, these samples have {channels})"
        print(f"saved {args.num_samples} samples to {path}{pngs}; sampled with {accelerator.num_processes} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
