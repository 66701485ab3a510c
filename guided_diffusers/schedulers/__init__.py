"""Schedulers and the shared Gaussian diffusion math."""

from .gaussian import (
    BETA_SCHEDULES,
    DIFFUSERS_BETA_SCHEDULES,
    MEAN_TYPES,
    VARIANCE_TYPES,
    GaussianDiffusion,
    ReverseStepPrediction,
    betas_for_alpha_bar,
    diffusers_schedule,
    get_beta_schedule,
    get_ddpm_beta_schedule,
    get_named_beta_schedule,
    linear_schedule_bounds,
    respace_betas,
    scheduler_config_from_diffusion_flags,
    space_timesteps,
)
from .scheduling_guided_ddim import GuidedDDIMInverseOutput, GuidedDDIMScheduler, GuidedDDIMSchedulerOutput
from .scheduling_guided_ddpm import GuidedDDPMScheduler, GuidedDDPMSchedulerOutput
from .scheduling_utils import diffusers_scheduler_kwargs, to_diffusers_scheduler

__all__ = [
    "BETA_SCHEDULES",
    "DIFFUSERS_BETA_SCHEDULES",
    "MEAN_TYPES",
    "VARIANCE_TYPES",
    "GaussianDiffusion",
    "GuidedDDIMInverseOutput",
    "GuidedDDIMScheduler",
    "GuidedDDIMSchedulerOutput",
    "GuidedDDPMScheduler",
    "GuidedDDPMSchedulerOutput",
    "ReverseStepPrediction",
    "betas_for_alpha_bar",
    "diffusers_schedule",
    "diffusers_scheduler_kwargs",
    "get_beta_schedule",
    "get_ddpm_beta_schedule",
    "get_named_beta_schedule",
    "linear_schedule_bounds",
    "respace_betas",
    "scheduler_config_from_diffusion_flags",
    "space_timesteps",
    "to_diffusers_scheduler",
]
