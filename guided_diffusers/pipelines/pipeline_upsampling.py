"""ADMUpsamplingPipeline: ADM-U super-resolution, as the original super_res_sample does it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

from .hub import PipelineHubMixin
from .labels import ClassLabels, normalize_id2label, resolve_class_labels
from .sampling import (
    CallStateMixin,
    adopt_timestep_rescaling,
    check_callback_inputs,
    check_output_type,
    check_scale,
    check_step_noise,
    guided_step,
    image_pipeline_output,
    initial_latents,
    replaced_latents,
    set_sampling_timesteps,
    step_arguments,
    to_model_input,
)


class ADMUpsamplingPipeline(PipelineHubMixin, CallStateMixin, DiffusionPipeline):
    r"""
    Low-resolution images (plus class labels for class-conditional upsamplers) to high-resolution samples with an
    [`ADMSuperResUNet2DModel`] (ADM-U). Chains after [`ClassifierGuidedPipeline`] for the 64->256 and 128->512 cascades.

    Args:
        unet ([`ADMSuperResUNet2DModel`]): the super-resolution U-Net.
        scheduler: [`GuidedDDPMScheduler`], [`GuidedDDIMScheduler`] or a stock diffusers scheduler.
        low_res_size (`int`, *optional*): the low-resolution size the model was trained on (the originals'
            ``small_size``); inputs of another size are refused.
        id2label (`dict`, *optional*): class names by id, for ``class_labels`` given as names.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "pred_original_sample"]

    def __init__(self, unet: Any, scheduler: Any, low_res_size: int | None = None, id2label: dict[str, str] | None = None):
        super().__init__()
        adopt_timestep_rescaling(scheduler, unet)
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(low_res_size=low_res_size, id2label=normalize_id2label(id2label))

    @torch.no_grad()
    def __call__(
        self,
        low_res_images: Any,
        class_labels: ClassLabels | None = None,
        num_inference_steps: int | None = None,
        timestep_respacing: str | None = None,
        eta: float = 0.0,
        clip_denoised: bool | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Upsample images.

        Args:
            low_res_images: PIL images, NHWC arrays (uint8, or float in [0, 1]), tensors in [-1, 1] (NCHW), or lists
                of any of these, at ``low_res_size``.
            class_labels (*optional*): one label per image (or one for all), for class-conditional upsamplers.
            num_inference_steps (`int`, *optional*): N steps laid out as diffusers does; or use ``timestep_respacing``.
            timestep_respacing (`str`, *optional*): the originals' respacing spec (``"250"``, ``"ddim25"``).
            eta (`float`, defaults to 0): DDIM's noise scale (DDIM schedulers only).
            clip_denoised (`bool`, *optional*): clamp the x_0 prediction to [-1, 1]; None keeps the scheduler's setting.
            generator (`torch.Generator`, *optional*): makes sampling reproducible.
            latents (`torch.Tensor`, *optional*): x_T at the high resolution.
            step_noise (*optional*): the noise of every step instead of drawing it.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`].
            callback_on_step_end (`Callable`, *optional*): as in [`ClassifierGuidedPipeline`].
            callback_on_step_end_tensor_inputs (list of `str`): which of ``latents`` and ``pred_original_sample``
                the callback gets.
        """
        check_output_type(output_type)
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        check_scale("eta", eta, minimum=0)
        self._start_call()
        config = self.unet.config
        low_res = to_model_input(low_res_images, self.config.low_res_size, "low_res_images")
        size = config.sample_size
        if size % low_res.shape[-1] or low_res.shape[-1] != low_res.shape[-2]:
            raise ValueError(f"expected square low_res_images whose size divides {size}, got {low_res.shape[-2]}x{low_res.shape[-1]}")
        if low_res.shape[1] != config.in_channels:
            raise ValueError(f"expected low_res_images with {config.in_channels} channels, got {low_res.shape[1]}")
        batch = low_res.shape[0]
        labels = None
        if config.num_classes:
            if class_labels is None:
                raise ValueError(f"expected class_labels for a class-conditional upsampler ({config.num_classes} classes), got None")
            labels = resolve_class_labels(class_labels, config.num_classes, self.config.id2label)
            if len(labels) == 1:
                labels = labels.expand(batch)
            if len(labels) != batch:
                raise ValueError(f"expected {batch} class labels for {batch} images, got {len(labels)}")
        elif class_labels is not None:
            raise ValueError("expected no class_labels for an unconditional upsampler, got some")

        step_kwargs = step_arguments(self.scheduler, eta, clip_denoised, generator, step_noise)
        device = self._execution_device
        timesteps = set_sampling_timesteps(self.scheduler, num_inference_steps, timestep_respacing, device)
        shape = (batch, config.in_channels, size, size)
        check_step_noise(step_noise, len(timesteps), shape)
        latents = initial_latents(latents, shape, generator, device) * self.scheduler.init_noise_sigma
        low_res = low_res.to(device=device, dtype=self.unet.dtype)
        kwargs = {"class_labels": labels.to(device)} if labels is not None else {}

        self._num_timesteps = len(timesteps)
        want_x0 = callback_on_step_end is not None and "pred_original_sample" in callback_on_step_end_tensor_inputs
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self.unet(model_input.to(self.unet.dtype), t, low_res=low_res, **kwargs).sample.float()
            latents, pred_original_sample = guided_step(
                self.scheduler, model_output, t, latents, model_input, None, step_kwargs,
                None if step_noise is None else step_noise[i], want_x0,
            )
            if callback_on_step_end is not None:
                callback_kwargs = {}
                for name in callback_on_step_end_tensor_inputs:
                    callback_kwargs[name] = locals()[name]
                latents = replaced_latents(callback_on_step_end(self, i, t, callback_kwargs), latents)

        return image_pipeline_output(self, latents, output_type, return_dict)
