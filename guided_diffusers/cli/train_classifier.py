"""`accelerate launch -m guided_diffusers.cli.train_classifier`: the module form of guided-diffusers-train-classifier."""

from .train import train_classifier

if __name__ == "__main__":
    train_classifier()
