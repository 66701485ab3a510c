"""Checkout wrapper of ``guided-diffusers-convert-ddpm`` (guided_diffusers.cli.convert_ddpm)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from guided_diffusers.cli.convert_ddpm import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
