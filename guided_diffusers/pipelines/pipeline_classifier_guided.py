"""ClassifierGuidedPipeline: ADM sampling with classifier, classifier-free and CLIP guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel

from ..models import ADMClassifier, ADMUNet2DModel
from .hub import PipelineHubMixin
from .labels import ClassLabels, ClassNames, class_names, normalize_id2label
from .sampling import (
    CallStateMixin,
    adopt_timestep_rescaling,
    check_callback_inputs,
    check_output_type,
    check_scale,
    check_step_noise,
    guided_model_output,
    guided_step,
    image_pipeline_output,
    initial_latents,
    null_class_id,
    replaced_latents,
    resolve_guidance,
    set_sampling_timesteps,
    step_arguments,
)


class GuidedComponentsMixin(PipelineHubMixin, CallStateMixin):
    """The components of the guided ADM pipelines (sampling, inpainting, img2img) and what they say about classes.

    Args:
        unet ([`ADMUNet2DModel`] or [`~diffusers.UNet2DModel`]): the denoising network; twice the image channels for
            learned-sigma models.
        scheduler: [`GuidedDDPMScheduler`], [`GuidedDDIMScheduler`] or a stock diffusers scheduler.
        classifier ([`ADMClassifier`], *optional*): the noisy classifier for classifier guidance.
        clip_model ([`~transformers.CLIPModel`], *optional*): for CLIP guidance toward a text prompt.
        tokenizer ([`~transformers.CLIPTokenizer`], *optional*): the CLIP model's tokenizer.
        id2label (`dict`, *optional*): class names by id, for ``class_labels`` given as names (the ImageNet table is
            used for 1000-class models when absent).
        classifier_scale (`float`, *optional*): the recommended classifier scale (converted folders carry the
            original README's); used when a call gives class labels but no ``classifier_scale``.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["classifier", "clip_model", "tokenizer"]
    _callback_tensor_inputs = ["latents", "pred_original_sample"]

    # Concrete component types (not Any): diffusers' from_pipe hands a model over only when its type is annotated.
    def __init__(
        self,
        unet: ADMUNet2DModel | UNet2DModel,
        scheduler: Any,
        classifier: ADMClassifier | None = None,
        clip_model: Any = None,
        tokenizer: Any = None,
        id2label: dict[str, str] | None = None,
        classifier_scale: float | None = None,
    ):
        super().__init__()
        adopt_timestep_rescaling(scheduler, unet, classifier)
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier, clip_model=clip_model, tokenizer=tokenizer)
        self.register_to_config(id2label=normalize_id2label(id2label), classifier_scale=classifier_scale)

    @property
    def num_classes(self) -> int | None:
        """Classes the labels refer to: the U-Net's, else the classifier's."""
        num_classes = getattr(self.unet.config, "num_classes", None)
        if not num_classes and self.classifier is not None:
            num_classes = self.classifier.config.num_classes
        return num_classes or None

    @property
    def labels(self) -> ClassNames:
        """Class name -> id, for every comma-separated synonym of every label, case-insensitive (as ``class_labels``)."""
        return ClassNames(class_names(self.config.id2label, self.num_classes) or {})


