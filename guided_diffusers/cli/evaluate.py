"""Sample quality of a sample batch against a reference batch, as the originals' evaluator reports it; and
reference batches in the originals' format.

    guided-diffusers-evaluate REF_BATCH.npz SAMPLE_BATCH.npz [--batch_size 64] [--device cpu] [--cache] \
        [--json OUT.json] [--inception_weights PATH] [--pr_distances float16] [--allow_tf32]
    guided-diffusers-evaluate REF_BATCH.npz SAMPLE_PNGS/ --image_size 64
    accelerate launch --num_processes 8 -m guided_diffusers.cli.evaluate REF_BATCH.npz SAMPLE_BATCH.npz --cache
    guided-diffusers-evaluate --write_reference REF.npz --source IMAGES [--image_size 256] [--num_images 10000]

(``python scripts/evaluate.py ...`` from a checkout is the same.)

Each batch is the originals' .npz format (``arr_0`` uint8 NHWC, RGB or grey; a reference may carry precomputed
``mu``/``sigma``/``mu_s``/``sigma_s``) or a folder of images, resized and centre-cropped to --image_size as
--write_reference prepares them. Prints "Inception Score: ...", "FID: ...", "sFID: ...", "Precision: ...",
"Recall: ..." as the original does. Under ``accelerate launch`` every process extracts the features of a share of
the images. The FID Inception weights come from --inception_weights, else $GUIDED_DIFFUSERS_INCEPTION_WEIGHTS, else
the Hub.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

# Plain data only here: --help answers without importing torch; main imports the evaluator once the arguments parse.
from guided_diffusers.evaluation.settings import DEFAULT_BATCH_SIZE, DISTANCE_PRECISIONS

if TYPE_CHECKING:  # the annotations' names, for type checkers only (importing them at run time imports torch)
    from guided_diffusers.evaluation import DecodedImages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "batches", nargs="*", metavar="REF_BATCH SAMPLE_BATCH",
        help="reference batch .npz (arr_0 uint8 NHWC, optionally mu/sigma/mu_s/sigma_s), then the sample batch .npz; "
        "either may be a folder of images instead (with --image_size)",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images per Inception forward")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--inception_weights", default=None, help="local FID Inception weights (.pth or .safetensors)")
    parser.add_argument(
        "--cache", action="store_true",
        help="keep each batch's features and statistics beside it (NAME.inception-features.npz) and reuse them",
    )  # fmt: skip
    parser.add_argument(
        "--pr_distances", choices=DISTANCE_PRECISIONS, default="float16",
        help="precision/recall distances: float16 = the original's (default), float32/float64 = exact",
    )  # fmt: skip
    parser.add_argument(
        "--allow_tf32", action="store_true",
        help="let the Inception pass use TF32 on GPUs that have it (faster; the figures then differ from float32)",
    )  # fmt: skip
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    reference = parser.add_argument_group("writing a reference batch (instead of evaluating)")
    reference.add_argument("--write_reference", default=None, metavar="OUT.npz", help="the reference batch to write")
    reference.add_argument(
        "--source", default=None,
        help="its images: an .npz batch, a folder of images, a save_to_disk folder or a Hub dataset id",
    )  # fmt: skip
    reference.add_argument(
        "--image_size", type=int, default=None,
        help="side images are resized and centre-cropped to (an image --source or an image folder batch; not for .npz)",
    )  # fmt: skip
    reference.add_argument("--num_images", type=int, default=10000, help="images kept in arr_0 (the originals keep 10000)")
    reference.add_argument("--seed", type=int, default=0, help="seed of the choice of the kept images")
    reference.add_argument("--split", default=None, help="dataset split (default: test)")
    reference.add_argument("--image_column", default=None, help="dataset image column (default: image)")
    reference.add_argument("--overwrite", action="store_true", help="replace an existing --write_reference file")
    return parser.parse_args(argv)


def _check_writable_folder(path: Path, what: str) -> None:
    folder = path.resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ValueError(f"expected {what} in an existing writable directory, got {str(path)!r}")


def _check_reference_args(args: argparse.Namespace):
    """The --write_reference run's image source, after checking every argument."""
    if args.batches:
        raise ValueError(f"expected no batches with --write_reference, got {args.batches}")
    if args.source is None:
        raise ValueError("expected --source with --write_reference (an .npz, an image folder or a dataset)")
    output = Path(args.write_reference)
    if output.suffix != ".npz":
        raise ValueError(f"expected --write_reference to name an .npz file, got {str(output)!r}")
    if output.exists() and not output.is_file():
        raise ValueError(f"expected --write_reference to name a file, got the folder {str(output)!r} (not replaced, even with --overwrite)")
    if output.exists() and not args.overwrite:
        raise ValueError(f"expected a new --write_reference file, {str(output)!r} exists (pass --overwrite)")
    _check_writable_folder(output, "--write_reference")
    if args.num_images < 4:
        raise ValueError(f"expected --num_images >= 4 (precision/recall need more than 3), got {args.num_images}")
    if str(args.source).endswith(".npz"):
        if args.image_size is not None or args.split is not None or args.image_column is not None:
            raise ValueError("expected no --image_size/--split/--image_column with an .npz --source (its images are used as they are)")
        from guided_diffusers.evaluation import NpzImages, inspect_image_batch

        info = inspect_image_batch(args.source)
        return NpzImages(info.path, info.num_images)
    return _decoded_images(args.source, args, "the image source")


