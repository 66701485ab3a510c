"""What the ADM pipelines share: driving our schedulers or stock diffusers ones, guidance, the sampling loop, outputs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from ..schedulers.scheduling_utils import GuidedSchedulerMixin

def is_guided_scheduler(scheduler: Any) -> bool:
    return isinstance(scheduler, GuidedSchedulerMixin)


def set_sampling_timesteps(
    scheduler: Any, num_inference_steps: int | None, timestep_respacing: str | None, device: torch.device
) -> torch.Tensor:
    """Set the scheduler's timesteps from a step count or an original respacing spec; returns them.

    Our schedulers take both (neither: the config's own respacing). Stock diffusers schedulers take a step count
    (a plain-number spec counts as one).
    """
    if num_inference_steps is not None and timestep_respacing is not None:
        raise ValueError(
            f"expected num_inference_steps or timestep_respacing, got both ({num_inference_steps}, {timestep_respacing!r})"
        )
    if is_guided_scheduler(scheduler):
        scheduler.set_timesteps(timestep_respacing if timestep_respacing is not None else num_inference_steps, device=device)
    else:
        if timestep_respacing is not None:
            if not str(timestep_respacing).isdigit():
                raise ValueError(
                    f"expected a step count for {type(scheduler).__name__}, got respacing spec {timestep_respacing!r} "
                    "(section counts and 'ddimN' need GuidedDDPMScheduler or GuidedDDIMScheduler)"
                )
            num_inference_steps = int(timestep_respacing)
        scheduler.set_timesteps(num_inference_steps or 50, device=device)
    return scheduler.timesteps


def model_timestep(scheduler: Any, t: torch.Tensor) -> torch.Tensor:
    """What the network (and a noisy classifier) is given at ``t``: ``t * 1000 / T`` for rescaled-timestep models.

    Our schedulers know it from their config; a stock scheduler built by ``to_diffusers_scheduler`` carries
    ``rescale_timesteps`` in its config for the same reason.
    """
    if is_guided_scheduler(scheduler):
        return scheduler.model_timestep(t)
    if scheduler.config.get("rescale_timesteps"):
        return t.float() * (1000.0 / scheduler.config.num_train_timesteps)
    return t


def _alpha_bar(scheduler: Any, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    alpha_bar = scheduler.alphas_cumprod[int(t)]
    return torch.as_tensor(alpha_bar, dtype=like.dtype, device=like.device)


def prediction_channels(model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The prediction channels of a model output (learned-sigma models append as many variance channels)."""
    return model_output[:, : sample.shape[1]]


def predict_original_sample(scheduler: Any, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """x_0 from the model output at ``t``, unclipped and differentiable (for guidance through x_0, e.g. CLIP)."""
    if is_guided_scheduler(scheduler):
        return scheduler.pred_original_sample(model_output, t, sample, clip_sample=False)
    prediction = prediction_channels(model_output, sample)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    alpha_bar = _alpha_bar(scheduler, t, sample)
    if prediction_type == "sample":
        return prediction
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * prediction
    return (sample - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()


def scheduler_step(
    scheduler: Any,
    model_output: torch.Tensor,
    t: torch.Tensor,
    sample: torch.Tensor,
    *,
    guidance_gradient: torch.Tensor | None = None,
    eta: float = 0.0,
    clip_denoised: bool = True,
    generator: torch.Generator | list[torch.Generator] | None = None,
    variance_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step with guidance applied the way the scheduler requires; returns (x_{t-1}, predicted x_0).

    Our DDPM scheduler shifts the mean (mean + variance * gradient), our DDIM scheduler shifts epsilon; stock
    diffusers schedulers get the epsilon shift applied to the model output before their own step.
    """
    if is_guided_scheduler(scheduler):
        kwargs: dict[str, Any] = dict(
            generator=generator, variance_noise=variance_noise, guidance_gradient=guidance_gradient, clip_sample=clip_denoised
        )
        if "eta" in inspect.signature(scheduler.step).parameters:
            kwargs["eta"] = eta
        elif eta:
            raise ValueError(f"expected eta=0 with {type(scheduler).__name__} (eta is DDIM's), got {eta}")
        output = scheduler.step(model_output, t, sample, **kwargs)
        return output.prev_sample, output.pred_original_sample

    variance_type = scheduler.config.get("variance_type")
    if model_output.shape[1] != sample.shape[1] and variance_type not in ("learned", "learned_range"):
        model_output = prediction_channels(model_output, sample)  # this scheduler does not use learned variances
    if guidance_gradient is not None:
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"expected an epsilon-predicting model for guidance under {type(scheduler).__name__}, "
                f"got prediction_type {scheduler.config.get('prediction_type')!r}"
            )
        alpha_bar = _alpha_bar(scheduler, t, sample)
        eps = prediction_channels(model_output, sample) - (1 - alpha_bar).sqrt() * guidance_gradient
        model_output = torch.cat([eps, model_output[:, sample.shape[1] :]], dim=1)
    accepted = inspect.signature(scheduler.step).parameters
    kwargs = {}
    for name, value in (("generator", generator), ("eta", eta), ("variance_noise", variance_noise)):
        if name in accepted and value is not None:
            kwargs[name] = value
    if eta and "eta" not in accepted:
        raise ValueError(f"expected eta=0 with {type(scheduler).__name__}, got {eta}")
    output = scheduler.step(model_output, t, sample, **kwargs)
    pred_original_sample = getattr(output, "pred_original_sample", None)
    if pred_original_sample is None:
        pred_original_sample = predict_original_sample(scheduler, model_output, t, sample)
    return output.prev_sample, pred_original_sample


Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""(x_t, t, model_timestep) -> (model output in float32, guidance gradient or None)."""


def denoising_loop(
    pipeline: DiffusionPipeline,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    predict: Predictor,
    *,
    eta: float = 0.0,
    clip_denoised: bool = True,
    generator: Any = None,
    step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
    callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    callback_tensor_inputs: Sequence[str] = ("latents", "pred_original_sample"),
) -> torch.Tensor:
    """The reverse chain every sampling pipeline runs: predict, step (with guidance), call back; returns x_0.

    Args:
        pipeline: gives the scheduler and the progress bar.
        x (`torch.Tensor`): x_T, float32.
        timesteps (`torch.Tensor`): the scheduler's timesteps, descending.
        predict (`Callable`): the model output and guidance gradient at (x_t, t, model timestep).
        eta, clip_denoised, generator: as in [`scheduler_step`].
        step_noise (*optional*): the noise of every step instead of drawing it.
        callback_on_step_end (`Callable`, *optional*): ``callback(pipeline, step, t, tensors)``; may return
            ``{"latents": ...}`` to replace x.
        callback_tensor_inputs: which of ``latents`` and ``pred_original_sample`` the callback gets.
    """
    for i, t in enumerate(pipeline.progress_bar(timesteps)):
        output, gradient = predict(x, t, model_timestep(pipeline.scheduler, t))
        x, pred_x0 = scheduler_step(
            pipeline.scheduler, output, t, x, guidance_gradient=gradient, eta=eta, clip_denoised=clip_denoised,
            generator=generator, variance_noise=None if step_noise is None else step_noise[i].to(x.device, torch.float32),
        )
        if callback_on_step_end is not None:
            available = {"latents": x, "pred_original_sample": pred_x0}
            result = callback_on_step_end(pipeline, i, t, {k: available[k] for k in callback_tensor_inputs})
            x = (result or {}).get("latents", x)
    return x


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


def check_latents(latents: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"expected latents of shape {tuple(shape)}, got {tuple(latents.shape)}")


def check_step_noise(step_noise: torch.Tensor | Sequence[torch.Tensor] | None, steps: int, shape: Sequence[int]) -> None:
    if step_noise is None:
        return
    if len(step_noise) != steps or any(tuple(n.shape) != tuple(shape) for n in step_noise):
        raise ValueError(f"expected step_noise as {steps} tensors of shape {tuple(shape)}, got {len(step_noise)} of shape {tuple(step_noise[0].shape)}")


def initial_latents(
    latents: torch.Tensor | None, shape: Sequence[int], generator: Any, device: torch.device
) -> torch.Tensor:
    """x_T: the given latents (checked) or standard normal noise from ``generator``; float32, the sampling dtype."""
    if latents is None:
        return randn_tensor(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    check_latents(latents, shape)
    return latents.to(device=device, dtype=torch.float32)


def postprocess_images(images: torch.Tensor, output_type: str) -> Any:
    """Samples in [-1, 1] (NCHW) to "pt" (NCHW in [0, 1]), "np" (NHWC in [0, 1]) or "pil"."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.cpu()
    array = images.cpu().permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    return DiffusionPipeline.numpy_to_pil(array)


def check_output_type(output_type: str) -> None:
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"expected output_type 'pil', 'np' or 'pt', got {output_type!r}")


def to_model_input(images: Any, size: int | None = None, name: str = "image") -> torch.Tensor:
    """Images (PIL, a list of PIL, uint8 NHWC arrays, or tensors in [-1, 1] NCHW) to a float32 NCHW tensor in [-1, 1]."""
    from PIL import Image

    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"expected {name} arrays as uint8 (N)HWC, got {images.dtype}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected {name} arrays as uint8 NHWC with 1 or 3 channels, got shape {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    if not torch.is_tensor(images):
        raise ValueError(f"expected {name} as PIL images, uint8 arrays or a tensor in [-1, 1], got {type(images).__name__}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected {name} as a (batch, channels, height, width) tensor, got shape {tuple(images.shape)}")
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"expected {name} of size {size}x{size}, got {images.shape[-2]}x{images.shape[-1]}")
    return images.float()
