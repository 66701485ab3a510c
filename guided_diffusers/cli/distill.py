"""guided-diffusers-distill: distil a pipeline folder into a student that samples in 1 to 4 steps (consistency or
progressive distillation), with the teacher's guidance folded in, on the training scripts' accelerate loop."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """Distil one of our pipelines (converted or trained) into a 1-4 step student: consistency distillation with an
EMA target network (or progressive distillation, --method progressive), the teacher's classifier-free guidance (the
weight becomes a student input) or classifier guidance (folded in at one scale) included.

    accelerate launch -m guided_diffusers.cli.distill --teacher demo_output/pipeline --train_data_dir digits/ \\
        --guidance classifier-free --w_min 1 --w_max 4 --max_train_steps 2000 --output_dir distilled

The loop's flags, checkpoints, resumption and logs are the training scripts'; the student's pipeline folder
(ADMConsistencyPipeline: the student U-Net and diffusers' CMStochasticIterativeScheduler) is saved into --output_dir,
loadable with DiffusionPipeline.from_pretrained, with a model card that says how it was distilled and from what.
"""


def build_distill_parser() -> argparse.ArgumentParser:
    """The training scripts' parser (data, loop) with the distillation's flags; the model comes from ``--teacher``."""
    from ..training.args import build_parser

    parser = build_parser("diffusion", DESCRIPTION)
    parser.set_defaults(output_dir="distilled-student", ema_rate="0.99")  # distillations are short: a slow average keeps the start
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", required=True, help="the pipeline folder to distil (an epsilon-predicting ADM with a guided scheduler)")
    group.add_argument("--method", choices=["consistency", "progressive"], default="consistency",
                       help="consistency distillation (an EMA target network) or progressive distillation (the steps halved per stage; "
                       "the stages split --max_train_steps evenly)")
    group.add_argument("--guidance", choices=["classifier-free", "classifier", "none"], default="classifier-free",
                       help="the teacher's guidance the student learns: classifier-free (its weight w becomes a student input), "
                       "classifier (the teacher's classifier at --classifier_scale, folded in) or none")
    group.add_argument("--w_min", type=float, default=1.0, help="the smallest classifier-free weight distilled (1: the conditional model)")
    group.add_argument("--w_max", type=float, default=4.0, help="the largest classifier-free weight distilled")
    group.add_argument("--guidance_scale", type=float, default=None,
                       help="the student's default weight, in its pipeline config (default: the middle of [--w_min, --w_max])")
    group.add_argument("--classifier_scale", type=float, default=None,
                       help="the classifier scale folded in with --guidance classifier (default: the teacher pipeline's classifier_scale)")
    group.add_argument("--unconditional_prob", type=float, default=0.1,
                       help="share of examples distilled with the null class and no guidance, so the student samples unguided too (0: none)")
    group.add_argument("--num_discretization_steps", type=int, default=None,
                       help="consistency: N, the noise levels of the Karras grid the teacher steps between (the consistency models' N; "
                       "default 40); progressive: the first teacher's DDIM steps on that grid (a power of two; default 16), halved per stage down to 1")
    group.add_argument("--target_ema_rate", type=float, default=None,
                       help="the consistency target network's EMA rate (the consistency models' mu; default 0.95)")
    group.add_argument("--teacher_solver", choices=["euler", "heun"], default="euler",
                       help="the teacher's step between grid levels: euler (DDIM's step, one teacher evaluation) or heun (EDM's second-order "
                       "step, two; nearer the exact ODE on a coarse grid)")
    group.add_argument("--adversarial_weight", type=float, default=0.0,
                       help="consistency: the weight of an adversarial term (a small class-conditional critic trained on the training images "
                       "against the student's x_0), which pulls the student past the end of the teacher's ODE towards the data (0: none)")
    return parser


def check_distill_arguments(args: argparse.Namespace) -> None:
    """Refuse what a distillation cannot take, in one line, before any work (after the training scripts' checks)."""
    from ..training.args import PROCESS_FLAGS, UNET_FLAGS, check_arguments, given_original_flags

    check_arguments(args, "diffusion")
    given = [name for name in given_original_flags(args, UNET_FLAGS + PROCESS_FLAGS) if name not in ("use_fp16", "use_checkpoint")]
    if args.init_pipeline is not None:
        given.append("init_pipeline")
    if args.in_channels is not None:
        given.append("in_channels")
    if given:
        raise ValueError(f"expected no model or process flags (the student is the --teacher's model), got {', '.join('--' + n for n in given)}")
    if args.class_dropout_prob:
        raise ValueError(f"expected no --class_dropout_prob (use --unconditional_prob), got {args.class_dropout_prob}")
    if not 1.0 <= args.w_min <= args.w_max:
        raise ValueError(f"expected 1 <= --w_min <= --w_max, got {args.w_min} and {args.w_max}")
    if args.guidance_scale is None:
        args.guidance_scale = (args.w_min + args.w_max) / 2
    if args.guidance == "classifier-free" and not args.w_min <= args.guidance_scale <= args.w_max:
        raise ValueError(f"expected --guidance_scale in [--w_min, --w_max] = [{args.w_min}, {args.w_max}], got {args.guidance_scale}")
    if args.classifier_scale is not None and (args.guidance != "classifier" or args.classifier_scale < 0):
        raise ValueError(f"expected --classifier_scale >= 0 with --guidance classifier only, got {args.classifier_scale} with --guidance {args.guidance}")
    if not 0.0 <= args.unconditional_prob < 1.0:
        raise ValueError(f"expected --unconditional_prob in [0, 1), got {args.unconditional_prob}")
    if args.adversarial_weight < 0:
        raise ValueError(f"expected --adversarial_weight >= 0, got {args.adversarial_weight}")
    if args.num_discretization_steps is None:
        args.num_discretization_steps = 40 if args.method == "consistency" else 16
    if args.num_discretization_steps < 2:
        raise ValueError(f"expected --num_discretization_steps >= 2, got {args.num_discretization_steps}")
    if args.method == "progressive":
        steps = args.num_discretization_steps
        if steps & (steps - 1):
            raise ValueError(f"expected --num_discretization_steps a power of two with --method progressive, got {steps}")
        if args.max_train_steps < steps.bit_length() - 1:
            raise ValueError(f"expected --max_train_steps >= {steps.bit_length() - 1} (one per progressive stage), got {args.max_train_steps}")
        if args.adversarial_weight:
            raise ValueError(f"expected no --adversarial_weight with --method progressive (a consistency term), got {args.adversarial_weight}")
        if args.target_ema_rate is not None:
            raise ValueError(f"expected no --target_ema_rate with --method progressive (its teacher is the previous stage's student), got {args.target_ema_rate}")
        return
    if args.target_ema_rate is None:
        args.target_ema_rate = 0.95
    if not 0.0 <= args.target_ema_rate < 1.0:
        raise ValueError(f"expected --target_ema_rate in [0, 1), got {args.target_ema_rate}")


def parse_distill_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; errors exit with argparse's usage and the one-line reason."""
    parser = build_distill_parser()
    args = parser.parse_args(argv)
    try:
        check_distill_arguments(args)
    except ValueError as error:
        parser.error(str(error))
    args.task = "distill"
    return args


def main(argv: list[str] | None = None) -> None:
    """Distil as the command line says; a run refused before training, and a failed Hub upload, end in one line."""
    args = parse_distill_args(argv)  # first: --help and a bad flag answer without importing torch
    from ..publishing import HubPushError
    from ..training.tasks import run_training
    from ..training.trainer import TrainingSetupError

    try:
        run_training(args)
    except (TrainingSetupError, HubPushError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
