"""What GuidedDDPMScheduler and GuidedDDIMScheduler share: config checks, respacing, timestep mapping, add_noise, and
the list of stock diffusers schedulers their configs swap with (``X.from_config(scheduler.config)``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import FrozenDict
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..checks import check_whole_number
from .gaussian import MEAN_TYPES, VARIANCE_TYPES, GaussianDiffusion
from .schedules import BETA_SCHEDULES, diffusers_schedule, space_timesteps

__all__ = ["COMPATIBLE_SCHEDULERS", "TIMESTEP_SPACINGS", "GuidedSchedulerMixin"]

#: The stock diffusers schedulers that ``X.from_config(guided.config)`` turns our configs into (and back), and that the
#: pipelines drive; each is tested for the same alphas_cumprod both ways.
COMPATIBLE_SCHEDULERS = [
    "DDPMScheduler",
    "DDIMScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "PNDMScheduler",
]
#: Config keys of ours that no diffusers scheduler has: the originals' respacing, and an old folder's timestep rescaling
#: (moved to the networks by the pipelines).
OWN_KEYS = ("timestep_respacing", "rescale_timesteps")
#: diffusers' ways of laying ``N`` steps over the T trained ones (``set_timesteps(N)`` with an int N).
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


class GuidedSchedulerMixin:
    """Timesteps, respacing and the forward process for the guided schedulers (used with SchedulerMixin, ConfigMixin).

    ``timesteps`` holds the ORIGINAL (unspaced) timesteps kept by the current respacing, descending: what the model and
    a classifier are given (each network scales them by its own ``timestep_scale``) and what ``step`` takes. ``step``
    maps them to the respaced process internally.

    Attributes:
        diffusion ([`GaussianDiffusion`]): the full (training) process of the config; training losses use it.
        sampling_diffusion ([`GaussianDiffusion`]): the respaced process of the current ``timesteps``.
    """

    order = 1
    init_noise_sigma = 1.0

    def _initialize(self) -> None:
        self._store_in_diffusers_terms()
        config = self.config
        if config.beta_schedule not in BETA_SCHEDULES and config.trained_betas is None:
            raise ValueError(
                f"unknown beta_schedule {config.beta_schedule!r}; expected one of {', '.join(BETA_SCHEDULES)}"
            )
        if config.prediction_type not in MEAN_TYPES:
            raise ValueError(
                f"unknown prediction_type {config.prediction_type!r}; expected one of {', '.join(MEAN_TYPES)}"
            )
        if config.variance_type not in VARIANCE_TYPES:
            raise ValueError(
                f"unknown variance_type {config.variance_type!r}; expected one of {', '.join(VARIANCE_TYPES)}"
            )
        if not config.clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be positive, got {config.clip_sample_range}")
        if config.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"unknown timestep_spacing {config.timestep_spacing!r}; expected one of {', '.join(TIMESTEP_SPACINGS)}"
            )
        self.diffusion = GaussianDiffusion.from_config(config)
        #: The full process's float64 betas and alphas_cumprod.
        self.betas = self.diffusion.betas
        self.alphas_cumprod = self.diffusion.alphas_cumprod
        self.set_timesteps(config.get("timestep_respacing"))

    def _store_in_diffusers_terms(self) -> None:
        """Rewrite the config so that every key means what it means in diffusers, once, at construction.

        The originals' ``cosine`` is stored as ``squaredcos_cap_v2`` and DDPM's ``quad`` as ``scaled_linear``; DDPM's
        schedules that diffusers lacks carry explicit ``trained_betas``; a ``variance_type`` of None (a stock
        config's "no learned variance") is diffusers' default, ``fixed_small``. A stock scheduler built with
        ``X.from_config(self.config)`` then runs exactly this process.
        """
        config = self.config
        updates: dict[str, Any] = {}
        if config.variance_type is None:
            updates["variance_type"] = "fixed_small"
        if config.trained_betas is None and config.beta_schedule in BETA_SCHEDULES:
            schedule = diffusers_schedule(
                config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end
            )
            updates.update({k: v for k, v in schedule.items() if config.get(k) != v})
        # The process itself is never "a default": diffusers' from_config drops default-valued keys and gives the new
        # class its own defaults (Heun's linear is 0.00085..0.012), so these keys always travel.
        process_keys = {"num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas", *updates}
        defaults = [name for name in config.get("_use_default_values", []) if name not in process_keys]
        self.register_to_config(**updates, _use_default_values=defaults)
        # Our own keys, unset, are left out of the config: diffusers carries a config's unknown keys into every stock
        # scheduler made from it and names them in a warning at the next swap.
        unset = {name for name in OWN_KEYS if self.config.get(name) is None}
        if unset:
            self._internal_dict = FrozenDict({k: v for k, v in self._internal_dict.items() if k not in unset})

    # -- timesteps --------------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | str | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: a step count, a respacing spec of the originals, or explicit timesteps.

        Args:
            num_inference_steps (`int` or `str`, *optional*): an int N lays N steps out as diffusers does, by the
                config's ``timestep_spacing`` (``"leading"``: T // N apart from 0 plus ``steps_offset``;
                ``"trailing"``: from T - 1 down; ``"linspace"``: evenly from 0 to T - 1, rounded). A string is a
                respacing spec of the originals: ``"250"`` (N steps including 0 and T - 1, as the originals round
                them), ``"10,15,20"`` (per-section counts) or ``"ddim25"`` (integer stride). None uses the config's
                ``timestep_respacing``, or every step.
            device (`str` or `torch.device`, *optional*): where ``timesteps`` goes.
            timesteps (sequence of `int`, *optional*): explicit original timesteps, strictly descending, in
                [0, num_train_timesteps), as diffusers' custom timesteps (instead of the above).
        """
        num_train_timesteps = self.config.num_train_timesteps
        if num_inference_steps is None and timesteps is None:
            num_inference_steps = self.config.get("timestep_respacing")
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass either num_inference_steps or timesteps, got both")
            use_timesteps = self._check_custom_timesteps(timesteps)
        elif num_inference_steps is None or num_inference_steps == "":
            use_timesteps = list(range(num_train_timesteps))
        elif isinstance(num_inference_steps, str):
            use_timesteps = space_timesteps(num_train_timesteps, num_inference_steps)
        else:
            use_timesteps = self._spaced_timesteps(num_inference_steps)
        self.num_inference_steps = len(use_timesteps)
        self.sampling_diffusion = GaussianDiffusion.from_config(self.config, use_timesteps=use_timesteps)
        process_index = torch.full((num_train_timesteps,), -1, dtype=torch.long)
        process_index[torch.tensor(use_timesteps)] = torch.arange(len(use_timesteps))
        self._process_index = process_index
        self.timesteps = torch.tensor(use_timesteps[::-1], dtype=torch.long, device=device)

    def _spaced_timesteps(self, num_inference_steps: Any) -> list[int]:
        """diffusers' grid of N steps for the config's ``timestep_spacing`` (ascending)."""
        num_train_timesteps = self.config.num_train_timesteps
        steps = check_whole_number("num_inference_steps", num_inference_steps, 1, num_train_timesteps)
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            grid = np.linspace(0, num_train_timesteps - 1, steps).round().astype(np.int64)
        elif spacing == "leading":
            grid = np.arange(0, steps) * (num_train_timesteps // steps) + self.config.steps_offset
        else:  # trailing
            grid = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64)[::-1] - 1
        grid = sorted(set(int(t) for t in grid))
        if grid[0] < 0 or grid[-1] >= num_train_timesteps:
            raise ValueError(
                f"timestep_spacing {spacing!r} with steps_offset {self.config.steps_offset} puts timesteps outside "
                f"[0, {num_train_timesteps}): {grid[0]}..{grid[-1]}"
            )
        return grid

    def _check_custom_timesteps(self, timesteps: Sequence[int] | torch.Tensor) -> list[int]:
        """Custom timesteps as diffusers takes them: integers, strictly descending, in [0, T); returned ascending."""
        num_train_timesteps = self.config.num_train_timesteps
        values = timesteps.tolist() if isinstance(timesteps, (torch.Tensor, np.ndarray)) else list(timesteps)
        if not values or any(isinstance(v, bool) or int(v) != v for v in values):
            raise ValueError(f"timesteps must be a non-empty list of integers, got {values}")
        values = [int(v) for v in values]
        if any(a <= b for a, b in zip(values, values[1:])):
            raise ValueError(f"timesteps must be strictly descending, as scheduler.timesteps are, got {values}")
        if values[-1] < 0 or values[0] >= num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {num_train_timesteps}), got {values}")
        return values[::-1]

    def _to_process_steps(self, timestep: int | torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Original timesteps (int or tensor) as (batch,) steps of the sampling process; errors for foreign ones."""
        num_train_timesteps = self.config.num_train_timesteps
        original = self.diffusion.timestep_batch(timestep, sample.shape[0]).cpu()
        steps = self._process_index[original]
        if (steps < 0).any():
            missing = sorted(set(original[steps < 0].tolist()))
            raise ValueError(
                f"timestep {missing} is not one of this scheduler's timesteps ({self.num_inference_steps} of "
                f"{num_train_timesteps}; call set_timesteps or pass one of scheduler.timesteps)"
            )
        return steps.to(sample.device)

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The original timestep that follows ``timestep`` in ``timesteps`` (-1 after the last), as a tensor like diffusers'."""
        step = int(self._to_process_steps(torch.as_tensor(timestep).reshape(1), torch.empty(1))[0])
        previous = int(self.sampling_diffusion.timestep_map[step - 1]) if step > 0 else -1
        device = timestep.device if isinstance(timestep, torch.Tensor) else None
        return torch.tensor(previous, dtype=torch.long, device=device)

    def pred_original_sample(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        clip_sample: bool | None = None,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x_0 predicted from the model's raw output at an original timestep, differentiable (no ``no_grad`` inside).

        For guidance through x_0 (e.g. CLIP guidance): evaluate a loss on this prediction and differentiate back to the
        sample. Learned-sigma outputs are accepted (their variance channels are not used).

        Args:
            model_output (`torch.Tensor`): the model's raw output at ``timestep`` (C or 2C channels).
            timestep (`int` or `torch.Tensor`): one of ``timesteps``.
            sample (`torch.Tensor`): x_t.
            clip_sample (`bool`, *optional*): clamp to the clipping range (default: the config's ``clip_sample``).
            denoised_fn (`Callable`, *optional*): applied to x_0 before clipping.
        """
        process = self.sampling_diffusion
        channels = sample.shape[1]
        if not process.learns_variance and model_output.ndim == sample.ndim and model_output.shape[1] == 2 * channels:
            model_output = model_output[:, :channels]  # a learned-sigma model under a fixed-variance config
        prediction, _ = process.split_model_output(model_output, sample)
        steps = self._to_process_steps(timestep, sample)
        return process.pred_original_sample(
            prediction,
            sample,
            steps,
            clip_denoised=self._clip_settings(clip_sample),
            denoised_fn=denoised_fn,
            clip_range=self.config.clip_sample_range,
        )

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None) -> torch.Tensor:
        """The model input for ``sample`` (unchanged; here for interchangeability with diffusers schedulers)."""
        return sample

    @staticmethod
    def _check_guidance_gradient(guidance_gradient: torch.Tensor, sample: torch.Tensor) -> None:
        if guidance_gradient.shape != sample.shape:
            raise ValueError(
                f"guidance_gradient must have the sample's shape {tuple(sample.shape)}, got {tuple(guidance_gradient.shape)}"
            )

    def _clip_settings(self, clip_sample: bool | None) -> bool:
        return self.config.clip_sample if clip_sample is None else bool(clip_sample)

    # -- forward process --------------------------------------------------------------------------------------------

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """q(x_t | x_0) on the full process: sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

        Args:
            original_samples (`torch.Tensor`): clean samples x_0.
            noise (`torch.Tensor`): standard normal noise, shaped like ``original_samples``.
            timesteps (`int` or `torch.Tensor`): original timesteps in [0, num_train_timesteps), one or one per sample.
        """
        return self.diffusion.q_sample(original_samples, timesteps, noise=noise)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
