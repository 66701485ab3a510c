"""ADMConsistencyPipeline: one- and few-step sampling of consistency models on the ADM U-Net, with diffusers'
``CMStochasticIterativeScheduler`` (the EDM preconditioning and the consistency model's boundary condition).

Two kinds of model sample through it: OpenAI's consistency models (openai/consistency_models, whose network is
guided-diffusion's), which see the scheduler's own timestep ``250 * log(sigma)``; and students distilled from one of
our pipelines by ``guided-diffusers-distill``, which keep their teacher's timesteps: ``teacher_scheduler`` (the
teacher's process) gives the U-Net the teacher's timestep of each noise level sigma.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import CMStochasticIterativeScheduler, DiffusionPipeline, ImagePipelineOutput

from ..checks import check_whole_number
from ..models import ADMGuidanceUNet2DModel, ADMUNet2DModel, null_class_id
from .labels import ClassLabels, normalize_id2label, resolve_class_labels
from .sampling import (
    CallStateMixin,
    check_callback_inputs,
    check_output_type,
    check_scale,
    image_pipeline_output,
    initial_latents,
)

__all__ = ["ADMConsistencyPipeline", "process_noise_levels", "teacher_timesteps"]


def process_noise_levels(alphas_cumprod: torch.Tensor | np.ndarray) -> torch.Tensor:
    """sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) of a variance-preserving process at t = 0 .. T-1 (float64): the
    noise level of x_t / sqrt(alpha_bar_t), the variance-exploding image of x_t."""
    alphas_cumprod = torch.as_tensor(np.asarray(alphas_cumprod, dtype=np.float64))
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def teacher_timesteps(teacher_scheduler: Any, sigmas: torch.Tensor) -> torch.Tensor:
    """The model-facing timestep of ``teacher_scheduler``'s process at each noise level in ``sigmas``: t interpolated
    linearly in log sigma between the process's integer timesteps (a rescaled network scales them itself).

    Args:
        teacher_scheduler ([`GuidedDDPMScheduler`] or [`GuidedDDIMScheduler`]): the teacher's process.
        sigmas (`torch.Tensor`): noise levels within the process's range.

    Returns:
        `torch.Tensor`: float32 timesteps shaped like ``sigmas``, on its device.
    """
    log_levels = process_noise_levels(teacher_scheduler.alphas_cumprod).log()
    log_sigma = sigmas.detach().double().cpu().log().clamp(float(log_levels[0]), float(log_levels[-1]))
    upper = torch.searchsorted(log_levels, log_sigma.reshape(-1)).clamp(1, len(log_levels) - 1)
    low, high = log_levels[upper - 1], log_levels[upper]
    timesteps = (upper - 1).double() + (log_sigma.reshape(-1) - low) / (high - low)  # the network applies its own scale
    return timesteps.reshape(sigmas.shape).to(device=sigmas.device, dtype=torch.float32)


class ADMConsistencyPipeline(CallStateMixin, DiffusionPipeline):
    r"""
    Consistency-model sampling (Song et al. 2023, Algorithm 1): the model maps a noisy image at any noise level to
    its clean image in one evaluation; more steps add noise back at lower levels and map again.

    Args:
        unet ([`ADMUNet2DModel`] or [`ADMGuidanceUNet2DModel`]): the consistency model's network; with a guidance
            input, a student of a classifier-free guided teacher.
        scheduler ([`~diffusers.CMStochasticIterativeScheduler`]): the noise levels, the input scaling and the
            boundary-condition scalings the model was trained with.
        teacher_scheduler ([`GuidedDDPMScheduler`], *optional*): for a distilled student, its teacher's process: the
            U-Net is given the teacher's timestep of each noise level. None: the scheduler's own timesteps.
        id2label (`dict`, *optional*): class names by id, for ``class_labels`` given as names.
        guidance_scale (`float`, *optional*): the default classifier-free guidance weight of a student with a
            guidance input.
        distillation (`dict`, *optional*): how the student was distilled (teacher, method, guidance), as its card says.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["teacher_scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        unet: ADMUNet2DModel | ADMGuidanceUNet2DModel,
        scheduler: CMStochasticIterativeScheduler,
        teacher_scheduler: Any = None,
        id2label: dict[str, str] | None = None,
        guidance_scale: float | None = None,
        distillation: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(scheduler, CMStochasticIterativeScheduler):
            raise ValueError(f"expected a CMStochasticIterativeScheduler, got {type(scheduler).__name__}")
        self.register_modules(unet=unet, scheduler=scheduler, teacher_scheduler=teacher_scheduler)
        self.register_to_config(id2label=normalize_id2label(id2label), guidance_scale=guidance_scale, distillation=distillation)

    @property
    def has_guidance_input(self) -> bool:
        """Whether the U-Net takes the classifier-free guidance weight (a student of a classifier-free guided teacher)."""
        return isinstance(self.unet, ADMGuidanceUNet2DModel)

    def unet_timesteps(self, sigmas: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the U-Net is given at the noise levels ``sigmas`` (the scheduler's ``timesteps`` there): the
        teacher's timesteps of those levels, or the scheduler's own without a teacher."""
        if self.teacher_scheduler is None:
            return timesteps
        return teacher_timesteps(self.teacher_scheduler, sigmas)

    def _check_inputs(
        self, class_labels: ClassLabels | None, batch_size: int | None, guidance_scale: float | None
    ) -> tuple[torch.Tensor | None, int, float | None]:
        """(U-Net labels, batch, guidance weight), each checked in one line before any work."""
        if batch_size is not None:
            check_whole_number("batch_size", batch_size, 1)
        check_scale("guidance_scale", guidance_scale)
        num_classes = getattr(self.unet.config, "num_classes", None)
        labels = None
        if class_labels is not None:
            if not num_classes:
                raise ValueError("expected no class_labels for an unconditional U-Net, got some")
            labels = resolve_class_labels(class_labels, num_classes, self.config.id2label)
            if batch_size is not None and len(labels) not in (1, batch_size):
                raise ValueError(f"expected {batch_size} class labels for batch_size {batch_size}, got {len(labels)}")
            if batch_size is not None:
                labels = labels.expand(batch_size)
        batch = len(labels) if labels is not None else (batch_size or 1)
        if num_classes and labels is None:
            null = null_class_id(self.unet)
            if null is None:
                raise ValueError(f"expected class_labels for a class-conditional U-Net ({num_classes} classes), got None")
            labels = torch.full((batch,), null, dtype=torch.long)
        if self.has_guidance_input:
            guidance_scale = self.config.get("guidance_scale") if guidance_scale is None else guidance_scale
            if guidance_scale is None:
                raise ValueError("expected a guidance_scale for a student with a guidance input (none in the call or the config)")
        elif guidance_scale is not None:
            raise ValueError(
                f"expected no guidance_scale for a U-Net without a guidance input (its guidance, if any, is folded in), got {guidance_scale}"
            )
        return labels, batch, guidance_scale

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels | None = None,
        batch_size: int | None = None,
        num_inference_steps: int = 1,
        timesteps: list[int] | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images in ``num_inference_steps`` model evaluations.

        Args:
            class_labels (`int`, `str`, list of them, or `torch.Tensor`, *optional*): one label per image (or one for
                all), ids or names from ``id2label``. None for a model with a null class: unguided samples.
            batch_size (`int`, *optional*): how many images (defaults to the number of labels, else 1).
            num_inference_steps (`int`, defaults to 1): model evaluations, on the scheduler's grid of noise levels.
            timesteps (list of `int`, *optional*): indices into the scheduler's training grid, descending, instead of
                ``num_inference_steps`` (diffusers' ``CMStochasticIterativeScheduler.set_timesteps``).
            guidance_scale (`float`, *optional*): the classifier-free guidance weight w, for a student with a guidance
                input (default: the pipeline config's); 1 is the conditional model.
            generator (`torch.Generator`, *optional*): makes sampling reproducible.
            latents (`torch.Tensor`, *optional*): standard normal noise (batch, channels, size, size); the pipeline
                scales it to the first noise level.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"`` (NHWC in [0, 1]), ``"pt"`` (NCHW in
                [0, 1]) or ``"latent"`` (NCHW in about [-1, 1]).
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): ``callback(pipeline, step, timestep, callback_kwargs)``
                after every step, with ``latents`` (the next noisy sample, or the final image after the last step);
                may return ``{"latents": ...}`` to replace it.
            callback_on_step_end_tensor_inputs (list of `str`): which tensors the callback gets.

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the images.
        """
        check_output_type(output_type)
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        if timesteps is None:  # at most the scheduler's grid
            check_whole_number("num_inference_steps", num_inference_steps, 1, self.scheduler.config.num_train_timesteps)
        labels, batch, guidance_scale = self._check_inputs(class_labels, batch_size, guidance_scale)
        self._start_call(guidance_scale)
        device = self._execution_device
        config = self.unet.config
        shape = (batch, config.in_channels, config.sample_size, config.sample_size)

        # 1. Noise levels: the scheduler's own grid (a custom one is indices into it).
        if timesteps is not None:
            self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        else:
            self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        sigmas = self.scheduler.sigmas[: len(timesteps)]
        unet_timesteps = self.unet_timesteps(sigmas, timesteps).to(device)
        self._num_timesteps = len(timesteps)

        # 2. Latents at the first noise level.
        sample = initial_latents(latents, shape, generator, device) * self.scheduler.init_noise_sigma
        unet_kwargs: dict[str, Any] = {}
        if labels is not None:
            unet_kwargs["class_labels"] = labels.to(device)
        if self.has_guidance_input:
            unet_kwargs["guidance_scale"] = torch.full((batch,), float(guidance_scale), device=device)

        # 3. Map to the clean image, add noise at the next level, map again.
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            scaled_sample = self.scheduler.scale_model_input(sample, t)
            model_output = self.unet(scaled_sample.to(self.unet.dtype), unet_timesteps[i], **unet_kwargs).sample.float()
            sample = self.scheduler.step(model_output, t, sample, generator=generator).prev_sample
            if callback_on_step_end is not None:
                callback_kwargs = {name: sample for name in callback_on_step_end_tensor_inputs}
                replaced = callback_on_step_end(self, i, t, callback_kwargs) or {}
                sample = replaced.get("latents", sample)
        return image_pipeline_output(self, sample, output_type, return_dict)
