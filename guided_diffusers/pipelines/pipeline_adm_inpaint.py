"""ADMInpaintPipeline: RePaint inpainting (resampling with time jumps) on any ADM U-Net, with guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..checks import check_whole_number
from ..schedulers import GuidedDDPMScheduler
from .labels import ClassLabels
from .pipeline_classifier_guided import GuidedComponentsMixin
from .sampling import (
    check_callback_inputs,
    check_output_type,
    guided_model_output,
    guided_step,
    image_pipeline_output,
    initial_latents,
    replaced_latents,
    resolve_guidance,
    set_sampling_timesteps,
    step_arguments,
    to_model_input,
)

__all__ = ["ADMInpaintPipeline", "MAX_JUMP_N_SAMPLE", "repaint_schedule", "to_mask"]

#: The most resamplings of a stretch RePaint is asked for: its papers use 10; the schedule's length (and the U-Net
#: evaluations) grow with it, so a mistyped count is refused before the schedule is built.
MAX_JUMP_N_SAMPLE = 1000


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """RePaint's resampling schedule: the process steps the chain visits, from ``num_steps - 1`` down to -1 (x_0).

    The chain goes down one step at a time. At every multiple of ``jump_length`` below ``num_steps - jump_length``
    it jumps back up ``jump_length`` steps (forward noising, one step at a time) and comes down again, doing so
    ``jump_n_sample - 1`` times before it passes on; 1 means no resampling. Consecutive entries differ by one
    (Lugmayr et al. 2022, Section 4.2: jump length j and resampling count r).

    Args:
        num_steps: the sampling process's steps (250 in RePaint's configurations).
        jump_length: j, how far each jump goes back up (RePaint: 10).
        jump_n_sample: r, how many times each stretch is sampled (RePaint: 10).
    """
    num_steps = check_whole_number("num_steps", num_steps, 1)
    jump_length = check_whole_number("jump_length", jump_length, 1)
    jump_n_sample = check_whole_number("jump_n_sample", jump_n_sample, 1, MAX_JUMP_N_SAMPLE)
    jumps_left = {step: jump_n_sample - 1 for step in range(0, num_steps - jump_length, jump_length)}
    visited = [num_steps - 1]
    step = num_steps - 1
    while step >= 0:
        step -= 1
        visited.append(step)
        if jumps_left.get(step, 0) > 0:
            jumps_left[step] -= 1
            for _ in range(jump_length):
                step += 1
                visited.append(step)
    return visited


def to_mask(mask_image: Any, size: tuple[int, int], batch: int) -> torch.Tensor:
    """A mask as diffusers' inpainting pipelines take it, to a (batch or 1, 1, H, W) float tensor of 0 and 1.

    White (1) marks the pixels to fill, black (0) the pixels to keep, as in diffusers' inpainting pipelines; values
    are binarized at 0.5 as diffusers binarizes masks. Accepted: a PIL image (any mode; read as grey levels), a NumPy
    array (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1), uint8 in 0..255, bool or float in [0, 1]; a tensor (H, W),
    (N, H, W) or (N, 1, H, W), bool or float in [0, 1]; or a list of PIL images.

    Args:
        mask_image: the mask.
        size: (height, width) of the image it masks.
        batch: the number of images; the mask holds one for each, or one for all.
    """
    from PIL import Image

    if isinstance(mask_image, (list, tuple)) and mask_image and all(isinstance(m, Image.Image) for m in mask_image):
        mask_image = np.stack([np.asarray(m.convert("L")) for m in mask_image])
    elif isinstance(mask_image, Image.Image):
        mask_image = np.asarray(mask_image.convert("L"))
    if isinstance(mask_image, np.ndarray):
        array = mask_image
        if array.ndim in (3, 4) and array.shape[-1] in (3, 4) and tuple(array.shape[-3:-1]) == tuple(size):
            raise ValueError(
                f"expected a one-channel mask_image array, got shape {array.shape} (colour channels last); pass one "
                "channel (mask[..., 0]) or a PIL image"
            )
        if array.ndim == 4 and array.shape[-1] == 1 or array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.dtype == np.uint8:
            array = array.astype(np.float32) / 255
        elif array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"expected mask_image arrays as uint8, bool or float in [0, 1], got {array.dtype}")
        mask_image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.is_tensor(mask_image):
        raise ValueError(f"expected mask_image as a PIL image, an array or a tensor, got {type(mask_image).__name__}")
    mask = mask_image.float()
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected mask_image of shape (H, W), (N, H, W) or (N, 1, H, W), got {tuple(mask_image.shape)}")
    if mask.numel() and not (torch.isfinite(mask).all() and mask.min() >= 0 and mask.max() <= 1):
        raise ValueError(f"expected mask_image values in [0, 1] (255 for uint8), got [{mask.min().item():g}, {mask.max().item():g}]")
    if tuple(mask.shape[-2:]) != tuple(size):
        raise ValueError(f"expected mask_image of size {size[0]}x{size[1]} (the image's), got {mask.shape[-2]}x{mask.shape[-1]}")
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"expected 1 or {batch} masks for {batch} images, got {mask.shape[0]}")
    return (mask >= 0.5).float()


class ADMInpaintPipeline(GuidedComponentsMixin, DiffusionPipeline):
    r"""
    Inpainting with RePaint (Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic Models",
    CVPR 2022) on any ADM / IDDPM / DDPM U-Net, learned-range variances included, with classifier, classifier-free or
    CLIP guidance.

    Each reverse step samples the unknown region from the model and takes the known region from the forward process
    q(x_t | x_0) of the given image; RePaint's resampling then noises the merged sample back up ``jump_length`` steps
    and denoises it again, ``jump_n_sample`` times per stretch, so the two regions agree. The known pixels of the
    output are the input's, exactly.

    The components are [`ClassifierGuidedPipeline`]'s ([`GuidedComponentsMixin`]; ``ADMInpaintPipeline.from_pipe(pipe)``
    reuses a loaded one);
    the scheduler must be a [`GuidedDDPMScheduler`] (RePaint is ancestral sampling):
    ``pipe.scheduler = GuidedDDPMScheduler.from_config(pipe.scheduler.config)`` swaps one in.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: Any,
        mask_image: Any,
        class_labels: ClassLabels | None = None,
        num_inference_steps: int | None = None,
        timestep_respacing: str | None = None,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        classifier_scale: float | None = None,
        guidance_scale: float | None = None,
        prompt: str | list[str] | None = None,
        clip_guidance_scale: float = 100.0,
        guidance_interval: tuple[float, float] | None = None,
        clip_denoised: bool | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Fill the masked region of images.

        Args:
            image: the images, as diffusers' image inputs (PIL, NHWC arrays uint8 or float in [0, 1], NCHW tensors in
                [-1, 1], or a list of one kind), at the model's size.
            mask_image: white (1) where to fill, black (0) where to keep, as diffusers' inpainting pipelines; see
                [`to_mask`] for the accepted forms. One mask for all images or one per image. (RePaint's and diffusers'
                ``RePaintPipeline``'s masks are the other way round: there 1 marks the pixels to keep.)
            class_labels (*optional*): ids or names; for class-conditional U-Nets and guidance.
            num_inference_steps (`int`, *optional*): the sampling steps the schedule runs over (RePaint: 250); or
                ``timestep_respacing``. Neither: the scheduler config's respacing.
            timestep_respacing (`str`, *optional*): the originals' respacing spec, e.g. ``"250"``.
            jump_length (`int`, defaults to 10): RePaint's jump length j: how many steps each resampling jump goes
                back up.
            jump_n_sample (`int`, defaults to 10): RePaint's resampling count r: how many times each stretch of
                ``jump_length`` steps is denoised; 1 turns resampling off. The U-Net runs about
                ``num_inference_steps * jump_n_sample`` times.
            classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval: guidance, as in
                [`ClassifierGuidedPipeline`] (RePaint's ImageNet configuration uses classifier_scale 1).
            clip_denoised (`bool`, *optional*): clamp each x_0 prediction to [-1, 1]; None keeps the scheduler's.
            generator (`torch.Generator`, *optional*): one, or one per image; makes the result reproducible.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`].
            callback_on_step_end (`Callable`, *optional*): called after every reverse step with ``latents`` (the
                merged x_{t-1}) and/or ``pred_original_sample``; may return ``{"latents": ...}`` to replace it.
            callback_on_step_end_tensor_inputs (list of `str`): which tensors the callback gets.

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the images, known pixels as given.
        """
        check_output_type(output_type)
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        self._start_call(guidance_scale)
        scheduler = self.scheduler
        if not isinstance(scheduler, GuidedDDPMScheduler):
            raise ValueError(
                f"expected a GuidedDDPMScheduler for RePaint (ancestral steps), got {type(scheduler).__name__}; "
                "set pipe.scheduler = GuidedDDPMScheduler.from_config(pipe.scheduler.config)"
            )
        config = self.unet.config
        source = to_model_input(image, config.sample_size, channels=config.in_channels)
        keep = 1 - to_mask(mask_image, tuple(source.shape[-2:]), source.shape[0])
        guidance = resolve_guidance(
            self, class_labels, source.shape[0], classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval
        )
        step_kwargs = step_arguments(scheduler, 0.0, clip_denoised, generator)
        device = self._execution_device
        timesteps = set_sampling_timesteps(scheduler, num_inference_steps, timestep_respacing, device)
        visited = repaint_schedule(len(timesteps), jump_length, jump_n_sample)
        source, keep = source.to(device), keep.to(device)
        process = scheduler.sampling_diffusion  # the respaced process: its step s is timesteps[-1 - s]
        shape = (guidance.batch, config.in_channels, config.sample_size, config.sample_size)
        latents = initial_latents(None, shape, generator, device)

        # RePaint's walk over the process steps: down one step (a reverse step, then the known region merged in), or
        # up one step (forward noising of the merged sample); every step down counts as a step of the call.
        self._num_timesteps = sum(there < here for here, there in zip(visited, visited[1:]))
        want_x0 = callback_on_step_end is not None and "pred_original_sample" in callback_on_step_end_tensor_inputs
        i = 0
        with self.progress_bar(total=self._num_timesteps) as progress_bar:
            for here, there in zip(visited, visited[1:]):
                if self.interrupt:
                    break
                if there > here:  # resampling: noise the merged sample one step back up
                    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=torch.float32)
                    latents = process.q_step(latents, there, noise)
                    continue
                t = timesteps[len(timesteps) - 1 - here]
                model_output, gradient = guided_model_output(self, latents, t, guidance)
                latents, pred_original_sample = guided_step(
                    scheduler, model_output, t, latents, latents, gradient, step_kwargs, None, want_x0
                )
                if there >= 0:  # the known region at the level just reached, from the forward process
                    noise = randn_tensor(source.shape, generator=generator, device=device, dtype=torch.float32)
                    known = scheduler.add_noise(source, noise, timesteps[len(timesteps) - 1 - there])
                else:
                    known = source
                latents = keep * known + (1 - keep) * latents
                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for name in callback_on_step_end_tensor_inputs:
                        callback_kwargs[name] = locals()[name]
                    latents = replaced_latents(callback_on_step_end(self, i, t, callback_kwargs), latents)
                i += 1
                progress_bar.update()

        latents = keep * source + (1 - keep) * latents  # the known pixels, exactly (also when a run was interrupted)
        return image_pipeline_output(self, latents, output_type, return_dict)
