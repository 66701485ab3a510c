"""Training: the losses, bits/dim evaluation and timestep samplers of the originals, and the accelerate training
loop of the scripts (data, EMA, checkpoints, the diffusion / super-resolution / classifier tasks)."""

from .losses import (
    LossType,
    approx_standard_normal_cdf,
    calc_bpd_loop,
    discretized_gaussian_log_likelihood,
    loss_type_from_flags,
    mean_flat,
    normal_kl,
    prior_bpd,
    training_losses,
    vb_terms_bpd,
)
from .data import (
    EpochShuffledBatchSampler,
    LabelledImages,
    TrainingImageDataset,
    images_from_dataset,
    images_from_folder,
)
from .ema import ExponentialMovingAverage, parse_ema_rates
from .timestep_samplers import (
    LossAwareSampler,
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)
from .trainer import Trainer, TrainingSetupError, TrainingTask, run_training

__all__ = [
    "EpochShuffledBatchSampler",
    "ExponentialMovingAverage",
    "LabelledImages",
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "LossType",
    "ScheduleSampler",
    "Trainer",
    "TrainingImageDataset",
    "TrainingSetupError",
    "TrainingTask",
    "UniformSampler",
    "approx_standard_normal_cdf",
    "calc_bpd_loop",
    "create_named_schedule_sampler",
    "discretized_gaussian_log_likelihood",
    "images_from_dataset",
    "images_from_folder",
    "loss_type_from_flags",
    "mean_flat",
    "normal_kl",
    "parse_ema_rates",
    "prior_bpd",
    "run_training",
    "training_losses",
    "vb_terms_bpd",
]
