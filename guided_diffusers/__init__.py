"""guided_diffusers: OpenAI's ADM family (guided-diffusion, improved-diffusion) and the original DDPM, in diffusers."""

__version__ = "0.1.0"

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
