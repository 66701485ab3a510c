"""Model cards for converted checkpoints, rendered from the package's model_cards/ templates (one per family, one for
the community's checkpoints), and what every card shares: the templates' home, Hub licenses, dataset ids and the
papers' BibTeX."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .presets import DDPM, GUIDED, IMPROVED, Preset

# Package data (the wheel carries it): guided_diffusers/model_cards/*.md.
TEMPLATES = Path(str(resources.files("guided_diffusers").joinpath("model_cards")))
_TEMPLATE_FILES = {GUIDED: "guided_diffusion.md", IMPROVED: "improved_diffusion.md", DDPM: "ddpm.md"}
# The original weights' licenses: guided-diffusion's and improved-diffusion's repositories (code and released weights)
# are MIT; the DDPM release (hojonathanho/diffusion) states no license, so its cards say "unknown".
LICENSES = {GUIDED: "mit", IMPROVED: "mit", DDPM: "unknown"}
_LICENSE_NOTES = {
    GUIDED: "The original weights and code are released under the MIT license (openai/guided-diffusion).",
    IMPROVED: "The original weights and code are released under the MIT license (openai/improved-diffusion).",
    DDPM: "The original DDPM release (hojonathanho/diffusion) states no license for its code or checkpoints; the PyTorch "
    "port whose checkpoints are converted here (pesser/pytorch_diffusion) is MIT-licensed code. The license of the "
    "weights is therefore unknown: check with the authors before use beyond research.",
}
# Hub dataset ids of the training data (LSUN has no canonical Hub dataset).
HUB_DATASETS = {"imagenet-1k": "ILSVRC/imagenet-1k", "cifar10": "uoft-cs/cifar10"}
CITATIONS = {
    "adm": """@inproceedings{dhariwal2021diffusion,
  title     = {Diffusion Models Beat {GAN}s on Image Synthesis},
  author    = {Prafulla Dhariwal and Alexander Quinn Nichol},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {34},
  year      = {2021},
  url       = {https://arxiv.org/abs/2105.05233}
}""",
    "iddpm": """@inproceedings{nichol2021improved,
  title     = {Improved Denoising Diffusion Probabilistic Models},
  author    = {Alexander Quinn Nichol and Prafulla Dhariwal},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning},
  pages     = {8162--8171},
  year      = {2021},
  url       = {https://arxiv.org/abs/2102.09672}
}""",
    "ddpm": """@inproceedings{ho2020denoising,
  title     = {Denoising Diffusion Probabilistic Models},
  author    = {Jonathan Ho and Ajay Jain and Pieter Abbeel},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {33},
  pages     = {6840--6851},
  year      = {2020},
  url       = {https://arxiv.org/abs/2006.11239}
}""",
}
CITATIONS.update({
    "repaint": """@inproceedings{lugmayr2022repaint,
  title     = {{RePaint}: Inpainting using Denoising Diffusion Probabilistic Models},
  author    = {Andreas Lugmayr and Martin Danelljan and Andres Romero and Fisher Yu and Radu Timofte and Luc Van Gool},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {11461--11471},
  year      = {2022},
  url       = {https://arxiv.org/abs/2201.09865}
}""",
    "p2": """@inproceedings{choi2022perception,
  title     = {Perception Prioritized Training of Diffusion Models},
  author    = {Jooyoung Choi and Jungbeom Lee and Chaehun Shin and Sungwon Kim and Hyunwoo Kim and Sungroh Yoon},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {11472--11481},
  year      = {2022},
  url       = {https://arxiv.org/abs/2204.00227}
}""",
    "ilvr": """@inproceedings{choi2021ilvr,
  title     = {{ILVR}: Conditioning Method for Denoising Diffusion Probabilistic Models},
  author    = {Jooyoung Choi and Sungwon Kim and Yonghyun Jeong and Youngjune Gwon and Sungroh Yoon},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {14367--14376},
  year      = {2021},
  url       = {https://arxiv.org/abs/2108.02938}
}""",
    "dps": """@inproceedings{chung2023diffusion,
  title     = {Diffusion Posterior Sampling for General Noisy Inverse Problems},
  author    = {Hyungjin Chung and Jeongsol Kim and Michael Thompson Mccann and Marc Louis Klasky and Jong Chul Ye},
  booktitle = {The Eleventh International Conference on Learning Representations},
  year      = {2023},
  url       = {https://openreview.net/forum?id=OnD9zGAGT0k}
}""",
})
_FAMILY_CITATIONS = {GUIDED: ("adm", "iddpm"), IMPROVED: ("iddpm",), DDPM: ("ddpm",)}
# Community checkpoints (a preset with an ``origin``): trained by others with guided-diffusion's code.
COMMUNITY_TEMPLATE = "community.md"
_DATASET_NOTES = {
    "imagenet-1k": "The ILSVRC 2012 subset of ImageNet: roughly one million images in 1000 classes, curated in 2012. A large "
    "portion of the classes are animals, plants and other naturally occurring objects; many images contain people, "
    "usually not reflected by the label (the class \"tench, Tinca tinca\" contains many photos of people holding fish).",
    "lsun": "One class of LSUN, collected in 2015 by human labelling (Amazon Mechanical Turk) and automated labelling; "
    "each class has over a million images and the label accuracy was roughly 90%. Images are scraped from the internet; "
    "LSUN cat images often follow a \"meme\" format, and people, including faces, occasionally appear.",
    "cifar10": "CIFAR-10: 60,000 32x32 colour images in 10 classes.",
    "celeba-hq": "CelebA-HQ: 30,000 high-quality crops of celebrity faces from CelebA (Karras et al. 2018); faces of real, "
    "mostly Western, public figures.",
    "places2": "Places2 (Places365): millions of scene photographs in 365 categories, scraped from the internet; people "
    "appear in many.",
    "ffhq": "FFHQ: 70,000 aligned 1024x1024 face photographs from Flickr (Karras et al. 2019), under licenses that allow "
    "redistribution; faces of real people, more varied in age and ethnicity than CelebA but not balanced.",
    "afhq-dog": "AFHQ-dog: about 5,000 aligned 512x512 photographs of dog faces (Choi et al. 2020, StarGAN v2).",
    "flowers": "Oxford Flowers-102: about 8,000 photographs of flowers in 102 categories (Nilsback & Zisserman 2008).",
    "cub": "CUB-200-2011: about 12,000 photographs of 200 bird species (Wah et al. 2011).",
    "metfaces": "MetFaces: 1,336 faces extracted from artworks of the Metropolitan Museum of Art (Karras et al. 2020).",
}


def template(name: str) -> Path:
    """A card template of the package, refused in one line when the installation lacks it."""
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"expected the model card template {path} (package data of guided_diffusers), got no such file: reinstall the package")
    return path


def citation_block(keys: tuple[str, ...]) -> str:
    """The BibTeX entries of the papers ``keys`` (``adm``, ``iddpm``, ``ddpm``), one fenced block."""
    return "```bibtex\n" + "\n\n".join(CITATIONS[key] for key in keys) + "\n```"


def _markdown_table(rows: tuple[tuple[str, ...], ...]) -> str:
    if not rows:
        return "The original README reports no separate figures for this checkpoint."
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def classifier_usage(location: str, scheduler_line: str) -> list[str]:
    """Lines of a runnable snippet that classifies noised images with the classifier folder at ``location``."""
    return [
        "import torch",
        "from guided_diffusers import ADMClassifier, GuidedDDPMScheduler",
        "",
        f'classifier = ADMClassifier.from_pretrained("{location}")',
        scheduler_line,
        "size = classifier.config.sample_size",
        "images = torch.rand(2, 3, size, size) * 2 - 1  # your images, NCHW in [-1, 1]",
        "timesteps = torch.tensor([10, scheduler.config.num_train_timesteps // 2])",
        "noisy = scheduler.add_noise(images, torch.randn_like(images), timesteps)",
        "with torch.no_grad():",
        "    logits = classifier(noisy, timesteps).logits  # log p(y | x_t) + const",
        "print(logits.argmax(dim=-1))",
    ]


def pipeline_usage(location: str, call_args: list[str], low_res_size: int | None = None) -> str:
    """A runnable snippet that loads the pipeline folder at ``location`` and samples with ``call_args``."""
    lines = [
        "import torch",
        "import guided_diffusers  # registers the pipeline classes with diffusers",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{location}")',
    ]
    args = [*call_args, "generator=torch.Generator().manual_seed(0)"]
    if low_res_size is not None:
        lines.append(f"low_res = torch.rand(1, 3, {low_res_size}, {low_res_size}) * 2 - 1  # your low-resolution images (NCHW in [-1, 1], or PIL)")
        args.insert(0, "low_res")
    lines += [f"images = pipe({', '.join(args)}).images", 'images[0].save("sample.png")']
    return "\n".join(lines)


def _usage(kind: str, repo_id: str, sampling: dict[str, Any], conditional: bool, has_classifier: bool,
           num_classes: int | None, low_res_size: int | None) -> str:
    if kind == "classifier":
        return "\n".join([*classifier_usage(
            repo_id, "scheduler = GuidedDDPMScheduler(num_train_timesteps=1000)  # the linear 1000-step process ADM-G's classifiers were trained under"),
            "# to guide an ADM diffusion model of the same size: ClassifierGuidedPipeline(unet=..., scheduler=..., classifier=classifier)",
        ])
    steps = sampling.get("timestep_respacing")
    args = [f'timestep_respacing="{steps}"'] if steps else []
    labels = '["golden retriever", 207]' if num_classes == 1000 else "[0]"
    if kind == "super_res":
        if conditional:
            args.insert(0, f"class_labels={labels}")
        return pipeline_usage(repo_id, args, low_res_size)
    if conditional or has_classifier:
        args.insert(0, f"class_labels={labels}")
    if has_classifier and sampling.get("classifier_scale"):
        args.append(f"classifier_scale={sampling['classifier_scale']}")
    if not (conditional or has_classifier):
        args.insert(0, "batch_size=4")
    return pipeline_usage(repo_id, args)


def inpaint_usage(location: str, sampling: dict[str, Any]) -> str:
    """A snippet that loads the pipeline folder at ``location`` and inpaints with RePaint's recommended schedule."""
    args = [f"{k}={v!r}" for k, v in sampling.items() if k in ("timestep_respacing", "jump_length", "jump_n_sample")]
    return "\n".join([
        "import torch",
        "import guided_diffusers  # registers the pipeline classes with diffusers",
        "from diffusers import DiffusionPipeline",
        "from guided_diffusers import ADMInpaintPipeline",
        "",
        f'pipe = ADMInpaintPipeline.from_pipe(DiffusionPipeline.from_pretrained("{location}"))',
        "size = pipe.unet.config.sample_size",
        "image = torch.rand(1, 3, size, size) * 2 - 1  # your image (NCHW in [-1, 1], or PIL)",
        "mask = torch.zeros(size, size)  # white (1) marks the pixels to fill",
        "mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1",
        f"images = pipe(image, mask, {', '.join([*args, 'generator=torch.Generator().manual_seed(0)'])}).images",
        'images[0].save("inpainted.png")',
    ])


def _sampling_note(sampling: dict[str, Any], user_sampling: dict[str, Any]) -> str:
    parts = []
    if sampling:
        parts.append("Recommended sampling (from the original release): " + ", ".join(f"{k}={v}" for k, v in sampling.items()) + ".")
    if user_sampling:
        parts.append("Sampling settings given by the user at conversion (not from the original README): "
                     + ", ".join(f"{k}={v}" for k, v in user_sampling.items()) + ".")
    if not parts:
        parts.append("No recommended sampling is known for these flags: the scheduler samples all training steps unless "
                     "`timestep_respacing` or `num_inference_steps` is passed.")
    from ..pipelines.recipes import fast_sampling_note

    return " ".join(parts) + "\n\n" + fast_sampling_note()


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
    user_sampling: dict[str, Any] | None = None,
    num_classes: int | None = None,
    low_res_size: int | None = None,
) -> ModelCard:
    """The README.md of a converted folder: metadata, what the model is, results, usage, flags, use and limitations.

    Args:
        sampling: recommended sampling from the preset (the original README).
        user_sampling: sampling settings the user's flags gave (labelled as such in the card).
    """
    user_sampling = user_sampling or {}
    community = preset is not None and bool(preset.origin)
    path = template(COMMUNITY_TEMPLATE if community else _TEMPLATE_FILES[family])
    dataset = preset.dataset if preset else ""
    tags = ["diffusers", "guided-diffusers", "diffusion", "unconditional-image-generation" if not conditional else "class-conditional-image-generation"]
    if kind == "classifier":
        tags = ["guided-diffusers", "noisy-classifier", "classifier-guidance"]
    elif kind == "super_res":
        tags.append("super-resolution")
    card_data = ModelCardData(
        library_name="diffusers",
        license=preset.license if community and preset.license else LICENSES[family],
        tags=tags,
        pipeline_tag="image-classification" if kind == "classifier" else ("image-to-image" if kind == "super_res" else "unconditional-image-generation"),
        datasets=[HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None,
    )
    merged = {**sampling, **user_sampling}
    if community and preset.usage == "inpaint" and kind == "diffusion":
        usage = inpaint_usage(repo_id, merged)
    else:
        usage = _usage(kind, repo_id, merged, conditional, has_classifier, num_classes, low_res_size)
    return ModelCard.from_template(
        card_data,
        template_path=str(path),
        model_name=preset.name if preset else Path(checkpoint_name).stem,
        description=preset.description if preset else f"A {family} model converted from `{checkpoint_name}` with user-given flags.",
        paper=preset.paper if preset else f"the {family} paper",
        checkpoint_name=checkpoint_name,
        results_table=_markdown_table(preset.results if preset else ()),
        usage=usage,
        sampling_note="" if kind == "classifier" else _sampling_note(sampling, user_sampling),
        flags=flags,
        verification=verification,
        license_note=preset.license_note if community else _LICENSE_NOTES[family],
        citation=citation_block((*preset.citations, "adm") if community else _FAMILY_CITATIONS[family]),
        origin=preset.origin if community else "",
        recommended_use=preset.recommended_use if community else "",
        dataset_notes=_DATASET_NOTES.get(dataset.split("-")[0] if dataset.startswith("lsun") else dataset, dataset or "See the original release."),
    )
