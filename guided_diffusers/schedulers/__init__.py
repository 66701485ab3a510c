"""Schedulers and the diffusion math they share: schedules and respacing (``schedules``), the Gaussian process
(``gaussian``), DDIM's steps (``ddim``), our two schedulers and their bridge to stock diffusers schedulers."""

from .gaussian import (
    MEAN_TYPES,
    VARIANCE_TYPES,
    DiffusionTables,
    GaussianDiffusion,
    ReverseStepPrediction,
)
from .schedules import (
    BETA_SCHEDULES,
    DIFFUSERS_BETA_SCHEDULES,
    betas_for_alpha_bar,
    diffusers_schedule,
    get_beta_schedule,
    get_ddpm_beta_schedule,
    get_named_beta_schedule,
    linear_schedule_bounds,
    respace_betas,
    space_timesteps,
)
from .scheduling_guided_ddim import GuidedDDIMInverseOutput, GuidedDDIMScheduler, GuidedDDIMSchedulerOutput
from .scheduling_guided_ddpm import GuidedDDPMScheduler, GuidedDDPMSchedulerOutput

__all__ = [
    "BETA_SCHEDULES",
    "DIFFUSERS_BETA_SCHEDULES",
    "DiffusionTables",
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
    "get_beta_schedule",
    "get_ddpm_beta_schedule",
    "get_named_beta_schedule",
    "linear_schedule_bounds",
    "respace_betas",
    "space_timesteps",
]

