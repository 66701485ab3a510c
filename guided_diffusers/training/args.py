"""Command lines of the three training scripts: diffusers' training-example names for the loop, the originals'
flag names (and values: ``--class_cond True``) for the model and the diffusion process.

The model and process flags are kept as the strings given (None when not given), so that
[`guided_diffusers.conversion.flags`] types them and applies each source's own defaults, exactly as for a
converted checkpoint.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..conversion.flags import str2bool as parse_boolean

__all__ = [
    "CLASSIFIER_FLAGS",
    "CLASSIFIER_PROCESS_FLAGS",
    "LR_SCHEDULERS",
    "PROCESS_FLAGS",
    "TASKS",
    "UNET_FLAGS",
    "build_parser",
    "check_arguments",
    "given_original_flags",
    "parse_training_args",
    "str2bool",
]

TASKS = ("diffusion", "classifier", "super_res")

# diffusers' learning-rate schedules (diffusers.optimization.SchedulerType's values) but piecewise_constant, which
# needs a rule string we take no flag for; spelled here because importing diffusers.optimization imports torch
# (tests/test_training_components.py checks the two agree).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

# The originals' model flags of a U-Net (image_size / large_size / small_size come from --resolution / --small_size).
UNET_FLAGS = (
    "num_channels", "num_res_blocks", "channel_mult", "attention_resolutions", "num_heads", "num_heads_upsample",
    "num_head_channels", "use_scale_shift_norm", "resblock_updown", "use_new_attention_order", "dropout",
    "class_cond", "learn_sigma", "use_checkpoint", "use_fp16",
)  # fmt: skip
# The originals' diffusion-process flags (create_gaussian_diffusion's, plus the loss flags).
PROCESS_FLAGS = (
    "diffusion_steps", "noise_schedule", "sigma_small", "use_kl", "predict_xstart", "rescale_timesteps",
    "rescale_learned_sigmas",
)  # fmt: skip
# guided-diffusion's classifier flags, and the process flags a noisy classifier depends on.
CLASSIFIER_FLAGS = (
    "classifier_width", "classifier_depth", "classifier_attention_resolutions", "classifier_use_scale_shift_norm",
    "classifier_resblock_updown", "classifier_pool", "classifier_use_fp16", "classifier_channel_mult",
)  # fmt: skip
CLASSIFIER_PROCESS_FLAGS = ("diffusion_steps", "noise_schedule", "rescale_timesteps")

_DEFAULTS = {
    "diffusion": dict(output_dir="guided-diffusion-model", learning_rate=1e-4, use_ema=True, resolution_help="64"),
    "super_res": dict(output_dir="guided-diffusion-upsampler", learning_rate=1e-4, use_ema=True, resolution_help="256"),
    "classifier": dict(output_dir="guided-diffusion-classifier", learning_rate=3e-4, use_ema=False, resolution_help="64"),
}


def str2bool(value: Any) -> bool:
    """The originals' boolean flag values (conversion.flags' reading), as an argparse type."""
    try:
        return parse_boolean(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_switch(group: argparse._ArgumentGroup, name: str, default: bool, help: str) -> None:
    """A boolean flag that works bare (diffusers' style, ``--use_ema``) and with a value (the originals', ``--use_ema False``)."""
    group.add_argument(f"--{name}", type=str2bool, nargs="?", const=True, default=default, metavar="BOOL", help=help)


def build_parser(task: str, description: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``scripts/train_{task}.py``.

    Args:
        task (`str`): ``"diffusion"``, ``"classifier"`` or ``"super_res"``.
        description (`str`, *optional*): the script's help text.
    """
    if task not in TASKS:
        raise ValueError(f"expected a task in {TASKS}, got {task!r}")
    defaults = _DEFAULTS[task]
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", default=None, help="a Hub dataset id, a local dataset folder or a save_to_disk folder")
    data.add_argument("--dataset_config_name", default=None, help="the dataset's configuration")
    data.add_argument("--train_data_dir", default=None,
                      help="a folder of images (the originals' --data_dir), labelled as --label_from says")
    data.add_argument("--label_from", default="auto",
                      help="an image folder's labels: 'filename' (the originals': the prefix before the first underscore), 'folder' "
                      "(the class subfolder, as imagefolder), 'auto' (default: 'filename' when any image is at the folder's top "
                      "level, else 'folder', stopping where a file-name prefix disagrees with its subfolder)")
    data.add_argument("--image_column", default="image")
    data.add_argument("--label_column", default="label")
    data.add_argument("--cache_dir", default=None, help="the datasets cache")
    size_names = ["--resolution", "--large_size"] if task == "super_res" else ["--resolution", "--image_size"]
    data.add_argument(*size_names, dest="resolution", type=int, default=None,
                      help=f"image size the model trains at (default: the --init_pipeline model's, else {defaults['resolution_help']})")
    if task == "super_res":
        data.add_argument("--small_size", type=int, default=None, help="the low-resolution input's size (default: the --init_pipeline's, else 64)")
    _add_switch(data, "random_flip", False, "flip images horizontally at random (guided-diffusion does; improved-diffusion does not)")
    _add_switch(data, "random_crop", task == "classifier", "the originals' random-resized crop instead of the centre crop")
    data.add_argument("--dataloader_num_workers", type=int, default=0)

    validation = parser.add_argument_group("validation")
    validation.add_argument("--validation_data_dir", "--val_data_dir", dest="validation_data_dir", default=None,
                            help="held-out images labelled like --train_data_dir (default: hold out --validation_split)")
    if task == "classifier":
        validation.add_argument("--validation_split", type=float, default=0.05, help="share of the training images held out for top-1/top-5 accuracy (0: none)")
        validation.add_argument("--validation_steps", type=int, default=5, help="evaluate one held-out batch every N steps (the originals' --eval_interval)")
        validation.add_argument("--evaluation_steps", type=int, default=None,
                                help="evaluate the whole held-out split every N steps and at the last (loss, top-1/top-5 accuracy, per quartile "
                                "of t, logged as eval_*): what --keep_best and --early_stopping_patience judge (eval_acc@1_q3, the noisiest "
                                "quartile's accuracy). Default: only after training")
    else:
        validation.add_argument("--validation_split", type=float, default=0.0,
                                help="share of the training images held out for the validation bits/dim and as the distance's reference (0: none)")
        validation.add_argument("--validation_steps", type=int, default=None,
                                help="every N steps and at the last: a fixed-seed sample grid (validation/step-N.png and the trackers), the "
                                "Fréchet distance of --validation_samples samples to the real images and the held-out bits/dim, from the "
                                "published (EMA) weights with the fast sampling recipe. Default: none")
        validation.add_argument("--validation_samples", type=int, default=200,
                                help="K: samples for the Fréchet distance (to the held-out images when there are some, else to the training "
                                "images; 0: no distance)")
        validation.add_argument("--validation_bpd_timesteps", type=int, default=50,
                                help="timesteps at which the held-out bits/dim's terms are evaluated (t = 0 and strata of the others; the "
                                "number of diffusion steps gives the whole bound)")
        validation.add_argument("--inception_weights", default=None,
                                help="the FID Inception weights file: measure the distance on its 2048 pool features (the evaluator's FID) "
                                "instead of pixels area-averaged to 8x8")
    validation.add_argument("--validation_batch_size", type=int, default=None, help="images per forward in validation, per process (default: --train_batch_size)")
    _add_switch(validation, "keep_best", False, "publish the weights with the best validation score (diffusion: the lowest distance, else "
                "bits/dim; classifier: eval_acc@1_q3) instead of the last step's, which go under weights/")
    validation.add_argument("--early_stopping_patience", type=int, default=None,
                            help="stop when the validation score has not improved for this many validations in a row")

    loop = parser.add_argument_group("training loop")
    loop.add_argument("--output_dir", default=defaults["output_dir"])
    loop.add_argument("--seed", type=int, default=0, help="seeds the model's initialisation, the data order and augmentations, and each process's noise")
    loop.add_argument("--train_batch_size", type=int, default=16, help="images per process and micro-batch")
    loop.add_argument("--max_train_steps", type=int, required=True, help="optimizer steps to train for in all (a resumed run counts the steps done)")
    loop.add_argument("--gradient_accumulation_steps", type=int, default=None,
                      help="micro-batches per optimizer step (the originals' --microbatch); default: accelerate's "
                      "ACCELERATE_GRADIENT_ACCUMULATION_STEPS (set from a DeepSpeed config), else 1")
    loop.add_argument("--learning_rate", type=float, default=defaults["learning_rate"])
    loop.add_argument("--lr_scheduler", default="constant", choices=LR_SCHEDULERS,
                      help="'linear' over --max_train_steps is the originals' linear anneal (--lr_anneal_steps / --anneal_lr)")
    loop.add_argument("--lr_warmup_steps", type=int, default=0)
    loop.add_argument("--adam_beta1", type=float, default=0.9)
    loop.add_argument("--adam_beta2", type=float, default=0.999)
    loop.add_argument("--adam_weight_decay", type=float, default=0.0, help="AdamW weight decay (the originals' --weight_decay)")
    loop.add_argument("--adam_epsilon", type=float, default=1e-8)
    loop.add_argument("--max_grad_norm", type=float, default=None, help="clip gradients to this norm (default: no clipping, as the originals)")
    loop.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="default: accelerate's configuration")
    loop.add_argument("--checkpointing_steps", type=int, default=10000, help="save a checkpoint every N steps (the originals' --save_interval)")
    loop.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep at most this many checkpoints")
    loop.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest' (the newest in --output_dir, if any)")
    _add_switch(loop, "use_ema", defaults["use_ema"], "keep exponential moving averages of the weights; the saved model gets the first rate's")
    loop.add_argument("--ema_rate", default="0.9999", help="one or several comma-separated EMA rates, as the originals keep them")
    loop.add_argument("--report_to", default=None,
                      help="tensorboard, wandb, comet_ml (comma-separated), all (every installed one) or none; default: tensorboard "
                      "when installed. logs/metrics.jsonl is always written. A tracker named here but not installed stops the run")
    loop.add_argument("--logging_dir", default="logs", help="relative to --output_dir")
    _add_switch(loop, "push_to_hub", False, "upload the saved model to the Hub")
    loop.add_argument("--hub_model_id", default=None, help="the Hub repository (default: the name of --output_dir)")
    loop.add_argument("--hub_token", default=None, help="default: the token of `hf auth login`")
    _add_switch(loop, "hub_private_repo", False, "create the Hub repository private")
    loop.add_argument("--license", default="unknown", help="the model card's license: a Hub license identifier such as mit, apache-2.0 "
                      "or cc-by-nc-4.0 (default: unknown, i.e. not stated)")

    model = parser.add_argument_group("model (the originals' flags and values)")
    model.add_argument("--init_pipeline", default=None, help="fine-tune this pipeline folder or Hub id (its model and process) instead of a new model")
    if task == "classifier":
        for name in CLASSIFIER_FLAGS:
            model.add_argument(f"--{name}", default=None, metavar="VALUE")
        for name in CLASSIFIER_PROCESS_FLAGS:
            model.add_argument(f"--{name}", default=None, metavar="VALUE")
        _add_switch(model, "noised", True, "train on noised images x_t at sampled t (False: clean images at t = 0)")
    else:
        model.add_argument("--source", choices=["guided-diffusion", "improved-diffusion"], default="guided-diffusion",
                           help="whose flag defaults apply (improved-diffusion rescales timesteps and learned sigmas by default)")
        for name in UNET_FLAGS + PROCESS_FLAGS:
            model.add_argument(f"--{name}", default=None, metavar="VALUE")
        model.add_argument("--class_dropout_prob", type=float, default=0.0,
                           help="replace labels by the null class with this probability, for classifier-free guidance")
    model.add_argument("--schedule_sampler", choices=["uniform", "loss-second-moment"], default="uniform")
    if task != "super_res":
        model.add_argument("--in_channels", type=int, choices=[1, 3], default=None,
                           help="image channels of a new model: 3 (RGB, the originals; the default) or 1 (greyscale: images "
                           "are read as grey, and the model samples grey images)")
    return parser


