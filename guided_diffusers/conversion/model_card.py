"""Model cards for converted checkpoints, rendered from the package's model_cards/ templates (one per family, one for
the community's checkpoints, one for a user's own checkpoint), and what every card shares: the templates' home, the
install lines, Hub licenses, dataset ids, the papers' BibTeX and the usage snippets."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from .. import __version__
from ..schedulers.schedules import space_timesteps
from .presets import CONSISTENCY, DDPM, GUIDED, IMPROVED, Preset

# Package data (the wheel carries it): guided_diffusers/model_cards/*.md.
TEMPLATES = Path(str(resources.files("guided_diffusers").joinpath("model_cards")))
_TEMPLATE_FILES = {GUIDED: "guided_diffusion.md", IMPROVED: "improved_diffusion.md", DDPM: "ddpm.md", CONSISTENCY: "consistency_models.md"}
# The original weights' licenses: guided-diffusion's and improved-diffusion's repositories (code and released weights)
# are MIT; the DDPM release (hojonathanho/diffusion) states no license, so its cards say "unknown".
LICENSES = {GUIDED: "mit", IMPROVED: "mit", DDPM: "unknown", CONSISTENCY: "mit"}
_LICENSE_NOTES = {
    GUIDED: "The original weights and code are released under the MIT license (openai/guided-diffusion).",
    IMPROVED: "The original weights and code are released under the MIT license (openai/improved-diffusion).",
    CONSISTENCY: "The original weights and code are released under the MIT license (openai/consistency_models).",
    DDPM: "The original DDPM release (hojonathanho/diffusion) states no license for its code or checkpoints; the PyTorch "
    "port whose checkpoints are converted here (pesser/pytorch_diffusion) is MIT-licensed code. The license of the "
    "weights is therefore unknown: check with the authors before use beyond research.",
}
# A checkpoint converted with the user's flags or config (no preset): its family's code base, for the card.
USER_TEMPLATE = "user_checkpoint.md"
_FAMILY_LINKS = {
    GUIDED: "OpenAI's [guided-diffusion](https://github.com/openai/guided-diffusion)",
    IMPROVED: "OpenAI's [improved-diffusion](https://github.com/openai/improved-diffusion)",
    DDPM: "the original [DDPM](https://github.com/hojonathanho/diffusion) release (its PyTorch port's layout)",
    CONSISTENCY: "OpenAI's [consistency_models](https://github.com/openai/consistency_models)",
}
# What a card says when nobody stated the weights' terms (a user's checkpoint without --license, a trained model
# without --license): the card claims none.
DEFAULT_LICENSE = "unknown"
# The license identifiers the Hub accepts in a card's metadata (its documented list); "other" needs a name and a link,
# which the card does not carry, so it is not offered.
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl openrail++
osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license fair-noncommercial-research-license
llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown
""".split())
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
    "cm": """@inproceedings{song2023consistency,
  title     = {Consistency Models},
  author    = {Yang Song and Prafulla Dhariwal and Mark Chen and Ilya Sutskever},
  booktitle = {Proceedings of the 40th International Conference on Machine Learning},
  year      = {2023},
  url       = {https://arxiv.org/abs/2303.01469}
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
_FAMILY_CITATIONS = {GUIDED: ("adm", "iddpm"), IMPROVED: ("iddpm",), DDPM: ("ddpm",), CONSISTENCY: ("cm", "adm")}
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


def check_license(value: str) -> str:
    """``--license``: a license identifier of the Hub (``mit``, ``apache-2.0``, ``cc-by-4.0``, ... or ``unknown``)."""
    if value not in HUB_LICENSES:
        raise ValueError(f"expected --license to be a Hub license identifier such as mit, apache-2.0, cc-by-nc-4.0 or unknown, got {value!r}")
    return value


def check_user_license(license: str | None, release: Preset | None) -> None:
    """``--license`` of a conversion: a Hub license id, given only for a user checkpoint (``release`` None), since a
    release states its own; refused in one line otherwise."""
    if license is None:
        return
    check_license(license)
    if release is not None:
        raise ValueError(f"expected --license only for a user checkpoint (converted with flags or a config), got it with "
                         f"preset {release.name!r}, whose release states its license")


def install_lines() -> str:
    """The card's install block: the package is not on a registry yet, so from its source or the wheel built from it."""
    return "\n".join([
        "# guided-diffusers is not yet published on a package registry: install it from its source",
        "pip install ./guided-diffusers    # a checkout of guided_diffusers' repository",
        f"pip install guided_diffusers-{__version__}-py3-none-any.whl    # or the wheel built from it: pip wheel --no-deps ./guided-diffusers",
    ])


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
    """Lines of a runnable snippet that classifies noised images with the classifier folder at ``location``; the
    images have the classifier's own channel count (``in_channels`` of its config: 1 for grey, 3 for RGB)."""
    return [
        "import torch",
        "from guided_diffusers import ADMClassifier, GuidedDDPMScheduler",
        "",
        f'classifier = ADMClassifier.from_pretrained("{location}")',
        scheduler_line,
        "channels, size = classifier.config.in_channels, classifier.config.sample_size",
        "images = torch.rand(2, channels, size, size) * 2 - 1  # your images, NCHW in [-1, 1]",
        "timesteps = torch.tensor([10, scheduler.config.num_train_timesteps // 2])",
        "noisy = scheduler.add_noise(images, torch.randn_like(images), timesteps)",
        "with torch.no_grad():",
        "    logits = classifier(noisy, timesteps).logits  # log p(y | x_t) + const",
        "print(logits.argmax(dim=-1))",
    ]


