"""Train an ADM / IDDPM diffusion model with accelerate: guided-diffusion's and improved-diffusion's image_train.py.

    python scripts/train_diffusion.py --train_data_dir images/ --resolution 64 --max_train_steps 100000 \
        --num_channels 128 --num_res_blocks 3 --learn_sigma True --noise_schedule cosine --output_dir my-adm
    accelerate launch --num_processes 8 scripts/train_diffusion.py --dataset_name cifar10 --image_column img ...

Model and process flags are the originals' (with --source's defaults); the loop's are diffusers' training examples'.
The trained pipeline (EMA weights) is saved into --output_dir, loadable with DiffusionPipeline.from_pretrained.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from guided_diffusers.training.trainer import main as train

    train("diffusion", argv, __doc__)


if __name__ == "__main__":
    main()
