"""How the pipelines drive a scheduler: ours natively, any stock diffusers scheduler through one adapter.

[`scheduler_driver`] picks the driver once per scheduler. Both drivers answer the same questions (the model-facing
timestep, alpha_bar and the noise level at a timestep, x_0 from a model output, whether the variance channels are
read, clipping, one guided step), so the sampling loop, the app and the guidance code never branch on the
scheduler's kind. The stock adapter takes its diffusion math from the process
([`~guided_diffusers.schedulers.gaussian`]'s alpha_bar formulas), evaluated at the stock scheduler's own noise level.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from diffusers.utils import is_scipy_available

from ..schedulers.gaussian import score_guided_noise, start_from_noise, start_from_velocity
from ..schedulers.scheduling_utils import GuidedSchedulerMixin

__all__ = [
    "GuidedSchedulerDriver",
    "SchedulerDriver",
    "StockSchedulerDriver",
    "check_step_count",
    "prediction_channels",
    "scheduler_driver",
]


def prediction_channels(model_output: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """The prediction channels of a model output (learned-sigma models append as many variance channels)."""
    return model_output[:, : sample.shape[1]]


def check_step_count(scheduler: Any, num_inference_steps: Any) -> None:
    """A whole number of sampling steps in [1, T], or a one-line error."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise ValueError(f"expected num_inference_steps as a whole number, got {num_inference_steps!r}")
    num_train_timesteps = scheduler.config.num_train_timesteps
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(
            f"expected num_inference_steps in [1, {num_train_timesteps}] (the trained steps), got {num_inference_steps}"
        )