def pipeline_usage(location: str, call_args: list[str], low_res_size: int | None = None, fast_recipe: bool = False) -> str:
    """A runnable snippet that loads the pipeline folder at ``location`` and samples with ``call_args``.

    Args:
        location (`str`): the Hub id or folder.
        call_args (list of `str`): the call's arguments, as written.
        low_res_size (`int`, *optional*): a super-resolution pipeline's input size: the snippet makes a low-resolution
            input with the model's own channel count.
        fast_recipe (`bool`): sample with the package's fast recipe (its scheduler swapped in, its step count).
    """
    from ..pipelines.recipes import FAST_RECIPE

    lines = [
        "import torch",
        "import guided_diffusers  # registers the pipeline classes with diffusers",
        "from diffusers import DiffusionPipeline",
        *(["from guided_diffusers.pipelines.recipes import FAST_RECIPE"] if fast_recipe else []),
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{location}")',
    ]
    args = list(call_args)
    if fast_recipe:
        lines.append(f"steps = FAST_RECIPE.apply(pipe)  # {FAST_RECIPE.describe()}: swaps the scheduler, returns the step arguments")
        args.append("**steps")
    args.append("generator=torch.Generator().manual_seed(0)")
    if low_res_size is not None:
        lines.append(f"low_res = torch.rand(1, pipe.unet.config.in_channels, {low_res_size}, {low_res_size}) * 2 - 1  "
                     "# your low-resolution images (NCHW in [-1, 1], or PIL)")
        args.insert(0, "low_res")
    lines += [f"images = pipe({', '.join(args)}).images", 'images[0].save("sample.png")']
    return "\n".join(lines)


def _samples_fewer_steps(respacing: str | None, num_train_timesteps: int | None) -> bool:
    """Whether a recommended ``timestep_respacing`` skips steps (else the snippet samples with the fast recipe)."""
    if not respacing:
        return False
    if num_train_timesteps is None:
        return True
    return len(space_timesteps(num_train_timesteps, respacing)) < num_train_timesteps


def _example_labels(num_classes: int | None) -> str:
    """The class labels a snippet samples: an ImageNet name and id for a 1000-class model, else class 0."""
    return '["golden retriever", 207]' if num_classes == 1000 else "[0]"


def _usage(kind: str, repo_id: str, sampling: dict[str, Any], conditional: bool, has_classifier: bool,
           num_classes: int | None, low_res_size: int | None, num_train_timesteps: int | None, released: bool) -> str:
    if kind == "classifier":
        process = ("the linear 1000-step process ADM-G's classifiers were trained under" if released else
                   "the process the classifier was trained under: ADM-G's was the linear 1000-step one; set yours")
        return "\n".join([*classifier_usage(repo_id, f"scheduler = GuidedDDPMScheduler(num_train_timesteps=1000)  # {process}"),
                          "# to guide an ADM diffusion model of the same size: ClassifierGuidedPipeline(unet=..., scheduler=..., classifier=classifier)"])
    respacing = sampling.get("timestep_respacing")
    fewer = _samples_fewer_steps(respacing, num_train_timesteps)
    args = [f'timestep_respacing="{respacing}"'] if fewer else []
    labels = _example_labels(num_classes)
    if kind == "super_res":
        if conditional:
            args.insert(0, f"class_labels={labels}")
        return pipeline_usage(repo_id, args, low_res_size, fast_recipe=not fewer)
    if conditional or has_classifier:
        args.insert(0, f"class_labels={labels}")
    if has_classifier:  # the folder's classifier guides only with a scale: the release's, else the originals' default
        args.append(f"classifier_scale={sampling.get('classifier_scale') or 1.0}")
    if not (conditional or has_classifier):
        args.insert(0, "batch_size=4")
    return pipeline_usage(repo_id, args, fast_recipe=not fewer)


