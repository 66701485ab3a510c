"""From the originals' checkpoints and flags to our models (originals.py) and to pipeline folders (writing.py).

The names below are imported on first use, so that the converters' command lines list the presets (``presets.py``,
plain data) in ``--help`` without importing torch.
"""

__all__ = [
    "adm_classifier_config",
    "adm_unet_config",
    "classifier_kwargs_from_flags",
    "convert_adm",
    "convert_classifier_checkpoint",
    "convert_ddpm",
    "convert_ddpm_checkpoint",
    "convert_unet_checkpoint",
    "ddpm_unet_config",
    "load_original_state_dict",
    "parse_flags",
    "scheduler_config_from_diffusion_flags",
    "timestep_scale_from_flags",
    "unet_kwargs_from_flags",
]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .flags import (
        classifier_kwargs_from_flags,
        parse_flags,
        scheduler_config_from_diffusion_flags,
        timestep_scale_from_flags,
        unet_kwargs_from_flags,
    )
    from .originals import (
        adm_classifier_config,
        adm_unet_config,
        convert_classifier_checkpoint,
        convert_ddpm_checkpoint,
        convert_unet_checkpoint,
        ddpm_unet_config,
        load_original_state_dict,
    )
    from .writing import convert_adm, convert_ddpm

    globals().update({key: value for key, value in locals().items() if key in __all__})
    return globals()[name]
