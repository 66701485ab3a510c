"""The README.md of a trained model's folder, rendered from model_cards/trained.md."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..conversion.model_card import TEMPLATES

__all__ = ["render_trained_model_card"]

TEMPLATE = TEMPLATES / "trained.md"
_SCRIPTS = {"diffusion": "train_diffusion.py", "super_res": "train_super_res.py", "classifier": "train_classifier.py"}
_DESCRIPTIONS = {
    "diffusion": "An ADM diffusion model ({conditioning}) at {resolution}x{resolution}, in a `ClassifierGuidedPipeline` folder.",
    "super_res": "An ADM-U super-resolution diffusion model ({conditioning}), {low_res}x{low_res} to {resolution}x{resolution}, in an "
    "`ADMUpsamplingPipeline` folder.",
    "classifier": "A noisy image classifier (ADM-G's `EncoderUNetModel`) at {resolution}x{resolution}, {classes} classes, for "
    "classifier guidance; trained on {noised}. The folder holds the `ADMClassifier` and the scheduler config of its noise process.",
}


def _usage(kind: str, location: str, id2label: Mapping[int, str] | None, num_timesteps: int, conditional: bool) -> str:
    first_class = repr(next(iter(id2label.values()))) if id2label else "0"
    steps = min(250, num_timesteps)
    if kind == "classifier":
        return "\n".join([
            "from guided_diffusers import ADMClassifier, ClassifierGuidedPipeline, GuidedDDPMScheduler",
            "",
            f'classifier = ADMClassifier.from_pretrained("{location}")',
            f'scheduler = GuidedDDPMScheduler.from_pretrained("{location}")  # the noise process it was trained under',
            "logits = classifier(noisy_images, scheduler.model_timestep(timesteps)).logits  # p(y | x_t)",
            "# guide a diffusion model trained under the same process:",
            "pipe = ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier, id2label=classifier.config.id2label)",
            f"images = pipe(class_labels=[{first_class}], classifier_scale=1.0, num_inference_steps={steps}).images",
        ])
    lines = [
        "import guided_diffusers  # registers the pipeline classes with diffusers",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{location}")',
    ]
    labels = f"class_labels=[{first_class}], " if conditional else ""
    if kind == "super_res":
        lines.append(f"images = pipe(low_res_images, {labels}num_inference_steps={steps}).images")
    else:
        lines.append(f"images = pipe({labels or 'batch_size=4, '}num_inference_steps={steps}).images")
    return "\n".join(lines)


def _classes_line(id2label: Mapping[int, str] | None) -> str:
    if not id2label:
        return "No class labels."
    names = list(id2label.values())
    shown = ", ".join(f"`{name}`" for name in names[:8]) + (", ..." if len(names) > 8 else "")
    return f"{len(names)} classes ({shown}), kept as `id2label` in the saved config."


def _results(results: Mapping[str, Any] | None) -> str:
    if not results:
        return "No evaluation was run."
    lines = ["| metric | value |", "|---|---|"]
    for name, value in results.items():
        lines.append(f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |")
    return "\n".join(lines)


def render_trained_model_card(
    *,
    kind: str,
    model_name: str,
    location: str,
    resolution: int,
    training: Mapping[str, Any],
    dataset: str,
    hub_dataset_id: str | None,
    id2label: Mapping[int, str] | None,
    flags: Mapping[str, Any],
    num_timesteps: int,
    conditional: bool = False,
    low_res_size: int | None = None,
    noised: bool = True,
    results: Mapping[str, Any] | None = None,
    extra_weights: tuple[str, ...] = (),
) -> ModelCard:
    """The model card of a model trained by one of the training scripts.

    Args:
        kind (`str`): ``"diffusion"``, ``"super_res"`` or ``"classifier"``.
        model_name (`str`): the card's title.
        location (`str`): the Hub id or folder the usage example loads from.
        resolution (`int`): the image size.
        training (mapping): the training settings, as table rows (name -> value).
        dataset (`str`): where the images came from.
        hub_dataset_id (`str`, *optional*): the Hub dataset, for the card's metadata.
        id2label (mapping, *optional*): the class names.
        flags (mapping): the originals' flags the model and process were built from.
        num_timesteps (`int`): T of the process.
        conditional (`bool`): a class-conditional diffusion model.
        low_res_size (`int`, *optional*): the super-resolution model's input size.
        noised (`bool`): the classifier trained on noised images.
        results (mapping, *optional*): evaluation results.
        extra_weights (tuple of `str`): further weight folders saved under ``weights/``.
    """
    if kind not in _SCRIPTS:
        raise ValueError(f"expected kind in {sorted(_SCRIPTS)}, got {kind!r}")
    if not TEMPLATE.is_file():
        raise FileNotFoundError(f"expected the model card template {TEMPLATE} (the repository's model_cards/ folder)")
    if kind == "classifier":
        tags, pipeline_tag = ["guided-diffusers", "noisy-classifier", "classifier-guidance"], "image-classification"
    else:
        tags = ["diffusers", "guided-diffusers", "diffusion",
                "class-conditional-image-generation" if conditional else "unconditional-image-generation"]
        pipeline_tag = "image-to-image" if kind == "super_res" else "unconditional-image-generation"
        if kind == "super_res":
            tags.append("super-resolution")
    card_data = ModelCardData(
        library_name="diffusers", tags=tags, pipeline_tag=pipeline_tag, datasets=[hub_dataset_id] if hub_dataset_id else None
    )
    description = _DESCRIPTIONS[kind].format(
        conditioning="class-conditional" if conditional else "unconditional",
        resolution=resolution,
        low_res=low_res_size,
        classes=len(id2label) if id2label else "?",
        noised="noised images x_t at sampled timesteps" if noised else "clean images",
    )
    weights_note = ""
    if extra_weights:
        weights_note = (
            "The model in this folder has the first EMA rate's weights; `weights/` holds the others as model folders: "
            + ", ".join(f"`weights/{name}`" for name in extra_weights) + " (`model` is the raw, non-averaged weights)."
        )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        model_name=model_name,
        description=description,
        script=_SCRIPTS[kind],
        usage=_usage(kind, location, id2label, num_timesteps, conditional),
        training_table="\n".join(f"| {name} | {value} |" for name, value in training.items()),
        dataset=dataset,
        classes=_classes_line(id2label),
        flags=" ".join(f"--{name} {value}" for name, value in flags.items()) or "(defaults)",
        weights_note=weights_note,
        results=_results(results),
    )