def consistency_usage(location: str, num_classes: int | None, timesteps: list[int] | None) -> str:
    """A snippet that loads the consistency pipeline folder at ``location`` and samples in one step, and in the
    release's multistep ``timesteps`` where it gives them (else in two steps of the scheduler's grid)."""
    labels = f"class_labels={_example_labels(num_classes)}, " if num_classes else "batch_size=2, "
    several = f"timesteps={list(timesteps)}" if timesteps else "num_inference_steps=2"
    return "\n".join([
        "import torch",
        "import guided_diffusers  # registers the pipeline classes with diffusers",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{location}")',
        f"images = pipe({labels}num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images  # one step",
        'images[0].save("sample_1_step.png")',
        f"images = pipe({labels}{several}, generator=torch.Generator().manual_seed(0)).images"
        + ("  # the multistep setting (the original's --ts)" if timesteps else "  # two steps"),
        'images[0].save("sample_2_steps.png")',
    ])


def _consistency_sampling_note(sampling: dict[str, Any], user_sampling: dict[str, Any]) -> str:
    timesteps = user_sampling.get("timesteps") or sampling.get("timesteps")
    if not timesteps:
        return ("The release gives no multistep setting for this checkpoint: it samples in one step (`num_inference_steps=1`); "
                "more steps take `num_inference_steps` or `timesteps` (indices into the scheduler's grid, descending).")
    whose = "given by the user at conversion" if user_sampling else "from the original release"
    return (f"Recommended sampling ({whose}): one step, or `timesteps={list(timesteps)}`: the original's `--ts` on its "
            "grid of `num_train_timesteps` noise levels, as diffusers' `CMStochasticIterativeScheduler` takes them.")


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
        "channels, size = pipe.unet.config.in_channels, pipe.unet.config.sample_size",
        "image = torch.rand(1, channels, size, size) * 2 - 1  # your image (NCHW in [-1, 1], or PIL)",
        "mask = torch.zeros(size, size)  # white (1) marks the pixels to fill",
        "mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1",
        f"images = pipe(image, mask, {', '.join([*args, 'generator=torch.Generator().manual_seed(0)'])}).images",
        'images[0].save("inpainted.png")',
    ])


def _sampling_note(sampling: dict[str, Any], user_sampling: dict[str, Any], fast_in_snippet: bool) -> str:
    from ..pipelines.recipes import fast_sampling_note

    parts = []
    if sampling:
        parts.append("Recommended sampling (from the original release): " + ", ".join(f"{k}={v}" for k, v in sampling.items()) + ".")
    if user_sampling:
        parts.append("Sampling settings given by the user at conversion (not from the original README): "
                     + ", ".join(f"{k}={v}" for k, v in user_sampling.items()) + ".")
    if not parts:
        parts.append("No recommended sampling is known for this checkpoint: the scheduler alone samples all training steps "
                     "unless `timestep_respacing` or `num_inference_steps` is passed.")
    if fast_in_snippet:
        parts.append("The snippet above samples with the package's fast recipe instead of every step.")
    return " ".join(parts) + "\n\n" + fast_sampling_note()


def _user_description(kind: str, conditional: bool, what: str) -> str:
    phrase = f"{'' if kind == 'classifier' else 'class-conditional ' if conditional else 'unconditional '}{what}"
    return f"{'An' if phrase[0] in 'aeiou' else 'A'} {phrase}."


