"""Checkout wrapper of ``guided-diffusers-convert-guided-diffusion`` (guided_diffusers.cli.convert_guided_diffusion)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from guided_diffusers.cli.convert_guided_diffusion import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
