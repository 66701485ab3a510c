"""guided_diffusers: OpenAI's ADM family (guided-diffusion, improved-diffusion) and the original DDPM, in diffusers."""

__version__ = "0.1.0"

from .models import ADMClassifier, ADMSuperResUNet2DModel, ADMUNet2DModel

__all__ = ["ADMClassifier", "ADMSuperResUNet2DModel", "ADMUNet2DModel"]
