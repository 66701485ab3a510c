"""What the ADM pipelines share: driving our schedulers or stock diffusers ones, guidance, the sampling loop, outputs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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

    A step count means what it means in diffusers (the scheduler's ``timestep_spacing`` grid); our schedulers also
    take the originals' respacing specs, and neither argument gives the config's own respacing. Stock schedulers take
    a step count (a plain-number spec counts as one), 50 when none is given, as diffusers' pipelines.
    """
    if num_inference_steps is not None and timestep_respacing is not None:
        raise ValueError(
            f"expected num_inference_steps or timestep_respacing, got both ({num_inference_steps}, {timestep_respacing!r})"
        )
    if num_inference_steps is not None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise ValueError(f"expected num_inference_steps as a whole number, got {num_inference_steps!r}")
        num_train_timesteps = scheduler.config.num_train_timesteps
        if not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(
                f"expected num_inference_steps in [1, {num_train_timesteps}] (the trained steps), got {num_inference_steps}"
            )
    if timestep_respacing is not None and not isinstance(timestep_respacing, str):
        raise ValueError(f"expected timestep_respacing as a spec string such as '250' or 'ddim25', got {timestep_respacing!r}")
    if is_guided_scheduler(scheduler):
        scheduler.set_timesteps(timestep_respacing if timestep_respacing is not None else num_inference_steps, device=device)
    else:
        if timestep_respacing is not None:
            if not timestep_respacing.strip().isdigit():
                raise ValueError(
                    f"expected a step count for {type(scheduler).__name__}, got respacing spec {timestep_respacing!r} "
                    "(section counts and 'ddimN' need GuidedDDPMScheduler or GuidedDDIMScheduler)"
                )
            return set_sampling_timesteps(scheduler, int(timestep_respacing), None, device)
        scheduler.set_timesteps(50 if num_inference_steps is None else int(num_inference_steps), device=device)
    return scheduler.timesteps


def model_timestep(scheduler: Any, t: torch.Tensor) -> torch.Tensor:
    """What the network (and a noisy classifier) is given at ``t``: ``t * 1000 / T`` for rescaled-timestep models.

    Our schedulers know it from their config; a stock scheduler made from one (``X.from_config(guided.config)``)
    keeps the ``rescale_timesteps`` key in its config, as diffusers keeps keys it does not use. Fractional timesteps
    (Euler, Heun, ...) pass as they are: the networks embed continuous time.
    """
    if is_guided_scheduler(scheduler):
        return scheduler.model_timestep(t)
    if scheduler.config.get("rescale_timesteps"):
        return torch.as_tensor(t).float() * (1000.0 / scheduler.config.num_train_timesteps)
    return t


def is_sigma_space(scheduler: Any) -> bool:
    """Whether a scheduler's samples are x = x_vp * sqrt(1 + sigma^2) (Euler, Heun, LMS, KDPM2), not x_vp itself."""
    return not is_guided_scheduler(scheduler) and float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0


def alpha_bar_at(scheduler: Any, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """alpha_bar of the noise level a stock scheduler is at for its timestep ``t``, as a 0-d tensor like ``like``.

    Sigma-space schedulers give the model x / sqrt(1 + sigma^2) (``scale_model_input``): alpha_bar is the square of
    that factor, the scheduler's own sigma, whatever its timestep. VP schedulers are at ``alphas_cumprod[t]``,
    interpolated linearly for a fractional t.
    """
    if is_sigma_space(scheduler):
        scale = scheduler.scale_model_input(torch.ones((), dtype=torch.float64, device=like.device), t)
        return (torch.as_tensor(scale, dtype=torch.float64) ** 2).to(like.dtype)
    table = scheduler.alphas_cumprod  # index first: this runs every step, the table has T entries
    position = float(t)
    low = min(max(int(np.floor(position)), 0), len(table) - 1)
    high = min(low + 1, len(table) - 1)
    weight = position - low
    value = float(table[low]) * (1 - weight) + float(table[high]) * weight
    return torch.tensor(value, dtype=torch.float64).to(device=like.device, dtype=like.dtype)


def noise_level(scheduler: Any, t: torch.Tensor) -> float:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) at timestep ``t``: the noise level, whatever the scheduler's kind."""
    if is_guided_scheduler(scheduler):
        alpha_bar = float(scheduler.alphas_cumprod[int(t)])
    else:
        alpha_bar = float(alpha_bar_at(scheduler, t, torch.empty((), dtype=torch.float64)))
    return float(np.sqrt((1 - alpha_bar) / alpha_bar)) if alpha_bar > 0 else float("inf")


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


