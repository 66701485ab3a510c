"""guided_diffusers: OpenAI's ADM family (guided-diffusion, improved-diffusion) and the original DDPM, in diffusers."""

import sys
from pathlib import Path

__version__ = "0.1.0"

__all__ = [
    "ADMClassifier",
    "ADMConsistencyPipeline",
    "ADMGuidanceUNet2DModel",
    "ADMImg2ImgPipeline",
    "ADMInpaintPipeline",
    "ADMSuperResUNet2DModel",
    "ADMUNet2DModel",
    "ADMUpsamplingPipeline",
    "ClassifierGuidedPipeline",
    "DDIMInversionPipeline",
    "GuidedDDIMScheduler",
    "GuidedDDPMScheduler",
    "ModelMixin",
    "SchedulerMixin",
]


def _import_public_names() -> None:
    """The package's classes, with diffusers and torch; importing the pipelines registers them with diffusers' loader."""
    # diffusers' component loader accepts a library's classes only if the library exposes these two base classes.
    from diffusers import ModelMixin, SchedulerMixin

    from .models import ADMClassifier, ADMGuidanceUNet2DModel, ADMSuperResUNet2DModel, ADMUNet2DModel
    from .pipelines import (
        ADMConsistencyPipeline,
        ADMImg2ImgPipeline,
        ADMInpaintPipeline,
        ADMUpsamplingPipeline,
        ClassifierGuidedPipeline,
        DDIMInversionPipeline,
    )
    from .schedulers import GuidedDDIMScheduler, GuidedDDPMScheduler

    globals().update(locals())


def __getattr__(name: str):
    """In a console script's process, the classes on first use (the same imports and registration)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _import_public_names()
    return globals()[name]


# A console script (guided-diffusers-*) imports this package only to reach its command in guided_diffusers.cli, which
# imports what it uses once its arguments are parsed: importing diffusers (and torch) here would make `--help` take
# seconds. Anywhere else `import guided_diffusers` imports the classes and registers them with diffusers' loader.
if not Path(sys.argv[0] if sys.argv and sys.argv[0] else "python").name.startswith("guided-diffusers-"):
    _import_public_names()
