"""Every released original checkpoint, and the community's checkpoints in guided-diffusion's format whose
configurations are public: flags (from the READMEs and configuration files), recommended sampling, and card facts."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .flags import CONSISTENCY_MODELS

GUIDED = "guided-diffusion"
IMPROVED = "improved-diffusion"
DDPM = "ddpm"
#: openai/consistency_models: guided-diffusion's network, sampled by ADMConsistencyPipeline.
CONSISTENCY = CONSISTENCY_MODELS
#: The kinds of model, in every part that names one (presets, model cards, training tasks, the training scripts):
#: a diffusion model, a super-resolution (ADM-U) diffusion model, a noisy classifier.
KINDS = ("diffusion", "super_res", "classifier")

# Results tables of the original READMEs / papers, for the model cards: (dataset, metrics...)
_GUIDED_RESULTS_HEADER = ("Dataset", "FID", "Precision", "Recall")


@dataclass(frozen=True)
class Preset:
    """One released checkpoint.

    Args:
        name: the preset name (``--preset``).
        family: ``guided-diffusion``, ``improved-diffusion``, ``consistency-models`` or ``ddpm``.
        kind: one of [`KINDS`]: ``diffusion``, ``super_res`` or ``classifier``.
        flags: the original scripts' model and diffusion flags (ADM families), exactly as the READMEs give them
            (consistency_models: its launch.sh sampling command's, whose ``--steps`` and ``--ts`` give the scheduler's
            grid and the recommended multistep timesteps).
        constructor_kwargs: the DDPM port's Model kwargs (DDPM family).
        scheduler: scheduler settings beyond the flags (DDPM's betas and variance).
        sampling: recommended sampling: ``timestep_respacing``, ``use_ddim``, ``classifier_scale``.
        classifier: the preset of the classifier released to guide this model, if any.
        dataset: the training data.
        paper: the paper's title and link.
        description: one paragraph for the model card.
        results: the original README's results for this model: a header row and rows.
        file_names: the released file names (matched to pick a preset from a checkpoint path).
        origin: for a community checkpoint (trained by others with guided-diffusion's code), the GitHub repository
            that released it; empty for the originals' own releases.
        license: the Hub license id of a community checkpoint (the family's otherwise).
        license_note: what the release says about its license, for the card.
        citations: the BibTeX keys of the papers to cite (``model_card.CITATIONS``), for a community checkpoint.
        recommended_use: what the release uses the model for, for the card.
        usage: the card's snippet: ``"sample"`` (the pipeline's sampling) or ``"inpaint"`` (ADMInpaintPipeline).
    """

    name: str
    family: str
    kind: str
    flags: str = ""
    constructor_kwargs: dict[str, Any] | None = None
    scheduler: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    classifier: str | None = None
    dataset: str = ""
    paper: str = ""
    description: str = ""
    results: tuple[tuple[str, ...], ...] = ()
    file_names: tuple[str, ...] = ()
    origin: str = ""
    license: str = ""
    license_note: str = ""
    citations: tuple[str, ...] = ()
    recommended_use: str = ""
    usage: str = "sample"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"expected a preset kind in {KINDS}, got {self.kind!r} for {self.name!r}")


_ADM_PAPER = "[Diffusion Models Beat GANs on Image Synthesis](https://arxiv.org/abs/2105.05233) (Dhariwal & Nichol, 2021)"
_IDDPM_PAPER = "[Improved Denoising Diffusion Probabilistic Models](https://arxiv.org/abs/2102.09672) (Nichol & Dhariwal, 2021)"
_DDPM_PAPER = "[Denoising Diffusion Probabilistic Models](https://arxiv.org/abs/2006.11239) (Ho, Jain & Abbeel, 2020)"

_CLASSIFIER_FLAGS = (
    "--image_size {size} --classifier_attention_resolutions 32,16,8 --classifier_depth {depth} --classifier_width 128 "
    "--classifier_pool attention --classifier_resblock_updown True --classifier_use_scale_shift_norm True"
)
_ADM_256 = (
    "--attention_resolutions 32,16,8 --class_cond {cond} --diffusion_steps 1000 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True"
)
_LSUN = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout {dropout} --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
_GUIDED_IMAGENET = dict(family=GUIDED, dataset="imagenet-1k", paper=_ADM_PAPER)


def _guided_results(*rows: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return (_GUIDED_RESULTS_HEADER, *rows)


_PRESETS: list[Preset] = [
    # -- guided-diffusion: ImageNet diffusion models (ADM-G) ---------------------------------------------------------
    Preset(
        "64x64_diffusion", kind="diffusion", classifier="64x64_classifier",
        flags="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
        "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
        "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True",
        sampling=dict(timestep_respacing="250", classifier_scale=1.0),
        description="Class-conditional ImageNet 64x64 ADM diffusion model.",
        results=_guided_results(("ImageNet 64x64 (with classifier guidance)", "2.07", "0.74", "0.63")),
        file_names=("64x64_diffusion.pt",), **_GUIDED_IMAGENET,
    ),
    Preset(
        "128x128_diffusion", kind="diffusion", classifier="128x128_classifier",
        flags="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True "
        "--noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True "
        "--use_scale_shift_norm True",
        sampling=dict(timestep_respacing="250", classifier_scale=0.5),
        description="Class-conditional ImageNet 128x128 ADM diffusion model.",
        results=_guided_results(("ImageNet 128x128 (with classifier guidance)", "2.97", "0.78", "0.59")),
        file_names=("128x128_diffusion.pt",), **_GUIDED_IMAGENET,
    ),
    Preset(
        "256x256_diffusion", kind="diffusion", classifier="256x256_classifier", flags=_ADM_256.format(cond="True"),
        sampling=dict(timestep_respacing="250", classifier_scale=1.0),
        description="Class-conditional ImageNet 256x256 ADM diffusion model.",
        results=_guided_results(
            ("ImageNet 256x256 (with classifier guidance)", "4.59", "0.82", "0.52"),
            ("ImageNet 256x256 (64->256 upsampling and guidance)", "3.94", "0.83", "0.53"),
        ),
        file_names=("256x256_diffusion.pt",), **_GUIDED_IMAGENET,
    ),
    Preset(
        "256x256_diffusion_uncond", kind="diffusion", classifier="256x256_classifier", flags=_ADM_256.format(cond="False"),
        sampling=dict(timestep_respacing="250", classifier_scale=10.0),
        description="Class-unconditional ImageNet 256x256 ADM diffusion model; the original samples it guided by the "
        "256x256 classifier at scale 10.",
        file_names=("256x256_diffusion_uncond.pt",), **_GUIDED_IMAGENET,
    ),
    Preset(
        "512x512_diffusion", kind="diffusion", classifier="512x512_classifier",
        flags="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True "
        "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 False --use_scale_shift_norm True",
        sampling=dict(timestep_respacing="250", classifier_scale=4.0),
        description="Class-conditional ImageNet 512x512 ADM diffusion model.",
        results=_guided_results(
            ("ImageNet 512x512 (with classifier guidance)", "7.72", "0.87", "0.42"),
            ("ImageNet 512x512 (128->512 upsampling and guidance)", "3.85", "0.84", "0.53"),
        ),
        file_names=("512x512_diffusion.pt",), **_GUIDED_IMAGENET,
    ),
    # -- guided-diffusion: noisy classifiers ---------------------------------------------------------------------------
    *[
        Preset(
            f"{size}x{size}_classifier", kind="classifier",
            flags=_CLASSIFIER_FLAGS.format(size=size, depth=4 if size == 64 else 2),
            description=f"Noisy ImageNet {size}x{size} classifier, trained on noised images x_t to guide the {size}x{size} "
            "ADM diffusion models (ADM-G).",
            file_names=(f"{size}x{size}_classifier.pt",), **_GUIDED_IMAGENET,
        )
        for size in (64, 128, 256, 512)
    ],
    # -- guided-diffusion: upsamplers (ADM-U) ------------------------------------------------------------------------
    Preset(
        "64_256_upsampler", kind="super_res",
        flags="--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 --small_size 64 "
        "--learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
        "--use_fp16 True --use_scale_shift_norm True",
        sampling=dict(timestep_respacing="250"),
        description="Class-conditional ImageNet 64x64 -> 256x256 upsampling diffusion model (ADM-U).",
        results=_guided_results(("ImageNet 256x256 (64->256 upsampling and guidance)", "3.94", "0.83", "0.53")),
        file_names=("64_256_upsampler.pt",), **_GUIDED_IMAGENET,
    ),
    Preset(
        "128_512_upsampler", kind="super_res",
        flags="--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 "
        "--learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 "
        "--resblock_updown True --use_fp16 True --use_scale_shift_norm True",
        sampling=dict(timestep_respacing="250"),
        description="Class-conditional ImageNet 128x128 -> 512x512 upsampling diffusion model (ADM-U).",
        results=_guided_results(("ImageNet 512x512 (128->512 upsampling and guidance)", "3.85", "0.84", "0.53")),
        file_names=("128_512_upsampler.pt",), **_GUIDED_IMAGENET,
    ),
    # -- guided-diffusion: LSUN ----------------------------------------------------------------------------------------
    *[
        Preset(
            name, family=GUIDED, kind="diffusion", flags=_LSUN.format(dropout=dropout), dataset=f"lsun-{category}",
            paper=_ADM_PAPER, sampling=dict(timestep_respacing="1000"),
            description=f"Unconditional LSUN {category} 256x256 ADM diffusion model"
            + (" (trained without dropout)." if dropout == "0.0" else ".")
            + " The original README notes the best samples come from all 1000 steps.",
            results=_guided_results((f"LSUN {category.title()}", fid, precision, recall)) if fid else (),
            file_names=(f"{name}.pt",),
        )
        for name, category, dropout, fid, precision, recall in (
            ("lsun_bedroom", "bedroom", "0.1", "1.90", "0.66", "0.51"),
            ("lsun_cat", "cat", "0.1", "5.57", "0.63", "0.52"),
            ("lsun_horse", "horse", "0.1", "2.57", "0.71", "0.55"),
            ("lsun_horse_nodropout", "horse", "0.0", "", "", ""),
        )
    ],
    # -- improved-diffusion ----------------------------------------------------------------------------------------------
    Preset(
        "imagenet64_uncond_100M_1500K", family=IMPROVED, kind="diffusion", dataset="imagenet-1k", paper=_IDDPM_PAPER,
        flags="--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine",
        sampling=dict(timestep_respacing="250"),
        description="Unconditional ImageNet 64x64 IDDPM trained with L_hybrid and the cosine schedule (learned variances).",
        file_names=("imagenet64_uncond_100M_1500K.pt",),
    ),
    Preset(
        "cifar10_uncond_50M_500K", family=IMPROVED, kind="diffusion", dataset="cifar10", paper=_IDDPM_PAPER,
        flags="--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 "
        "--noise_schedule cosine",
        sampling=dict(timestep_respacing="250"),
        description="Unconditional CIFAR-10 IDDPM trained with L_hybrid and the cosine schedule (learned variances).",
        file_names=("cifar10_uncond_50M_500K.pt",),
    ),
    Preset(
        "imagenet64_cond_270M_250K", family=IMPROVED, kind="diffusion", dataset="imagenet-1k", paper=_IDDPM_PAPER,
        flags="--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True --diffusion_steps 4000 "
        "--noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False",
        sampling=dict(timestep_respacing="250"),
        description="Class-conditional ImageNet 64x64 IDDPM (270M parameters, 250K iterations).",
        file_names=("imagenet64_cond_270M_250K.pt",),
    ),
    Preset(
        "upsample_cond_500K", family=IMPROVED, kind="super_res", dataset="imagenet-1k", paper=_IDDPM_PAPER,
        # The README omits large_size/small_size: the script's defaults (256 and 64) apply.
        flags="--large_size 256 --small_size 64 --num_channels 192 --num_res_blocks 2 --learn_sigma True --class_cond True "
        "--diffusion_steps 4000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False",
        sampling=dict(timestep_respacing="250"),
        description="Class-conditional ImageNet 64x64 -> 256x256 IDDPM upsampler (280M parameters, 500K iterations).",
        file_names=("upsample_cond_500K.pt",),
    ),
    *[
        Preset(
            name, family=IMPROVED, kind="diffusion", dataset="lsun-bedroom", paper=_IDDPM_PAPER,
            flags="--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True "
            "--use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear "
            "--rescale_learned_sigmas False --rescale_timesteps False",
            sampling=dict(timestep_respacing="1000"),
            description=f"Unconditional LSUN bedroom 256x256 IDDPM ({detail}).",
            file_names=(f"{name}.pt",),
        )
        for name, detail in (
            ("lsun_uncond_100M_1200K_bs128", "lr 1e-4, batch 128, 1.2M iterations"),
            ("lsun_uncond_100M_2400K_bs64", "lr 2e-5, 2.4M iterations"),
        )
    ],
    Preset(
        "imagenet64_uncond_vlb_100M_1500K", family=IMPROVED, kind="diffusion", dataset="imagenet-1k", paper=_IDDPM_PAPER,
        flags="--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 "
        "--noise_schedule cosine --use_kl True",
        sampling=dict(timestep_respacing="250"),
        description="Unconditional ImageNet 64x64 IDDPM trained with L_vlb (importance-sampled) and the cosine schedule; "
        "the model for likelihood (bits/dim) evaluation.",
        file_names=("imagenet64_uncond_vlb_100M_1500K.pt",),
    ),
    Preset(
        "cifar10_uncond_vlb_50M_500K", family=IMPROVED, kind="diffusion", dataset="cifar10", paper=_IDDPM_PAPER,
        flags="--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 "
        "--noise_schedule cosine --use_kl True",
        sampling=dict(timestep_respacing="250"),
        description="Unconditional CIFAR-10 IDDPM trained with L_vlb (importance-sampled) and the cosine schedule; the "
        "model for likelihood (bits/dim) evaluation.",
        file_names=("cifar10_uncond_vlb_50M_500K.pt",),
    ),
    # -- DDPM (the PyTorch port of the original TensorFlow checkpoints) --------------------------------------------------
    *[
        Preset(
            name + suffix, family=DDPM, kind="diffusion", dataset=dataset, paper=_DDPM_PAPER,
            constructor_kwargs=dict(kwargs),
            scheduler=dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02, variance_type=variance),
            sampling=dict(timestep_respacing="1000"),
            description=f"DDPM trained on {label}" + (" (EMA weights)." if suffix else " (raw weights)."),
            results=results,
            file_names=(f"{'ema_' if suffix else ''}diffusion_{name}_model",),
        )
        for name, label, dataset, variance, kwargs, results in (
            ("cifar10", "CIFAR-10 32x32", "cifar10", "fixed_large",
             dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1, resolution=32, in_channels=3),
             (("Dataset", "IS", "FID", "NLL (bits/dim)"), ("CIFAR-10", "9.46", "3.17", "<= 3.75"))),
            ("lsun_bedroom", "LSUN bedroom 256x256", "lsun-bedroom", "fixed_small",
             dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resolution=256, in_channels=3),
             (("Dataset", "FID"), ("LSUN Bedroom", "6.36"))),
            ("lsun_cat", "LSUN cat 256x256", "lsun-cat", "fixed_small",
             dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resolution=256, in_channels=3),
             (("Dataset", "FID"), ("LSUN Cat", "19.75"))),
            ("lsun_church", "LSUN church 256x256", "lsun-church", "fixed_small",
             dict(ch=128, out_ch=3, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,), dropout=0.0, resolution=256, in_channels=3),
             (("Dataset", "FID"), ("LSUN Church", "7.89"))),
        )
        for suffix in ("", "_ema")
    ],
]

# -- community checkpoints in guided-diffusion's format ------------------------------------------------------------------
# Each flag string is the release's own configuration (RePaint's confs/*.yml, P2-weighting's README command, ILVR's
# README command and DPS's configs/model_config.yaml), read with guided-diffusion's defaults.

_REPAINT_PAPER = "[RePaint: Inpainting using Denoising Diffusion Probabilistic Models](https://arxiv.org/abs/2201.09865) (Lugmayr et al., CVPR 2022)"
_P2_PAPER = "[Perception Prioritized Training of Diffusion Models](https://arxiv.org/abs/2204.00227) (Choi et al., CVPR 2022)"
_ILVR_PAPER = "[ILVR: Conditioning Method for Denoising Diffusion Probabilistic Models](https://arxiv.org/abs/2108.02938) (Choi et al., ICCV 2021)"
_DPS_PAPER = "[Diffusion Posterior Sampling for General Noisy Inverse Problems](https://arxiv.org/abs/2209.14687) (Chung et al., ICLR 2023)"

# RePaint's confs/test_{c256,p256}_*.yml (the model and diffusion keys; the ImageNet confs use OpenAI's 256x256_diffusion).
_REPAINT_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 False --use_new_attention_order False --use_scale_shift_norm True"
)
# P2-weighting's "lightweight ADM" (93M parameters), its README's sampling command; ILVR and DPS use the same network.
_P2_FLAGS = (
    "--attention_resolutions 16 --class_cond False --diffusion_steps 1000 --dropout 0.0 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 128 --num_res_blocks 1 --num_head_channels 64 --resblock_updown True "
    "--use_fp16 False --use_scale_shift_norm True"
)
_REPAINT_LICENSE = (
    "RePaint's repository (andreas128/RePaint) is licensed CC BY-NC-SA 4.0 by Huawei Technologies, \"released for "
    "academic research use only\" (commercial use: contact Huawei). Its download script fetches these weights without "
    "a separate statement, so their license is not stated: treat them as under the repository's non-commercial terms "
    "unless the authors say otherwise."
)
_P2_LICENSE = (
    "P2-weighting's repository (jychoi118/P2-weighting) carries guided-diffusion's MIT license (copyright OpenAI) for its "
    "code; the README links the checkpoints without stating a license for them, so the weights' license is unknown. "
    "Ask the authors before use beyond research."
)
_COMMUNITY = dict(family=GUIDED, kind="diffusion")
_REPAINT_USE = (
    "Inpainting with RePaint's resampling schedule: `ADMInpaintPipeline` with 250 steps, jump length 10 and 10 "
    "resamplings, as RePaint's configurations run it (about 2,400 U-Net evaluations per image). Also an unconditional "
    "{what} generator and a base for SDEdit (`ADMImg2ImgPipeline`)."
)
_P2_USE = (
    "Unconditional {what} generation (the README samples with 250 steps); a base for SDEdit (`ADMImg2ImgPipeline`) "
    "and RePaint inpainting (`ADMInpaintPipeline`), and the models ILVR's README conditions."
)

_PRESETS += [
    *[
        Preset(
            name, **_COMMUNITY, flags=_REPAINT_FLAGS, dataset=dataset, paper=_REPAINT_PAPER, origin="andreas128/RePaint",
            sampling=dict(timestep_respacing="250", jump_length=10, jump_n_sample=10),
            description=f"Unconditional {label} 256x256 ADM diffusion model trained by RePaint's authors with "
            "guided-diffusion's code, for RePaint inpainting.",
            license="unknown", license_note=_REPAINT_LICENSE, citations=("repaint",), usage="inpaint",
            recommended_use=_REPAINT_USE.format(what=label), file_names=(file_name,),
        )
        for name, label, dataset, file_name in (
            ("repaint_celebahq_256", "CelebA-HQ", "celeba-hq", "celeba256_250000.pt"),
            ("repaint_places2_256", "Places2", "places2", "places256_300000.pt"),
        )
    ],
    *[
        Preset(
            f"p2_{name}", **_COMMUNITY, flags=_P2_FLAGS, dataset=dataset, paper=_P2_PAPER, origin="jychoi118/P2-weighting",
            sampling=dict(timestep_respacing="250"),
            description=f"Unconditional {label} 256x256 diffusion model trained with P2 weighting (gamma 1, k 1) on "
            "P2-weighting's lightweight ADM (93M parameters).",
            license="unknown", license_note=_P2_LICENSE, citations=("p2",), recommended_use=_P2_USE.format(what=label),
            file_names=(file_name,),
        )
        for name, label, dataset, file_name in (
            ("ffhq", "FFHQ", "ffhq", "ffhq_p2.pt"),
            ("celebahq", "CelebA-HQ", "celeba-hq", "celebahq_p2.pt"),
            ("afhq_dog", "AFHQ-dog", "afhq-dog", "afhq_p2.pt"),
            ("flowers", "Oxford Flowers", "flowers", "flower_p2.pt"),
            ("cub", "CUB-200 birds", "cub", "cub_p2.pt"),
            ("metfaces", "MetFaces", "metfaces", "metface_p2.pt"),
        )
    ],
    Preset(
        "ffhq_10m", **_COMMUNITY, flags=_P2_FLAGS, dataset="ffhq", paper=_ILVR_PAPER, origin="jychoi118/ilvr_adm",
        sampling=dict(timestep_respacing="1000"),
        description="Unconditional FFHQ 256x256 diffusion model released with ILVR (trained with P2 weighting on P2's "
        "lightweight ADM); DPS (DPS2022/diffusion-posterior-sampling) uses a checkpoint of the same name and "
        "configuration (configs/model_config.yaml) as its FFHQ prior.",
        license="unknown", citations=("ilvr", "dps", "p2"),
        license_note="ILVR's repository (jychoi118/ilvr_adm) carries guided-diffusion's MIT license (copyright OpenAI) "
        "for its code and links the checkpoints without a license statement; DPS's repository has no license file. The "
        "weights' license is therefore unknown: ask the authors before use beyond research.",
        recommended_use="The FFHQ prior of inverse-problem solvers: DPS samples it with all 1000 steps "
        "(configs/diffusion_config.yaml), ILVR with 100. Here: unconditional sampling, SDEdit (`ADMImg2ImgPipeline`) "
        "and RePaint inpainting (`ADMInpaintPipeline`); DPS's and ILVR's own conditioning are not implemented.",
        file_names=("ffhq_10m.pt",),
    ),
]

# -- openai/consistency_models: consistency models on guided-diffusion's network -----------------------------------------
# Flags: scripts/launch.sh's sampling commands for each release (model flags, --training_mode, and the multistep
# setting --ts/--steps where it gives one; --steps is the training grid: 40 scales for CD, 200 + 1 for CT on ImageNet-64,
# 150 + 1 for CT on LSUN). Results: the paper's Tables 2 and 3 (FID, 50K samples; CD there uses LPIPS).

_CM_PAPER = "[Consistency Models](https://arxiv.org/abs/2303.01469) (Song, Dhariwal, Chen & Sutskever, ICML 2023)"
_CM_IMAGENET = (
    "--attention_resolutions 32,16,8 --class_cond True --use_scale_shift_norm True --dropout 0.0 --image_size 64 "
    "--num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown True --use_fp16 True --weight_schedule uniform"
)
_CM_LSUN = (
    "--attention_resolutions 32,16,8 --class_cond False --use_scale_shift_norm False --dropout 0.0 --image_size 256 "
    "--num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --weight_schedule uniform"
)
_CM_MODES = {"cd": "consistency_distillation", "ct": "consistency_training"}
_CM_TRAINING = {
    "cd": "distilled from the release's EDM model on the same data (consistency distillation, {metric} metric, 40 noise levels)",
    "ct": "trained from data alone (consistency training, LPIPS metric, up to {scales} noise levels)",
}


_PRESETS += [
    Preset(
        name, family=CONSISTENCY, kind="diffusion", dataset=dataset, paper=_CM_PAPER,
        flags=f"{network} --training_mode {_CM_MODES[name[:2]]} "
        + (f"--sampler multistep --ts {ts} --steps {steps}" if ts else f"--sampler onestep --steps {steps}"),
        description=f"{what} consistency model, {_CM_TRAINING[name[:2]].format(metric=metric, scales=steps - 1)}; it "
        "samples in one step, or in a few.",
        results=(("Dataset", "Steps", "FID"), (label, "1", fids[0]), (label, "2", fids[1])) if fids else (),
        file_names=(f"{name}.pt",),
    )
    for name, what, label, dataset, network, metric, steps, ts, fids in (
        ("cd_imagenet64_l2", "Class-conditional ImageNet 64x64", "ImageNet 64x64", "imagenet-1k", _CM_IMAGENET, "l2", 40, "0,22,39", ()),
        ("cd_imagenet64_lpips", "Class-conditional ImageNet 64x64", "ImageNet 64x64", "imagenet-1k", _CM_IMAGENET, "LPIPS", 40, "0,22,39", ("6.20", "4.70")),
        ("ct_imagenet64", "Class-conditional ImageNet 64x64", "ImageNet 64x64", "imagenet-1k", _CM_IMAGENET, "", 201, "0,106,200", ("13.0", "11.1")),
        ("cd_bedroom256_l2", "Unconditional LSUN bedroom 256x256", "LSUN Bedroom 256x256", "lsun-bedroom", _CM_LSUN, "l2", 40, "0,18,39", ()),
        ("cd_bedroom256_lpips", "Unconditional LSUN bedroom 256x256", "LSUN Bedroom 256x256", "lsun-bedroom", _CM_LSUN, "LPIPS", 40, "0,17,39", ("7.80", "5.22")),
        ("ct_bedroom256", "Unconditional LSUN bedroom 256x256", "LSUN Bedroom 256x256", "lsun-bedroom", _CM_LSUN, "", 151, "0,67,150", ("16.0", "7.85")),
        # launch.sh gives no multistep setting for the CD cat models: one step (--sampler onestep) is the release's.
        ("cd_cat256_l2", "Unconditional LSUN cat 256x256", "LSUN Cat 256x256", "lsun-cat", _CM_LSUN, "l2", 40, "", ()),
        ("cd_cat256_lpips", "Unconditional LSUN cat 256x256", "LSUN Cat 256x256", "lsun-cat", _CM_LSUN, "LPIPS", 40, "", ("11.0", "8.84")),
        ("ct_cat256", "Unconditional LSUN cat 256x256", "LSUN Cat 256x256", "lsun-cat", _CM_LSUN, "", 151, "0,62,150", ("20.7", "11.7")),
    )
]

#: Other releases' configurations whose network is exactly a preset's: (release, its configuration as flags, preset).
SAME_NETWORK_AS_PRESET = (
    ("RePaint's ImageNet confs (confs/test_inet256_*.yml)",
     "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.0 --image_size 256 --learn_sigma True "
     "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
     "--use_fp16 True --use_new_attention_order False --use_scale_shift_norm True", "256x256_diffusion"),
    ("DPS's ImageNet model (configs/imagenet_model_config.yaml)",
     "--image_size 256 --num_channels 256 --num_res_blocks 2 --learn_sigma True --class_cond False --attention_resolutions 32,16,8 "
     "--num_heads 4 --num_head_channels 64 --num_heads_upsample -1 --use_scale_shift_norm True --dropout 0.0 "
     "--resblock_updown True --use_fp16 False --use_new_attention_order False", "256x256_diffusion_uncond"),
    ("DPS's FFHQ model (configs/model_config.yaml)",
     "--image_size 256 --num_channels 128 --num_res_blocks 1 --learn_sigma True --class_cond False --attention_resolutions 16 "
     "--num_heads 4 --num_head_channels 64 --num_heads_upsample -1 --use_scale_shift_norm True --dropout 0.0 "
     "--resblock_updown True --use_fp16 False --use_new_attention_order False", "ffhq_10m"),
)

#: The presets of each converter: ``"adm"`` (guided-diffusion, improved-diffusion, consistency_models) and ``"ddpm"``. Names are unique
#: within a converter only (both have an ``lsun_bedroom``).
CONVERTERS = ("adm", "ddpm")
PRESETS: dict[str, dict[str, Preset]] = {
    converter: {p.name: p for p in _PRESETS if (p.family == DDPM) == (converter == "ddpm")} for converter in CONVERTERS
}


def _check_converter(converter: str) -> dict[str, Preset]:
    if converter not in CONVERTERS:
        raise ValueError(f"expected converter in {CONVERTERS}, got {converter!r}")
    return PRESETS[converter]


def get_preset(name: str, converter: str) -> Preset:
    """A preset of ``converter`` (``"adm"`` or ``"ddpm"``) by name, or a one-line error listing the names."""
    presets = _check_converter(converter)
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; expected one of: {', '.join(presets)}")
    return presets[name]


def preset_from_path(path: str | Path, converter: str) -> Preset | None:
    """The preset of ``converter`` whose released file name the checkpoint path carries (longest match), or None."""
    text = str(path).replace("\\", "/").lower()
    best: tuple[int, Preset] | None = None
    for preset in _check_converter(converter).values():
        for file_name in preset.file_names:
            # DDPM checkpoints live in folders named after the model: ema_diffusion_cifar10_model/model-790000.ckpt
            tail = r"(/|$)" if preset.family == DDPM else r"$"
            if re.search(r"(^|/)" + re.escape(file_name.lower()) + tail, text) and (best is None or len(file_name) > best[0]):
                best = (len(file_name), preset)
    return best[1] if best else None
