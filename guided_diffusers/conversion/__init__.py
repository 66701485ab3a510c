"""From the originals' checkpoints and flags to our models."""

from .flags import classifier_kwargs_from_flags, parse_flags, scheduler_config_from_diffusion_flags, unet_kwargs_from_flags
from .loading import (
    adm_classifier_config,
    adm_unet_config,
    convert_classifier_checkpoint,
    convert_ddpm_checkpoint,
    convert_unet_checkpoint,
    ddpm_unet_config,
    load_original_state_dict,
)

__all__ = [
    "adm_classifier_config",
    "adm_unet_config",
    "classifier_kwargs_from_flags",
    "convert_classifier_checkpoint",
    "convert_ddpm_checkpoint",
    "convert_unet_checkpoint",
    "ddpm_unet_config",
    "load_original_state_dict",
    "parse_flags",
    "scheduler_config_from_diffusion_flags",
    "unet_kwargs_from_flags",
]
