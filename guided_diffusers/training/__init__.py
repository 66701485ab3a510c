"""Training math: losses, bits/dim evaluation and timestep samplers."""

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
from .timestep_samplers import (
    LossAwareSampler,
    LossSecondMomentResampler,
    ScheduleSampler,
    UniformSampler,
    create_named_schedule_sampler,
)

__all__ = [
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "LossType",
    "ScheduleSampler",
    "UniformSampler",
    "approx_standard_normal_cdf",
    "calc_bpd_loop",
    "create_named_schedule_sampler",
    "discretized_gaussian_log_likelihood",
    "loss_type_from_flags",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "training_losses",
    "vb_terms_bpd",
]
