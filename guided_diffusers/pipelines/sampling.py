"""What the ADM pipelines share, as small functions: timesteps and latents, the guidance terms (classifier-free,
classifier, CLIP) of one step, the scheduler step with guidance (ours or a stock diffusers scheduler), inputs, outputs
and the per-call properties. Each pipeline's ``__call__`` runs its own loop with these."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput
from diffusers.utils import is_scipy_available, logging
from diffusers.utils.torch_utils import randn_tensor

from ..checks import check_scale, check_whole_number
from ..models import null_class_id, rescaled_timestep_scale
from ..schedulers.gaussian import LEARNED_VARIANCE_TYPES, score_guided_noise, start_from_noise, start_from_velocity
from ..schedulers.scheduling_utils import GuidedSchedulerMixin
from .labels import ClassLabels, resolve_class_labels

logger = logging.get_logger(__name__)

# CLIP's input normalisation (the values every released CLIP image processor uses).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# -- inputs --------------------------------------------------------------------------------------------------------


def check_output_type(output_type: str) -> None:
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"expected output_type 'pil', 'np', 'pt' or 'latent', got {output_type!r}")


def check_callback_inputs(names: Sequence[str], allowed: Sequence[str]) -> None:
    unknown = set(names) - set(allowed)
    if unknown:
        raise ValueError(f"expected callback tensor inputs among {list(allowed)}, got {sorted(unknown)}")


# -- timesteps and latents -----------------------------------------------------------------------------------------


def set_sampling_timesteps(
    scheduler: Any, num_inference_steps: int | None, timestep_respacing: str | None, device: torch.device
) -> torch.Tensor:
    """Set the scheduler's timesteps from a step count or an original respacing spec; returns them.

    A step count means what it means in diffusers (the scheduler's ``timestep_spacing`` grid); our schedulers also
    take the originals' respacing specs, and neither argument gives the config's own respacing. Stock schedulers take
    a step count (a plain-number spec counts as one), 50 when none is given, as diffusers' pipelines.
    """
    if num_inference_steps is not None and timestep_respacing is not None:
        raise ValueError(
            f"expected num_inference_steps or timestep_respacing, got both ({num_inference_steps}, {timestep_respacing!r})"
        )
    if timestep_respacing is not None and not isinstance(timestep_respacing, str):
        raise ValueError(f"expected timestep_respacing as a spec string such as '250' or 'ddim25', got {timestep_respacing!r}")
    num_train_timesteps = scheduler.config.num_train_timesteps
    if num_inference_steps is not None:
        check_whole_number("num_inference_steps", num_inference_steps, 1, num_train_timesteps)
    if isinstance(scheduler, GuidedSchedulerMixin):
        scheduler.set_timesteps(timestep_respacing if timestep_respacing is not None else num_inference_steps, device=device)
        return scheduler.timesteps
    if timestep_respacing is not None:
        if not timestep_respacing.strip().isdigit():
            raise ValueError(
                f"expected a step count for {type(scheduler).__name__}, got respacing spec {timestep_respacing!r} "
                "(section counts and 'ddimN' need GuidedDDPMScheduler or GuidedDDIMScheduler)"
            )
        num_inference_steps = check_whole_number("num_inference_steps", int(timestep_respacing), 1, num_train_timesteps)
    scheduler.set_timesteps(50 if num_inference_steps is None else int(num_inference_steps), device=device)
    timesteps = scheduler.timesteps
    # A first-order sigma grid must go strictly down (Heun and KDPM2, order 2, and PNDM's Runge-Kutta warm-up repeat
    # timesteps on purpose); with about as many steps as trained ones diffusers' spacing can repeat one, and a solver
    # such as DPM-Solver then divides by zero.
    sigma_grid = getattr(scheduler, "order", 1) == 1 and getattr(scheduler, "sigmas", None) is not None
    if sigma_grid and len(set(timesteps.tolist())) < len(timesteps):
        raise ValueError(
            f"expected fewer steps: {type(scheduler).__name__} lays {len(timesteps)} steps over {num_train_timesteps} "
            "trained ones with a repeated timestep; use fewer steps, or GuidedDDPMScheduler for every step"
        )
    return timesteps


def initial_latents(latents: torch.Tensor | None, shape: Sequence[int], generator: Any, device: torch.device) -> torch.Tensor:
    """x_T as standard normal noise (float32, the sampling dtype): the given latents, checked, or drawn from ``generator``."""
    if latents is None:
        return randn_tensor(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    if not torch.is_tensor(latents):
        raise ValueError(f"expected latents as a torch.Tensor of shape {tuple(shape)}, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"expected latents of shape {tuple(shape)}, got {tuple(latents.shape)}")
    if not latents.dtype.is_floating_point or not torch.isfinite(latents).all():
        raise ValueError(f"expected latents as finite floats, got {latents.dtype} with non-finite or integer values")
    return latents.to(device=device, dtype=torch.float32)


def check_step_noise(step_noise: torch.Tensor | Sequence[torch.Tensor] | None, steps: int, shape: Sequence[int]) -> None:
    if step_noise is None:
        return
    expected = f"expected step_noise as {steps} tensors of shape {tuple(shape)}"
    if not (torch.is_tensor(step_noise) or isinstance(step_noise, (list, tuple))):
        raise ValueError(f"{expected}, got {type(step_noise).__name__}")
    if len(step_noise) != steps:
        raise ValueError(f"{expected}, got {len(step_noise)}")
    bad = [i for i, noise in enumerate(step_noise) if not torch.is_tensor(noise) or tuple(noise.shape) != tuple(shape)]
    if bad:
        got = step_noise[bad[0]]
        raise ValueError(f"{expected}, got {tuple(got.shape) if torch.is_tensor(got) else type(got).__name__} at step {bad[0]}")


# -- the network's timestep scale ----------------------------------------------------------------------------------


def adopt_timestep_rescaling(scheduler: Any, *networks: Any) -> None:
    """Move an old folder's scheduler key ``rescale_timesteps`` into its networks' ``timestep_scale`` (1000 / T), once.

    The networks own their timestep scale; folders written before they did keep it in the scheduler config.
    """
    if scheduler is None or not scheduler.config.get("rescale_timesteps"):
        return
    scale = rescaled_timestep_scale(scheduler.config.num_train_timesteps)
    for network in networks:
        if network is not None and "timestep_scale" in network.config and network.config.timestep_scale == 1.0:
            network.register_to_config(timestep_scale=scale)
    if isinstance(scheduler, GuidedSchedulerMixin):
        scheduler._internal_dict = type(scheduler.config)({k: v for k, v in scheduler.config.items() if k != "rescale_timesteps"})
    logger.warning(
        f"scheduler config key rescale_timesteps moved to the networks' timestep_scale ({scale:g}); "
        "save the pipeline again to keep it there"
    )


# -- the scheduler step ----------------------------------------------------------------------------------------------


def reads_variance_channels(scheduler: Any) -> bool:
    """Whether ``scheduler.step`` takes a learned-sigma model's variance channels: ours, and diffusers' DDPMScheduler
    with a learned variance type (its step splits them off by the sample's channels); every other scheduler gets the
    prediction channels alone."""
    if isinstance(scheduler, GuidedSchedulerMixin):
        return True
    return isinstance(scheduler, DDPMScheduler) and scheduler.config.get("variance_type") in LEARNED_VARIANCE_TYPES


def stock_clip_settings(scheduler_class: type, clip: bool, config: Any = None) -> dict[str, Any]:
    """The constructor settings that make a stock scheduler clip x_0 to [-1, 1] (or not).

    DDPM and DDIM clip with ``clip_sample``; DPM-Solver, UniPC and DEIS with ``thresholding`` at ``sample_max_value``
    1 (their dynamic threshold then never goes below 1: the plain clamp to [-1, 1]). A scheduler with neither cannot
    clip: asking it to is a one-line error.
    """
    accepted = inspect.signature(scheduler_class.__init__).parameters
    if "clip_sample" in accepted:
        return {"clip_sample": bool(clip)}
    if "thresholding" in accepted and "sample_max_value" in accepted:
        bound = float((config or {}).get("clip_sample_range", 1.0))
        if clip and bound != 1.0:
            raise ValueError(
                f"expected clip_sample_range 1 for clipping under {scheduler_class.__name__} (it clips by thresholding "
                f"at 1), got {bound}"
            )
        return {"thresholding": True, "sample_max_value": 1.0} if clip else {"thresholding": False}
    if clip:
        raise ValueError(f"expected no clipping for {scheduler_class.__name__}, which cannot clip x_0; got clipping")
    return {}


def stock_clips(scheduler: Any) -> bool | None:
    """Whether a stock scheduler was made to clip x_0 to [-1, 1]; None when it cannot clip."""
    config = scheduler.config
    accepted = inspect.signature(type(scheduler).__init__).parameters
    if "clip_sample" in accepted:
        return bool(config.get("clip_sample"))
    if "thresholding" in accepted and "sample_max_value" in accepted:
        return bool(config.get("thresholding")) and float(config.get("sample_max_value", 1.0)) == 1.0
    return None


def step_arguments(
    scheduler: Any,
    eta: float = 0.0,
    clip_denoised: bool | None = None,
    generator: Any = None,
    step_noise: Any = None,
) -> dict[str, Any]:
    """The keyword arguments of every ``scheduler.step`` of one call, checked before any work (one line each).

    Our schedulers clip per step (``clip_sample``); a stock scheduler clips as it was made, so a call asking for
    other clipping is refused (make it with [`stock_clip_settings`], as the sampling recipes do).
    """
    name = type(scheduler).__name__
    if name == "LMSDiscreteScheduler" and not is_scipy_available():  # its step integrates with scipy
        raise ValueError("expected scipy installed for LMSDiscreteScheduler, got it missing: pip install scipy (or the [lms] extra)")
    accepted = inspect.signature(scheduler.step).parameters
    if eta and "eta" not in accepted:
        raise ValueError(f"expected eta=0 with {name} (eta is DDIM's), got {eta}")
    if step_noise is not None and "variance_noise" not in accepted:
        raise ValueError(f"expected no step_noise with {name}, whose step takes no given noise; got some")
    kwargs: dict[str, Any] = {"generator": generator} if "generator" in accepted else {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if isinstance(scheduler, GuidedSchedulerMixin):
        kwargs["clip_sample"] = clip_denoised
    elif clip_denoised is not None and bool(clip_denoised) != bool(stock_clips(scheduler)):
        settings = stock_clip_settings(type(scheduler), bool(clip_denoised), scheduler.config)
        made = "cannot clip" if stock_clips(scheduler) is None else f"was made {'with' if stock_clips(scheduler) else 'without'} clipping"
        raise ValueError(
            f"expected clip_denoised None for this {name}, which {made}; got {clip_denoised} "
            f"(make it with {name}.from_config(config, **{settings}))"
        )
    return kwargs


def stock_alpha_bar(scheduler: Any, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar of the noise level a stock scheduler is at for its timestep ``t``, as a 0-d tensor like ``like``.

    Sigma-space schedulers (Euler, Heun, LMS, KDPM2) give the model x / sqrt(1 + sigma^2): alpha_bar is the square of
    that factor, their own sigma. VP schedulers are at ``alphas_cumprod[t]``, interpolated for a fractional t.
    """
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0:
        scale = scheduler.scale_model_input(torch.ones((), dtype=torch.float64, device=like.device), t)
        return (torch.as_tensor(scale, dtype=torch.float64) ** 2).to(like.dtype)
    table = scheduler.alphas_cumprod  # index first: the table has T entries
    position = float(t)
    low = min(max(int(np.floor(position)), 0), len(table) - 1)
    high = min(low + 1, len(table) - 1)
    weight = position - low
    value = float(table[low]) * (1 - weight) + float(table[high]) * weight
    return torch.tensor(value, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def noise_level(scheduler: Any, t: torch.Tensor) -> float:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) at the scheduler's timestep ``t``."""
    if isinstance(scheduler, GuidedSchedulerMixin):
        alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    else:
        alpha_bar = float(stock_alpha_bar(scheduler, t, torch.empty((), dtype=torch.float64)))
    return float(np.sqrt((1 - alpha_bar) / alpha_bar)) if alpha_bar > 0 else float("inf")


def pred_original_sample(
    scheduler: Any, model_output: torch.Tensor, t: torch.Tensor, model_input: torch.Tensor, gradient: torch.Tensor | None = None
) -> torch.Tensor:
    """x_0 from the model output at ``t``, unclipped and differentiable (for guidance through x_0, e.g. CLIP).

    ``model_input`` is what the model was given (x_t in VP terms: ``scale_model_input`` of a sigma-space sample). A
    stock scheduler's x_0 takes a guidance ``gradient`` as its step does (the score shift of epsilon).
    """
    if isinstance(scheduler, GuidedSchedulerMixin):
        return scheduler.pred_original_sample(model_output, t, model_input, clip_sample=False)
    prediction = model_output[:, : model_input.shape[1]]
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    if prediction_type == "sample":
        return prediction
    alpha_bar = stock_alpha_bar(scheduler, t, model_input)
    if prediction_type == "v_prediction":
        return start_from_velocity(model_input, prediction, alpha_bar)
    if gradient is not None:
        prediction = score_guided_noise(prediction, alpha_bar, gradient)
    return start_from_noise(model_input, prediction, alpha_bar)


def guided_step(
    scheduler: Any,
    model_output: torch.Tensor,
    t: torch.Tensor,
    sample: torch.Tensor,
    model_input: torch.Tensor,
    gradient: torch.Tensor | None,
    step_kwargs: dict[str, Any],
    variance_noise: torch.Tensor | None = None,
    want_pred_original_sample: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One reverse step with classifier guidance applied as the scheduler needs it; returns (x_{t-1}, x_0 or None).

    Our schedulers take the gradient in ``step`` (DDPM shifts the mean, DDIM epsilon). A stock scheduler gets
    epsilon with the process's score shift, eps - sqrt(1 - alpha_bar) * gradient, and the prediction channels alone
    unless its step reads the variance channels ([`reads_variance_channels`]).

    Args:
        scheduler: the pipeline's scheduler.
        model_output (`torch.Tensor`): the (classifier-free guided) network output, variance channels included.
        t (`torch.Tensor`): the scheduler's timestep.
        sample (`torch.Tensor`): the scheduler's sample x_t.
        model_input (`torch.Tensor`): ``scale_model_input(sample, t)``, where the gradient was taken.
        gradient (`torch.Tensor`, *optional*): the scaled gradient of log p(y | x_t) at ``model_input``.
        step_kwargs (`dict`): [`step_arguments`] of the call.
        variance_noise (`torch.Tensor`, *optional*): this step's noise instead of drawing it.
        want_pred_original_sample (`bool`): compute x_0 where the scheduler's step does not give it.
    """
    if not torch.isfinite(model_output).all() or (gradient is not None and not torch.isfinite(gradient).all()):
        what = "model output" if not torch.isfinite(model_output).all() else "guidance gradient"
        raise FloatingPointError(f"the {what} is not finite at t = {float(t):g}; check the weights and the guidance scales")
    kwargs = dict(step_kwargs)
    if variance_noise is not None:
        kwargs["variance_noise"] = variance_noise.to(sample.device, torch.float32)
    if isinstance(scheduler, GuidedSchedulerMixin):
        output = scheduler.step(model_output, t, sample, guidance_gradient=gradient, **kwargs)
        return output.prev_sample, output.pred_original_sample
    if model_output.shape[1] != sample.shape[1] and not reads_variance_channels(scheduler):
        model_output = model_output[:, : sample.shape[1]]
    if gradient is not None:
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"expected an epsilon-predicting model for guidance under {type(scheduler).__name__}, "
                f"got prediction_type {scheduler.config.get('prediction_type')!r}"
            )
        channels = sample.shape[1]
        eps = score_guided_noise(model_output[:, :channels], stock_alpha_bar(scheduler, t, model_input), gradient)
        model_output = torch.cat([eps, model_output[:, channels:]], dim=1)
    output = scheduler.step(model_output, t, sample, **kwargs)
    x0 = getattr(output, "pred_original_sample", None)
    if x0 is None and want_pred_original_sample:
        x0 = pred_original_sample(scheduler, model_output, t, model_input)
    return output.prev_sample, x0


# -- guidance ------------------------------------------------------------------------------------------------------


def unet_output(unet: Any, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float | None) -> torch.Tensor:
    """The U-Net's output at x_t in float32; with classifier-free guidance, conditional and unconditional in one batch.

    Args:
        unet: the denoising network (it owns its timestep scale).
        x (`torch.Tensor`): x_t, as the scheduler's ``scale_model_input`` gives it.
        t (`torch.Tensor`): the scheduler's timestep.
        labels (`torch.Tensor`, *optional*): the U-Net's class labels (None for unconditional U-Nets).
        guidance_scale (`float`, *optional*): the classifier-free guidance weight; the variance channels of a
            learned-sigma model are the conditional ones, as GLIDE does.
    """
    x_in = x.to(unet.dtype)
    if guidance_scale is None or guidance_scale == 1:  # w = 1 is the conditional output itself
        kwargs = {"class_labels": labels} if labels is not None else {}
        return unet(x_in, t, **kwargs).sample.float()
    null = torch.full_like(labels, null_class_id(unet))
    t_in = torch.cat([t, t]) if torch.as_tensor(t).ndim else t
    out = unet(torch.cat([x_in, x_in]), t_in, class_labels=torch.cat([labels, null])).sample.float()
    conditional, unconditional = out.chunk(2)
    channels = x.shape[1]
    guided = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
    return torch.cat([guided, conditional[:, channels:]], dim=1)


def classifier_gradient(
    classifier: torch.nn.Module, sample: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, scale: float
) -> torch.Tensor:
    """``scale`` times the gradient of sum_i log p(y_i | x_t) from a noisy classifier, computed in float32."""
    with torch.enable_grad():
        x = sample.detach().float().requires_grad_(True)
        logits = classifier(x.to(classifier.dtype), timestep).logits.float()
        selected = torch.log_softmax(logits, dim=-1)[torch.arange(len(class_labels)), class_labels.to(logits.device)]
        (gradient,) = torch.autograd.grad(selected.sum(), x)
    return (gradient * scale).to(sample.dtype)


@dataclass(frozen=True)
class Guidance:
    """A call's checked guidance: what every step of it steers toward.

    Args:
        labels: the class labels (for the classifier), or None.
        unet_labels: the U-Net's class labels (the null class for unconditional sampling), or None.
        batch: the number of images.
        classifier_scale: the classifier gradient's scale (0: none).
        guidance_scale: the classifier-free weight, or None.
        interval: guide only at noise levels in (low, high], or None for every step.
        text: normalised CLIP text embeddings of the prompt, or None.
        clip_guidance_scale: the CLIP similarity gradient's scale.
    """

    labels: torch.Tensor | None
    unet_labels: torch.Tensor | None
    batch: int
    classifier_scale: float = 0.0
    guidance_scale: float | None = None
    interval: tuple[float, float] | None = None
    text: torch.Tensor | None = None
    clip_guidance_scale: float = 0.0


def check_guidance_interval(interval: Any) -> tuple[float, float] | None:
    """A (low, high] range of noise levels sigma, 0 <= low < high (high may be inf), or a one-line error."""
    if interval is None:
        return None
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"expected guidance_interval as (low, high) noise levels, got {interval!r}") from None
    if np.isnan(low) or np.isnan(high) or not 0 <= low < high:
        raise ValueError(f"expected guidance_interval (low, high) with 0 <= low < high, got {interval!r}")
    return low, high


def resolve_guidance(
    pipeline: Any,
    class_labels: ClassLabels | None,
    batch_size: int | None,
    classifier_scale: float | None = None,
    guidance_scale: float | None = None,
    prompt: str | list[str] | None = None,
    clip_guidance_scale: float = 100.0,
    guidance_interval: tuple[float, float] | None = None,
    num_images_per_prompt: int = 1,
) -> Guidance:
    """Every guidance argument of a call checked against the pipeline's components (one line each, before any work).

    A ``classifier_scale`` of None is the config's recommended scale when class labels are given and there is a
    classifier, else 0. ``num_images_per_prompt`` repeats each label (or the unconditional batch) that many times,
    each label's images next to each other, as diffusers repeats each prompt's.
    """
    unet, classifier = pipeline.unet, getattr(pipeline, "classifier", None)
    if batch_size is not None:
        check_whole_number("batch_size", batch_size, 1)
    check_whole_number("num_images_per_prompt", num_images_per_prompt, 1)
    if classifier_scale is None:
        use_default = class_labels is not None and classifier is not None
        classifier_scale = (pipeline.config.get("classifier_scale") or 0.0) if use_default else 0.0
    check_scale("classifier_scale", classifier_scale)
    check_scale("guidance_scale", guidance_scale)
    check_scale("clip_guidance_scale", clip_guidance_scale)
    interval = check_guidance_interval(guidance_interval)
    unet_classes = getattr(unet.config, "num_classes", None) or None
    num_classes = unet_classes or (classifier.config.num_classes if classifier is not None else None)
    null = null_class_id(unet)
    labels = None
    if class_labels is not None:
        if num_classes is None:
            raise ValueError("expected no class_labels: the U-Net is unconditional and there is no classifier")
        labels = resolve_class_labels(class_labels, num_classes, pipeline.config.get("id2label"))
    if batch_size is not None and labels is not None:
        if len(labels) not in (1, batch_size):
            raise ValueError(f"expected {batch_size} class labels for batch_size {batch_size}, got {len(labels)}")
        labels = labels.expand(batch_size)
    if labels is not None:
        labels = labels.repeat_interleave(num_images_per_prompt)
    batch = len(labels) if labels is not None else (batch_size or 1) * num_images_per_prompt
    if classifier_scale:
        if classifier is None:
            raise ValueError(f"expected a classifier for classifier_scale={classifier_scale}, got none in this pipeline")
        if labels is None:
            raise ValueError("expected class_labels to guide toward with classifier_scale, got None")
    if guidance_scale is not None:
        if null is None:
            raise ValueError(
                "expected a U-Net trained with label dropout (config class_dropout_prob > 0) for guidance_scale, "
                "got one without a null class"
            )
        if labels is None:
            raise ValueError("expected class_labels for classifier-free guidance (guidance_scale), got None")
    if unet_classes and labels is None and null is None:
        raise ValueError(f"expected class_labels for a class-conditional U-Net ({unet_classes} classes), got None")
    text = None
    if prompt is not None:
        if getattr(pipeline, "clip_model", None) is None or getattr(pipeline, "tokenizer", None) is None:
            raise ValueError("expected clip_model and tokenizer in the pipeline for CLIP guidance (prompt), got none")
        text = clip_text_embeddings(pipeline.clip_model, pipeline.tokenizer, prompt, batch, pipeline._execution_device)
    device = pipeline._execution_device
    if labels is not None:
        labels = labels.to(device)
    unet_labels = None
    if unet_classes:
        unet_labels = labels if labels is not None else torch.full((batch,), null, device=device, dtype=torch.long)
    return Guidance(labels, unet_labels, batch, classifier_scale, guidance_scale, interval, text, clip_guidance_scale)


def clip_text_embeddings(clip_model: Any, tokenizer: Any, prompt: str | list[str], batch: int, device: torch.device) -> torch.Tensor:
    """The prompt's normalised CLIP text features, one per image."""
    prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch:
        raise ValueError(f"expected 1 or {batch} prompts, got {len(prompts)}")
    tokens = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").to(device)
    with torch.no_grad():
        embeddings = clip_model.get_text_features(**tokens)
    if not torch.is_tensor(embeddings):  # some transformers versions return an output object
        embeddings = embeddings.pooler_output
    return F.normalize(embeddings.float(), dim=-1)


def clip_gradient(
    clip_model: Any, scheduler: Any, unet: Any, x: torch.Tensor, t: torch.Tensor, guidance: Guidance
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model output and the scaled gradient of the CLIP similarity of the predicted x_0 to the prompt, at x_t."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        output = unet_output(unet, x_in, t, guidance.unet_labels, guidance.guidance_scale)
        pred_x0 = pred_original_sample(scheduler, output, t, x_in)
        size = clip_model.config.vision_config.image_size
        images = F.interpolate((pred_x0.clamp(-1, 1) + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
        images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # CLIP sees a grey image as RGB
        mean = torch.tensor(_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_CLIP_STD, device=x.device).view(1, 3, 1, 1)
        features = clip_model.get_image_features(pixel_values=((images - mean) / std).to(clip_model.dtype))
        if not torch.is_tensor(features):
            features = features.pooler_output
        similarity = (F.normalize(features.float(), dim=-1) * guidance.text).sum()
        (gradient,) = torch.autograd.grad(similarity, x_in)
    return output.detach(), gradient * guidance.clip_guidance_scale


def guided_model_output(pipeline: Any, x: torch.Tensor, t: torch.Tensor, guidance: Guidance) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The step's network output (classifier-free guided) and guidance gradient (classifier plus CLIP, or None).

    Outside ``guidance.interval`` a step gets the conditional model alone, at one U-Net evaluation.
    """
    if guidance.interval is not None and not guidance.interval[0] < noise_level(pipeline.scheduler, t) <= guidance.interval[1]:
        return unet_output(pipeline.unet, x, t, guidance.unet_labels, None), None
    gradient = None
    if guidance.text is not None:
        output, gradient = clip_gradient(pipeline.clip_model, pipeline.scheduler, pipeline.unet, x, t, guidance)
    else:
        output = unet_output(pipeline.unet, x, t, guidance.unet_labels, guidance.guidance_scale)
    if guidance.classifier_scale:
        class_gradient = classifier_gradient(pipeline.classifier, x, t, guidance.labels, guidance.classifier_scale)
        gradient = class_gradient if gradient is None else gradient + class_gradient
    return output, gradient


# -- outputs and per-call state ------------------------------------------------------------------------------------


def postprocess_images(images: torch.Tensor, output_type: str) -> Any:
    """Samples in [-1, 1] (NCHW) to "pt" (NCHW in [0, 1]), "np" (NHWC in [0, 1]) or "pil"; "latent" returns them as
    they are (the final x_0 of the chain, NCHW, float32, unclamped), as diffusers' pipelines return their latents."""
    if output_type == "latent":
        return images
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.cpu()
    array = images.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return DiffusionPipeline.numpy_to_pil(array)


def image_pipeline_output(pipeline: DiffusionPipeline, samples: torch.Tensor, output_type: str, return_dict: bool) -> Any:
    """A sampling call's end, as diffusers' pipelines end one: the samples in ``output_type``, the model hooks freed,
    an [`~diffusers.ImagePipelineOutput`] (or a one-element tuple)."""
    images = postprocess_images(samples, output_type)
    pipeline.maybe_free_model_hooks()
    return ImagePipelineOutput(images=images) if return_dict else (images,)


def replaced_latents(outputs: Any, latents: torch.Tensor) -> torch.Tensor:
    """The latents a ``callback_on_step_end`` returned (same shape, checked), or the step's own."""
    replacement = (outputs or {}).get("latents", latents)
    if replacement is latents:
        return latents
    if not torch.is_tensor(replacement) or tuple(replacement.shape) != tuple(latents.shape):
        shape = tuple(replacement.shape) if torch.is_tensor(replacement) else type(replacement).__name__
        raise ValueError(f"expected callback latents of shape {tuple(latents.shape)}, got {shape}")
    return replacement.to(device=latents.device, dtype=latents.dtype)


class CallStateMixin:
    """The per-call properties diffusers' pipelines expose to callbacks: ``guidance_scale``,
    ``do_classifier_free_guidance``, ``num_timesteps`` and ``interrupt`` (set it from a callback to stop early)."""

    _guidance_scale: float | None = None
    _num_timesteps: int = 0
    _interrupt: bool = False

    def _start_call(self, guidance_scale: float | None = None) -> None:
        self._guidance_scale = guidance_scale
        self._num_timesteps = 0
        self._interrupt = False

    @property
    def guidance_scale(self) -> float | None:
        """The classifier-free guidance weight of the running call (None: no classifier-free guidance)."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running call evaluates the U-Net on the null class too (a guidance_scale other than 1)."""
        return self._guidance_scale is not None and self._guidance_scale != 1

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the running (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set to True (e.g. from ``callback_on_step_end``) to skip the remaining steps of the running call."""
        return self._interrupt


def to_model_input(images: Any, size: int | None = None, name: str = "image", channels: int | None = None) -> torch.Tensor:
    """Images as diffusers' image inputs take them, to a float32 NCHW tensor in [-1, 1].

    A PIL image; a NumPy array, (N)HWC, uint8 or float in [0, 1] (diffusers' NumPy convention); a tensor, (N)CHW in
    [-1, 1] (the model's own range); or a list of any one of these kinds, stacked. Values outside the kind's range
    (0..255 floats, say) are refused rather than silently misread. With ``channels`` (the model's ``in_channels``),
    PIL images are read in that mode (1: grey, 3: RGB) and arrays or tensors with another channel count are refused.
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"

    def pil_array(image: Image.Image) -> np.ndarray:  # HWC, also for grey (PIL's L gives HW)
        array = np.asarray(image.convert(mode))
        return array[:, :, None] if array.ndim == 2 else array

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"expected {name} as one or more images, got an empty list")
        kinds = {type(item).__name__ for item in images}
        if all(isinstance(item, Image.Image) for item in images):
            images = np.stack([pil_array(item) for item in images])
        elif all(isinstance(item, np.ndarray) for item in images):
            images = np.concatenate([item[None] if item.ndim == 3 else item for item in images])
        elif all(torch.is_tensor(item) for item in images):
            images = torch.cat([item[None] if item.ndim == 3 else item for item in images])
        else:
            raise ValueError(f"expected {name} as a list of PIL images, arrays or tensors (one kind), got {sorted(kinds)}")
    elif isinstance(images, Image.Image):
        images = pil_array(images)[None]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected {name} arrays as (N)HWC with 1 or 3 channels, got shape {images.shape}")
        if images.dtype == np.uint8:
            array = images.astype(np.float32) / 127.5 - 1
        elif np.issubdtype(images.dtype, np.floating):
            array = images.astype(np.float32)
            if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
                raise ValueError(
                    f"expected {name} float arrays in [0, 1], got values in [{np.nanmin(array):g}, {np.nanmax(array):g}]"
                )
            array = array * 2 - 1
        else:
            raise ValueError(f"expected {name} arrays as uint8 or float in [0, 1], got {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    if not torch.is_tensor(images):
        raise ValueError(f"expected {name} as PIL images, arrays or tensors in [-1, 1], got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected {name} as a (batch, channels, height, width) tensor, got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"expected {name} tensors as floats in [-1, 1], got {images.dtype}")
    images = images.float()
    # A little slack for rounding; 0..255 tensors or other scales are refused.
    if images.numel() and not (torch.isfinite(images).all() and images.min() >= -1.001 and images.max() <= 1.001):
        raise ValueError(
            f"expected {name} tensors in [-1, 1], got values in [{images.min().item():g}, {images.max().item():g}]"
        )
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"expected {name} of size {size}x{size}, got {images.shape[-2]}x{images.shape[-1]}")
    if channels is not None and images.shape[1] != channels:
        raise ValueError(f"expected {name} with the model's {channels} channel(s), got {images.shape[1]}")
    return images
