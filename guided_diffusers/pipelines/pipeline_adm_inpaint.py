"""ADMInpaintPipeline: RePaint inpainting (resampling with time jumps) on any ADM U-Net, with guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..schedulers import GuidedDDPMScheduler
from .labels import ClassLabels
from .pipeline_classifier_guided import ClassifierGuidedPipeline
from .sampling import (
    check_output_type,
    denoising_loop,
    initial_latents,
    image_pipeline_output,
    set_sampling_timesteps,
    to_model_input,
)

__all__ = ["ADMInpaintPipeline", "repaint_schedule", "to_mask"]


def _whole_number(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"expected {name} as a whole number >= {minimum}, got {value!r}")
    return int(value)


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
    num_steps = _whole_number("num_steps", num_steps, 1)
    jump_length = _whole_number("jump_length", jump_length, 1)
    jump_n_sample = _whole_number("jump_n_sample", jump_n_sample, 1)
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


class ADMInpaintPipeline(ClassifierGuidedPipeline):
    r"""
    Inpainting with RePaint (Lugmayr et al., "RePaint: Inpainting using Denoising Diffusion Probabilistic Models",
    CVPR 2022) on any ADM / IDDPM / DDPM U-Net, learned-range variances included, with classifier, classifier-free or
    CLIP guidance.

    Each reverse step samples the unknown region from the model and takes the known region from the forward process
    q(x_t | x_0) of the given image; RePaint's resampling then noises the merged sample back up ``jump_length`` steps
    and denoises it again, ``jump_n_sample`` times per stretch, so the two regions agree. The known pixels of the
    output are the input's, exactly.

    The components are [`ClassifierGuidedPipeline`]'s (``ADMInpaintPipeline.from_pipe(pipe)`` reuses a loaded one);
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
        self._start_call(guidance_scale)
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        if not isinstance(self.scheduler, GuidedDDPMScheduler):
            raise ValueError(
                f"expected a GuidedDDPMScheduler for RePaint (ancestral steps), got {type(self.scheduler).__name__}; "
                "set pipe.scheduler = GuidedDDPMScheduler.from_config(pipe.scheduler.config)"
            )
        config = self.unet.config
        source = to_model_input(image, config.sample_size, channels=config.in_channels)
        batch = source.shape[0]
        keep = 1 - to_mask(mask_image, tuple(source.shape[-2:]), batch)
        labels, batch, classifier_scale, interval = self._check_guidance(
            class_labels, batch, classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval
        )
        device = self._execution_device
        timesteps = set_sampling_timesteps(self.scheduler, num_inference_steps, timestep_respacing, device)
        visited = repaint_schedule(len(timesteps), jump_length, jump_n_sample)
        source, keep = source.to(device), keep.to(device)
        process = self.scheduler.sampling_diffusion  # the respaced process: step s is timesteps[-1 - s]

        # The reverse steps in order (the step each starts from), and where the resampling jump after each ends.
        starts: list[int] = []
        jump_to: list[int | None] = []
        for here, there in zip(visited, visited[1:]):
            if there < here:
                starts.append(here)
                jump_to.append(None)
            else:
                jump_to[-1] = there
        reverse_timesteps = timesteps[[len(timesteps) - 1 - s for s in starts]]

        def known_at(step: int) -> torch.Tensor:
            """The known region's sample at process step ``step`` (x_0 itself below step 0)."""
            if step < 0:
                return source
            noise = randn_tensor(source.shape, generator=generator, device=device, dtype=torch.float32)
            return self.scheduler.add_noise(source, noise, timesteps[len(timesteps) - 1 - step])

        def merge_and_resample(pipe: Any, i: int, t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            step = starts[i] - 1
            x = keep * known_at(step) + (1 - keep) * tensors["latents"]
            if callback_on_step_end is not None:
                shown = {"latents": x, "pred_original_sample": tensors["pred_original_sample"]}
                result = callback_on_step_end(pipe, i, t, {k: shown[k] for k in callback_on_step_end_tensor_inputs}) or {}
                x = result.get("latents", x)
            if jump_to[i] is not None:
                for up in range(step + 1, jump_to[i] + 1):
                    noise = randn_tensor(x.shape, generator=generator, device=device, dtype=torch.float32)
                    x = process.q_step(x, up, noise)
            return {"latents": x}

        shape = (batch, config.in_channels, config.sample_size, config.sample_size)
        x = initial_latents(None, shape, generator, device)
        predict = self._guided_predictor(labels, batch, classifier_scale, guidance_scale, prompt, clip_guidance_scale, interval)
        x = denoising_loop(
            self, x, reverse_timesteps, predict, clip_denoised=clip_denoised, generator=generator,
            callback_on_step_end=merge_and_resample, callback_tensor_inputs=("latents", "pred_original_sample"),
        )
        x = keep * source + (1 - keep) * x  # the known pixels, exactly (also when a callback stopped the run early)
        return image_pipeline_output(self, x, output_type, return_dict)
