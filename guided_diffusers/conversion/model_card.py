"""Model cards for converted checkpoints, rendered from the model_cards/ templates (one per family)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .presets import DDPM, GUIDED, IMPROVED, Preset

TEMPLATES = Path(__file__).resolve().parents[2] / "model_cards"
_TEMPLATE_FILES = {GUIDED: "guided_diffusion.md", IMPROVED: "improved_diffusion.md", DDPM: "ddpm.md"}
_LICENSES = {GUIDED: "mit", IMPROVED: "mit", DDPM: "apache-2.0"}
_DATASET_NOTES = {
    "imagenet-1k": "The ILSVRC 2012 subset of ImageNet: roughly one million images in 1000 classes, curated in 2012. A large "
    "portion of the classes are animals, plants and other naturally occurring objects; many images contain people, "
    "usually not reflected by the label (the class \"tench, Tinca tinca\" contains many photos of people holding fish).",
    "lsun": "One class of LSUN, collected in 2015 by human labelling (Amazon Mechanical Turk) and automated labelling; "
    "each class has over a million images and the label accuracy was roughly 90%. Images are scraped from the internet; "
    "LSUN cat images often follow a \"meme\" format, and people, including faces, occasionally appear.",
    "cifar10": "CIFAR-10: 60,000 32x32 colour images in 10 classes.",
}


def _markdown_table(rows: tuple[tuple[str, ...], ...]) -> str:
    if not rows:
        return "The original README reports no separate figures for this checkpoint."
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def _usage(kind: str, repo_id: str, sampling: dict[str, Any], conditional: bool, has_classifier: bool) -> str:
    load = f'pipe = DiffusionPipeline.from_pretrained("{repo_id}")'
    steps = sampling.get("timestep_respacing")
    args = [f'timestep_respacing="{steps}"'] if steps else []
    if kind == "classifier":
        return "\n".join([
            "import torch",
            "from guided_diffusers import ADMClassifier",
            "",
            f'classifier = ADMClassifier.from_pretrained("{repo_id}")',
            "logits = classifier(noisy_images, timesteps).logits  # p(y | x_t) of noised images",
        ])
    if kind == "super_res":
        call = f"images = pipe(low_res_images, class_labels=labels{', ' + ', '.join(args) if args else ''}).images"
    else:
        if conditional or has_classifier:
            args.insert(0, 'class_labels=["golden retriever", 207]')
        if has_classifier and sampling.get("classifier_scale"):
            args.append(f"classifier_scale={sampling['classifier_scale']}")
        if not (conditional or has_classifier):
            args.insert(0, "batch_size=4")
        call = f"images = pipe({', '.join(args)}).images"
    return "\n".join(["import guided_diffusers  # registers the pipeline classes with diffusers", "from diffusers import DiffusionPipeline", "", load, call])


def render_model_card(
    preset: Preset | None,
    *,
    family: str,
    kind: str,
    flags: str,
    repo_id: str,
    checkpoint_name: str,
    conditional: bool,
    has_classifier: bool,
    sampling: dict[str, Any],
    verification: str,
) -> ModelCard:
    """The README.md of a converted folder: metadata, what the model is, results, usage, flags, use and limitations."""
    template = TEMPLATES / _TEMPLATE_FILES[family]
    if not template.is_file():
        raise FileNotFoundError(f"expected the model card template {template} (the repository's model_cards/ folder)")
    dataset = preset.dataset if preset else ""
    tags = ["diffusers", "guided-diffusers", "diffusion", "unconditional-image-generation" if not conditional else "class-conditional-image-generation"]
    if kind == "classifier":
        tags = ["guided-diffusers", "noisy-classifier", "classifier-guidance"]
    elif kind == "super_res":
        tags.append("super-resolution")
    card_data = ModelCardData(
        library_name="diffusers",
        license=_LICENSES[family],
        tags=tags,
        pipeline_tag="image-classification" if kind == "classifier" else ("image-to-image" if kind == "super_res" else "unconditional-image-generation"),
        datasets=[dataset] if dataset and not dataset.startswith("lsun") else None,
    )
    summary = ", ".join(f"{k}={v}" for k, v in sampling.items()) or "the scheduler config's defaults"
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=preset.name if preset else Path(checkpoint_name).stem,
        description=preset.description if preset else f"A {family} model converted from `{checkpoint_name}`.",
        paper=preset.paper if preset else f"the {family} paper",
        checkpoint_name=checkpoint_name,
        results_table=_markdown_table(preset.results if preset else ()),
        usage=_usage(kind, repo_id, sampling, conditional, has_classifier),
        sampling_summary=summary,
        flags=flags,
        verification=verification,
        dataset_notes=_DATASET_NOTES.get(dataset.split("-")[0] if dataset.startswith("lsun") else dataset, dataset or "See the original release."),
    )
