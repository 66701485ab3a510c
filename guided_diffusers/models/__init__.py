from .classifier_adm import ADMClassifier, ADMClassifierOutput
from .unet_adm import ADMSuperResUNet2DModel, ADMUNet2DModel, null_class_id, rescaled_timestep_scale
from .unet_adm_guidance import ADMGuidanceUNet2DModel

__all__ = [
    "ADMClassifier",
    "ADMClassifierOutput",
    "ADMGuidanceUNet2DModel",
    "ADMSuperResUNet2DModel",
    "ADMUNet2DModel",
    "null_class_id",
    "rescaled_timestep_scale",
]
