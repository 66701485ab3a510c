from .labels import imagenet_id2label, resolve_class_labels
from .pipeline_adm_consistency import ADMConsistencyPipeline
from .pipeline_adm_img2img import ADMImg2ImgPipeline
from .pipeline_adm_inpaint import ADMInpaintPipeline
from .pipeline_classifier_guided import ClassifierGuidedPipeline
from .pipeline_ddim_inversion import DDIMInversionPipeline, DDIMInversionPipelineOutput
from .pipeline_upsampling import ADMUpsamplingPipeline
from .registry import register_with_diffusers

register_with_diffusers(
    ADMConsistencyPipeline, ClassifierGuidedPipeline, ADMUpsamplingPipeline, DDIMInversionPipeline, ADMInpaintPipeline, ADMImg2ImgPipeline
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
