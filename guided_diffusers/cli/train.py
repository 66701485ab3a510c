"""The three training command lines (guided-diffusers-train-diffusion, -classifier, -super-res): the originals'
image_train.py, classifier_train.py and super_res_train.py on accelerate, over guided_diffusers.training."""

from __future__ import annotations

import sys

DIFFUSION = """Train an ADM / IDDPM diffusion model with accelerate: guided-diffusion's and improved-diffusion's image_train.py.

    guided-diffusers-train-diffusion --train_data_dir images/ --resolution 64 --max_train_steps 100000 \\
        --num_channels 128 --num_res_blocks 3 --learn_sigma True --noise_schedule cosine --output_dir my-adm
    accelerate launch --num_processes 8 -m guided_diffusers.cli.train_diffusion --dataset_name cifar10 --image_column img ...

Model and process flags are the originals' (with --source's defaults); the loop's are diffusers' training examples'.
The trained pipeline (EMA weights) is saved into --output_dir, loadable with DiffusionPipeline.from_pretrained.
"""

CLASSIFIER = """Train a noisy classifier for classifier guidance with accelerate: guided-diffusion's classifier_train.py.

    guided-diffusers-train-classifier --train_data_dir imagenet/train --validation_data_dir imagenet/val \\
        --resolution 128 --max_train_steps 300000 --lr_scheduler linear --adam_weight_decay 0.05 \\
        --learning_rate 3e-4 --classifier_depth 2 --classifier_width 128 --classifier_pool attention
    accelerate launch --num_processes 8 -m guided_diffusers.cli.train_classifier ...

Trains on images noised to sampled timesteps of the process given by --diffusion_steps / --noise_schedule (or clean
ones with --noised False), reports top-1/top-5 accuracy on held-out images, and saves an ADMClassifier (with the
class names as id2label and the process's scheduler_config.json) into --output_dir.
"""

SUPER_RES = """Train an ADM-U super-resolution model with accelerate: guided-diffusion's super_res_train.py.

    guided-diffusers-train-super-res --train_data_dir images/ --large_size 256 --small_size 64 \\
        --max_train_steps 100000 --num_channels 192 --num_res_blocks 2 --learn_sigma True --output_dir my-upsampler
    accelerate launch --num_processes 8 -m guided_diffusers.cli.train_super_res ...

The model learns x_large from noise given the target downsampled by area averaging to --small_size, as the
original does. The trained ADMUpsamplingPipeline (EMA weights) is saved into --output_dir.
"""


def main(task: str, argv: list[str] | None = None, description: str | None = None) -> None:
    """A training command line: parse ``argv`` (default ``sys.argv[1:]``) and train ``task``; a run refused before
    training starts, and a failed Hub upload (the trained folder stays complete), end in one line.

    Args:
        task (`str`): ``"diffusion"``, ``"super_res"`` or ``"classifier"``.
        argv (list of `str`, *optional*): the command line.
        description (`str`, *optional*): the help text.
    """
    from ..training.args import parse_training_args

    args = parse_training_args(task, argv, description)
    from ..publishing import HubPushError
    from ..training.metrics import available_trackers
    from ..training.tasks import run_training
    from ..training.trainer import TrainingSetupError

    try:
        available_trackers(args.report_to)  # a tracker named but not installed: one line before the accelerator starts
    except ValueError as error:
        sys.exit(f"error: {error}")
    try:
        run_training(args)
    except (TrainingSetupError, HubPushError) as error:
        sys.exit(f"error: {error}")


def train_diffusion(argv: list[str] | None = None) -> None:
    main("diffusion", argv, DIFFUSION)


def train_classifier(argv: list[str] | None = None) -> None:
    main("classifier", argv, CLASSIFIER)


def train_super_res(argv: list[str] | None = None) -> None:
    main("super_res", argv, SUPER_RES)
