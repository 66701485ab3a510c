"""Sample quality of a sample batch against a reference batch, as the originals' evaluator reports it.

    guided-diffusers-evaluate REF_BATCH.npz SAMPLE_BATCH.npz [--batch_size 64] [--device cpu] \
        [--json OUT.json] [--inception_weights PATH]

Both batches are the originals' .npz format (``arr_0`` uint8 NHWC; a reference may carry precomputed
``mu``/``sigma``/``mu_s``/``sigma_s``). Prints "Inception Score: ...", "FID: ...", "sFID: ...", "Precision: ...",
"Recall: ..." as the original does. The FID Inception weights come from --inception_weights, else
$GUIDED_DIFFUSERS_INCEPTION_WEIGHTS, else the Hub.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from guided_diffusers.evaluation import (
    InceptionWeightsUnavailableError,
    evaluate_image_batches,
    inspect_image_batch,
    load_fid_inception,
)
from guided_diffusers.evaluation.evaluator import DEFAULT_BATCH_SIZE


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref_batch", help="reference batch .npz (arr_0 uint8 NHWC, optionally mu/sigma/mu_s/sigma_s)")
    parser.add_argument("sample_batch", help="sample batch .npz (arr_0 uint8 NHWC)")
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images per Inception forward")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--inception_weights", default=None, help="local FID Inception weights (.pth or .safetensors)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        # Every input is checked before the network is built or an image is read.
        if args.batch_size < 1:
            raise ValueError(f"expected --batch_size >= 1, got {args.batch_size}")
        ref_info = inspect_image_batch(args.ref_batch)
        sample_info = inspect_image_batch(args.sample_batch)
        if args.json is not None and not Path(args.json).resolve().parent.is_dir():
            raise ValueError(f"expected --json in an existing directory, got {args.json!r}")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"expected an available --device, got {args.device!r} (CUDA is not available)")
        model = load_fid_inception(args.inception_weights, device=device)
    except (FileNotFoundError, ValueError, RuntimeError, InceptionWeightsUnavailableError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    results = evaluate_image_batches(ref_info.path, sample_info.path, model, batch_size=args.batch_size, device=device)
    for line in results.report_lines():
        print(line)
    if args.json is not None:
        report = {
            "ref_batch": str(args.ref_batch),
            "sample_batch": str(args.sample_batch),
            "num_ref_images": ref_info.num_images,
            "num_sample_images": sample_info.num_images,
            **results.to_dict(),
        }
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
