"""DDIMInversionPipeline: an image to its deterministic DDIM latent and back, or to an edit of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from ..schedulers import GuidedDDIMScheduler
from .hub import PipelineHubMixin
from .labels import ClassLabels, normalize_id2label, resolve_class_labels
from .sampling import (
    CallStateMixin,
    adopt_timestep_rescaling,
    check_output_type,
    check_scale,
    classifier_gradient,
    guided_step,
    postprocess_images,
    set_sampling_timesteps,
    step_arguments,
    to_model_input,
)


@dataclass
class DDIMInversionPipelineOutput(BaseOutput):
    """
    Args:
        images: the images decoded from the inverted latents (a reconstruction, or an edit under other labels).
        latents (`torch.Tensor`): x_T, the deterministic DDIM latents of the input images.
        reconstruction_error (`torch.Tensor`): per image, the mean absolute difference in [-1, 1] between the input
            and its eta-0 reconstruction under the original labels.
    """

    images: Any
    latents: torch.Tensor
    reconstruction_error: torch.Tensor


class DDIMInversionPipeline(PipelineHubMixin, CallStateMixin, DiffusionPipeline):
    r"""
    DDIM inversion (the reverse ODE of guided-diffusion's ``ddim_reverse_sample_loop``): images to their latents x_T,
    and eta-0 DDIM sampling back, optionally under other class labels or classifier guidance, which edits the image.

    Args:
        unet ([`ADMUNet2DModel`]): the denoising network.
        scheduler ([`GuidedDDIMScheduler`]): inversion needs its exact reverse step.
        classifier ([`ADMClassifier`], *optional*): for classifier-guided edits.
        id2label (`dict`, *optional*): class names by id.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier"]

    def __init__(self, unet: Any, scheduler: GuidedDDIMScheduler, classifier: Any = None, id2label: dict[str, str] | None = None):
        super().__init__()
        if not isinstance(scheduler, GuidedDDIMScheduler):
            # diffusers' DDIMScheduler / DDIMInverseScheduler step differently at the ends of the chain (set_alpha_to_one,
            # their own clipping): inversion here is guided-diffusion's exact reverse ODE, so ours is required.
            raise ValueError(
                f"expected a GuidedDDIMScheduler for DDIM inversion, got {type(scheduler).__name__}; pass "
                "scheduler=GuidedDDIMScheduler.from_config(scheduler.config)"
            )
        adopt_timestep_rescaling(scheduler, unet, classifier)
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier)
        self.register_to_config(id2label=normalize_id2label(id2label))

    def _labels(self, class_labels: ClassLabels | None, batch: int, what: str) -> torch.Tensor | None:
        num_classes = getattr(self.unet.config, "num_classes", None) or (self.classifier.config.num_classes if self.classifier is not None else None)
        if class_labels is None:
            return None
        if not num_classes:
            raise ValueError(f"expected no {what} for an unconditional U-Net without a classifier, got some")
        labels = resolve_class_labels(class_labels, num_classes, self.config.id2label)
        if len(labels) == 1:
            labels = labels.expand(batch)
        if len(labels) != batch:
            raise ValueError(f"expected {batch} {what} for {batch} images, got {len(labels)}")
        return labels.to(self._execution_device)

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        kwargs = {"class_labels": labels} if getattr(self.unet.config, "num_classes", None) else {}
        if kwargs and labels is None:
            raise ValueError(f"expected class_labels for a class-conditional U-Net ({self.unet.config.num_classes} classes), got None")
        return self.unet(x.to(self.unet.dtype), t, **kwargs).sample.float()

    @torch.no_grad()
    def invert(self, images: Any, class_labels: ClassLabels | None = None, clip_denoised: bool = True) -> torch.Tensor:
        """x_0 -> x_T by the deterministic reverse ODE over the scheduler's current timesteps (ascending).

        Args:
            images: PIL images, uint8 NHWC arrays or a tensor in [-1, 1] at the model's size.
            class_labels (*optional*): labels of a class-conditional model.
            clip_denoised (`bool`, defaults to True): clamp each x_0 prediction to [-1, 1], as the original does.
        """
        x = to_model_input(images, self.unet.config.sample_size, channels=self.unet.config.in_channels).to(self._execution_device)
        labels = self._labels(class_labels, x.shape[0], "class_labels")
        for t in self.progress_bar(self.scheduler.timesteps.flip(0)):
            x = self.scheduler.inverse_step(self._model_output(x, t, labels), t, x, clip_sample=clip_denoised).next_sample
        return x

    @torch.no_grad()
    def decode(
        self,
        latents: torch.Tensor,
        class_labels: ClassLabels | None = None,
        classifier_scale: float = 0.0,
        clip_denoised: bool = True,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """x_T -> x_0 by DDIM (eta 0: deterministic), optionally with classifier guidance toward ``class_labels``.

        Args:
            latents (`torch.Tensor`): x_T, e.g. from [`invert`].
            class_labels (*optional*): labels to decode under.
            classifier_scale (`float`, defaults to 0): classifier guidance toward ``class_labels``.
            clip_denoised (`bool`, defaults to True): clamp each x_0 prediction to [-1, 1].
            eta (`float`, defaults to 0): DDIM's noise scale; above 0 the decode draws noise from ``generator``.
            generator (`torch.Generator`, *optional*): the noise of an eta > 0 decode.
        """
        labels = self._labels(class_labels, latents.shape[0], "class_labels")
        if classifier_scale and (self.classifier is None or labels is None):
            raise ValueError("expected a classifier and class_labels for classifier_scale, got " + ("no classifier" if self.classifier is None else "no labels"))

        step_kwargs = step_arguments(self.scheduler, eta, clip_denoised, generator)
        latents = latents.float()
        for t in self.progress_bar(self.scheduler.timesteps):
            gradient = classifier_gradient(self.classifier, latents, t, labels, classifier_scale) if classifier_scale else None
            latents, _ = guided_step(self.scheduler, self._model_output(latents, t, labels), t, latents, latents, gradient, step_kwargs)
        return latents

    @torch.no_grad()
    def __call__(
        self,
        images: Any,
        class_labels: ClassLabels | None = None,
        edit_class_labels: ClassLabels | None = None,
        classifier_scale: float = 0.0,
        num_inference_steps: int | None = None,
        timestep_respacing: str | None = None,
        clip_denoised: bool = True,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> DDIMInversionPipelineOutput | tuple:
        r"""
        Invert images to their DDIM latents, report the reconstruction error, and decode them again (under
        ``edit_class_labels`` and/or classifier guidance when given: an edit).

        Args:
            images: PIL images, NHWC arrays (uint8, or float in [0, 1]), tensors in [-1, 1] (NCHW), or lists of any of
                these, at the model's size.
            class_labels (*optional*): the images' labels, for class-conditional models.
            edit_class_labels (*optional*): labels to decode under instead (an edit); defaults to ``class_labels``.
            classifier_scale (`float`, defaults to 0): classifier guidance toward the decoding labels.
            num_inference_steps (`int`, *optional*): evenly spaced steps; or ``timestep_respacing`` (e.g. ``"ddim50"``).
            timestep_respacing (`str`, *optional*): the originals' respacing spec.
            clip_denoised (`bool`, defaults to True): clamp each x_0 prediction to [-1, 1].
            eta (`float`, defaults to 0): DDIM's noise scale for the edit's decode (the reconstruction is always eta
                0); above 0 the edit is stochastic, drawn from ``generator``.
            generator (`torch.Generator`, *optional*): makes an eta > 0 edit reproducible.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            return_dict (`bool`, defaults to True): return a [`DDIMInversionPipelineOutput`].
        """
        check_output_type(output_type)
        check_scale("classifier_scale", classifier_scale)
        check_scale("eta", eta, minimum=0)
        self._start_call()
        set_sampling_timesteps(self.scheduler, num_inference_steps, timestep_respacing, self._execution_device)
        source = to_model_input(images, self.unet.config.sample_size, channels=self.unet.config.in_channels).to(self._execution_device)
        latents = self.invert(source, class_labels, clip_denoised)
        reconstruction = self.decode(latents, class_labels, 0.0, clip_denoised)
        error = (reconstruction - source).abs().mean(dim=(1, 2, 3)).cpu()
        edited = edit_class_labels is not None or classifier_scale or eta
        decode_labels = edit_class_labels if edit_class_labels is not None else class_labels
        result = (
            self.decode(latents, decode_labels, classifier_scale, clip_denoised, eta, generator) if edited else reconstruction
        )
        images_out = postprocess_images(result, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images_out, latents, error
        return DDIMInversionPipelineOutput(images=images_out, latents=latents, reconstruction_error=error)
