"""Train an ADM-U super-resolution model with accelerate: guided-diffusion's super_res_train.py.

    python scripts/train_super_res.py --train_data_dir images/ --large_size 256 --small_size 64 \
        --max_train_steps 100000 --num_channels 192 --num_res_blocks 2 --learn_sigma True --output_dir my-upsampler
    accelerate launch --num_processes 8 scripts/train_super_res.py ...

The model learns x_large from noise given the target downsampled by area averaging to --small_size, as the
original does. The trained ADMUpsamplingPipeline (EMA weights) is saved into --output_dir.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from guided_diffusers.training.trainer import main as train

    train("super_res", argv, __doc__)


if __name__ == "__main__":
    main()
