"""Training: the losses and timestep samplers of the originals, and the accelerate training
loop of the scripts (data, EMA, checkpoints, the diffusion / super-resolution / classifier tasks).

The names below are imported on first use, so that the training command lines build their parser (``args.py``,
argparse only) in ``--help`` without importing torch.
"""

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


def __getattr__(name: str):
    """The public names, all imported on first use of one."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ..schedulers.likelihood import (
        approx_standard_normal_cdf,
        discretized_gaussian_log_likelihood,
        mean_flat,
        normal_kl,
        prior_bpd,
        vb_terms_bpd,
    )
    from .losses import LossType, loss_type_from_flags, training_losses
    from ..data import (
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
    from .trainer import Trainer, TrainingSetupError, TrainingTask
    from .tasks import run_training

    globals().update({key: value for key, value in locals().items() if key in __all__})
    return globals()[name]
