"""ClassifierGuidedPipeline: ADM sampling with classifier, classifier-free and CLIP guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel

from ..models import ADMClassifier, ADMUNet2DModel
from .hub import PipelineHubMixin
from .labels import ClassLabels, ClassNames, normalize_id2label, resolve_class_labels
from .sampling import (
    CallStateMixin,
    Predictor,
    check_batch_size,
    check_guidance_interval,
    check_output_type,
    check_scale,
    check_step_noise,
    classifier_gradient,
    denoising_loop,
    initial_latents,
    image_pipeline_output,
    set_sampling_timesteps,
)
from .stepping import scheduler_driver

# CLIP's input normalisation (the values every released CLIP image processor uses).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def null_class_id(unet: Any) -> int | None:
    """The label that means "no class" for a model trained with label dropout (classifier-free guidance), else None."""
    num_classes = getattr(unet.config, "num_classes", None)
    if num_classes and getattr(unet.config, "class_dropout_prob", 0.0) > 0:
        return num_classes
    return None


class ClassifierGuidedPipeline(PipelineHubMixin, CallStateMixin, DiffusionPipeline):
    r"""
    Sampling for ADM / IDDPM / DDPM models with classifier guidance (ADM-G), classifier-free guidance and CLIP guidance.

    Args:
        unet ([`ADMUNet2DModel`] or [`~diffusers.UNet2DModel`]): the denoising network; 6 output channels for
            learned-sigma models.
        scheduler: [`GuidedDDPMScheduler`], [`GuidedDDIMScheduler`] or a stock diffusers scheduler (for which a
            learned-sigma model's variance channels are dropped unless the scheduler uses them).
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
        self.register_modules(unet=unet, scheduler=scheduler, classifier=classifier, clip_model=clip_model, tokenizer=tokenizer)
        self.register_to_config(id2label=normalize_id2label(id2label), classifier_scale=classifier_scale)

    # -- inputs ---------------------------------------------------------------------------------------------------

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
        from .labels import imagenet_id2label

        return ClassNames(self.config.id2label or (imagenet_id2label() if self.num_classes == 1000 else {}))

    def _check_inputs(
        self,
        class_labels: ClassLabels | None,
        batch_size: int | None,
        classifier_scale: float,
        guidance_scale: float | None,
        prompt: str | list[str] | None,
    ) -> tuple[torch.Tensor | None, int]:
        check_batch_size(batch_size)
        check_scale("classifier_scale", classifier_scale)
        check_scale("guidance_scale", guidance_scale)
        conditional = bool(getattr(self.unet.config, "num_classes", None))
        labels = None
        if class_labels is not None:
            if self.num_classes is None:
                raise ValueError("expected no class_labels: the U-Net is unconditional and there is no classifier")
            if not conditional and self.classifier is None:
                raise ValueError("expected no class_labels for an unconditional U-Net without a classifier, got some")
            labels = resolve_class_labels(class_labels, self.num_classes, self.config.id2label)
        if batch_size is not None:
            if labels is not None and len(labels) not in (1, batch_size):
                raise ValueError(f"expected {batch_size} class labels for batch_size {batch_size}, got {len(labels)}")
            if labels is not None and len(labels) == 1:
                labels = labels.expand(batch_size)
        size = len(labels) if labels is not None else (batch_size or 1)
        if classifier_scale:
            if self.classifier is None:
                raise ValueError(f"expected a classifier for classifier_scale={classifier_scale}, got none in this pipeline")
            if labels is None:
                raise ValueError("expected class_labels to guide toward with classifier_scale, got None")
        if guidance_scale is not None:
            if null_class_id(self.unet) is None:
                raise ValueError(
                    "expected a U-Net trained with label dropout (config class_dropout_prob > 0) for guidance_scale, "
                    "got one without a null class"
                )
            if labels is None:
                raise ValueError("expected class_labels for classifier-free guidance (guidance_scale), got None")
        if conditional and labels is None and null_class_id(self.unet) is None:
            raise ValueError(f"expected class_labels for a class-conditional U-Net ({self.unet.config.num_classes} classes), got None")
        if prompt is not None and (self.clip_model is None or self.tokenizer is None):
            raise ValueError("expected clip_model and tokenizer in the pipeline for CLIP guidance (prompt), got none")
        return labels, size

    # -- guidance -------------------------------------------------------------------------------------------------

    def unet_output(self, x: torch.Tensor, t_model: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float | None) -> torch.Tensor:
        """The U-Net's output at x_t in float32; with classifier-free guidance, conditional and unconditional in one batch.

        Args:
            x (`torch.Tensor`): x_t.
            t_model (`torch.Tensor`): the model-facing timestep (``scheduler.model_timestep(t)``).
            labels (`torch.Tensor`, *optional*): the U-Net's class labels (None for unconditional U-Nets).
            guidance_scale (`float`, *optional*): the classifier-free guidance weight; the variance channels of a
                learned-sigma model are the conditional ones, as GLIDE does.
        """
        unet = self.unet
        x_in = x.to(unet.dtype)
        if guidance_scale is None or guidance_scale == 1:  # w = 1 is the conditional output itself
            kwargs = {"class_labels": labels} if labels is not None else {}
            return unet(x_in, t_model, **kwargs).sample.float()
        null = torch.full_like(labels, null_class_id(unet))
        out = unet(torch.cat([x_in, x_in]), torch.cat([t_model, t_model]) if t_model.ndim else t_model,
                   class_labels=torch.cat([labels, null])).sample.float()
        conditional, unconditional = out.chunk(2)
        channels = x.shape[1]
        guided = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
        return torch.cat([guided, conditional[:, channels:]], dim=1)

    def _clip_text_embeddings(self, prompt: str | list[str], batch: int, device: torch.device) -> torch.Tensor:
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"expected 1 or {batch} prompts, got {len(prompts)}")
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt").to(device)
        with torch.no_grad():
            embeddings = self.clip_model.get_text_features(**tokens)
        if not torch.is_tensor(embeddings):  # some transformers versions return an output object
            embeddings = embeddings.pooler_output
        return F.normalize(embeddings.float(), dim=-1)

    def _clip_gradient(self, x: torch.Tensor, t: torch.Tensor, t_model: torch.Tensor, labels, guidance_scale, text: torch.Tensor, scale: float):
        """Model output and the gradient of the CLIP similarity of the predicted x_0 to the prompt, w.r.t. x_t."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            output = self.unet_output(x_in, t_model, labels, guidance_scale)
            pred_x0 = scheduler_driver(self.scheduler).pred_original_sample(output, t, x_in)
            size = self.clip_model.config.vision_config.image_size
            images = F.interpolate((pred_x0.clamp(-1, 1) + 1) / 2, size=(size, size), mode="bilinear", align_corners=False)
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images  # CLIP sees a grey image as RGB
            mean = torch.tensor(_CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(_CLIP_STD, device=x.device).view(1, 3, 1, 1)
            features = self.clip_model.get_image_features(pixel_values=((images - mean) / std).to(self.clip_model.dtype))
            if not torch.is_tensor(features):
                features = features.pooler_output
            similarity = (F.normalize(features.float(), dim=-1) * text).sum()
            (gradient,) = torch.autograd.grad(similarity, x_in)
        return output.detach(), gradient * scale

    def _check_callback_inputs(self, names: Sequence[str]) -> None:
        unknown = set(names) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"expected callback tensor inputs among {self._callback_tensor_inputs}, got {sorted(unknown)}")

    def _check_guidance(
        self,
        class_labels: ClassLabels | None,
        batch_size: int | None,
        classifier_scale: float | None,
        guidance_scale: float | None,
        prompt: str | list[str] | None,
        clip_guidance_scale: float,
        guidance_interval: tuple[float, float] | None,
    ) -> tuple[torch.Tensor | None, int, float, tuple[float, float] | None]:
        """Every guidance argument checked (one line each, before any work): (labels, batch, classifier scale, interval).

        A ``classifier_scale`` of None is the config's recommended scale when class labels are given and there is a
        classifier, else 0.
        """
        if classifier_scale is None:
            use_default = class_labels is not None and self.classifier is not None
            classifier_scale = (self.config.get("classifier_scale") or 0.0) if use_default else 0.0
        labels, batch = self._check_inputs(class_labels, batch_size, classifier_scale, guidance_scale, prompt)
        check_scale("clip_guidance_scale", clip_guidance_scale)
        return labels, batch, classifier_scale, check_guidance_interval(guidance_interval)

    def _guided_predictor(
        self,
        labels: torch.Tensor | None,
        batch: int,
        classifier_scale: float,
        guidance_scale: float | None,
        prompt: str | list[str] | None,
        clip_guidance_scale: float,
        interval: tuple[float, float] | None,
    ) -> Predictor:
        """The (model output, guidance gradient) function the sampling loop calls, for checked guidance arguments.

        Classifier-free guidance, CLIP guidance and the classifier's gradient combine; outside ``interval`` a step
        gets the conditional model alone.
        """
        device = self._execution_device
        config = self.unet.config
        if labels is not None:
            labels = labels.to(device)
        unet_labels = labels if getattr(config, "num_classes", None) else None
        if getattr(config, "num_classes", None) and labels is None:
            unet_labels = torch.full((batch,), null_class_id(self.unet), device=device, dtype=torch.long)
        text = self._clip_text_embeddings(prompt, batch, device) if prompt is not None else None
        driver = scheduler_driver(self.scheduler)

        def predict(x: torch.Tensor, t: torch.Tensor, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            if interval is not None and not interval[0] < driver.noise_level(t) <= interval[1]:
                return self.unet_output(x, t_model, unet_labels, None), None
            if text is not None:
                output, gradient = self._clip_gradient(x, t, t_model, unet_labels, guidance_scale, text, clip_guidance_scale)
            else:
                output, gradient = self.unet_output(x, t_model, unet_labels, guidance_scale), None
            if classifier_scale:
                class_gradient = classifier_gradient(self.classifier, x, t_model, labels, classifier_scale)
                gradient = class_gradient if gradient is None else gradient + class_gradient
            return output, gradient

        return predict

    # -- sampling -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        class_labels: ClassLabels | None = None,
        batch_size: int | None = None,
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
                scheduler's setting (``clip_sample``, True in converted folders). Stock schedulers clip with
                ``clip_sample`` or thresholding at 1; one that cannot clip refuses True.
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
        check_output_type(output_type)
        self._start_call(guidance_scale)
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        labels, batch, classifier_scale, interval = self._check_guidance(
            class_labels, batch_size, classifier_scale, guidance_scale, prompt, clip_guidance_scale, guidance_interval
        )
        check_scale("eta", eta, minimum=0)
        device = self._execution_device
        timesteps = set_sampling_timesteps(self.scheduler, num_inference_steps, timestep_respacing, device)
        config = self.unet.config
        shape = (batch, config.in_channels, config.sample_size, config.sample_size)
        check_step_noise(step_noise, len(timesteps), shape)
        x = initial_latents(latents, shape, generator, device)
        predict = self._guided_predictor(labels, batch, classifier_scale, guidance_scale, prompt, clip_guidance_scale, interval)
        x = denoising_loop(
            self, x, timesteps, predict, eta=eta, clip_denoised=clip_denoised, generator=generator, step_noise=step_noise,
            callback_on_step_end=callback_on_step_end, callback_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        return image_pipeline_output(self, x, output_type, return_dict)


__all__ = ["ClassifierGuidedPipeline", "null_class_id"]
