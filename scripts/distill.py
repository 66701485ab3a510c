"""Checkout wrapper of ``guided-diffusers-distill`` (guided_diffusers.cli.distill); see its --help."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from guided_diffusers.cli.distill import main  # noqa: E402

if __name__ == "__main__":
    main()
