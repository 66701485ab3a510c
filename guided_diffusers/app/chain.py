"""The step-by-step chain of the web demo: x_T, then reverse (denoise) and forward (diffuse) steps by hand.

Pure Python and torch, no UI: the web page keeps one :class:`DenoisingChain` per visitor and only renders what it
holds. Denoising the whole chain from a fresh seed gives exactly what ``ClassifierGuidedPipeline`` gives for the same
generator (the tests check this), because every reverse step is the pipelines' own: ``guided_model_output`` then
``guided_step`` of [`~guided_diffusers.pipelines.sampling`].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..checks import check_whole_number
from ..pipelines import sampling
from ..pipelines.recipes import FAST_RECIPE
from ..pipelines.sampling import initial_latents, null_class_id, set_sampling_timesteps
from ..schedulers import GuidedDDIMScheduler, GuidedDDPMScheduler
from ..schedulers.scheduling_utils import GuidedSchedulerMixin

SchedulerKind = Literal["ddpm", "ddim", "fast"]


@dataclass(frozen=True)
class _Components:
    """What ``guided_model_output`` reads of a pipeline: its networks and the scheduler of the step."""

    unet: Any
    scheduler: Any
    classifier: Any
    clip_model: Any
#: Our schedulers by kind; ``"fast"`` is the fast recipe's scheduler (``FAST_RECIPE``), made from the same config.
SCHEDULER_CLASSES: dict[str, type] = {"ddpm": GuidedDDPMScheduler, "ddim": GuidedDDIMScheduler}
SCHEDULER_KINDS = (*SCHEDULER_CLASSES, "fast")

__all__ = ["MAX_SEED", "SCHEDULER_CLASSES", "SCHEDULER_KINDS", "DenoisingChain", "Guidance", "SchedulerKind", "check_seed"]


@dataclass(frozen=True)
class Guidance:
    """What a reverse step steers toward; may change between steps of one chain.

    Args:
        class_label: the class id, or None for unconditional sampling (the null class of a label-dropout model, or
            an unconditional U-Net).
        classifier_scale: the noisy classifier's gradient scale (0: no classifier guidance).
        guidance_scale: the classifier-free guidance weight w, or None for none (w = 1 is plain conditional).
    """

    class_label: int | None = None
    classifier_scale: float = 0.0
    guidance_scale: float | None = None


#: The largest seed a ``torch.Generator`` takes.
MAX_SEED = 2**64 - 1


def check_seed(seed: Any) -> int:
    """``seed`` as an int in ``[0, MAX_SEED]``; a negative, too large, fractional or non-numeric seed is refused.

    Args:
        seed: an int, or a float with an integral value (number boxes send floats).

    Raises:
        ValueError: one line saying what was expected and what came.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, float)) or (isinstance(seed, float) and not seed.is_integer()):
        raise ValueError(f"expected the seed to be a whole number from 0 to 2**64 - 1, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"expected the seed to be from 0 to 2**64 - 1, got {int(seed)}")
    return int(seed)


class DenoisingChain:
    """One sampling chain over a fixed timestep grid, stepped by hand in either direction.

    The chain sits at a position k in [0, K]: k reverse steps taken from x_T, K the number of sampling steps. At k < K
    the current sample is x_t for t = ``scheduler.timesteps[k]``; at k = K it is the finished sample x_0.
    ``denoise(n)`` takes n reverse steps with the given guidance; ``diffuse(n)`` takes n forward steps
    q(x_{t'} | x_t) back up the same grid, noising the current x_t (not a fresh x_0) with the process's betas.

    Args:
        pipeline: a loaded [`ClassifierGuidedPipeline`] (its U-Net, classifier and scheduler config are used; the
            pipeline's own scheduler is left untouched).
        scheduler: ``"ddpm"`` (ancestral), ``"ddim"``, or ``"fast"``: the fast recipe's scheduler (a stock diffusers
            solver, ``FAST_RECIPE``), which denoises but cannot diffuse back (its multistep history would not match).
        num_inference_steps: the number of sampling steps K (evenly spaced); None: the scheduler config's respacing.
        eta: DDIM's noise scale (must be 0 under DDPM).
        batch_size: how many chains run side by side.
        seed: seeds x_T and every step's noise.
        clip_denoised: clamp each x_0 prediction to [-1, 1].
    """

    def __init__(
        self,
        pipeline: Any,
        *,
        scheduler: SchedulerKind = "ddpm",
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        batch_size: int = 1,
        seed: int = 0,
        clip_denoised: bool = True,
    ):
        if scheduler not in SCHEDULER_KINDS:
            raise ValueError(f"expected scheduler 'ddpm', 'ddim' or 'fast', got {scheduler!r}")
        if not isinstance(pipeline.scheduler, GuidedSchedulerMixin):
            raise ValueError(
                "expected a pipeline with a GuidedDDPMScheduler or GuidedDDIMScheduler, "
                f"got {type(pipeline.scheduler).__name__}"
            )
        if scheduler != "ddim" and eta:
            raise ValueError(f"expected eta=0 with the {scheduler} scheduler (eta is DDIM's), got {eta}")
        if eta < 0:
            raise ValueError(f"expected eta >= 0, got {eta}")
        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        self.pipeline = pipeline
        self.eta = float(eta)
        self.batch_size = int(batch_size)
        self.seed = check_seed(seed)
        self.clip_denoised = clip_denoised
        self.device = pipeline._execution_device
        # A scheduler of our own: each visitor's chain keeps its grid without touching the shared pipeline.
        if scheduler == "fast":
            self.scheduler = FAST_RECIPE.scheduler(pipeline.scheduler.config)
            num_inference_steps = FAST_RECIPE.steps if num_inference_steps is None else num_inference_steps
            if sampling.stock_clips(self.scheduler) != bool(clip_denoised):  # made once, clipping as asked
                settings = sampling.stock_clip_settings(type(self.scheduler), bool(clip_denoised), self.scheduler.config)
                self.scheduler = type(self.scheduler).from_config(self.scheduler.config, **settings)
        else:
            self.scheduler = SCHEDULER_CLASSES[scheduler].from_config(pipeline.scheduler.config)
        self.stock = not isinstance(self.scheduler, GuidedSchedulerMixin)
        self.timesteps = set_sampling_timesteps(self.scheduler, num_inference_steps, None, self.device).cpu()
        self.reset()

    # -- state ------------------------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        """Start over from a fresh x_T drawn from ``seed`` (default: the chain's seed)."""
        if seed is not None:
            self.seed = check_seed(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        config = self.pipeline.unet.config
        shape = (self.batch_size, config.in_channels, config.sample_size, config.sample_size)
        self.sample = initial_latents(None, shape, self.generator, self.device) * self.scheduler.init_noise_sigma
        self.position = 0
        if self.stock:  # a multistep solver starts its history afresh
            set_sampling_timesteps(self.scheduler, len(self.timesteps), None, self.device)
        self._cached_output: tuple[int, Guidance, torch.Tensor, torch.Tensor | None] | None = None

    @property
    def num_steps(self) -> int:
        """K, the number of reverse steps from x_T to x_0."""
        return len(self.timesteps)

    @property
    def timestep(self) -> int | None:
        """The original timestep of the current x_t, or None once the chain has reached x_0."""
        return None if self.position >= self.num_steps else int(self.timesteps[self.position])

    @property
    def at_end(self) -> bool:
        return self.position == self.num_steps

    def describe(self) -> str:
        """The current step for people: ``step k of K, t = 999`` (``t`` is the timestep the model sees)."""
        if self.at_end:
            return f"step {self.num_steps} of {self.num_steps}: the sample x_0"
        return f"step {self.position} of {self.num_steps}, t = {self.timestep}"

    # -- guidance ---------------------------------------------------------------------------------------------------

    def _labels(self, guidance: Guidance) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(labels for the classifier, labels for the U-Net), checked against what the pipeline can do."""
        pipe = self.pipeline
        unet_classes = getattr(pipe.unet.config, "num_classes", None)
        null = null_class_id(pipe.unet)
        if guidance.class_label is None:
            if guidance.classifier_scale or guidance.guidance_scale is not None:
                raise ValueError("expected a class to guide toward for classifier or classifier-free guidance, got none")
            if unet_classes and null is None:
                raise ValueError(f"expected a class: this U-Net is class-conditional ({unet_classes} classes) without a null class")
            unet_labels = torch.full((self.batch_size,), null, dtype=torch.long, device=self.device) if unet_classes else None
            return None, unet_labels
        num_classes = pipe.num_classes
        if num_classes is None:
            raise ValueError("expected no class: the U-Net is unconditional and there is no classifier")
        if not 0 <= guidance.class_label < num_classes:
            raise ValueError(f"expected a class id in [0, {num_classes}), got {guidance.class_label}")
        if guidance.classifier_scale and pipe.classifier is None:
            raise ValueError(f"expected a classifier for classifier scale {guidance.classifier_scale}, got none in this pipeline")
        if guidance.guidance_scale is not None and null is None:
            raise ValueError("expected a U-Net trained with label dropout (class_dropout_prob > 0) for a guidance scale, got one without")
        labels = torch.full((self.batch_size,), guidance.class_label, dtype=torch.long, device=self.device)
        return labels, labels if unet_classes else None

    def _model_output(self, guidance: Guidance) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (guided) U-Net output and the classifier gradient at the current x_t; cached until x_t or guidance changes."""
        cached = self._cached_output
        if cached is not None and cached[0] == self.position and cached[1] == guidance:
            return cached[2], cached[3]
        labels, unet_labels = self._labels(guidance)
        t = self.timesteps[self.position]
        model_input = self.scheduler.scale_model_input(self.sample, t)
        # The pipelines' own step terms, so guidance here is exactly the pipeline's.
        call = sampling.Guidance(labels, unet_labels, self.batch_size, guidance.classifier_scale, guidance.guidance_scale)
        output, gradient = sampling.guided_model_output(self._pipeline_view, model_input, t, call)
        self._cached_output = (self.position, guidance, output, gradient)
        return output, gradient

    @property
    def _pipeline_view(self) -> Any:
        """The pipeline's networks with the chain's own scheduler, as ``guided_model_output`` reads them."""
        pipe = self.pipeline
        return _Components(pipe.unet, self.scheduler, pipe.classifier, None)

    # -- moving -----------------------------------------------------------------------------------------------------

    def _check_count(self, n: int, available: int, direction: str) -> None:
        check_whole_number(f"the steps to {direction}", n, 1)
        if n > available:
            where = self.describe()
            raise ValueError(f"cannot {direction} {n} steps from {where}: {available} left in that direction")

    @torch.no_grad()
    def denoise(self, n: int, guidance: Guidance = Guidance()) -> None:
        """Take ``n`` reverse steps x_t -> x_{t-1} with ``guidance``.

        Args:
            n: how many steps; at most K - k.
            guidance: the class and scales for these steps.
        """
        self._check_count(n, self.num_steps - self.position, "denoise")
        self._labels(guidance)  # a bad combination fails before any step is taken
        for _ in range(n):
            self.sample, _ = self._reverse_step(guidance)
            self.position += 1

    def _reverse_step(self, guidance: Guidance, variance_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_{t-1}, predicted x_0) from the current x_t; the noise is drawn from the chain's generator unless given."""
        output, gradient = self._model_output(guidance)
        t = self.timesteps[self.position]
        step_kwargs = sampling.step_arguments(self.scheduler, self.eta, self.clip_denoised if not self.stock else None, self.generator)
        model_input = self.scheduler.scale_model_input(self.sample, t)
        return sampling.guided_step(self.scheduler, output, t, self.sample, model_input, gradient, step_kwargs, variance_noise, True)

    def _forward_step(self, position: int) -> int:
        """The respaced process's step reached by the forward step from ``position`` to ``position - 1``.

        The respaced process keeps alpha_bar at the grid's timesteps, so its step K - k carries x_{t_k} (x_0 at k = K)
        to x_{t_{k-1}}: alpha_bar[t_{k-1}] / alpha_bar[t_k] = 1 - beta[K - k].
        """
        return self.num_steps - position

    @torch.no_grad()
    def diffuse(self, n: int) -> None:
        """Take ``n`` forward steps q(x_{t'} | x_t) = N(sqrt(1 - beta) x_t, beta I) up the grid, from the current x_t.

        Args:
            n: how many steps; at most k.
        """
        self._check_count(n, self.position, "diffuse")
        if self.stock:
            raise ValueError("cannot diffuse with the fast recipe's multistep solver (its history would not match): "
                             "use DDPM or DDIM to step back up the chain")
        for _ in range(n):
            noise = torch.randn(self.sample.shape, generator=self.generator, device=self.device, dtype=self.sample.dtype)
            self.sample = self.scheduler.sampling_diffusion.q_step(self.sample, self._forward_step(self.position), noise)
            self.position -= 1
        self._cached_output = None  # the cache is keyed by position; x_t at a position has changed

    @torch.no_grad()
    def pred_original_sample(self, guidance: Guidance = Guidance()) -> torch.Tensor:
        """The x_0 the model predicts from the current x_t under ``guidance`` (the sample itself at the end).

        The prediction the next reverse step would make; computing it draws no noise, so looking at it never changes
        the chain. Its model evaluation is kept for that next step.
        """
        if self.at_end:
            return self.sample
        if self.stock:  # a solver's step advances its history: predict x_0 without stepping
            output, gradient = self._model_output(guidance)
            t = self.timesteps[self.position]
            model_input = self.scheduler.scale_model_input(self.sample, t)
            return sampling.pred_original_sample(self.scheduler, output, t, model_input, gradient).clamp(-1, 1)
        # x_0 does not depend on the step's noise: pass zeros so the generator draws none
        _, pred_x0 = self._reverse_step(guidance, variance_noise=torch.zeros_like(self.sample))
        return pred_x0
