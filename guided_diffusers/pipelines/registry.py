"""What importing guided_diffusers does to diffusers: our pipeline, model and scheduler classes made known to its loader
and config reading, and its one false warning on our paths filtered out.

Four facts of diffusers (0.42) drive this. ``DiffusionPipeline.from_pretrained`` looks the ``_class_name`` of
model_index.json up in the diffusers namespace only, so our pipeline classes are made findable there. And
``save_pretrained`` records a component of a library it does not know under its full module path
(``guided_diffusers.models.unet_adm``), which ties saved folders to our file layout and is refused when loading
from the Hub; registered as a loadable library, components are recorded as ``["guided_diffusers", "ADMUNet2DModel"]``.
``X.from_config(config)`` (``ConfigMixin.extract_init_dict``) drops the keys of the config's own class (its
``_class_name``) that ``X`` does not take without a word only when it finds that class in the diffusers namespace;
otherwise it warns "config attributes ... will be ignored" on every scheduler swap, so our schedulers are made
findable there too (and our model classes, so that ``AutoModel.from_pretrained`` of a model folder finds them). And
``ModelMixin.to(dtype)`` warns "should be kept in float32: []" for every model that keeps no module in float32 (its
guard ``(self._keep_in_fp32_modules or []) is not None`` is always true), on every ``.to(dtype)``, ``from_pipe`` and
conversion; that record, and only with the empty list, is dropped.
"""

from __future__ import annotations

import logging

import diffusers
from diffusers.pipelines import pipeline_loading_utils

LIBRARY = "guided_diffusers"
_EMPTY_FP32_WARNING = "that should be kept in float32: []."


class _EmptyFloat32ListFilter(logging.Filter):
    """Drops diffusers' "should be kept in float32: []" record (nothing is to be kept; any other list still shows)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _EMPTY_FP32_WARNING not in record.getMessage()


def register_with_diffusers(*classes: type) -> None:
    """Register the library's loadable base classes, and its pipeline, model and scheduler classes by name, with
    diffusers, and filter diffusers' empty float32 warning (idempotent)."""
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(
        LIBRARY,
        {"ModelMixin": ["save_pretrained", "from_pretrained"], "SchedulerMixin": ["save_pretrained", "from_pretrained"]},
    )
    for registered_class in classes:
        existing = getattr(diffusers, registered_class.__name__, None)
        if existing is not None and existing is not registered_class:
            raise RuntimeError(f"diffusers already has a {registered_class.__name__}; guided_diffusers cannot register its own")
        setattr(diffusers, registered_class.__name__, registered_class)
    model_logger = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(existing, _EmptyFloat32ListFilter) for existing in model_logger.filters):
        model_logger.addFilter(_EmptyFloat32ListFilter())
