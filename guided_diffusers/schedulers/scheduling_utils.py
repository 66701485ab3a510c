"""What GuidedDDPMScheduler and GuidedDDIMScheduler share: config checks, respacing, timestep mapping, add_noise;
and the mapping that builds stock diffusers schedulers from their config."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .gaussian import BETA_SCHEDULES, MEAN_TYPES, VARIANCE_TYPES, GaussianDiffusion, space_timesteps

__all__ = ["GuidedSchedulerMixin", "diffusers_scheduler_kwargs", "to_diffusers_scheduler"]


class GuidedSchedulerMixin:
    """Timesteps, respacing and the forward process for the guided schedulers (used with SchedulerMixin, ConfigMixin).

    ``timesteps`` holds the ORIGINAL (unspaced) timesteps kept by the current respacing, descending: what the model and
    a classifier are given (through [`model_timestep`], which rescales them when ``rescale_timesteps``) and what
    ``step`` takes. ``step`` maps them to the respaced process internally.

    Attributes:
        diffusion ([`GaussianDiffusion`]): the full (training) process of the config; training losses use it.
        sampling_diffusion ([`GaussianDiffusion`]): the respaced process of the current ``timesteps``.
    """

    order = 1
    init_noise_sigma = 1.0

    def _initialize(self) -> None:
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
        self.diffusion = GaussianDiffusion.from_config(config)
        #: The full process's float64 betas and alphas_cumprod.
        self.betas = self.diffusion.betas
        self.alphas_cumprod = self.diffusion.alphas_cumprod
        self.set_timesteps(config.timestep_respacing)

    # -- timesteps --------------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | str | None = None,
        device: str | torch.device | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Choose the sampling timesteps: a step count, a respacing spec, or explicit original timesteps.

        Args:
            num_inference_steps (`int` or `str`, *optional*): an int N takes N evenly spaced steps (the originals'
                ``"N"``); a string is a respacing spec of the originals: ``"250"``, ``"10,15,20"`` (per-section counts)
                or ``"ddim25"`` (integer stride). None uses the config's ``timestep_respacing``, or every step.
            device (`str` or `torch.device`, *optional*): where ``timesteps`` goes.
            timesteps (sequence of `int`, *optional*): explicit original timesteps to keep (instead of the above).
        """
        num_train_timesteps = self.config.num_train_timesteps
        if num_inference_steps is None and timesteps is None:
            num_inference_steps = self.config.timestep_respacing
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass either num_inference_steps or timesteps, got both")
            use_timesteps = sorted(set(int(t) for t in timesteps))
            if not use_timesteps or use_timesteps[0] < 0 or use_timesteps[-1] >= num_train_timesteps:
                raise ValueError(
                    f"timesteps must be a non-empty list in [0, {num_train_timesteps}), got {list(timesteps)}"
                )
        elif num_inference_steps is None or num_inference_steps == "":
            use_timesteps = list(range(num_train_timesteps))
        else:
            if isinstance(num_inference_steps, bool):
                raise ValueError(
                    f"num_inference_steps must be an int or a respacing spec, got {num_inference_steps!r}"
                )
            if isinstance(num_inference_steps, (int, np.integer)):
                if not 1 <= num_inference_steps <= num_train_timesteps:
                    raise ValueError(
                        f"num_inference_steps must be in [1, {num_train_timesteps}] (num_train_timesteps), "
                        f"got {num_inference_steps}"
                    )
                num_inference_steps = str(int(num_inference_steps))
            use_timesteps = space_timesteps(num_train_timesteps, num_inference_steps)
        self.num_inference_steps = len(use_timesteps)
        self.sampling_diffusion = GaussianDiffusion.from_config(self.config, use_timesteps=use_timesteps)
        process_index = torch.full((num_train_timesteps,), -1, dtype=torch.long)
        process_index[torch.tensor(use_timesteps)] = torch.arange(len(use_timesteps))
        self._process_index = process_index
        self.timesteps = torch.tensor(use_timesteps[::-1], dtype=torch.long, device=device)

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

    def model_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """What the model and a noise-aware classifier are given at an original timestep.

        The timestep itself (int64), or ``timestep * 1000 / num_train_timesteps`` (float32) when the config sets
        ``rescale_timesteps``. A pipeline calls ``unet(x, scheduler.model_timestep(t))`` for each ``t`` in
        ``scheduler.timesteps``, and evaluates its guidance gradient at the same value.

        Args:
            timestep (`int` or `torch.Tensor`): original timestep(s), e.g. an element of ``timesteps``.
        """
        if isinstance(timestep, torch.Tensor):
            flat = timestep.reshape(-1)
            return self.diffusion.model_timesteps(flat, batch_size=flat.shape[0]).reshape(timestep.shape)
        return self.diffusion.model_timesteps(timestep)[0]

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The original timestep that follows ``timestep`` in ``timesteps`` (-1 after the last)."""
        step = int(self._to_process_steps(torch.as_tensor(timestep).reshape(1), torch.empty(1))[0])
        return int(self.sampling_diffusion.timestep_map[step - 1]) if step > 0 else -1

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


def _config_dict(config_or_scheduler: Any) -> dict[str, Any]:
    config = getattr(config_or_scheduler, "config", config_or_scheduler)
    if not isinstance(config, Mapping):
        raise ValueError(
            f"expected a guided scheduler or its config mapping, got {type(config_or_scheduler).__name__}"
        )
    return dict(config)


def diffusers_scheduler_kwargs(
    config_or_scheduler: Any, scheduler_class: type[SchedulerMixin]
) -> dict[str, Any]:
    """The constructor kwargs of a stock diffusers scheduler that runs the same process as a guided scheduler config.

    The full process's float64 betas go in as ``trained_betas`` (so every schedule, at any T, is exact up to the stock
    scheduler's float32 tables), with ``num_train_timesteps``, ``prediction_type`` (``"epsilon"`` or ``"sample"``),
    ``clip_sample`` / ``clip_sample_range`` and ``variance_type`` where ``scheduler_class`` takes them. Only the
    arguments ``scheduler_class.__init__`` accepts are returned.

    Learned-sigma models output 6 channels: [`~diffusers.DPMSolverMultistepScheduler`] and
    [`~diffusers.DDPMScheduler`] drop the variance channels themselves (``variance_type`` is passed); for the others
    feed ``model_output[:, :3]``. With ``rescale_timesteps`` the model must be given ``t * 1000 /
    num_train_timesteps``, which stock schedulers do not do: [`to_diffusers_scheduler`] records it in the stock
    scheduler's config, and the pipelines rescale accordingly.

    Args:
        config_or_scheduler: a [`GuidedDDPMScheduler`], [`GuidedDDIMScheduler`] or one of their configs.
        scheduler_class (`type`): a diffusers scheduler class, e.g. ``DPMSolverMultistepScheduler``.
    """
    config = _config_dict(config_or_scheduler)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "sample"):
        raise ValueError(
            f"stock diffusers schedulers take prediction_type 'epsilon' or 'sample', got {prediction_type!r}"
        )
    num_train_timesteps = config.get("num_train_timesteps", 1000)
    betas = GaussianDiffusion.from_config(config).betas
    variance_type = config.get("variance_type", "fixed_small")
    candidates: dict[str, Any] = {
        "num_train_timesteps": num_train_timesteps,
        "trained_betas": betas.tolist(),
        "prediction_type": prediction_type,
        "clip_sample": config.get("clip_sample", True),
        "clip_sample_range": config.get("clip_sample_range", 1.0),
    }
    accepted = inspect.signature(scheduler_class.__init__).parameters
    if "variance_type" in accepted:
        default = accepted["variance_type"].default
        if scheduler_class.__name__.startswith("DDPM"):
            candidates["variance_type"] = variance_type
        elif variance_type in ("learned", "learned_range"):
            candidates["variance_type"] = variance_type
        else:
            candidates["variance_type"] = default
    return {name: value for name, value in candidates.items() if name in accepted}


def to_diffusers_scheduler(
    config_or_scheduler: Any, scheduler_class: type[SchedulerMixin], **overrides: Any
) -> SchedulerMixin:
    """A stock diffusers scheduler (DDIM, DPM-Solver, Euler, UniPC, ...) for the process of a guided scheduler config.

    See [`diffusers_scheduler_kwargs`] for what is carried over and how to feed learned-sigma models.

    Args:
        config_or_scheduler: a [`GuidedDDPMScheduler`], [`GuidedDDIMScheduler`] or one of their configs.
        scheduler_class (`type`): the diffusers scheduler class.
        overrides: further constructor kwargs (e.g. ``algorithm_type="dpmsolver++"``), taking precedence.
    """
    kwargs = diffusers_scheduler_kwargs(config_or_scheduler, scheduler_class)
    kwargs.update(overrides)
    scheduler = scheduler_class(**kwargs)
    if _config_dict(config_or_scheduler).get("rescale_timesteps"):
        # Not a stock scheduler setting: recorded in its config so the pipelines give the model t * 1000 / T. (It is
        # dropped if the stock scheduler is saved and reloaded; convert again from the guided config then.)
        scheduler.register_to_config(rescale_timesteps=True)
    return scheduler
