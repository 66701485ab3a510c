"""Make guided_diffusers a library that diffusers' pipeline loading knows, once guided_diffusers is imported.

Two facts of diffusers (0.42) drive this. ``DiffusionPipeline.from_pretrained`` looks the ``_class_name`` of
model_index.json up in the diffusers namespace only, so our pipeline classes are made findable there. And
``save_pretrained`` records a component of a library it does not know under its full module path
(``guided_diffusers.models.unet_adm``), which ties saved folders to our file layout and is refused when loading
from the Hub; registered as a loadable library, components are recorded as ``["guided_diffusers", "ADMUNet2DModel"]``.
"""

from __future__ import annotations

import diffusers
from diffusers.pipelines import pipeline_loading_utils

LIBRARY = "guided_diffusers"


def register_with_diffusers(*classes: type) -> None:
    """Register the library's loadable base classes, and its pipeline, model and scheduler classes by name, with
    diffusers (idempotent)."""
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(
        LIBRARY,
        {"ModelMixin": ["save_pretrained", "from_pretrained"], "SchedulerMixin": ["save_pretrained", "from_pretrained"]},
    )
    for cls in classes:
        existing = getattr(diffusers, cls.__name__, None)
        if existing is not None and existing is not cls:
            raise RuntimeError(f"diffusers already has a {cls.__name__}; guided_diffusers cannot register its own")
        setattr(diffusers, cls.__name__, cls)
