"""Writing pipeline folders from original checkpoints (read by originals.py): model, scheduler, card; written
atomically; optionally pushed to the Hub."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import CMStochasticIterativeScheduler

from ..publishing import make_temp_folder, push_folder_to_hub, write_folder_atomically
from ..pipelines import ADMConsistencyPipeline, ADMUpsamplingPipeline, ClassifierGuidedPipeline, imagenet_id2label
from ..schedulers import GuidedDDIMScheduler, GuidedDDPMScheduler
from .flags import (
    CONSISTENCY_MODELS,
    NUM_CLASSES,
    consistency_scheduler_config,
    consistency_timesteps,
    given_flags,
    is_super_res,
    parse_flags,
    scheduler_config_from_diffusion_flags,
    timestep_scale_from_flags,
    unet_kwargs_from_parsed,
)
from .originals import (
    adm_classifier_config,
    adm_unet_config,
    convert_classifier_checkpoint,
    convert_ddpm_checkpoint,
    convert_unet_checkpoint,
    ddpm_unet_config,
    load_original_state_dict,
)
from .model_card import check_user_license, render_model_card
from .presets import DDPM, GUIDED, Preset, get_preset, preset_from_path
from .state_dict import CheckpointMismatchError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SCHEDULER_FLAGS = ("learn_sigma", "sigma_small", "noise_schedule", "predict_xstart", "timestep_respacing")


def check_output(output: str | os.PathLike, overwrite: bool, inputs: tuple[Any, ...] = ()) -> Path:
    """The output folder, checked before any work: refused when it is a non-empty folder without ``overwrite``, the
    current directory or one of its parents, a folder holding one of the ``inputs``, or in a missing parent folder."""
    output = Path(output)
    resolved = output.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise ValueError(f"expected --output to be a new or replaceable folder, got {str(output)!r}, the current directory or a parent of it")
    for path in inputs:
        if path is not None and resolved in Path(path).resolve().parents:
            raise ValueError(f"expected --output outside the folder of the input {str(path)!r}, got {str(output)!r} (replacing it would delete the input)")
    if not resolved.parent.is_dir():
        raise ValueError(f"expected --output in an existing folder, got {str(output)!r} (no folder {str(resolved.parent)!r})")
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ValueError(f"expected an empty or new output folder, got non-empty {str(output)!r} (pass --overwrite to replace it)")
    return output


def reserve_output(output: Path) -> Path:
    """The temporary folder the output is written into, made now so that an unwritable place is found before any work."""
    try:
        return make_temp_folder(output)
    except OSError as error:
        raise ValueError(f"expected a writable place for --output {str(output)!r}, got {error.strerror or error} creating a folder in {str(output.resolve().parent)!r}") from None


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"expected --dtype in {list(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def _scheduler_for(flags: dict[str, Any], sampling: dict[str, Any], steps: int) -> Any:
    config = scheduler_config_from_diffusion_flags({"steps": steps, **{k: flags[k] for k in _SCHEDULER_FLAGS if k in flags}})
    if sampling.get("timestep_respacing"):
        config["timestep_respacing"] = sampling["timestep_respacing"]
    scheduler_class = GuidedDDIMScheduler if sampling.get("use_ddim") else GuidedDDPMScheduler
    return scheduler_class(**config)


# Measured on tests/fixtures/consistency_models (made by openai/consistency_models' own code; see
# benchmarks/make_consistency_parity_fixture.py): the largest difference of our float32 network from the original's.
_CONSISTENCY_PARITY = "2.4e-6"


def _verification(kind: str, family: str = GUIDED) -> str:
    if family == CONSISTENCY_MODELS:
        return (
            "Conversion checks, done by the converter before anything was written: every key of the original state dict "
            "was used, every parameter of the diffusers model filled, and every shape matched. At reduced width, the same "
            f"conversion reproduces openai/consistency_models' own network to {_CONSISTENCY_PARITY} (float32 attention; "
            "the original's non-flash path computes attention in float16, which differs from both by up to 2.3e-4), and "
            "this pipeline with diffusers' `CMStochasticIterativeScheduler` reproduces the original's denoiser "
            "(c_skip, c_out, c_in with sigma_min and sigma_data 0.5, the time input 250 log sigma) and its one-step and "
            "multistep samplers with the same noise."
        )
    return (
        "Conversion checks, done by the converter before anything was written: every key of the original state dict was "
        "used, every parameter of the diffusers model filled, and every shape matched. The same conversion code "
        f"reproduces the original code's outputs for this {kind} family to about 3e-6 (float32) on guided_diffusers' "
        "parity fixtures, and its schedulers reproduce the original sampling trajectories with the same noise."
    )


@dataclass(frozen=True)
class AdmConversion:
    """A checked guided-diffusion / improved-diffusion conversion: what is read, with which presets or flags, and
    where the folder goes (made by [`check_adm_conversion`] before any checkpoint is read)."""

    output: Path
    dtype: torch.dtype
    source: str
    checkpoint: str | os.PathLike | None
    unet_preset: Preset | None
    model_flags: str | None
    model_config: dict[str, Any] | None
    diffusion_flags: str | None
    classifier: str | os.PathLike | None
    classifier_preset: Preset | None
    classifier_flags: str | None
    classifier_config: dict[str, Any] | None
    license: str | None
    push_to_hub: str | None

    @property
    def repo_id(self) -> str:
        return self.push_to_hub or str(self.output)


def check_adm_conversion(
    checkpoint: str | os.PathLike | None,
    output: str | os.PathLike,
    *,
    source: str | None = None,
    preset: str | None = None,
    model_flags: str | None = None,
    model_config: dict[str, Any] | None = None,
    diffusion_flags: str | None = None,
    classifier: str | os.PathLike | None = None,
    classifier_preset: str | None = None,
    classifier_flags: str | None = None,
    classifier_config: dict[str, Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    license: str | None = None,
) -> AdmConversion:
    """[`convert_adm`]'s arguments checked, each in one line, before any checkpoint is read; presets picked."""
    output = check_output(output, overwrite, (checkpoint, classifier))
    torch_dtype = check_dtype(dtype)
    if sum(x is not None for x in (preset, model_flags, model_config)) > 1:
        raise ValueError("expected one of --preset, --model_flags or --model_config, got several")
    if sum(x is not None for x in (classifier_preset, classifier_flags, classifier_config)) > 1:
        raise ValueError("expected one of --classifier_preset, --classifier_flags or --classifier_config, got several")
    if checkpoint is None and classifier is None:
        raise ValueError("expected --checkpoint and/or --classifier, got neither")
    for path in (checkpoint, classifier):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"expected an original checkpoint file, got {str(path)!r} (no such file)")

    if checkpoint is not None and classifier is None and preset is None and model_flags is None and model_config is None:
        named = get_preset(classifier_preset, "adm") if classifier_preset else preset_from_path(checkpoint, "adm")
        if (classifier_flags is not None or classifier_config is not None) or (named is not None and named.kind == "classifier"):
            checkpoint, classifier = None, checkpoint  # a classifier file given as --checkpoint
    elif checkpoint is not None and classifier is None and preset is not None and get_preset(preset, "adm").kind == "classifier":
        checkpoint, classifier, preset, classifier_preset = None, checkpoint, None, preset

    unet_preset = _pick_preset(checkpoint, preset, model_flags, model_config, "--preset") if checkpoint is not None else None
    if unet_preset is not None and unet_preset.kind == "classifier":
        raise ValueError(f"preset {unet_preset.name!r} is a classifier; pass it with --classifier and --classifier_preset")
    if source is None:
        source = unet_preset.family if unet_preset else GUIDED
    if unet_preset is not None and unet_preset.family != source:
        raise ValueError(f"preset {unet_preset.name!r} is {unet_preset.family}'s, got --source {source}")
    if source == CONSISTENCY_MODELS:
        if classifier is not None:
            raise ValueError("expected no --classifier with a consistency model (its pipeline samples without one), got one")
        _consistency_sampling(parse_flags(" ".join(x for x in (
            unet_preset.flags if unet_preset else model_flags, diffusion_flags) if x), source))  # one line before any read
    clf_preset = None
    if classifier is not None:
        clf_preset = _pick_preset(classifier, classifier_preset, classifier_flags, classifier_config, "--classifier_preset")
        if clf_preset is not None and clf_preset.kind != "classifier":
            raise ValueError(f"expected a classifier preset for --classifier, got {clf_preset.name!r} ({clf_preset.kind})")
    if model_config is not None:
        adm_unet_config(model_config)  # missing or unknown keys: one line before any checkpoint is read
    if classifier_config is not None:
        adm_classifier_config(classifier_config)
    released = (checkpoint is None or unet_preset is not None) and (classifier is None or clf_preset is not None)
    check_user_license(license, (unet_preset or clf_preset) if released else None)
    return AdmConversion(
        output, torch_dtype, source, checkpoint, unet_preset, model_flags, model_config, diffusion_flags, classifier,
        clf_preset, (clf_preset.flags if clf_preset else classifier_flags) if classifier is not None else None,
        classifier_config, license, push_to_hub,
    )


