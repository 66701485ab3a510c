"""Ancestral (DDPM) sampling with every mean and variance type of improved-diffusion and guided-diffusion."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .scheduling_utils import COMPATIBLE_SCHEDULERS, GuidedSchedulerMixin

__all__ = ["GuidedDDPMScheduler", "GuidedDDPMSchedulerOutput"]


@dataclass
class GuidedDDPMSchedulerOutput(BaseOutput):
    """Output of [`GuidedDDPMScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`): x_{t-1}, the next model input.
        pred_original_sample (`torch.Tensor`): the model's x_0 prediction at t (after ``denoised_fn`` and clipping).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class GuidedDDPMScheduler(GuidedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """Ancestral sampling of improved-diffusion / guided-diffusion / DDPM models, with respacing and guidance.

    ``timesteps`` holds the original timesteps kept by the respacing, descending. For each ``t`` in it, give the model
    ``t`` (the network scales it by its own ``timestep_scale``) and pass its raw output
    (3 or, for learned variances, 6 channels) to [`step`] with the same ``t``.

    Classifier guidance: pass ``guidance_gradient``, the (scaled) gradient of log p(y | x_t) with respect to the
    current sample, evaluated at ``t``; the mean becomes mean + variance * gradient
    (Sohl-Dickstein et al.; guided-diffusion's ``condition_mean``). Any gradient works: a noisy classifier, CLIP, a
    user function.

    Example:
        ```py
        scheduler.set_timesteps("250")
        for t in scheduler.timesteps:
            model_output = unet(x, t, class_labels=y).sample
            gradient = None
            if classifier is not None:
                with torch.enable_grad():
                    x_in = x.detach().requires_grad_(True)
                    log_probs = classifier(x_in, t).logits.log_softmax(-1)
                    selected = log_probs[torch.arange(len(y)), y].sum()
                    gradient = torch.autograd.grad(selected, x_in)[0] * scale
            x = scheduler.step(model_output, t, x, generator=generator, guidance_gradient=gradient).prev_sample
        ```

    Args:
        num_train_timesteps (`int`, defaults to 1000): T of the trained process.
        beta_schedule (`str`, defaults to ``"linear"``): diffusers' ``"linear"`` (linspace(beta_start, beta_end, T),
            unscaled), ``"scaled_linear"`` or ``"squaredcos_cap_v2"`` (the originals' cosine), or DDPM's
            ``"warmup10"``, ``"warmup50"``, ``"const"``, ``"jsd"``; the originals' ``"cosine"`` and DDPM's ``"quad"``
            are accepted and stored under diffusers' names. See
            [`~guided_diffusers.schedulers.gaussian.get_beta_schedule`].
        beta_start (`float`, defaults to 1e-4): the first beta.
        beta_end (`float`, defaults to 0.02): the last beta.
        trained_betas (`list[float]`, *optional*): explicit betas, overriding the schedule.
        prediction_type (`str`, defaults to ``"epsilon"``): ``"epsilon"``, ``"sample"`` (x_0) or ``"previous_sample"``
            (x_{t-1}).
        variance_type (`str`, defaults to ``"fixed_small"``, diffusers' default): ``"fixed_small"`` (the posterior
            variance), ``"fixed_large"`` (beta_t), ``"learned"`` or ``"learned_range"`` (the model outputs twice the
            channels for the last two); None (a stock solver's "not learned") means ``"fixed_small"``.
        clip_sample (`bool`, defaults to True): clamp the x_0 prediction to [-clip_sample_range, clip_sample_range].
        clip_sample_range (`float`, defaults to 1.0): the clipping bound.
        rescale_timesteps (`bool`, *optional*): read from folders written before the networks owned their timestep
            scale; the pipelines move it to the networks' ``timestep_scale`` once. Not used by the scheduler.
        timestep_respacing (`str`, *optional*): the respacing in effect after construction and for
            ``set_timesteps()`` without arguments; every step when absent.
        timestep_spacing (`str`, defaults to ``"leading"``, as diffusers' DDPM and DDIM schedulers): how
            ``set_timesteps(N)`` with an int N lays out its steps: ``"leading"``, ``"trailing"`` or ``"linspace"``,
            exactly as diffusers does. The originals' respacing is asked for with a string (``"250"``, ``"ddim25"``).
        steps_offset (`int`, defaults to 0): added to the ``"leading"`` grid, as in diffusers.
    """

    _compatibles = COMPATIBLE_SCHEDULERS

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: list[float] | np.ndarray | None = None,
        prediction_type: str = "epsilon",
        variance_type: str | None = "fixed_small",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        rescale_timesteps: bool | None = None,
        timestep_respacing: str | None = None,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ):
        self._initialize()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        guidance_gradient: torch.Tensor | None = None,
        clip_sample: bool | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> GuidedDDPMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step x_t -> x_{t-1} of the respaced process.

        Args:
            model_output (`torch.Tensor`): the model's raw output at ``timestep``: C channels, or 2C (prediction, then
                variance values) for ``learned`` / ``learned_range``.
            timestep (`int` or `torch.Tensor`): the current original timestep, one of ``timesteps`` (or one per
                sample).
            sample (`torch.Tensor`): x_t.
            generator (`torch.Generator`, *optional*): for the step's noise.
            variance_noise (`torch.Tensor`, *optional*): the standard normal noise to use instead of drawing it (the
                noise is drawn, and ignored, at the last step too, as the originals do).
            guidance_gradient (`torch.Tensor`, *optional*): the scaled gradient of log p(y | x_t) at ``sample``;
                shifts the mean by variance * gradient.
            clip_sample (`bool`, *optional*): overrides the config's ``clip_sample`` for this step.
            denoised_fn (`Callable`, *optional*): applied to the x_0 prediction before clipping.
            return_dict (`bool`, defaults to True): return a [`GuidedDDPMSchedulerOutput`] rather than a tuple.

        Returns:
            [`GuidedDDPMSchedulerOutput`] or `tuple`: (prev_sample, pred_original_sample).
        """
        process = self.sampling_diffusion
        steps = self._to_process_steps(timestep, sample)
        prediction = process.p_mean_variance(
            model_output,
            sample,
            steps,
            clip_denoised=self._clip_settings(clip_sample),
            denoised_fn=denoised_fn,
            clip_range=self.config.clip_sample_range,
        )
        if guidance_gradient is not None:
            self._check_guidance_gradient(guidance_gradient, sample)
            prediction = process.condition_mean(prediction, guidance_gradient)
        if variance_noise is None:
            variance_noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = process.p_sample(prediction, steps, variance_noise)
        if not return_dict:
            return prev_sample, prediction.pred_original_sample
        return GuidedDDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=prediction.pred_original_sample)
