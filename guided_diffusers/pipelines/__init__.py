from .labels import imagenet_id2label, resolve_class_labels
from .pipeline_classifier_guided import ClassifierGuidedPipeline
from .pipeline_ddim_inversion import DDIMInversionPipeline, DDIMInversionPipelineOutput
from .pipeline_upsampling import ADMUpsamplingPipeline
from .registry import register_with_diffusers

register_with_diffusers(ClassifierGuidedPipeline, ADMUpsamplingPipeline, DDIMInversionPipeline)

__all__ = [
    "ADMUpsamplingPipeline",
    "ClassifierGuidedPipeline",
    "DDIMInversionPipeline",
    "DDIMInversionPipelineOutput",
    "imagenet_id2label",
    "resolve_class_labels",
]