def _read_classifier(job: AdmConversion) -> tuple[Any, str]:
    """The classifier model (in the asked dtype) and the flags it was read with, for the card."""
    if job.classifier is None:
        return None, ""
    model = _with_context(
        job.classifier_preset,
        lambda: convert_classifier_checkpoint(
            load_original_state_dict(job.classifier), flags=job.classifier_flags, constructor_kwargs=job.classifier_config),
        "--classifier_flags or --classifier_config",
    ).to(job.dtype)
    return model, job.classifier_flags or json.dumps(job.classifier_config)


def _read_unet(job: AdmConversion) -> tuple[Any, dict[str, Any], str]:
    """The U-Net (in the asked dtype), the model and process flags read once, and their text for the card."""
    model_only = job.unet_preset.flags if job.unet_preset else job.model_flags
    flag_text = " ".join(x for x in (model_only, job.diffusion_flags) if x)
    if job.model_config is not None:
        config = job.model_config
        flags = parse_flags(job.diffusion_flags, job.source)
        flags["learn_sigma"] = config.get("out_channels", 3) == 2 * config.get("in_channels", 3) or flags["learn_sigma"]
        flag_text = json.dumps(config) + (f"\n{job.diffusion_flags}" if job.diffusion_flags else "")
        unet_kwargs = config
    else:  # the model's and the process's flags, read once (the originals' scripts read them as one command line)
        flags = parse_flags(flag_text, job.source)
        unet_kwargs = _with_context(job.unet_preset, lambda: unet_kwargs_from_parsed(flags, job.source, is_super_res(model_only)))
    unet = _with_context(
        job.unet_preset if job.model_config is None else None,
        lambda: convert_unet_checkpoint(_unet_state_dict(job.checkpoint), source=job.source, constructor_kwargs=unet_kwargs),
    ).to(job.dtype)
    return unet, flags, flag_text


