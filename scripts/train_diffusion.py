"""Checkout wrapper of ``guided-diffusers-train-diffusion`` (guided_diffusers.cli.train.train_diffusion); see its --help."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from guided_diffusers.cli.train import train_diffusion  # noqa: E402

if __name__ == "__main__":
    train_diffusion()
