"""ADMImg2ImgPipeline: SDEdit image-to-image: noise an image part of the way, then denoise it with any guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .labels import ClassLabels
from .pipeline_classifier_guided import GuidedComponentsMixin
from .sampling import (
    check_callback_inputs,
    check_output_type,
    check_scale,
    guided_model_output,
    guided_step,
    image_pipeline_output,
    replaced_latents,
    resolve_guidance,
    set_sampling_timesteps,
    step_arguments,
    to_model_input,
)

__all__ = ["ADMImg2ImgPipeline", "check_strength"]


def check_strength(strength: Any) -> float:
    """SDEdit's strength: a number in (0, 1], or a one-line error."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)):
        raise ValueError(f"expected strength as a number in (0, 1], got {type(strength).__name__} {strength!r}")
    if not 0 < strength <= 1:
        raise ValueError(f"expected strength in (0, 1], got {strength}")
    return float(strength)


class ADMImg2ImgPipeline(GuidedComponentsMixin, DiffusionPipeline):
    r"""
    Image-to-image with SDEdit (Meng et al., "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
    Equations", ICLR 2022): the image is diffused to an intermediate noise level with q(x_t | x_0), then denoised by
    the pipeline's scheduler (ours or a stock diffusers one) with any of [`ClassifierGuidedPipeline`]'s guidance.
    Guiding toward another class than the image's edits it toward that class; ``strength`` sets how far from the
    input the result may go. The deterministic edit through DDIM inversion is [`DDIMInversionPipeline`].

    The components are [`ClassifierGuidedPipeline`]'s ([`GuidedComponentsMixin`]); ``ADMImg2ImgPipeline.from_pipe(pipe)``
    reuses a loaded one.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        strength: float = 0.8,
        class_labels: ClassLabels | None = None,
        num_inference_steps: int | None = None,
        timestep_respacing: str | None = None,
        classifier_scale: float | None = None,
        guidance_scale: float | None = None,
        prompt: str | list[str] | None = None,
        clip_guidance_scale: float = 100.0,
        guidance_interval: tuple[float, float] | None = None,
        eta: float = 0.0,
        clip_denoised: bool | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Edit images by noising them to ``strength`` and denoising them.

        Args:
            image: the images, as diffusers' image inputs (PIL, NHWC arrays uint8 or float in [0, 1], NCHW tensors in
                [-1, 1], or a list of one kind), at the model's size.
            strength (`float`, defaults to 0.8): in (0, 1]: the fraction of the sampling steps that is run, from the
                noise level that many steps up the grid, as diffusers' img2img pipelines; 1 starts from (nearly) pure
                noise, small values stay close to the input.
            class_labels (*optional*): ids or names: the class to denoise toward (another class than the image's
                edits it), for class-conditional U-Nets and guidance.
            num_inference_steps (`int`, *optional*): the full grid's steps, of which ``strength`` are run; or
                ``timestep_respacing`` (our schedulers). Neither: the scheduler config's respacing (stock: 50).
            timestep_respacing (`str`, *optional*): the originals' respacing spec.
            classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval, eta, clip_denoised:
                as in [`ClassifierGuidedPipeline`].
            generator (`torch.Generator`, *optional*): one, or one per image; draws the noise.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`].
            callback_on_step_end, callback_on_step_end_tensor_inputs: as in [`ClassifierGuidedPipeline`].

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the edited images.
        """
        check_output_type(output_type)
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        check_scale("eta", eta, minimum=0)
        self._start_call(guidance_scale)
        strength = check_strength(strength)
        source = to_model_input(image, self.unet.config.sample_size, channels=self.unet.config.in_channels)
        guidance = resolve_guidance(
            self, class_labels, source.shape[0], classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval
        )
        step_kwargs = step_arguments(self.scheduler, eta, clip_denoised, generator)
        device = self._execution_device
        scheduler = self.scheduler
        timesteps = set_sampling_timesteps(scheduler, num_inference_steps, timestep_respacing, device)
        # diffusers' img2img: run the last int(N * strength) of the N steps (a multistep scheduler's order included).
        steps = int(getattr(scheduler, "num_inference_steps", None) or len(timesteps))
        run = min(int(steps * strength), steps)
        if run < 1:
            raise ValueError(f"expected strength >= 1/{steps} to run at least one of the {steps} steps, got {strength}")
        start = (steps - run) * getattr(scheduler, "order", 1)
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        source = source.to(device)
        noise = randn_tensor(source.shape, generator=generator, device=device, dtype=torch.float32)
        latents = scheduler.add_noise(source, noise, timesteps[:1].repeat(guidance.batch))  # x_t at the scheduler's scale

        self._num_timesteps = len(timesteps)
        want_x0 = callback_on_step_end is not None and "pred_original_sample" in callback_on_step_end_tensor_inputs
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = scheduler.scale_model_input(latents, t)
            model_output, gradient = guided_model_output(self, model_input, t, guidance)
            latents, pred_original_sample = guided_step(
                scheduler, model_output, t, latents, model_input, gradient, step_kwargs, None, want_x0
            )
            if callback_on_step_end is not None:
                callback_kwargs = {}
                for name in callback_on_step_end_tensor_inputs:
                    callback_kwargs[name] = locals()[name]
                latents = replaced_latents(callback_on_step_end(self, i, t, callback_kwargs), latents)

        return image_pipeline_output(self, latents, output_type, return_dict)
