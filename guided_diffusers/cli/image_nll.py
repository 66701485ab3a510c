"""The negative log-likelihood bound of a pipeline's model over a dataset, in bits/dim (the originals' image_nll).

    guided-diffusers-image-nll --pipeline DIR --dataset IMAGES_DIR --batch_size 16 --output_dir nll/
    accelerate launch --num_processes 2 -m guided_diffusers.cli.image_nll --pipeline DIR --dataset cifar10 --split test ...

--dataset is a folder of images (.jpg/.jpeg/.png/.gif/.webp, searched recursively; for class-conditional models the
class is the file name before its first "_"), a `save_to_disk` folder, or a Hub dataset id (--split, default test,
--image_column and --label_column pick what to read). Images are read and centre-cropped to the model's sample_size
by the training data loader, as the originals do. Batch b uses noise seeded seed + b: the result is the same for any
number of processes. Two CPU processes: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...

Writes OUTPUT_DIR/bpd_terms.npz (per image: indices, total_bpd, prior_bpd; per step, in the originals' loop order
T-1..0: timesteps, vb_terms, xstart_mse_terms, mse_terms) and OUTPUT_DIR/bpd_summary.json, and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..conversion.flags import str2bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a pipeline folder or Hub id with a unet and a guided scheduler")
    parser.add_argument("--dataset", "--data_dir", dest="dataset", required=True,
                        help="a folder of images, a save_to_disk folder, or a Hub dataset id")
    parser.add_argument("--split", default=None, help="datasets: the split to evaluate (default: test)")
    parser.add_argument("--image_column", default=None, help="datasets: the image column (default: image)")
    parser.add_argument("--label_column", default=None, help="datasets: the class label column (default: label)")
    parser.add_argument("--num_samples", type=int, default=None, help="evaluate the first N images (default: all)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="batch b draws its noise from seed + b")
    parser.add_argument("--clip_denoised", type=str2bool, default=True)
    parser.add_argument("--null_label", action="store_true",
                        help="label-dropout models: condition on the null label (the unconditional bound), reading no labels")
    parser.add_argument("--output_dir", default="nll_results")
    parser.add_argument("--step_progress", action="store_true", help="also show a bar over the steps of each batch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from diffusers import DiffusionPipeline

    import guided_diffusers.pipelines  # noqa: F401  (registers our classes with diffusers' loader)
    from guided_diffusers.evaluation.image_data import open_evaluation_images
    from guided_diffusers.evaluation.nll import (
        check_conditioning,
        check_pipeline_for_bpd,
        evaluate_bits_per_dim,
        write_bits_per_dim_results,
    )

    try:
        # Every input is checked before the accelerator starts or an image is decoded.
        if args.batch_size < 1:
            raise ValueError(f"expected --batch_size >= 1, got {args.batch_size}")
        if args.num_samples is not None and args.num_samples < 1:
            raise ValueError(f"expected --num_samples >= 1, got {args.num_samples}")
        output_dir = Path(args.output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise ValueError(f"expected --output_dir to be a directory, got the file {args.output_dir!r}")
        try:
            pipeline = DiffusionPipeline.from_pretrained(args.pipeline)
        except (OSError, ValueError, TypeError, KeyError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"expected a pipeline folder or Hub id at --pipeline {args.pipeline!r}: {first_line}") from error
        scheduler, unet = check_pipeline_for_bpd(pipeline)
        conditional = bool(getattr(unet.config, "num_classes", None))
        images = open_evaluation_images(
            args.dataset,
            image_size=int(unet.config.sample_size),
            split=args.split,
            image_column=args.image_column,
            label_column=args.label_column,
            with_labels=conditional and not args.null_label,
        )
        check_conditioning(unet, images, use_null_label=args.null_label)
        if args.num_samples is not None and args.num_samples > len(images):
            raise ValueError(f"expected --num_samples <= {len(images)} (the images in {args.dataset!r}), got {args.num_samples}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from accelerate import Accelerator

    accelerator = Accelerator()
    unet = unet.to(accelerator.device, torch.float32).eval()  # the bound in float32, whatever the stored dtype
    results = evaluate_bits_per_dim(
        scheduler, unet, images, batch_size=args.batch_size, num_images=args.num_samples, seed=args.seed,
        clip_denoised=args.clip_denoised, use_null_label=args.null_label, accelerator=accelerator,
        step_progress=args.step_progress,
    )
    if accelerator.is_main_process:
        metadata = {
            "pipeline": str(args.pipeline),
            "dataset": images.source,
            "split": args.split,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "clip_denoised": args.clip_denoised,
            "null_label": args.null_label,
        }
        npz_path, json_path = write_bits_per_dim_results(results, output_dir, metadata)
        for line in results.report_lines():
            print(line)
        print(f"wrote {npz_path} and {json_path}")
    accelerator.wait_for_everyone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