def _user_license_note(license: str) -> str:
    if license != DEFAULT_LICENSE:
        return f"`{license}`, as stated with `--license` by whoever converted the user checkpoint."
    return ("Not stated (`unknown`): converted from a user checkpoint without `--license`; the weights' terms are their "
            "trainer's to give (and depend on the training data's).")


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
    num_train_timesteps: int | None = None,
    classifier_source: str | Preset | None = None,
    license: str | None = None,
) -> ModelCard:
    """The README.md of a converted folder: metadata, where the weights came from, usage, flags, use and limitations.

    Args:
        preset: the release the checkpoint is (None: a user checkpoint converted with the user's flags or config).
        sampling: recommended sampling from the preset (the original README).
        user_sampling: sampling settings the user's flags gave (labelled as such in the card).
        num_train_timesteps: T of the folder's scheduler (a recommended respacing of every step is not used by the
            snippet, which samples with the fast recipe instead).
        classifier_source: where a bundled classifier came from: its preset, or the file name of a user checkpoint.
        license: the Hub license id given with ``--license`` (only for user checkpoints; default ``unknown``).

    A folder holding any user checkpoint has the license ``license`` (default ``unknown``); one made of releases only
    has the release's.
    """
    user_sampling = user_sampling or {}
    community = preset is not None and bool(preset.origin)
    user_classifier = isinstance(classifier_source, str)
    released = preset is not None and not user_classifier
    check_user_license(license, preset if released else None)
    license_id = (preset.license if community and preset.license else LICENSES[family]) if released else (license or DEFAULT_LICENSE)
    path = template(USER_TEMPLATE if preset is None else COMMUNITY_TEMPLATE if community else _TEMPLATE_FILES[family])
    dataset = preset.dataset if preset else ""
    tags = ["diffusers", "guided-diffusers", "diffusion", "unconditional-image-generation" if not conditional else "class-conditional-image-generation"]
    if kind == "classifier":
        tags = ["guided-diffusers", "noisy-classifier", "classifier-guidance"]
    elif kind == "super_res":
        tags.append("super-resolution")
    if family == CONSISTENCY:
        tags.append("consistency-model")
    card_data = ModelCardData(
        library_name="diffusers",
        license=license_id,
        tags=tags,
        pipeline_tag="image-classification" if kind == "classifier" else ("image-to-image" if kind == "super_res" else "unconditional-image-generation"),
        datasets=[HUB_DATASETS[dataset]] if dataset in HUB_DATASETS else None,
    )
    merged = {**sampling, **user_sampling}
    if family == CONSISTENCY:
        usage = consistency_usage(repo_id, num_classes if conditional else None, merged.get("timesteps"))
        fast_in_snippet = False
    elif community and preset.usage == "inpaint" and kind == "diffusion":
        usage = inpaint_usage(repo_id, merged)
        fast_in_snippet = False
    else:
        usage = _usage(kind, repo_id, merged, conditional, has_classifier, num_classes, low_res_size, num_train_timesteps, released)
        fast_in_snippet = kind != "classifier" and "FAST_RECIPE" in usage
    what = {"classifier": "noisy classifier", "super_res": "super-resolution diffusion model"}.get(
        kind, "consistency model" if family == CONSISTENCY else "diffusion model")
    parts_note = ""
    if isinstance(classifier_source, Preset):
        parts_note = f"The classifier in this folder is the release `{classifier_source.name}` of {_FAMILY_LINKS[classifier_source.family]}."
    elif user_classifier:
        parts_note = (f"The classifier in this folder was converted from a user checkpoint (`{Path(classifier_source).name}`) with the "
                      "flags below, not from a release.")
    if released:
        license_note = preset.license_note if community else _LICENSE_NOTES[family]
    elif preset is not None:  # a release with a user's classifier
        license_note = f"{_LICENSE_NOTES[family]} The classifier is a user checkpoint, so the folder's license is: {_user_license_note(license_id)}"
    else:
        license_note = _user_license_note(license_id)
    return ModelCard.from_template(
        card_data,
        template_path=str(path),
        model_name=preset.name if preset else Path(checkpoint_name).stem,
        description=preset.description if preset else _user_description(kind, conditional, what),
        paper=preset.paper if preset else f"the {family} paper",
        family_link=_FAMILY_LINKS[family],
        checkpoint_name=checkpoint_name,
        parts_note=parts_note,
        install=install_lines(),
        results_table=_markdown_table(preset.results if preset else ()),
        usage=usage,
        sampling_note="" if kind == "classifier" else _consistency_sampling_note(sampling, user_sampling)
        if family == CONSISTENCY else _sampling_note(sampling, user_sampling, fast_in_snippet),
        flags=flags,
        verification=verification,
        license_note=license_note,
        citation=citation_block((*preset.citations, "adm") if community else _FAMILY_CITATIONS[family]),
        origin=preset.origin if community else "",
        recommended_use=preset.recommended_use if community else "",
        dataset_notes=_DATASET_NOTES.get(dataset.split("-")[0] if dataset.startswith("lsun") else dataset, dataset or "See the original release."),
    )
