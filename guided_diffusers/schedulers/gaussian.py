"""The Gaussian diffusion process of DDPM, improved-diffusion and guided-diffusion, written once.

[`GaussianDiffusion`] is a process (full or respaced) holding its float64 tables as named attributes
([`DiffusionTables`]) and giving the forward process, the posterior, the model's reverse step p(x_{t-1} | x_t) from a
model output, the conversions between epsilon, x_0 and x_{t-1}, the model-facing timestep and the
classifier-guidance shifts; DDIM's steps come from [`~guided_diffusers.schedulers.ddim.DDIMSteps`]. Which process
(the betas) is [`~guided_diffusers.schedulers.schedules`]'s business.

Tables are kept in float64 and cast to the sample's dtype at the moment they are used, exactly as the originals do,
so the results agree with them to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .ddim import DDIMSteps
from .schedules import get_beta_schedule, respace_betas

__all__ = [
    "MEAN_TYPES",
    "VARIANCE_TYPES",
    "DiffusionTables",
    "GaussianDiffusion",
    "ReverseStepPrediction",
    "score_guided_noise",
    "start_from_noise",
    "start_from_velocity",
]

#: What the model predicts: noise, x_0, or x_{t-1}.
MEAN_TYPES = ("epsilon", "sample", "previous_sample")
#: How the reverse-step variance is chosen.
VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned", "learned_range")
#: Variance types whose models output twice the image channels (prediction, then variance values).
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")


# ---------------------------------------------------------------------------------------------------------------------
# The process at a noise level: the formulas in alpha_bar, for samplers that are between the tables' steps
# ---------------------------------------------------------------------------------------------------------------------


def start_from_noise(x_t: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 from x_t and the noise at the level ``alpha_bar``: (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)."""
    return (x_t - (1 - alpha_bar).sqrt() * noise) / alpha_bar.sqrt()