def given_original_flags(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, str]:
    """The originals' flags the user gave, ``{name: value}`` (the flag helpers apply the defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def check_arguments(args: argparse.Namespace, task: str) -> None:
    """Refuse inconsistent or out-of-range arguments with a one-line message, before any work.

    Raises:
        ValueError: the first problem found.
    """
    if (args.dataset_name is None) == (args.train_data_dir is None):
        raise ValueError(
            "expected one of --dataset_name or --train_data_dir, got " + ("both" if args.dataset_name else "neither")
        )
    if args.gradient_accumulation_steps is None:  # accelerate takes this variable over the Accelerator's argument
        from_env = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
        try:
            args.gradient_accumulation_steps = int(from_env)
        except ValueError:
            raise ValueError(f"expected an integer ACCELERATE_GRADIENT_ACCUMULATION_STEPS, got {from_env!r}") from None
    positive = {"max_train_steps": args.max_train_steps, "train_batch_size": args.train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps, "checkpointing_steps": args.checkpointing_steps}
    for name, value in positive.items():
        if value < 1:
            raise ValueError(f"expected --{name} >= 1, got {value}")
    if args.checkpoints_total_limit is not None and args.checkpoints_total_limit < 1:
        raise ValueError(f"expected --checkpoints_total_limit >= 1, got {args.checkpoints_total_limit}")
    if not args.learning_rate > 0:
        raise ValueError(f"expected --learning_rate > 0, got {args.learning_rate}")
    if args.lr_warmup_steps < 0 or args.dataloader_num_workers < 0:
        raise ValueError(f"expected --lr_warmup_steps and --dataloader_num_workers >= 0, got {args.lr_warmup_steps} and {args.dataloader_num_workers}")
    if args.max_grad_norm is not None and not args.max_grad_norm > 0:
        raise ValueError(f"expected --max_grad_norm > 0, got {args.max_grad_norm}")
    if args.adam_weight_decay < 0:
        raise ValueError(f"expected --adam_weight_decay >= 0, got {args.adam_weight_decay}")
    if args.resolution is not None and args.resolution < 1:
        raise ValueError(f"expected --resolution >= 1, got {args.resolution}")
    from ..data import LABEL_SOURCES  # checked here, not as argparse choices: importing data imports torch

    if args.label_from not in LABEL_SOURCES:
        raise ValueError(f"expected --label_from among {LABEL_SOURCES}, got {args.label_from!r}")
    if args.use_ema:
        from .ema import parse_ema_rates

        parse_ema_rates(args.ema_rate)
    from .model_card import check_license

    check_license(args.license)
    if args.push_to_hub and os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise ValueError("expected the Hub to be reachable for --push_to_hub, got HF_HUB_OFFLINE set")
    _check_validation_arguments(args, task)
    if task != "classifier" and not 0.0 <= args.class_dropout_prob < 1.0:
        raise ValueError(f"expected --class_dropout_prob in [0, 1), got {args.class_dropout_prob}")
    if task == "super_res" and args.small_size is not None and args.small_size < 1:
        raise ValueError(f"expected --small_size >= 1, got {args.small_size}")


def _check_validation_arguments(args: argparse.Namespace, task: str) -> None:
    """The validation flags: ranges, and a validation to judge for --keep_best and --early_stopping_patience."""
    if not 0.0 <= args.validation_split < 1.0:
        raise ValueError(f"expected --validation_split in [0, 1), got {args.validation_split}")
    steps_flag = "--evaluation_steps" if task == "classifier" else "--validation_steps"
    counts = {"--validation_steps": args.validation_steps, "--validation_batch_size": args.validation_batch_size,
              "--early_stopping_patience": args.early_stopping_patience}
    if task == "classifier":
        counts["--evaluation_steps"] = args.evaluation_steps
    for name, value in counts.items():
        if value is not None and value < 1:
            raise ValueError(f"expected {name} >= 1, got {value}")
    held_out = bool(args.validation_data_dir) or args.validation_split > 0
    if task != "classifier":
        if args.validation_samples < 0:
            raise ValueError(f"expected --validation_samples >= 0, got {args.validation_samples}")
        if args.validation_bpd_timesteps < 2:
            raise ValueError(f"expected --validation_bpd_timesteps >= 2, got {args.validation_bpd_timesteps}")
        if args.inception_weights is not None and not os.path.isfile(args.inception_weights):
            raise ValueError(f"expected the FID Inception weights file at --inception_weights {args.inception_weights!r}, got no such file")
    judging = [name for name, on in (("--keep_best", args.keep_best), ("--early_stopping_patience", args.early_stopping_patience)) if on]
    if judging:
        scored = held_out if task == "classifier" else (args.validation_samples > 0 or held_out)
        steps = args.evaluation_steps if task == "classifier" else args.validation_steps
        what = "held-out images (--validation_split or --validation_data_dir)" if task == "classifier" else (
            "--validation_samples > 0 or held-out images (--validation_split or --validation_data_dir)")
        if not steps or not scored:
            raise ValueError(f"expected {steps_flag} and {what} for {' and '.join(judging)}, got "
                             + (f"no {steps_flag}" if not steps else "nothing to score"))


def parse_training_args(task: str, argv: list[str] | None = None, description: str | None = None) -> argparse.Namespace:
    """Parse and check a training script's command line (``argv``; default ``sys.argv[1:]``).

    Errors in the arguments exit with argparse's usage message and the one-line reason.
    """
    parser = build_parser(task, description)
    args = parser.parse_args(argv)
    try:
        check_arguments(args, task)
    except ValueError as error:
        parser.error(str(error))
    args.task = task
    return args
