from .classifier_adm import ADMClassifier, ADMClassifierOutput
from .unet_adm import ADMSuperResUNet2DModel, ADMUNet2DModel, null_class_id, rescaled_timestep_scale

__all__ = ["ADMClassifier", "ADMClassifierOutput", "ADMSuperResUNet2DModel", "ADMUNet2DModel", "null_class_id", "rescaled_timestep_scale"]
