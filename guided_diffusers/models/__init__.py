from .classifier_adm import ADMClassifier, ADMClassifierOutput
from .unet_adm import ADMSuperResUNet2DModel, ADMUNet2DModel

__all__ = ["ADMClassifier", "ADMClassifierOutput", "ADMSuperResUNet2DModel", "ADMUNet2DModel"]
