"""The quick start (`make demo`): a small class-conditional ADM and its noisy classifier trained on scikit-learn's
bundled handwritten digits with the project's own training scripts, then sampled with classifier guidance and
classifier-free guidance (a 50-step ancestral baseline and the fast recipe) and judged: class accuracy from an
independent scikit-learn classifier, Fréchet distance to the real digits, colour and class balance. Offline, about
10 minutes on 2 CPU cores.

Outputs go to demo_output/: the pipeline folder (pipeline/), PNG grids (grids/), the diffusion training's curve
(training_curve.png: the distance to the real digits, validated every 250 steps, and the loss), results.json. Reruns
reuse the trained pipeline unless --retrain.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output")
    parser.add_argument("--retrain", action="store_true", help="train again even if demo_output/pipeline exists")
    parser.add_argument("--diffusion_train_steps", type=int, default=None)
    parser.add_argument("--classifier_train_steps", type=int, default=None)
    parser.add_argument("--samples_per_class", type=int, default=None)
    parser.add_argument("--fast", default=None, help="the fast sampling recipe shown beside the baseline, NAME:STEPS "
                        "(default: the package's fast recipe, guided_diffusers.pipelines.recipes.FAST_RECIPE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill", action="store_true", help="also distil the pipeline into a 1-4 step consistency model "
                        "(demo_output/distilled, guided-diffusers-distill) and judge it beside 250 ancestral steps of its teacher")
    args = parser.parse_args(argv)
    if args.fast is not None:
        from guided_diffusers.pipelines.recipes import SamplingRecipe

        try:
            SamplingRecipe.parse(args.fast)
        except ValueError as error:
            parser.error(str(error))

    from guided_diffusers.demo.quickstart import QuickstartSettings, check_demo_extra, run_quickstart

    try:
        check_demo_extra()  # before any folder is made
    except ModuleNotFoundError as error:
        sys.exit(f"error: {error}")
    settings = QuickstartSettings(output_dir=Path(args.output_dir), retrain=args.retrain, seed=args.seed, distill=args.distill)
    for name in ("diffusion_train_steps", "classifier_train_steps", "samples_per_class", "fast"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    print(run_quickstart(settings), flush=True)


if __name__ == "__main__":
    main()