def _consistency_sampling(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the CMStochasticIterativeScheduler config, the recommended sampling) of consistency_models' flags: the multistep
    ``--ts`` as diffusers' ``timesteps``, where the flags give one; each checked in one line."""
    config = consistency_scheduler_config(flags)
    timesteps = consistency_timesteps(flags["ts"], flags["steps"])
    return config, ({"timesteps": timesteps} if timesteps else {})


def _recommended_sampling(job: AdmConversion, flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(every recommended sampling setting, those the user's own flags gave): the preset's (the original README's),
    overridden by a respacing in the user's flags; a consistency model's multistep timesteps from its flags."""
    if job.source == CONSISTENCY_MODELS:
        sampling = _consistency_sampling(flags)[1]
        return (sampling, {}) if job.unet_preset else (sampling, dict(sampling))
    sampling = dict(job.unet_preset.sampling) if job.unet_preset else {}
    user_sampling = {}
    if given_flags(job.diffusion_flags).get("timestep_respacing") or (job.unet_preset is None and flags["timestep_respacing"]):
        user_sampling["timestep_respacing"] = sampling["timestep_respacing"] = flags["timestep_respacing"]
    return sampling, user_sampling


def _adm_pipeline(job: AdmConversion, unet: Any, classifier: Any, flags: dict[str, Any], sampling: dict[str, Any]) -> Any:
    """The pipeline of the converted networks: a consistency one for consistency_models, an upsampling one for a
    super-resolution model, else the guided one."""
    if job.source == CONSISTENCY_MODELS:  # the network sees the scheduler's own timestep, 250 log sigma, unscaled
        unet.register_to_config(timestep_scale=1.0)
        scheduler = CMStochasticIterativeScheduler(**_consistency_sampling(flags)[0])
        id2label = imagenet_id2label() if unet.config.num_classes == NUM_CLASSES else None
        return ADMConsistencyPipeline(unet=unet, scheduler=scheduler, id2label=id2label)
    # The networks own their timestep scale (the originals' --rescale_timesteps): the U-Net and its classifier alike.
    for network in (unet, classifier):
        if network is not None:
            network.register_to_config(timestep_scale=timestep_scale_from_flags(flags))
    scheduler = _scheduler_for(flags, sampling, flags["diffusion_steps"])
    num_classes = unet.config.num_classes or (classifier.config.num_classes if classifier is not None else None)
    id2label = imagenet_id2label() if num_classes == NUM_CLASSES else None
    if _is_super_res(job):
        small = given_flags(job.model_flags or (job.unet_preset.flags if job.unet_preset else None)).get("small_size")
        small = small or (job.model_config or {}).get("small_size")
        return ADMUpsamplingPipeline(unet=unet, scheduler=scheduler, low_res_size=int(small) if small else None, id2label=id2label)
    return ClassifierGuidedPipeline(
        unet=unet, scheduler=scheduler, classifier=classifier, id2label=id2label,
        classifier_scale=sampling.get("classifier_scale") if classifier is not None else None,
    )


def _is_super_res(job: AdmConversion) -> bool:
    if job.unet_preset:
        return job.unet_preset.kind == "super_res"
    return is_super_res(job.model_flags) or "large_size" in (job.model_config or {})


def convert_adm(checkpoint: str | os.PathLike | None, output: str | os.PathLike, **options: Any) -> Path:
    """convert_guided_diffusion.py: a guided-diffusion / improved-diffusion checkpoint (and/or classifier) to a folder.

    ``checkpoint`` may be None when only a classifier is converted; the folder is then the classifier's model folder.
    A classifier given as ``checkpoint`` (its preset names a classifier, or only classifier flags or config are given)
    is converted as one. Every input is checked ([`check_adm_conversion`], which takes the options: ``source``,
    ``preset``, ``model_flags``, ``model_config``, ``diffusion_flags``, ``classifier``, ``classifier_preset``,
    ``classifier_flags``, ``classifier_config``, ``dtype``, ``overwrite``, ``push_to_hub``, ``license``), and the
    output's temporary folder made, before a checkpoint is read. ``license`` (``--license``): the card's Hub license
    id for a user checkpoint (converted with flags or a config; default ``unknown``); refused when every file is a
    release, whose license is known.
    """
    job = check_adm_conversion(checkpoint, output, **options)

    def build() -> Any:
        classifier, classifier_flag_text = _read_classifier(job)
        if job.checkpoint is None:  # a classifier alone: the classifier's model folder
            def write_classifier(folder: Path) -> None:
                classifier.save_pretrained(folder, safe_serialization=True)
                _card(job.classifier_preset, GUIDED, "classifier", classifier_flag_text, job.repo_id, job.classifier, False,
                      True, {}, {}, license=job.license).save(folder / "README.md")

            return write_classifier
        unet, flags, flag_text = _read_unet(job)
        sampling, user_sampling = _recommended_sampling(job, flags)
        pipeline = _adm_pipeline(job, unet, classifier, flags, sampling)
        card = _card(
            job.unet_preset, job.source, "super_res" if _is_super_res(job) else "diffusion",
            flag_text + (f"\n\nclassifier: {classifier_flag_text}" if classifier_flag_text else ""), job.repo_id,
            job.checkpoint, bool(unet.config.num_classes), classifier is not None,
            {k: v for k, v in sampling.items() if k not in user_sampling}, user_sampling, pipeline,
            classifier_source=(job.classifier_preset or Path(job.classifier).name) if job.classifier is not None else None,
            license=job.license,
        )

        def write_pipeline(folder: Path) -> None:
            pipeline.save_pretrained(folder, safe_serialization=True)
            card.save(folder / "README.md")

        return write_pipeline

    _convert_into(job.output, build)
    return _maybe_push(job.output, job.push_to_hub)


def convert_ddpm(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    preset: str | None = None,
    model_config: dict[str, Any] | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    license: str | None = None,
) -> Path:
    """convert_ddpm.py: a DDPM (cifar10 / LSUN) checkpoint to a ClassifierGuidedPipeline folder over a UNet2DModel.

    ``license`` (``--license``): the card's Hub license id for a checkpoint converted with ``model_config`` (default
    ``unknown``); refused with a preset, whose release states its license.
    """
    output = check_output(output, overwrite, (checkpoint,))
    torch_dtype = check_dtype(dtype)
    if preset is not None and model_config is not None:
        raise ValueError("expected one of --preset or --model_config, got both")
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"expected an original checkpoint file, got {str(checkpoint)!r} (no such file)")
    chosen = get_preset(preset, "ddpm") if preset else (None if model_config else preset_from_path(checkpoint, "ddpm"))
    if chosen is None and model_config is None:
        raise ValueError(f"could not pick a preset from the file name {str(checkpoint)!r}; pass --preset or --model_config")
    check_user_license(license, chosen)
    kwargs = model_config if model_config is not None else chosen.constructor_kwargs
    ddpm_unet_config(kwargs)  # missing or unknown keys: one line before the checkpoint is read

    def build() -> Any:
        unet = _with_context(chosen, lambda: convert_ddpm_checkpoint(load_original_state_dict(checkpoint), constructor_kwargs=kwargs),
                             "--model_config").to(torch_dtype)
        scheduler_settings = dict(chosen.scheduler) if chosen else dict(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_large")
        sampling = dict(chosen.sampling) if chosen else {}
        scheduler = GuidedDDPMScheduler(**scheduler_settings, timestep_respacing=sampling.get("timestep_respacing"))
        pipeline = ClassifierGuidedPipeline(unet=unet, scheduler=scheduler)

        def write(folder: Path) -> None:
            pipeline.save_pretrained(folder, safe_serialization=True)
            _card(chosen, DDPM, "diffusion", json.dumps(kwargs, default=list), push_to_hub or str(output),
                  checkpoint, False, False, sampling, {}, pipeline, license=license).save(folder / "README.md")

        return write

    _convert_into(output, build)
    return _maybe_push(output, push_to_hub)


def _convert_into(output: Path, build: Any) -> None:
    """Reserve the temporary folder (an unwritable place fails here, before any work), run ``build()`` (the
    conversion; it returns the folder writer), write and move into place; any failure removes the temporary folder."""
    temp = reserve_output(output)
    try:
        write = build()
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    write_folder_atomically(output, write, temp)


def _unet_state_dict(path: Any) -> dict[str, torch.Tensor]:
    """The checkpoint for a U-Net, refused in one line when it is a noisy classifier's (which has no output blocks)."""
    state_dict = load_original_state_dict(path)
    if state_dict and not any(key.startswith("output_blocks.") for key in state_dict) and any(key.startswith("out.") for key in state_dict):
        raise ValueError(f"expected a diffusion model checkpoint at {str(path)!r}, got a noisy classifier's (EncoderUNetModel: no output_blocks); "
                         "convert it with classifier flags (--classifier_flags / --classifier_config) or --classifier")
    return state_dict


def _pick_preset(path: Any, name: str | None, flags: str | None, config: dict | None, option: str) -> Preset | None:
    if name is not None:
        return get_preset(name, "adm")
    if flags is not None or config is not None:
        return None
    found = preset_from_path(path, "adm")
    if found is None:
        raise ValueError(f"could not pick a preset from the file name {str(path)!r}; pass {option} or flags")
    return found


def _with_context(preset: Preset | None, build: Any, instead: str = "--model_flags (and --diffusion_flags) or --model_config") -> Any:
    """``build()``; a failure under a preset names it, and a checkpoint that does not fit it is one short line saying to
    pass the checkpoint's own flags (``instead``) rather than listing every key."""
    try:
        return build()
    except CheckpointMismatchError as error:
        if preset is None:
            raise
        raise ValueError(f"preset {preset.name!r} does not fit the file ({error.summary}): the file is not that release; "
                         f"pass its own flags with {instead} instead of a preset") from error
    except ValueError as error:
        if preset is None:
            raise
        raise ValueError(f"preset {preset.name!r} does not fit the file: {error}") from error


def _card(preset, family, kind, flags, repo_id, checkpoint, conditional, has_classifier, sampling, user_sampling, pipeline=None,
          classifier_source=None, license=None):
    num_classes = low_res_size = num_train_timesteps = None
    if pipeline is not None:
        num_classes = pipeline.unet.config.get("num_classes") or (pipeline.classifier.config.num_classes if getattr(pipeline, "classifier", None) else None)
        low_res_size = pipeline.config.get("low_res_size") if kind == "super_res" else None
        num_train_timesteps = pipeline.scheduler.config.num_train_timesteps
    return render_model_card(
        preset, family=family, kind=kind, flags=flags, repo_id=repo_id, checkpoint_name=Path(checkpoint).name,
        conditional=conditional, has_classifier=has_classifier, sampling=sampling, user_sampling=user_sampling,
        verification=_verification(kind, family), num_classes=num_classes, low_res_size=low_res_size,
        num_train_timesteps=num_train_timesteps, classifier_source=classifier_source if kind != "classifier" else None,
        license=license,
    )


def _maybe_push(output: Path, repo_id: str | None) -> Path:
    if repo_id:
        push_folder_to_hub(output, repo_id, commit_message="Upload converted pipeline (guided_diffusers)")
    return output