def start_from_velocity(x_t: torch.Tensor, velocity: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_0 from x_t and a v-prediction at the level ``alpha_bar``: sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v."""
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * velocity


def score_guided_noise(noise: torch.Tensor, alpha_bar: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Song et al.'s score guidance on epsilon at the level ``alpha_bar``: eps - sqrt(1 - alpha_bar) * gradient."""
    return noise - (1 - alpha_bar).sqrt() * gradient


# ---------------------------------------------------------------------------------------------------------------------
# The process
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ReverseStepPrediction:
    """The model's reverse step p(x_{t-1} | x_t) at one timestep.

    Args:
        mean (`torch.Tensor`): the mean of x_{t-1}.
        variance (`torch.Tensor`): its variance, broadcast to the sample's shape.
        log_variance (`torch.Tensor`): the log of ``variance`` (clipped at t = 0 for fixed_small, as the originals do).
        pred_original_sample (`torch.Tensor`): the prediction of x_0 (after ``denoised_fn`` and clipping).
    """

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_original_sample: torch.Tensor


@dataclass(frozen=True)
class DiffusionTables:
    """A process's float64 tables, one per timestep, as CPU tensors (cast to the sample's dtype and device at use).

    Built by [`DiffusionTables.from_betas`] exactly as the originals compute them.
    """

    betas: torch.Tensor
    log_betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    alphas_cumprod_next: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    log_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    recip_posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2_over_coef1: torch.Tensor
    fixed_large_variance: torch.Tensor
    fixed_large_log_variance: torch.Tensor

    @classmethod
    def from_betas(cls, betas: np.ndarray) -> DiffusionTables:
        """Every table from float64 betas (a beta of 1, DDPM's jsd, gives alpha_bar_T = 0 without warnings)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            alphas = 1.0 - betas
            alphas_cumprod = np.cumprod(alphas, axis=0)
            alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
            alphas_cumprod_next = np.append(alphas_cumprod[1:], 0.0)
            posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
            # The posterior variance is 0 at t = 0: its log (and fixed_large's first variance) take the t = 1 value.
            first_variance = posterior_variance[1] if len(betas) > 1 else betas[0]
            posterior_log_variance_clipped = np.log(np.append(first_variance, posterior_variance[1:]))
            fixed_large_variance = np.append(first_variance, betas[1:])
            posterior_mean_coef1 = betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
            posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)
            values = dict(
                betas=betas,
                log_betas=np.log(betas),
                alphas_cumprod=alphas_cumprod,
                alphas_cumprod_prev=alphas_cumprod_prev,
                alphas_cumprod_next=alphas_cumprod_next,
                sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
                sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
                log_one_minus_alphas_cumprod=np.log(1.0 - alphas_cumprod),
                sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
                sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1),
                posterior_variance=posterior_variance,
                posterior_log_variance_clipped=posterior_log_variance_clipped,
                posterior_mean_coef1=posterior_mean_coef1,
                posterior_mean_coef2=posterior_mean_coef2,
                recip_posterior_mean_coef1=1.0 / posterior_mean_coef1,
                posterior_mean_coef2_over_coef1=posterior_mean_coef2 / posterior_mean_coef1,
                fixed_large_variance=fixed_large_variance,
                fixed_large_log_variance=np.log(fixed_large_variance),
            )
        return cls(**{name: torch.from_numpy(np.asarray(value, dtype=np.float64)) for name, value in values.items()})


class GaussianDiffusion(DDIMSteps):
    """A Gaussian diffusion process, full or respaced, with float64 tables.

    Timestep arguments ``t`` of the methods index *this* process (0 .. num_timesteps - 1). For a respaced process,
    [`model_timesteps`] gives what the model sees: the original timestep ``timestep_map[t]`` (a network trained on
    rescaled timesteps scales it itself: its ``timestep_scale``). ``t`` may be an int, a 0-d tensor or a (batch,)
    tensor.

    Args:
        betas (array-like): the process's betas, each in (0, 1].
        mean_type (`str`, defaults to ``"epsilon"``): what the model predicts: ``"epsilon"``, ``"sample"`` (x_0) or
            ``"previous_sample"`` (x_{t-1}).
        variance_type (`str`, defaults to ``"fixed_small"``): ``"fixed_small"`` (posterior variance, log clipped at
            t = 0), ``"fixed_large"`` (betas, first entry from the posterior variance), ``"learned"`` (the model gives
            the log variance) or ``"learned_range"`` (the model gives v in [-1, 1] interpolating log beta_t and the
            clipped posterior log variance).
        timestep_map (sequence of `int`, *optional*): the original timestep of each step of this process (respacing);
            the identity when absent.
        original_num_timesteps (`int`, *optional*): T of the original process; ``len(betas)`` when absent.
    """

    def __init__(
        self,
        betas: np.ndarray | Sequence[float] | torch.Tensor,
        *,
        mean_type: str = "epsilon",
        variance_type: str = "fixed_small",
        timestep_map: Sequence[int] | None = None,
        original_num_timesteps: int | None = None,
    ):
        if mean_type not in MEAN_TYPES:
            raise ValueError(f"unknown mean type {mean_type!r}; expected one of {', '.join(MEAN_TYPES)}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance type {variance_type!r}; expected one of {', '.join(VARIANCE_TYPES)}")
        if isinstance(betas, torch.Tensor):
            betas = betas.detach().cpu().double().numpy()
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {tuple(betas.shape)}")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError(f"betas must lie in (0, 1], got min {betas.min()} and max {betas.max()}")
        self.mean_type = mean_type
        self.variance_type = variance_type
        self.num_timesteps = len(betas)
        self.original_num_timesteps = int(original_num_timesteps or self.num_timesteps)
        if timestep_map is None:
            timestep_map = range(self.num_timesteps)
        self.timestep_map = torch.tensor(list(timestep_map), dtype=torch.long)
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError(
                f"timestep_map must hold one original timestep per beta ({self.num_timesteps}), "
                f"got {tuple(self.timestep_map.shape)}"
            )

        #: The float64 tables as named tensors (``process.tables.posterior_variance``).
        self.tables = DiffusionTables.from_betas(betas)

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], use_timesteps: Iterable[int] | None = None
    ) -> GaussianDiffusion:
        """The process a scheduler config describes, respaced to ``use_timesteps`` when given.

        Args:
            config (mapping): a [`GuidedDDPMScheduler`] / [`GuidedDDIMScheduler`] config (``num_train_timesteps``,
                ``beta_schedule``, ``beta_start``, ``beta_end``, ``trained_betas``, ``prediction_type``,
                ``variance_type``).
            use_timesteps (iterable of `int`, *optional*): original timesteps to keep; all when absent.
        """
        num_train_timesteps = config.get("num_train_timesteps", 1000)
        betas = get_beta_schedule(
            config.get("beta_schedule", "linear"),
            num_train_timesteps,
            beta_start=config.get("beta_start", 0.0001),
            beta_end=config.get("beta_end", 0.02),
            trained_betas=config.get("trained_betas"),
        )
        timestep_map = None
        if use_timesteps is not None:
            timestep_map = sorted(set(int(t) for t in use_timesteps))
            betas = respace_betas(betas, timestep_map)
        return cls(
            betas,
            mean_type=config.get("prediction_type", "epsilon"),
            variance_type=config.get("variance_type", "fixed_small"),
            timestep_map=timestep_map,
            original_num_timesteps=num_train_timesteps,
        )

    # -- tables and timesteps -------------------------------------------------------------------------------------

    @property
    def betas(self) -> torch.Tensor:
        """The process's betas (float64)."""
        return self.tables.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The cumulative products of (1 - beta) (float64)."""
        return self.tables.alphas_cumprod

    def timestep_batch(
        self, t: int | torch.Tensor, batch_size: int, device: torch.device | None = None
    ) -> torch.Tensor:
        """``t`` as a (batch_size,) int64 tensor of this process's steps, checked to lie in [0, num_timesteps).

        Args:
            t (`int` or `torch.Tensor`): one step for the whole batch (int, 0-d tensor) or one per sample ((batch,)).
            batch_size (`int`): the batch size.
            device (`torch.device`, *optional*): where the result goes.
        """
        if isinstance(t, torch.Tensor):
            if t.is_floating_point() or t.is_complex():
                if not torch.equal(t, t.round()):
                    raise ValueError(f"timesteps must be integers, got {t.tolist()}")
            t = t.to(device=device, dtype=torch.long)
            if t.ndim == 0:
                t = t.expand(batch_size)
            elif t.ndim != 1 or t.shape[0] not in (1, batch_size):
                raise ValueError(f"timesteps must be a scalar or have shape ({batch_size},), got {tuple(t.shape)}")
            elif t.shape[0] == 1:
                t = t.expand(batch_size)
        else:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise ValueError(f"timestep must be an int or an integer tensor, got {t!r}")
            t = torch.full((batch_size,), int(t), dtype=torch.long, device=device)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            bad = t[(t < 0) | (t >= self.num_timesteps)].unique().tolist()
            raise ValueError(f"timestep out of range: this process has steps 0..{self.num_timesteps - 1}, got {bad}")
        return t

    def extract(self, table: torch.Tensor, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A float64 table at steps ``t``, cast to ``like``'s dtype and shaped to broadcast against it.

        Args:
            table (`torch.Tensor`): one of [`tables`], e.g. ``process.tables.posterior_variance``.
            t (`int` or `torch.Tensor`): steps of this process, one for all or one per sample.
            like (`torch.Tensor`): a (batch, ...) tensor giving batch size, dtype, device and rank.
        """
        t = self.timestep_batch(t, like.shape[0])
        dtype = like.dtype if like.is_floating_point() else torch.float32
        values = table[t.cpu()].to(device=like.device, dtype=dtype)
        return values.reshape(-1, *([1] * (like.ndim - 1))).expand(like.shape)

    def model_timesteps(self, t: int | torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """What the model (and a noise-aware classifier) sees at steps ``t`` of this process: the original timestep
        ``timestep_map[t]`` (int64).

        Args:
            t (`int` or `torch.Tensor`): steps of this process.
            batch_size (`int`, *optional*): the batch size for an int ``t``; taken from ``t`` when it is a tensor.
        """
        device = t.device if isinstance(t, torch.Tensor) else None
        if batch_size is None:
            batch_size = t.shape[0] if isinstance(t, torch.Tensor) and t.ndim == 1 else 1
        t = self.timestep_batch(t, batch_size, device=device)
        return self.timestep_map.to(t.device)[t]

    # -- forward process and posterior ----------------------------------------------------------------------------

    def q_mean_variance(self, x_start: torch.Tensor, t: int | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The distribution q(x_t | x_0): (mean, variance, log_variance), each shaped like ``x_start``."""
        mean = self.extract(self.tables.sqrt_alphas_cumprod, t, x_start) * x_start
        variance = 1.0 - self.extract(self.tables.alphas_cumprod, t, x_start)
        log_variance = self.extract(self.tables.log_one_minus_alphas_cumprod, t, x_start)
        return mean, variance, log_variance

    def q_sample(
        self,
        x_start: torch.Tensor,
        t: int | torch.Tensor,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Diffuse ``x_start`` to step ``t``: sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise.

        Args:
            x_start (`torch.Tensor`): clean samples.
            t (`int` or `torch.Tensor`): steps of this process.
            noise (`torch.Tensor`, *optional*): the standard normal noise; drawn (with ``generator``) when absent.
            generator (`torch.Generator`, *optional*): for the drawn noise.
        """
        if noise is None:
            noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise must have x_start's shape {tuple(x_start.shape)}, got {tuple(noise.shape)}")
        return (
            self.extract(self.tables.sqrt_alphas_cumprod, t, x_start) * x_start
            + self.extract(self.tables.sqrt_one_minus_alphas_cumprod, t, x_start) * noise
        )

    def q_step(self, x_prev: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One forward step q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) of this process.

        Noises a sample one step up the grid (x_{t-1} at ``t = 0`` is the clean x_0); RePaint's resampling and the
        web demo's forward steps take it.

        Args:
            x_prev (`torch.Tensor`): the samples at step t - 1.
            t (`int` or `torch.Tensor`): the step to reach, of this process.
            noise (`torch.Tensor`): standard normal noise shaped like ``x_prev``.
        """
        if noise.shape != x_prev.shape:
            raise ValueError(f"noise must have x_prev's shape {tuple(x_prev.shape)}, got {tuple(noise.shape)}")
        betas = self.tables.betas
        return self.extract((1.0 - betas).sqrt(), t, x_prev) * x_prev + self.extract(betas.sqrt(), t, x_prev) * noise

    def q_posterior_mean_variance(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The posterior q(x_{t-1} | x_t, x_0): (mean, variance, clipped log variance)."""
        if x_start.shape != x_t.shape:
            raise ValueError(
                f"x_start and x_t must have the same shape, got {tuple(x_start.shape)} and {tuple(x_t.shape)}"
            )
        mean = (
            self.extract(self.tables.posterior_mean_coef1, t, x_t) * x_start
            + self.extract(self.tables.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self.extract(self.tables.posterior_variance, t, x_t)
        log_variance = self.extract(self.tables.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- conversions ----------------------------------------------------------------------------------------------

    def predict_start_from_noise(self, x_t: torch.Tensor, t: int | torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_0 from x_t and the noise: sqrt(1 / alpha_bar) x_t - sqrt(1 / alpha_bar - 1) eps."""
        return (
            self.extract(self.tables.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self.extract(self.tables.sqrt_recipm1_alphas_cumprod, t, x_t) * noise
        )

    def predict_noise_from_start(
        self, x_t: torch.Tensor, t: int | torch.Tensor, pred_original_sample: torch.Tensor
    ) -> torch.Tensor:
        """The noise from x_t and x_0: (sqrt(1 / alpha_bar) x_t - x_0) / sqrt(1 / alpha_bar - 1)."""
        return (self.extract(self.tables.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_original_sample) / self.extract(self.tables.sqrt_recipm1_alphas_cumprod, t, x_t
        )

    def predict_start_from_previous(
        self, x_t: torch.Tensor, t: int | torch.Tensor, previous_sample: torch.Tensor
    ) -> torch.Tensor:
        """x_0 from x_t and the posterior mean x_{t-1}: (x_{t-1} - coef2 x_t) / coef1."""
        return (
            self.extract(self.tables.recip_posterior_mean_coef1, t, x_t) * previous_sample
            - self.extract(self.tables.posterior_mean_coef2_over_coef1, t, x_t) * x_t
        )

    # -- the model's reverse step ---------------------------------------------------------------------------------

    @property
    def learns_variance(self) -> bool:
        """Whether the model outputs variance values after its prediction (twice the image channels)."""
        return self.variance_type in LEARNED_VARIANCE_TYPES

    def split_model_output(
        self, model_output: torch.Tensor, x_t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's prediction and its variance values (None for fixed variances), checking the channel count."""
        channels = x_t.shape[1]
        expected = 2 * channels if self.learns_variance else channels
        if (
            model_output.ndim != x_t.ndim
            or model_output.shape[0] != x_t.shape[0]
            or model_output.shape[2:] != x_t.shape[2:]
        ):
            raise ValueError(
                f"model output must have shape {(x_t.shape[0], expected, *x_t.shape[2:])} for a sample of shape "
                f"{tuple(x_t.shape)}, got {tuple(model_output.shape)}"
            )
        if model_output.shape[1] != expected:
            hint = (
                " (prediction then variance values)"
                if self.learns_variance
                else "; a learned-sigma model needs variance_type 'learned_range' or 'learned'"
            )
            raise ValueError(
                f"variance type {self.variance_type!r} expects a model output with {expected} channels for "
                f"{channels}-channel samples{hint}, got {model_output.shape[1]}"
            )
        if self.learns_variance:
            prediction, variance_values = torch.split(model_output, channels, dim=1)
            return prediction, variance_values
        return model_output, None

    def model_variance(
        self, x_t: torch.Tensor, t: int | torch.Tensor, variance_values: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reverse step's (variance, log_variance) for the process's variance type.

        Args:
            x_t (`torch.Tensor`): the sample at step t (gives shape and dtype).
            t (`int` or `torch.Tensor`): steps of this process.
            variance_values (`torch.Tensor`, *optional*): the model's variance channels (learned types only).
        """
        if self.variance_type == "learned":
            log_variance = variance_values
        elif self.variance_type == "learned_range":
            min_log = self.extract(self.tables.posterior_log_variance_clipped, t, x_t)
            max_log = self.extract(self.tables.log_betas, t, x_t)
            fraction = (variance_values + 1) / 2  # [-1, 1] -> [min, max]
            log_variance = fraction * max_log + (1 - fraction) * min_log
        elif self.variance_type == "fixed_large":
            return self.extract(self.tables.fixed_large_variance, t, x_t), self.extract(self.tables.fixed_large_log_variance, t, x_t)
        else:
            return self.extract(self.tables.posterior_variance, t, x_t), self.extract(self.tables.posterior_log_variance_clipped, t, x_t)
        if log_variance is None:
            raise ValueError(f"variance type {self.variance_type!r} needs the model's variance values, got None")
        return torch.exp(log_variance), log_variance

    def pred_original_sample(
        self,
        prediction: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clip_range: float = 1.0,
    ) -> torch.Tensor:
        """x_0 from the model's prediction (its first channels) by the mean type, then ``denoised_fn``, then clipping.

        Args:
            prediction (`torch.Tensor`): the model's prediction, shaped like ``x_t`` (variance channels split off).
            x_t (`torch.Tensor`): the sample at step t.
            t (`int` or `torch.Tensor`): steps of this process.
            clip_denoised (`bool`, defaults to True): clamp x_0 to [-clip_range, clip_range].
            denoised_fn (`Callable`, *optional*): applied to x_0 before clipping.
            clip_range (`float`, defaults to 1.0): the clipping bound.
        """
        if self.mean_type == "previous_sample":
            pred_start = self.predict_start_from_previous(x_t, t, prediction)
        elif self.mean_type == "sample":
            pred_start = prediction
        else:
            pred_start = self.predict_start_from_noise(x_t, t, prediction)
        if denoised_fn is not None:
            pred_start = denoised_fn(pred_start)
        if clip_denoised:
            pred_start = pred_start.clamp(-clip_range, clip_range)
        return pred_start

    def p_mean_variance(
        self,
        model_output: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        clip_range: float = 1.0,
    ) -> ReverseStepPrediction:
        """The model's p(x_{t-1} | x_t) from its output at step t.

        Args:
            model_output (`torch.Tensor`): the raw model output: C channels for fixed variances, 2C (prediction, then
                variance values) for learned ones.
            x_t (`torch.Tensor`): the sample at step t, (batch, C, ...).
            t (`int` or `torch.Tensor`): steps of this process.
            clip_denoised (`bool`, defaults to True): clamp the x_0 prediction to [-clip_range, clip_range].
            denoised_fn (`Callable`, *optional*): applied to the x_0 prediction before clipping.
            clip_range (`float`, defaults to 1.0): the clipping bound.

        Returns:
            [`ReverseStepPrediction`]: mean, variance, log_variance and pred_original_sample.
        """
        prediction, variance_values = self.split_model_output(model_output, x_t)
        variance, log_variance = self.model_variance(x_t, t, variance_values)
        pred_start = self.pred_original_sample(prediction, x_t, t, clip_denoised, denoised_fn, clip_range)
        if self.mean_type == "previous_sample":
            mean = prediction
        else:
            mean, _, _ = self.q_posterior_mean_variance(pred_start, x_t, t)
        return ReverseStepPrediction(
            mean=mean, variance=variance, log_variance=log_variance, pred_original_sample=pred_start
        )

    def _nonzero_mask(self, t: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        t = self.timestep_batch(t, like.shape[0], device=like.device)
        return (t != 0).to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def p_sample(
        self, prediction: ReverseStepPrediction, t: int | torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Ancestral sampling: mean + exp(log_variance / 2) * noise, with no noise at step 0."""
        mean = prediction.mean
        if noise.shape != mean.shape:
            raise ValueError(f"noise must have the sample's shape {tuple(mean.shape)}, got {tuple(noise.shape)}")
        return mean + self._nonzero_mask(t, mean) * torch.exp(0.5 * prediction.log_variance) * noise

    # -- classifier guidance --------------------------------------------------------------------------------------

    @staticmethod
    def guided_mean(mean: torch.Tensor, variance: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """Sohl-Dickstein et al.'s guidance (guided-diffusion's ``condition_mean``): mean + variance * gradient.

        Args:
            mean (`torch.Tensor`): the reverse step's mean.
            variance (`torch.Tensor`): the reverse step's variance.
            gradient (`torch.Tensor`): the (scaled) gradient of log p(y | x_t) with respect to x_t.
        """
        dtype = torch.promote_types(mean.dtype, torch.float32)
        return mean.to(dtype) + variance.to(dtype) * gradient.to(dtype)

    def guided_noise(self, noise: torch.Tensor, t: int | torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """Song et al.'s score guidance on epsilon: eps - sqrt(1 - alpha_bar_t) * gradient.

        Usable with any epsilon predictor, including under stock diffusers schedulers (``t`` then indexes this
        process, e.g. the full process of a scheduler's config).
        """
        return score_guided_noise(noise, self.extract(self.tables.alphas_cumprod, t, noise), gradient)

    def condition_mean(self, prediction: ReverseStepPrediction, gradient: torch.Tensor) -> ReverseStepPrediction:
        """The reverse step with its mean shifted by ``variance * gradient`` (DDPM classifier guidance)."""
        return replace(prediction, mean=self.guided_mean(prediction.mean, prediction.variance, gradient))

    def guided_pred_original_sample(
        self, pred_original_sample: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor, gradient: torch.Tensor
    ) -> torch.Tensor:
        """x_0 after score guidance: epsilon from ``pred_original_sample``, shifted, turned back into x_0."""
        noise = self.predict_noise_from_start(x_t, t, pred_original_sample)
        noise = self.guided_noise(noise, t, gradient)
        return self.predict_start_from_noise(x_t, t, noise)
