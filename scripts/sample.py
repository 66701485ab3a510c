"""Sample from a pipeline folder: the originals' image_sample, classifier_sample and super_res_sample in one script.

    python scripts/sample.py --pipeline DIR --num_samples 16 --batch_size 4 --timestep_respacing 250 --output_dir out/
    accelerate launch --num_processes 2 scripts/sample.py --pipeline DIR --num_samples 100 --classifier_scale 1.0 ...
    python scripts/sample.py --pipeline UPSAMPLER_DIR --base_samples samples_16x64x64x3.npz --num_samples 16

Writes samples_NxHxWx3.npz (arr_0: uint8 NHWC; arr_1: labels for class-conditional runs) and one PNG per sample.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a pipeline folder or Hub id (ClassifierGuidedPipeline or ADMUpsamplingPipeline)")
    parser.add_argument("--output_dir", default="samples")
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
    parser.add_argument("--clip_denoised", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--base_samples", default=None, help="for an upsampling pipeline: an .npz of low-resolution images (arr_0) and labels (arr_1)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from accelerate import Accelerator
    from diffusers import DiffusionPipeline

    import guided_diffusers  # noqa: F401  (registers the pipeline classes with diffusers)
    from guided_diffusers import GuidedDDIMScheduler
    from guided_diffusers.pipelines.batch_sampling import SamplingJob, run_sampling_job

    accelerator = Accelerator()
    pipeline = DiffusionPipeline.from_pretrained(args.pipeline, torch_dtype=getattr(torch, args.dtype))
    if args.use_ddim:
        pipeline.scheduler = GuidedDDIMScheduler.from_config(pipeline.scheduler.config)
    pipeline = pipeline.to(accelerator.device)
    pipeline.set_progress_bar_config(disable=not accelerator.is_local_main_process)
    labels = None
    if args.class_labels:
        from guided_diffusers.pipelines.labels import resolve_class_labels

        names = [v.strip() for v in args.class_labels.split(",")]
        values = [int(v) if v.isdigit() else v for v in names]
        num_classes = getattr(pipeline.unet.config, "num_classes", None) or getattr(getattr(pipeline, "classifier", None), "config", {}).get("num_classes")
        if not num_classes:
            sys.exit("error: expected no --class_labels for an unconditional pipeline without a classifier")
        labels = resolve_class_labels(values, num_classes, pipeline.config.get("id2label")).tolist()
    job = SamplingJob(
        num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed, class_labels=labels,
        classifier_scale=args.classifier_scale, guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps, timestep_respacing=args.timestep_respacing, eta=args.eta,
        clip_denoised=args.clip_denoised, base_samples=args.base_samples,
    )
    path = run_sampling_job(pipeline, job, args.output_dir, accelerator)
    if path is not None:
        print(f"saved {args.num_samples} samples to {path}; sampled with {accelerator.num_processes} processes")


if __name__ == "__main__":
    main()