def prediction_channels(model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The prediction channels of a model output (learned-sigma models append as many variance channels)."""
    return model_output[:, : sample.shape[1]]


def reads_variance_channels(scheduler: Any) -> bool:
    """Whether the scheduler consumes a learned-sigma model's variance channels (else the pipelines drop them)."""
    if is_guided_scheduler(scheduler):
        return True
    takes_variance = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
    return takes_variance and scheduler.config.get("variance_type") in ("learned", "learned_range")


def predict_original_sample(scheduler: Any, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """x_0 from the model output at ``t``, unclipped and differentiable (for guidance through x_0, e.g. CLIP).

    ``sample`` is the model's input (x_t in VP terms: ``scale_model_input`` of a sigma-space scheduler's sample).
    """
    if is_guided_scheduler(scheduler):
        return scheduler.pred_original_sample(model_output, t, sample, clip_sample=False)
    prediction = prediction_channels(model_output, sample)
    prediction_type = scheduler.config.get("prediction_type", "epsilon")
    alpha_bar = alpha_bar_at(scheduler, t, sample)
    if prediction_type == "sample":
        return prediction
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * prediction
    return (sample - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()


@contextmanager
def clipping(scheduler: Any, clip_denoised: bool | None) -> Iterator[None]:
    """Make a stock scheduler clip x_0 to the clipping range (or not) for one sampling run, then restore its config.

    None keeps the scheduler's own setting. Our schedulers take ``clip_sample`` per step and are left alone. DDPM and
    DDIM clip with ``clip_sample``; DPM-Solver, UniPC and DEIS clip with ``thresholding`` at ``sample_max_value`` 1
    (their dynamic threshold then never goes below 1, so it is the plain clamp to [-1, 1]). Schedulers with neither
    cannot clip: asking them to is an error, before any work.
    """
    if clip_denoised is None or is_guided_scheduler(scheduler):
        yield
        return
    clip_denoised = bool(clip_denoised)
    config = scheduler.config
    accepted = inspect.signature(type(scheduler).__init__).parameters
    if "clip_sample" in accepted:
        changes = {"clip_sample": clip_denoised}
    elif "thresholding" in accepted and "sample_max_value" in accepted:
        changes = {"thresholding": clip_denoised}
        if clip_denoised:
            bound = float(config.get("clip_sample_range", 1.0))
            if bound != 1.0:
                raise ValueError(
                    f"expected clip_sample_range 1 for clip_denoised=True under {type(scheduler).__name__} (it clips by "
                    f"thresholding at 1), got {bound}"
                )
            changes["sample_max_value"] = 1.0
    elif clip_denoised:
        raise ValueError(
            f"expected clip_denoised None or False for {type(scheduler).__name__}, which cannot clip x_0; got True"
        )
    else:
        changes = {}
    saved = {name: config.get(name) for name in changes}
    scheduler.register_to_config(**changes)
    try:
        yield
    finally:
        scheduler.register_to_config(**saved)


def scheduler_step(
    scheduler: Any,
    model_output: torch.Tensor,
    t: torch.Tensor,
    sample: torch.Tensor,
    *,
    model_input: torch.Tensor | None = None,
    guidance_gradient: torch.Tensor | None = None,
    eta: float = 0.0,
    clip_denoised: bool | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    variance_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reverse step with guidance applied the way the scheduler requires; returns (x_{t-1}, predicted x_0).

    Our DDPM scheduler shifts the mean (mean + variance * gradient), our DDIM scheduler shifts epsilon; stock
    diffusers schedulers get the epsilon shift eps - sqrt(1 - alpha_bar) * gradient applied to the model output before
    their own step, with alpha_bar at the scheduler's own noise level and the gradient taken at the model's input
    ``model_input`` (x_t in VP terms). ``clip_denoised`` (our schedulers; see [`clipping`] for stock ones) None keeps
    the config's setting.
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

    model_input = sample if model_input is None else model_input
    if model_output.shape[1] != sample.shape[1] and not reads_variance_channels(scheduler):
        model_output = prediction_channels(model_output, sample)
    if guidance_gradient is not None:
        if scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"expected an epsilon-predicting model for guidance under {type(scheduler).__name__}, "
                f"got prediction_type {scheduler.config.get('prediction_type')!r}"
            )
        alpha_bar = alpha_bar_at(scheduler, t, model_input)
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
        pred_original_sample = predict_original_sample(scheduler, model_output, t, model_input)
    return output.prev_sample, pred_original_sample


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
    at ``model_timestep(t)``, steps (with guidance) and calls back. ``pipeline.interrupt`` skips the remaining steps.

    Args:
        pipeline: gives the scheduler and the progress bar.
        x (`torch.Tensor`): x_T as standard normal noise (or the given latents), float32.
        timesteps (`torch.Tensor`): the scheduler's timesteps, descending.
        predict (`Callable`): the model output and guidance gradient at (model input, t, model timestep).
        eta, clip_denoised, generator: as in [`scheduler_step`].
        step_noise (*optional*): the noise of every step instead of drawing it.
        callback_on_step_end (`Callable`, *optional*): ``callback(pipeline, step, t, tensors)``; may return
            ``{"latents": ...}`` of the same shape to replace x_{t-1}.
        callback_tensor_inputs: which of ``latents`` and ``pred_original_sample`` the callback gets.
    """
    scheduler = pipeline.scheduler
    pipeline._num_timesteps = len(timesteps)
    x = x * scheduler.init_noise_sigma
    with clipping(scheduler, clip_denoised):
        for i, t in enumerate(pipeline.progress_bar(timesteps)):
            if getattr(pipeline, "interrupt", False):
                continue
            model_input = scheduler.scale_model_input(x, t)
            output, gradient = predict(model_input, t, model_timestep(scheduler, t))
            check_finite(output, "model output", i, t)
            if gradient is not None:
                check_finite(gradient, "guidance gradient", i, t)
            x, pred_x0 = scheduler_step(
                scheduler, output, t, x, model_input=model_input, guidance_gradient=gradient, eta=eta,
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


def to_model_input(images: Any, size: int | None = None, name: str = "image") -> torch.Tensor:
    """Images as diffusers' image inputs take them, to a float32 NCHW tensor in [-1, 1].

    A PIL image; a NumPy array, (N)HWC, uint8 or float in [0, 1] (diffusers' NumPy convention); a tensor, (N)CHW in
    [-1, 1] (the model's own range); or a list of any one of these kinds, stacked. Values outside the kind's range
    (0..255 floats, say) are refused rather than silently misread.
    """
    from PIL import Image

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"expected {name} as one or more images, got an empty list")
        kinds = {type(item).__name__ for item in images}
        if all(isinstance(item, Image.Image) for item in images):
            images = np.stack([np.asarray(item.convert("RGB")) for item in images])
        elif all(isinstance(item, np.ndarray) for item in images):
            images = np.concatenate([item[None] if item.ndim == 3 else item for item in images])
        elif all(torch.is_tensor(item) for item in images):
            images = torch.cat([item[None] if item.ndim == 3 else item for item in images])
        else:
            raise ValueError(f"expected {name} as a list of PIL images, arrays or tensors (one kind), got {sorted(kinds)}")
    elif isinstance(images, Image.Image):
        images = np.asarray(images.convert("RGB"))[None]
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
    return images
