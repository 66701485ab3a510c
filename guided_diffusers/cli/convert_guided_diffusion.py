"""Convert a guided-diffusion, improved-diffusion or consistency_models checkpoint (and/or a noisy classifier) to a
diffusers pipeline folder.

    guided-diffusers-convert-guided-diffusion --checkpoint 256x256_diffusion.pt \\
        --classifier 256x256_classifier.pt --output adm-g-256
    guided-diffusers-convert-guided-diffusion --checkpoint cd_imagenet64_l2.pt --output cd-imagenet64-l2
    guided-diffusers-convert-guided-diffusion --checkpoint model.pt --source improved-diffusion \\
        --model_flags "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True" \\
        --diffusion_flags "--diffusion_steps 4000 --noise_schedule cosine" --output iddpm-64

With neither --preset nor flags, the preset is picked from the file name. --classifier alone writes a classifier
folder, and so does a classifier checkpoint given to --checkpoint (a classifier preset's file, or with classifier flags).
"""

from __future__ import annotations

import argparse
import sys

from .common import exit_cleanly_on_sigterm, exit_on, json_object


def _presets_help() -> str:
    from ..conversion.presets import PRESETS

    lines = ["presets (the released checkpoints; picked from the file name when no flags are given):"]
    for preset in PRESETS["adm"].values():
        lines.append(f"  {preset.name:34s} {preset.family:19s} {preset.kind}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=_presets_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="the original diffusion model .pt (or a classifier .pt, converted as a classifier)")
    parser.add_argument("--source", choices=["guided-diffusion", "improved-diffusion", "consistency-models"],
                        help="flag defaults (default: the preset's, else guided-diffusion); consistency-models writes an ADMConsistencyPipeline")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", help="a released checkpoint's name (see below)")
    model.add_argument("--model_flags", help='the original MODEL_FLAGS, e.g. "--num_channels 256 --class_cond True ..." '
                       "(consistency_models: image_sample.py's flags, with --training_mode and --steps)")
    model.add_argument("--model_config", type=json_object, help="the original UNetModel/SuperResModel constructor kwargs (inline JSON or a .json file)")
    parser.add_argument("--diffusion_flags", help='the original DIFFUSION_FLAGS, e.g. "--diffusion_steps 4000 --noise_schedule cosine" '
                        '(consistency_models: "--training_mode consistency_distillation --steps 40 --ts 0,22,39")')
    parser.add_argument("--classifier", help="the original noisy classifier .pt")
    classifier = parser.add_mutually_exclusive_group()
    classifier.add_argument("--classifier_preset")
    classifier.add_argument("--classifier_flags", help='the original CLASSIFIER_FLAGS, e.g. "--image_size 256 --classifier_depth 2 ..."')
    classifier.add_argument("--classifier_config", type=json_object, help="EncoderUNetModel constructor kwargs (inline JSON or a .json file)")
    parser.add_argument("--output", required=True, help="the pipeline folder to write")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="dtype of the stored weights")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub repo (uses your token, see `hf auth login`)")
    parser.add_argument("--license", help="the model card's license for your own checkpoint (converted with flags or a config): a Hub "
                        "license identifier such as mit, apache-2.0 or cc-by-nc-4.0 (default: unknown, i.e. not stated); a preset's release states its own")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert, print where the folder went; a refused input exits 2 with one line."""
    args = build_parser().parse_args(argv)
    from ..conversion.writing import convert_adm
    from ..publishing import HubPushError

    with exit_cleanly_on_sigterm():
        output = exit_on((ValueError, OSError, HubPushError), lambda: convert_adm(
            args.checkpoint, args.output, source=args.source, preset=args.preset, model_flags=args.model_flags,
            model_config=args.model_config, diffusion_flags=args.diffusion_flags, classifier=args.classifier,
            classifier_preset=args.classifier_preset, classifier_flags=args.classifier_flags,
            classifier_config=args.classifier_config, dtype=args.dtype, overwrite=args.overwrite, push_to_hub=args.push_to_hub,
            license=args.license,
        ))
    print(f"wrote {output}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
