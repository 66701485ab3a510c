"""What the ADM pipelines share: setting the timesteps, the sampling loop, guidance gradients, inputs and outputs
(how each kind of scheduler is driven, its timesteps included, is [`~guided_diffusers.pipelines.stepping`]'s)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .stepping import check_step_count, scheduler_driver

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
    if num_inference_steps is not None:
        check_step_count(scheduler, num_inference_steps)
    if timestep_respacing is not None and not isinstance(timestep_respacing, str):
        raise ValueError(f"expected timestep_respacing as a spec string such as '250' or 'ddim25', got {timestep_respacing!r}")
    scheduler_driver(scheduler).set_timesteps(num_inference_steps, timestep_respacing, device)
    return scheduler.timesteps


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


Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""(model input x_t, t, model timestep) -> (model output in float32, guidance gradient at that input, or None)."""


def check_finite(tensor: torch.Tensor, what: str, step: int, t: Any) -> None:
    """Stop sampling at the first non-finite value, naming the component and the step (not a black image later)."""
    if not torch.isfinite(tensor).all():
        raise FloatingPointError(
            f"the {what} is not finite at step {step} (t = {float(t):g}); check the weights and the guidance scales"
        )


def denoising_loop(
    pipeline: DiffusionPipeline,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    predict: Predictor,
    *,
    eta: float = 0.0,
    clip_denoised: bool | None = None,
    generator: Any = None,
    step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
    callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
    callback_tensor_inputs: Sequence[str] = ("latents", "pred_original_sample"),
) -> torch.Tensor:
    """The reverse chain every sampling pipeline runs, as diffusers' pipelines run it; returns x_0.

    x_T is scaled by the scheduler's ``init_noise_sigma``; each step gives the model ``scale_model_input(x_t, t)``
    at the driver's ``model_timestep(t)``, steps (with guidance: [`SchedulerDriver.step`]) and calls back.
    ``pipeline.interrupt`` skips the remaining steps.

    Args:
        pipeline: gives the scheduler and the progress bar.
        x (`torch.Tensor`): x_T as standard normal noise (or the given latents), float32.
        timesteps (`torch.Tensor`): the scheduler's timesteps, descending.
        predict (`Callable`): the model output and guidance gradient at (model input, t, model timestep).
        eta, clip_denoised, generator: as in [`~guided_diffusers.pipelines.stepping.SchedulerDriver.step`].
        step_noise (*optional*): the noise of every step instead of drawing it.
        callback_on_step_end (`Callable`, *optional*): ``callback(pipeline, step, t, tensors)``; may return
            ``{"latents": ...}`` of the same shape to replace x_{t-1}.
        callback_tensor_inputs: which of ``latents`` and ``pred_original_sample`` the callback gets.
    """
    scheduler = pipeline.scheduler
    driver = scheduler_driver(scheduler)
    pipeline._num_timesteps = len(timesteps)
    x = x * scheduler.init_noise_sigma
    with driver.clipping(clip_denoised):
        for i, t in enumerate(pipeline.progress_bar(timesteps)):
            if getattr(pipeline, "interrupt", False):
                continue
            model_input = scheduler.scale_model_input(x, t)
            output, gradient = predict(model_input, t, driver.model_timestep(t))
            check_finite(output, "model output", i, t)
            if gradient is not None:
                check_finite(gradient, "guidance gradient", i, t)
            x, pred_x0 = driver.step(
                output, t, x, model_input=model_input, guidance_gradient=gradient, eta=eta,
                clip_denoised=clip_denoised, generator=generator,
                variance_noise=None if step_noise is None else step_noise[i].to(x.device, torch.float32),
            )
            if callback_on_step_end is not None:
                available = {"latents": x, "pred_original_sample": pred_x0}
                result = callback_on_step_end(pipeline, i, t, {k: available[k] for k in callback_tensor_inputs}) or {}
                if "latents" in result:
                    replacement = result["latents"]
                    if not torch.is_tensor(replacement) or tuple(replacement.shape) != tuple(x.shape):
                        shape = tuple(replacement.shape) if torch.is_tensor(replacement) else type(replacement).__name__
                        raise ValueError(f"expected callback latents of shape {tuple(x.shape)}, got {shape}")
                    x = replacement.to(device=x.device, dtype=x.dtype)
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


def check_latents(latents: Any, shape: Sequence[int]) -> None:
    if not torch.is_tensor(latents):
        raise ValueError(f"expected latents as a torch.Tensor of shape {tuple(shape)}, got {type(latents).__name__}")
    if tuple(latents.shape) != tuple(shape):
        raise ValueError(f"expected latents of shape {tuple(shape)}, got {tuple(latents.shape)}")
    if not latents.dtype.is_floating_point or not torch.isfinite(latents).all():
        raise ValueError(f"expected latents as finite floats, got {latents.dtype} with non-finite or integer values")


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


def check_scale(name: str, value: Any, minimum: float | None = None) -> None:
    """A guidance scale or eta: a finite real number (at least ``minimum``), or a one-line error before any work."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"expected {name} as a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"expected {name} as a finite number{bound}, got {value}")


def check_batch_size(batch_size: Any) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"expected batch_size as a whole number >= 1, got {batch_size!r}")


def initial_latents(
    latents: torch.Tensor | None, shape: Sequence[int], generator: Any, device: torch.device
) -> torch.Tensor:
    """x_T: the given latents (checked) or standard normal noise from ``generator``; float32, the sampling dtype."""
    if latents is None:
        return randn_tensor(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    check_latents(latents, shape)
    return latents.to(device=device, dtype=torch.float32)


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


def check_output_type(output_type: str) -> None:
    if output_type not in ("pil", "np", "pt", "latent"):
        raise ValueError(f"expected output_type 'pil', 'np', 'pt' or 'latent', got {output_type!r}")


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