class SchedulerDriver(ABC):
    """What a sampling pipeline needs from a scheduler, whatever its kind.

    Args:
        scheduler: the pipeline's scheduler (read live: swapping ``pipe.scheduler`` needs a new driver).
    """

    #: Whether the scheduler consumes a learned-sigma model's variance channels (else the pipelines drop them).
    reads_variance_channels: bool = True

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler

    @abstractmethod
    def set_timesteps(self, num_inference_steps: int | None, timestep_respacing: str | None, device: torch.device) -> None:
        """Lay out the sampling grid from checked arguments (at most one of them given)."""

    @abstractmethod
    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """What the network (and a noisy classifier) is given at ``t``."""

    @abstractmethod
    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar of the noise level the scheduler is at for its timestep ``t``, as a 0-d tensor like ``like``."""

    def noise_level(self, t: torch.Tensor) -> float:
        """sigma = sqrt((1 - alpha_bar) / alpha_bar) at timestep ``t``."""
        alpha_bar = float(self.alpha_bar(t, torch.empty((), dtype=torch.float64)))
        return float(np.sqrt((1 - alpha_bar) / alpha_bar)) if alpha_bar > 0 else float("inf")

    @abstractmethod
    def pred_original_sample(self, model_output: torch.Tensor, t: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        """x_0 from the model output at ``t``, unclipped and differentiable (for guidance through x_0, e.g. CLIP).

        ``model_input`` is what the model was given (x_t in VP terms: ``scale_model_input`` of a sigma-space sample).
        """

    @contextmanager
    def clipping(self, clip_denoised: bool | None) -> Iterator[None]:
        """Clip x_0 to [-1, 1] (or not) for one sampling run; None keeps the scheduler's own setting."""
        yield

    @abstractmethod
    def step(
        self,
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

        Args:
            model_output (`torch.Tensor`): the network's raw output (variance channels included).
            t (`torch.Tensor`): the scheduler's timestep.
            sample (`torch.Tensor`): the scheduler's sample x_t.
            model_input (`torch.Tensor`, *optional*): ``scale_model_input(sample, t)``, where the gradient was taken.
            guidance_gradient (`torch.Tensor`, *optional*): the scaled gradient of log p(y | x_t) at ``model_input``.
            eta (`float`): DDIM's eta (schedulers that have it).
            clip_denoised (`bool`, *optional*): clip x_0; None keeps the config's setting.
            generator, variance_noise: the step's noise, drawn or given.
        """


class GuidedSchedulerDriver(SchedulerDriver):
    """Our schedulers: they know the model timestep, read the variance channels and apply guidance in ``step``
    (DDPM shifts the mean, DDIM shifts epsilon), with ``clip_sample`` per step."""

    def __init__(self, scheduler: Any):
        super().__init__(scheduler)
        self._takes_eta = "eta" in inspect.signature(scheduler.step).parameters  # read once, not every step

    def set_timesteps(self, num_inference_steps, timestep_respacing, device):
        """A step count on diffusers' grid, or the originals' respacing spec; neither: the config's respacing."""
        self.scheduler.set_timesteps(timestep_respacing if timestep_respacing is not None else num_inference_steps, device=device)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.model_timestep(t)

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.scheduler.alphas_cumprod[int(t)], dtype=torch.float64).to(device=like.device, dtype=like.dtype)

    def pred_original_sample(self, model_output: torch.Tensor, t: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        return self.scheduler.pred_original_sample(model_output, t, model_input, clip_sample=False)

    def step(self, model_output, t, sample, *, model_input=None, guidance_gradient=None, eta=0.0, clip_denoised=None,
             generator=None, variance_noise=None):
        kwargs: dict[str, Any] = dict(
            generator=generator, variance_noise=variance_noise, guidance_gradient=guidance_gradient, clip_sample=clip_denoised
        )
        if self._takes_eta:
            kwargs["eta"] = eta
        elif eta:
            raise ValueError(f"expected eta=0 with {type(self.scheduler).__name__} (eta is DDIM's), got {eta}")
        output = self.scheduler.step(model_output, t, sample, **kwargs)
        return output.prev_sample, output.pred_original_sample


class StockSchedulerDriver(SchedulerDriver):
    """A stock diffusers scheduler, driven as diffusers' own pipelines drive it.

    - The model timestep is ``t`` (fractional ones pass as they are: the networks embed continuous time), or
      ``t * 1000 / T`` when the config keeps our ``rescale_timesteps`` key (``X.from_config`` keeps keys it does
      not use).
    - alpha_bar: sigma-space schedulers (Euler, Heun, LMS, KDPM2) give the model x / sqrt(1 + sigma^2), so alpha_bar
      is the square of that factor, the scheduler's own sigma; VP schedulers are at ``alphas_cumprod[t]``,
      interpolated linearly for a fractional t.
    - Guidance is the process's score shift of epsilon, eps - sqrt(1 - alpha_bar) * gradient, applied to the model
      output before the scheduler's own step.
    """

    def __init__(self, scheduler: Any):
        super().__init__(scheduler)
        if type(scheduler).__name__ == "LMSDiscreteScheduler" and not is_scipy_available():  # its step integrates with scipy
            raise ValueError("expected scipy installed for LMSDiscreteScheduler, got it missing: pip install scipy (or the [lms] extra)")
        parameters = inspect.signature(type(scheduler).__init__).parameters
        self._init_parameters = parameters
        self._step_parameters = inspect.signature(scheduler.step).parameters
        self.sigma_space = float(getattr(scheduler, "init_noise_sigma", 1.0)) != 1.0
        self.reads_variance_channels = "variance_type" in parameters and scheduler.config.get("variance_type") in (
            "learned", "learned_range"
        )

    def set_timesteps(self, num_inference_steps, timestep_respacing, device):
        """A step count (a plain-number spec counts as one), 50 when none is given, as diffusers' pipelines."""
        if timestep_respacing is not None:
            if not timestep_respacing.strip().isdigit():
                raise ValueError(
                    f"expected a step count for {type(self.scheduler).__name__}, got respacing spec {timestep_respacing!r} "
                    "(section counts and 'ddimN' need GuidedDDPMScheduler or GuidedDDIMScheduler)"
                )
            num_inference_steps = int(timestep_respacing)
            check_step_count(self.scheduler, num_inference_steps)
        self.scheduler.set_timesteps(50 if num_inference_steps is None else int(num_inference_steps), device=device)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        if self.scheduler.config.get("rescale_timesteps"):
            return torch.as_tensor(t).float() * (1000.0 / self.scheduler.config.num_train_timesteps)
        return t

    def alpha_bar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.sigma_space:
            scale = self.scheduler.scale_model_input(torch.ones((), dtype=torch.float64, device=like.device), t)
            return (torch.as_tensor(scale, dtype=torch.float64) ** 2).to(like.dtype)
        table = self.scheduler.alphas_cumprod  # index first: this runs every step, the table has T entries
        position = float(t)
        low = min(max(int(np.floor(position)), 0), len(table) - 1)
        high = min(low + 1, len(table) - 1)
        weight = position - low
        value = float(table[low]) * (1 - weight) + float(table[high]) * weight
        return torch.tensor(value, dtype=torch.float64).to(device=like.device, dtype=like.dtype)

    def pred_original_sample(self, model_output: torch.Tensor, t: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        prediction = prediction_channels(model_output, model_input)
        prediction_type = self.scheduler.config.get("prediction_type", "epsilon")
        if prediction_type == "sample":
            return prediction
        alpha_bar = self.alpha_bar(t, model_input)
        if prediction_type == "v_prediction":
            return start_from_velocity(model_input, prediction, alpha_bar)
        return start_from_noise(model_input, prediction, alpha_bar)

    @contextmanager
    def clipping(self, clip_denoised: bool | None) -> Iterator[None]:
        """Clip with [`clip_settings`] for one run; the config is restored after."""
        changes = self.clip_settings(clip_denoised)
        saved = {name: self.scheduler.config.get(name) for name in changes}
        self.scheduler.register_to_config(**changes)
        try:
            yield
        finally:
            self.scheduler.register_to_config(**saved)

    def clip_settings(self, clip_denoised: bool | None) -> dict[str, Any]:
        """The config changes that make the scheduler clip x_0 to [-1, 1] (or not); none for None.

        DDPM and DDIM clip with ``clip_sample``; DPM-Solver, UniPC and DEIS with ``thresholding`` at
        ``sample_max_value`` 1 (their dynamic threshold then never goes below 1: the plain clamp to [-1, 1]).
        Schedulers with neither cannot clip: asking them to is an error, before any work.
        """
        if clip_denoised is None:
            return {}
        clip_denoised = bool(clip_denoised)
        scheduler, accepted = self.scheduler, self._init_parameters
        if "clip_sample" in accepted:
            changes = {"clip_sample": clip_denoised}
        elif "thresholding" in accepted and "sample_max_value" in accepted:
            changes = {"thresholding": clip_denoised}
            if clip_denoised:
                bound = float(scheduler.config.get("clip_sample_range", 1.0))
                if bound != 1.0:
                    raise ValueError(
                        f"expected clip_sample_range 1 for clip_denoised=True under {type(scheduler).__name__} (it clips "
                        f"by thresholding at 1), got {bound}"
                    )
                changes["sample_max_value"] = 1.0
        elif clip_denoised:
            raise ValueError(f"expected clip_denoised None or False for {type(scheduler).__name__}, which cannot clip x_0; got True")
        else:
            changes = {}
        return changes

    def guided_output(
        self, model_output: torch.Tensor, t: torch.Tensor, model_input: torch.Tensor, guidance_gradient: torch.Tensor | None
    ) -> torch.Tensor:
        """The model output with the process's score shift of epsilon by the guidance gradient (unchanged without one)."""
        if guidance_gradient is None:
            return model_output
        if self.scheduler.config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"expected an epsilon-predicting model for guidance under {type(self.scheduler).__name__}, "
                f"got prediction_type {self.scheduler.config.get('prediction_type')!r}"
            )
        channels = model_input.shape[1]
        eps = score_guided_noise(model_output[:, :channels], self.alpha_bar(t, model_input), guidance_gradient)
        return torch.cat([eps, model_output[:, channels:]], dim=1)

    def step(self, model_output, t, sample, *, model_input=None, guidance_gradient=None, eta=0.0, clip_denoised=None,
             generator=None, variance_noise=None):
        scheduler = self.scheduler
        model_input = sample if model_input is None else model_input
        if model_output.shape[1] != sample.shape[1] and not self.reads_variance_channels:
            model_output = prediction_channels(model_output, sample)
        model_output = self.guided_output(model_output, t, model_input, guidance_gradient)
        accepted = self._step_parameters
        if eta and "eta" not in accepted:
            raise ValueError(f"expected eta=0 with {type(scheduler).__name__}, got {eta}")
        kwargs = {name: value for name, value in (("generator", generator), ("eta", eta), ("variance_noise", variance_noise))
                  if name in accepted and value is not None}
        output = scheduler.step(model_output, t, sample, **kwargs)
        pred_original_sample = getattr(output, "pred_original_sample", None)
        if pred_original_sample is None:
            pred_original_sample = self.pred_original_sample(model_output, t, model_input)
        return output.prev_sample, pred_original_sample


def scheduler_driver(scheduler: Any) -> SchedulerDriver:
    """The driver for ``scheduler``: ours natively, any other through the stock adapter."""
    return GuidedSchedulerDriver(scheduler) if isinstance(scheduler, GuidedSchedulerMixin) else StockSchedulerDriver(scheduler)