def _decoded_images(source: str, args: argparse.Namespace, what: str) -> DecodedImages:
    """An image folder or dataset, resized and centre-cropped to --image_size (every image header read first)."""
    if args.image_size is None or args.image_size < 1:
        raise ValueError(f"expected --image_size >= 1 for {what} {source!r} (its images are resized and centre-cropped to it), got {args.image_size}")
    from guided_diffusers.evaluation import DecodedImages
    from guided_diffusers.evaluation.image_data import open_evaluation_images

    return DecodedImages(open_evaluation_images(source, image_size=args.image_size, split=args.split, image_column=args.image_column))


def _check_evaluation_args(args: argparse.Namespace):
    """The two batches (:class:`NpzImages` or, for folders, :class:`DecodedImages`), after checking every argument."""
    if len(args.batches) != 2:
        raise ValueError(f"expected two batches (REF_BATCH SAMPLE_BATCH), got {len(args.batches)}")
    folders = [batch for batch in args.batches if Path(batch).is_dir()]
    stray = [name for name in ("source", "image_size", "split", "image_column") if getattr(args, name) is not None]
    if args.source is not None or (stray and not folders):
        raise ValueError(f"expected --{stray[0]} only with --write_reference or an image folder batch")
    if args.cache and folders:
        raise ValueError(f"expected .npz batches with --cache (features are cached beside an .npz file), got the folder {folders[0]!r}")
    from guided_diffusers.evaluation import NpzImages, inspect_image_batch
    from guided_diffusers.evaluation.metrics import MANIFOLD_NUM_NEIGHBOURS

    sources = []
    for batch in args.batches:
        if Path(batch).is_dir():
            source = _decoded_images(batch, args, "the image folder")
            if source.num_images <= MANIFOLD_NUM_NEIGHBOURS:
                raise ValueError(f"expected at least {MANIFOLD_NUM_NEIGHBOURS + 1} images in {batch!r}, got {source.num_images}")
        else:
            if not Path(batch).exists():
                raise FileNotFoundError(f"expected an .npz image batch or a folder of images at {batch!r}, got no such file or folder")
            info = inspect_image_batch(batch)
            source = NpzImages(info.path, info.num_images)
        sources.append(source)
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise ValueError(f"expected --json in an existing directory, got {args.json!r}")
    if args.json is not None and Path(args.json).is_dir():
        raise ValueError(f"expected --json to name a file, got the folder {args.json!r}")
    if args.cache:
        for source in sources:
            _check_writable_folder(source.path, "--cache: the batch")
    return sources


def _is_main_launch_process() -> bool:
    # Before accelerate starts: under `accelerate launch` every process gets RANK; only rank 0 reports errors.
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from guided_diffusers.evaluation import (
        InceptionWeightsUnavailableError,
        evaluate_image_batches,
        load_fid_inception,
        make_reference_batch,
    )
    from guided_diffusers.publishing import write_atomically

    try:
        # Every input is checked before the network is built or an image is read.
        if args.batch_size < 1:
            raise ValueError(f"expected --batch_size >= 1, got {args.batch_size}")
        if args.write_reference is not None:
            source, batches = _check_reference_args(args), None
        else:
            source, batches = None, _check_evaluation_args(args)
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # The CPU launch (ACCELERATE_USE_CPU=1, as Accelerator reads it) must give gloo processes, not one each.
        state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
        if state.num_processes > 1 and args.device is not None:
            raise ValueError(f"expected no --device under accelerate launch (each process has its own), got {args.device!r}")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if state.num_processes > 1:
            device = state.device
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"expected an available --device, got {args.device!r} (CUDA is not available)")
        model = load_fid_inception(args.inception_weights, device=device)
    except (FileNotFoundError, ValueError, RuntimeError, InceptionWeightsUnavailableError) as error:
        if _is_main_launch_process():
            print(f"error: {error}", file=sys.stderr)
        return 2

    progress = not args.no_progress
    if source is not None:
        written = make_reference_batch(
            source, args.write_reference, model, num_images=args.num_images, seed=args.seed,
            batch_size=args.batch_size, device=device, state=state, progress=progress, allow_tf32=args.allow_tf32,
        )  # fmt: skip
        if written is not None:
            print(f"wrote the reference batch {written} ({min(args.num_images, source.num_images)} of {source.num_images} images)")
        _leave_process_group(state)
        return 0

    ref_source, sample_source = batches
    results = evaluate_image_batches(
        ref_source, sample_source, model, batch_size=args.batch_size, device=device, progress=progress,
        state=state, cache=args.cache, distance_precision=args.pr_distances, allow_tf32=args.allow_tf32,
    )  # fmt: skip
    if results is not None:
        for line in results.report_lines():
            print(line)
        if args.json is not None:
            report = {
                "ref_batch": args.batches[0],
                "sample_batch": args.batches[1],
                "num_ref_images": ref_source.num_images,
                "num_sample_images": sample_source.num_images,
                "pr_distances": args.pr_distances,
                "allow_tf32": args.allow_tf32,
                "num_processes": state.num_processes,
                **results.to_dict(),
            }
            text = (json.dumps(report, indent=2) + "\n").encode()
            write_atomically(Path(args.json), lambda file: file.write(text), ".json")
    # No final barrier: the other processes are done once the features are gathered, and the metrics (minutes for
    # 50,000 samples on a CPU) could outlast a collective's timeout.
    _leave_process_group(state)
    return 0


def _leave_process_group(state) -> None:
    """Destroy this process's process group before the interpreter exits: left to the interpreter's teardown, gloo's
    destructor crashed a finished process (SIGSEGV, 1 run in 2 of the two-process test) while its peer still ran."""
    import torch

    if state.num_processes > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