class ClassifierGuidedPipeline(GuidedComponentsMixin, DiffusionPipeline):
    r"""
    Sampling for ADM / IDDPM / DDPM models with classifier guidance (ADM-G), classifier-free guidance and CLIP guidance.

    The components are [`GuidedComponentsMixin`]'s: ``unet``, ``scheduler`` (ours or a stock diffusers one, which
    gets a learned-sigma model's variance channels only if its step reads them), and optionally ``classifier``,
    ``clip_model``, ``tokenizer``, ``id2label`` and the recommended ``classifier_scale``.
    """

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels | None = None,
        batch_size: int | None = None,
        num_images_per_prompt: int = 1,
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
        latents: torch.Tensor | None = None,
        step_noise: torch.Tensor | Sequence[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images.

        Args:
            class_labels (`int`, `str`, list of them, or `torch.Tensor`, *optional*): one label per image (or one for
                all): ids in [0, num_classes) or class names from ``id2label``. Required for class-conditional models
                without a null class and for classifier guidance.
            batch_size (`int`, *optional*): how many images, for unconditional sampling (defaults to the number of
                labels, else 1).
            num_images_per_prompt (`int`, defaults to 1): images per class label (or, unconditional, per batch
                entry), each label's next to each other, as diffusers' ``num_images_per_prompt``.
            num_inference_steps (`int`, *optional*): N steps laid out as diffusers does (the scheduler's
                ``timestep_spacing``); or use ``timestep_respacing``.
            timestep_respacing (`str`, *optional*): the originals' respacing spec (``"250"``, ``"ddim25"``,
                ``"10,15,20"``); neither argument: the scheduler config's respacing (stock schedulers: 50 steps).
            classifier_scale (`float`, *optional*): scale of the classifier's gradient of log p(y | x_t) (ADM-G's
                ``--classifier_scale``); applied to the mean under DDPM, to epsilon under DDIM and stock schedulers.
                Defaults to the pipeline config's ``classifier_scale`` when class labels are given and there is a
                classifier, else 0.
            guidance_scale (`float`, *optional*): classifier-free guidance weight w: eps_uncond + w * (eps_cond -
                eps_uncond), for models trained with label dropout (null label id = num_classes); 1 is plain
                conditional sampling. Combines with ``classifier_scale``.
            prompt (`str` or list, *optional*): CLIP guidance toward this text, through the predicted x_0.
            clip_guidance_scale (`float`, defaults to 100): scale of the CLIP similarity gradient.
            guidance_interval (`tuple[float, float]`, *optional*): guide only at noise levels sigma =
                sqrt((1 - alpha_bar) / alpha_bar) in (low, high] (Kynkaenniemi et al. 2024, "Applying Guidance in a
                Limited Interval"); elsewhere the step uses the conditional model alone, without the classifier's
                gradient or the null-class forward, so it costs one U-Net evaluation. None guides at every step.
            eta (`float`, defaults to 0): DDIM's noise scale (DDIM schedulers only).
            clip_denoised (`bool`, *optional*): clamp the x_0 prediction to [-1, 1] at each step; None keeps the
                scheduler's setting (``clip_sample``, True in converted folders). A stock scheduler clips as it was
                made (``clip_sample``, or thresholding at 1: see the sampling recipes); a call asking it otherwise is
                refused.
            generator (`torch.Generator`, *optional*): makes sampling reproducible.
            latents (`torch.Tensor`, *optional*): x_T, shape (batch, channels, size, size).
            step_noise (`torch.Tensor` or list, *optional*): the standard normal noise of every step (leading dim =
                steps), instead of drawing it: reproduces a recorded trajectory of the original code.
            output_type (`str`, defaults to ``"pil"``): ``"pil"``, ``"np"`` (NHWC in [0, 1]), ``"pt"`` (NCHW in
                [0, 1]) or ``"latent"`` (the final samples as they are: NCHW float32 in about [-1, 1]).
            return_dict (`bool`, defaults to True): return an [`~diffusers.ImagePipelineOutput`] rather than a tuple.
            callback_on_step_end (`Callable`, *optional*): ``callback(pipeline, step, timestep, callback_kwargs)``
                after every step, with ``latents`` (x_{t-1}) and ``pred_original_sample`` (x_0) among
                ``callback_on_step_end_tensor_inputs``; may return ``{"latents": ...}`` of the same shape to replace
                x_{t-1}. The pipeline's ``num_timesteps``, ``guidance_scale``, ``do_classifier_free_guidance`` and
                ``interrupt`` (set ``pipe._interrupt = True`` to stop) are there for it, as in diffusers.
            callback_on_step_end_tensor_inputs (list of `str`): which tensors the callback gets.

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the images.
        """
        # 1. Check inputs, before any work
        check_output_type(output_type)
        check_callback_inputs(callback_on_step_end_tensor_inputs, self._callback_tensor_inputs)
        check_scale("eta", eta, minimum=0)
        self._start_call(guidance_scale)
        guidance = resolve_guidance(
            self, class_labels, batch_size, classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval,
            num_images_per_prompt,
        )
        step_kwargs = step_arguments(self.scheduler, eta, clip_denoised, generator, step_noise)

        # 2. Timesteps and x_T
        device = self._execution_device
        timesteps = set_sampling_timesteps(self.scheduler, num_inference_steps, timestep_respacing, device)
        config = self.unet.config
        shape = (guidance.batch, config.in_channels, config.sample_size, config.sample_size)
        check_step_noise(step_noise, len(timesteps), shape)
        latents = initial_latents(latents, shape, generator, device) * self.scheduler.init_noise_sigma

        # 3. Denoising loop
        self._num_timesteps = len(timesteps)
        want_x0 = callback_on_step_end is not None and "pred_original_sample" in callback_on_step_end_tensor_inputs
        for i, t in enumerate(self.progress_bar(timesteps)):
            if self.interrupt:
                continue
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output, gradient = guided_model_output(self, model_input, t, guidance)
            latents, pred_original_sample = guided_step(
                self.scheduler, model_output, t, latents, model_input, gradient, step_kwargs,
                None if step_noise is None else step_noise[i], want_x0,
            )
            if callback_on_step_end is not None:
                callback_kwargs = {}
                for name in callback_on_step_end_tensor_inputs:
                    callback_kwargs[name] = locals()[name]
                latents = replaced_latents(callback_on_step_end(self, i, t, callback_kwargs), latents)

        return image_pipeline_output(self, latents, output_type, return_dict)


__all__ = ["ClassifierGuidedPipeline", "GuidedComponentsMixin", "null_class_id"]
