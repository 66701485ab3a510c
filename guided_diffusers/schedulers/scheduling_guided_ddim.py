"""DDIM sampling and inversion exactly as guided-diffusion does them, with respacing and classifier guidance."""

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

__all__ = ["GuidedDDIMInverseOutput", "GuidedDDIMScheduler", "GuidedDDIMSchedulerOutput"]


@dataclass
class GuidedDDIMSchedulerOutput(BaseOutput):
    """Output of [`GuidedDDIMScheduler.step`].

    Args:
        prev_sample (`torch.Tensor`): x_{t-1}, the next model input.
        pred_original_sample (`torch.Tensor`): the x_0 prediction at t (clipped, then guided when guidance is given).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


@dataclass
class GuidedDDIMInverseOutput(BaseOutput):
    """Output of [`GuidedDDIMScheduler.inverse_step`].

    Args:
        next_sample (`torch.Tensor`): x_{t+1}, one step noisier.
        pred_original_sample (`torch.Tensor`): the x_0 prediction at t.
    """

    next_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class GuidedDDIMScheduler(GuidedSchedulerMixin, SchedulerMixin, ConfigMixin):
    """DDIM (Song et al.) for improved-diffusion / guided-diffusion / DDPM models: eta, respacing, guidance, inversion.

    Follows guided-diffusion exactly: the x_0 prediction is clipped and epsilon is re-derived from the clipped x_0
    (diffusers' DDIMScheduler matches this only with ``use_clipped_model_output=True``), and [`inverse_step`] is its
    reverse ODE step.

    ``timesteps`` holds the original timesteps kept by the respacing, descending; give the model
    ``t`` and pass its raw output (3 channels, or 6 for learned-sigma models, whose variance
    channels DDIM does not use) with the same ``t``.

    Classifier guidance: pass ``guidance_gradient``, the (scaled) gradient of log p(y | x_t) at the current sample and
    ``t``; epsilon becomes eps - sqrt(1 - alpha_bar_t) * gradient (Song et al.;
    guided-diffusion's ``condition_score``). Any gradient function works.

    Inversion (x_0 -> x_T), then reconstruction:
        ```py
        scheduler.set_timesteps("ddim50")
        for t in scheduler.timesteps.flip(0):
            x = scheduler.inverse_step(unet(x, t).sample, t, x).next_sample
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
        ```

    Args: the same as [`GuidedDDPMScheduler`]:
        num_train_timesteps (`int`, defaults to 1000): T of the trained process.
        beta_schedule (`str`, defaults to ``"linear"``): diffusers' names and meanings (``"linear"`` unscaled,
            ``"scaled_linear"``, ``"squaredcos_cap_v2"``), plus DDPM's schedules; see [`GuidedDDPMScheduler`].
        beta_start (`float`, defaults to 1e-4): the first beta.
        beta_end (`float`, defaults to 0.02): the last beta.
        trained_betas (`list[float]`, *optional*): explicit betas, overriding the schedule.
        prediction_type (`str`, defaults to ``"epsilon"``): ``"epsilon"``, ``"sample"`` or ``"previous_sample"``.
        variance_type (`str`, defaults to ``"fixed_small"``): the model's variance type; ``"learned"`` and
            ``"learned_range"`` mean 2C output channels (DDIM does not use them); None means ``"fixed_small"``.
        clip_sample (`bool`, defaults to True): clamp the x_0 prediction to [-clip_sample_range, clip_sample_range].
        clip_sample_range (`float`, defaults to 1.0): the clipping bound.
        rescale_timesteps (`bool`, *optional*): an old folder's key, moved to the networks by the pipelines.
        timestep_respacing (`str`, *optional*): the respacing after construction and for ``set_timesteps()`` without
            arguments (e.g. ``"ddim25"``); every step when absent.
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
        eta: float = 0.0,
        use_clipped_model_output: bool | None = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        guidance_gradient: torch.Tensor | None = None,
        clip_sample: bool | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> GuidedDDIMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step x_t -> x_{t-1} of the respaced process.

        Args:
            model_output (`torch.Tensor`): the model's raw output at ``timestep`` (C or 2C channels).
            timestep (`int` or `torch.Tensor`): the current original timestep, one of ``timesteps`` (or one per
                sample).
            sample (`torch.Tensor`): x_t.
            eta (`float`, defaults to 0.0): the DDIM noise scale (0: deterministic; 1: DDPM-like).
            use_clipped_model_output (`bool`, defaults to True): as in diffusers' DDIMScheduler: True re-derives
                epsilon from the clipped x_0 for the direction to x_t (guided-diffusion's DDIM, hence our default);
                False (or None, as diffusers reads it) uses the model's own epsilon. Both give the same step when
                nothing was clipped.
            generator (`torch.Generator`, *optional*): for the noise when eta > 0.
            variance_noise (`torch.Tensor`, *optional*): the standard normal noise to use instead of drawing it.
            guidance_gradient (`torch.Tensor`, *optional*): the scaled gradient of log p(y | x_t) at ``sample``;
                shifts epsilon by -sqrt(1 - alpha_bar_t) * gradient.
            clip_sample (`bool`, *optional*): overrides the config's ``clip_sample`` for this step.
            denoised_fn (`Callable`, *optional*): applied to the x_0 prediction before clipping.
            return_dict (`bool`, defaults to True): return a [`GuidedDDIMSchedulerOutput`] rather than a tuple.

        Returns:
            [`GuidedDDIMSchedulerOutput`] or `tuple`: (prev_sample, pred_original_sample).
        """
        if not eta >= 0:  # also refuses nan
            raise ValueError(f"eta must be a non-negative number, got {eta}")
        process = self.sampling_diffusion
        steps = self._to_process_steps(timestep, sample)
        pred_original_sample = self.pred_original_sample(model_output, timestep, sample, clip_sample, denoised_fn)
        model_noise = None
        if not use_clipped_model_output:
            unclipped = self.pred_original_sample(model_output, timestep, sample, False, denoised_fn)
            model_noise = process.predict_noise_from_start(sample, steps, unclipped)
        if guidance_gradient is not None:
            self._check_guidance_gradient(guidance_gradient, sample)
            pred_original_sample = process.guided_pred_original_sample(
                pred_original_sample, sample, steps, guidance_gradient
            )
            if model_noise is not None:
                model_noise = process.guided_noise(model_noise, steps, guidance_gradient)
        noise = None
        if eta > 0:
            noise = variance_noise
            if noise is None:
                noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev_sample = process.ddim_step(
            pred_original_sample, sample, steps, eta=eta, noise=noise, noise_pred=model_noise
        )
        if not return_dict:
            return prev_sample, pred_original_sample
        return GuidedDDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)

    def inverse_step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        clip_sample: bool | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_dict: bool = True,
    ) -> GuidedDDIMInverseOutput | tuple[torch.Tensor, torch.Tensor]:
        """One deterministic DDIM inversion step x_t -> x_{t+1} (guided-diffusion's reverse ODE step).

        Walk ``timesteps`` in ascending order (``scheduler.timesteps.flip(0)``), starting from the clean image at
        the first; the step from the last timestep lands on alpha_bar = 0, as in the original.

        Args:
            model_output (`torch.Tensor`): the model's raw output at ``timestep`` (C or 2C channels).
            timestep (`int` or `torch.Tensor`): the current original timestep (the sample's), one of ``timesteps``.
            sample (`torch.Tensor`): x_t.
            clip_sample (`bool`, *optional*): overrides the config's ``clip_sample`` for this step.
            denoised_fn (`Callable`, *optional*): applied to the x_0 prediction before clipping.
            return_dict (`bool`, defaults to True): return a [`GuidedDDIMInverseOutput`] rather than a tuple.

        Returns:
            [`GuidedDDIMInverseOutput`] or `tuple`: (next_sample, pred_original_sample).
        """
        steps = self._to_process_steps(timestep, sample)
        pred_original_sample = self.pred_original_sample(model_output, timestep, sample, clip_sample, denoised_fn)
        next_sample = self.sampling_diffusion.ddim_reverse_step(pred_original_sample, sample, steps)
        if not return_dict:
            return next_sample, pred_original_sample
        return GuidedDDIMInverseOutput(next_sample=next_sample, pred_original_sample=pred_original_sample)
