"""Checkout wrapper of ``guided-diffusers-image-nll`` (guided_diffusers.cli.image_nll); see its --help."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from guided_diffusers.cli.image_nll import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
