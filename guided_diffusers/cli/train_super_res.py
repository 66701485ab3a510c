"""`accelerate launch -m guided_diffusers.cli.train_super_res`: the module form of guided-diffusers-train-super-res."""

from .train import train_super_res

if __name__ == "__main__":
    train_super_res()
