"""Convert an original DDPM checkpoint (cifar10 / LSUN, the PyTorch port of the TensorFlow release) to a pipeline folder.

    guided-diffusers-convert-ddpm --checkpoint ema_diffusion_cifar10_model/model-790000.ckpt --output ddpm-cifar10

The network is a diffusers UNet2DModel; cifar10 samples with the fixed_large variance, the LSUN models with fixed_small.
With neither --preset nor --model_config, the preset is picked from the checkpoint's path.
"""

from __future__ import annotations

import argparse
import sys

from .common import exit_cleanly_on_sigterm, exit_on, json_object


def _presets_help() -> str:
    from ..conversion.presets import PRESETS

    lines = ["presets (plain and EMA weights of each released model):"]
    for preset in PRESETS["ddpm"].values():
        lines.append(f"  {preset.name:20s} {preset.scheduler['variance_type']}  {preset.description}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, epilog=_presets_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--preset", help="cifar10, lsun_bedroom, lsun_cat, lsun_church (and their _ema variants)")
    model.add_argument("--model_config", type=json_object, help="the DDPM port's Model kwargs (inline JSON or a .json file): ch, ch_mult, num_res_blocks, attn_resolutions, dropout, resolution, in_channels, out_ch")
    parser.add_argument("--output", required=True)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", help="upload the folder to this Hub repo (uses your token, see `hf auth login`)")
    parser.add_argument("--license", help="the model card's license for your own checkpoint (converted with flags or a config): a Hub "
                        "license identifier such as mit, apache-2.0 or cc-by-nc-4.0 (default: unknown, i.e. not stated); a preset's release states its own")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, convert, print where the folder went; a refused input exits 2 with one line."""
    args = build_parser().parse_args(argv)
    from ..conversion.writing import convert_ddpm
    from ..publishing import HubPushError

    with exit_cleanly_on_sigterm():
        output = exit_on((ValueError, OSError, HubPushError), lambda: convert_ddpm(
            args.checkpoint, args.output, preset=args.preset, model_config=args.model_config, dtype=args.dtype,
            overwrite=args.overwrite, push_to_hub=args.push_to_hub,
            license=args.license,
        ))
    print(f"wrote {output}" + (f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
