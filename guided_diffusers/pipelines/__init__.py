from .labels import imagenet_id2label, resolve_class_labels
from .pipeline_adm_consistency import ADMConsistencyPipeline
from .pipeline_adm_img2img import ADMImg2ImgPipeline
from .pipeline_adm_inpaint import ADMInpaintPipeline
from .pipeline_classifier_guided import ClassifierGuidedPipeline
from .pipeline_ddim_inversion import DDIMInversionPipeline, DDIMInversionPipelineOutput
from .pipeline_upsampling import ADMUpsamplingPipeline
from .registry import register_with_diffusers
from ..models import ADMClassifier, ADMGuidanceUNet2DModel, ADMSuperResUNet2DModel, ADMUNet2DModel
from ..schedulers import GuidedDDIMScheduler, GuidedDDPMScheduler

# Our models and schedulers are named in diffusers' namespace too: ``AutoModel.from_pretrained`` of a model folder
# finds its class there, and ``X.from_config(ours.config)`` drops our own keys silently, as for diffusers' classes.
register_with_diffusers(
    ADMConsistencyPipeline, ClassifierGuidedPipeline, ADMUpsamplingPipeline, DDIMInversionPipeline, ADMInpaintPipeline,
    ADMImg2ImgPipeline, ADMUNet2DModel, ADMSuperResUNet2DModel, ADMGuidanceUNet2DModel, ADMClassifier,
    GuidedDDPMScheduler, GuidedDDIMScheduler,
)

__all__ = [
    "ADMConsistencyPipeline",
    "ADMImg2ImgPipeline",
    "ADMInpaintPipeline",
    "ADMUpsamplingPipeline",
    "ClassifierGuidedPipeline",
    "DDIMInversionPipeline",
    "DDIMInversionPipelineOutput",
    "imagenet_id2label",
    "resolve_class_labels",
]
