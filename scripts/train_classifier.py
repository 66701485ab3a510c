"""Train a noisy classifier for classifier guidance with accelerate: guided-diffusion's classifier_train.py.

    python scripts/train_classifier.py --train_data_dir imagenet/train --validation_data_dir imagenet/val \
        --resolution 128 --max_train_steps 300000 --lr_scheduler linear --adam_weight_decay 0.05 \
        --learning_rate 3e-4 --classifier_depth 2 --classifier_width 128 --classifier_pool attention
    accelerate launch --num_processes 8 scripts/train_classifier.py ...

Trains on images noised to sampled timesteps of the process given by --diffusion_steps / --noise_schedule (or clean
ones with --noised False), reports top-1/top-5 accuracy on held-out images, and saves an ADMClassifier (with the
class names as id2label and the process's scheduler_config.json) into --output_dir.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from guided_diffusers.training.trainer import main as train

    train("classifier", argv, __doc__)


if __name__ == "__main__":
    main()
