"""`accelerate launch -m guided_diffusers.cli.train_diffusion`: the module form of guided-diffusers-train-diffusion."""

from .train import train_diffusion

if __name__ == "__main__":
    train_diffusion()
