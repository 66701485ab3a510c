"""Training losses and likelihood evaluation of improved-diffusion / guided-diffusion.

- [`training_losses`]: the per-example training loss for a batch of timesteps: ``mse`` (L_simple, with the
  learned-sigma hybrid term), ``rescaled_mse``, ``kl`` (the variational bound term) or ``rescaled_kl``.
- [`calc_bpd_loop`]: the whole variational bound per image in bits per dimension, for NLL evaluation.
- The likelihood helpers they use: [`normal_kl`], [`discretized_gaussian_log_likelihood`], [`vb_terms_bpd`].

Each takes the process as a [`~guided_diffusers.schedulers.GaussianDiffusion`] or a guided scheduler (its full
training process, ``scheduler.diffusion``, is used), and a model called as ``model(x_t, model_timesteps,
**model_kwargs)``; an output with ``.sample`` (diffusers' UNet2DOutput) or a tuple is unwrapped.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from ..schedulers.gaussian import GaussianDiffusion

__all__ = [
    "LossType",
    "approx_standard_normal_cdf",
    "calc_bpd_loop",
    "discretized_gaussian_log_likelihood",
    "loss_type_from_flags",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "training_losses",
    "vb_terms_bpd",
]

_LOG2 = math.log(2.0)


class LossType(str, enum.Enum):
    """The training objective.

    - ``mse``: L_simple on the model's prediction; with learned variances, plus the vb term for the variance.
    - ``rescaled_mse``: the same, the vb term scaled by T / 1000 (improved-diffusion's ``rescale_learned_sigmas``).
    - ``kl``: the variational bound term at t.
    - ``rescaled_kl``: the vb term times T, estimating the whole bound (``use_kl``).
    """

    MSE = "mse"
    RESCALED_MSE = "rescaled_mse"
    KL = "kl"
    RESCALED_KL = "rescaled_kl"

    @property
    def is_vb(self) -> bool:
        """Whether the loss is the variational bound term itself."""
        return self in (LossType.KL, LossType.RESCALED_KL)


def loss_type_from_flags(use_kl: bool = False, rescale_learned_sigmas: bool = False) -> LossType:
    """The loss the originals' ``create_gaussian_diffusion`` flags select (``use_kl`` wins)."""
    if use_kl:
        return LossType.RESCALED_KL
    if rescale_learned_sigmas:
        return LossType.RESCALED_MSE
    return LossType.MSE


def _as_loss_type(loss_type: LossType | str) -> LossType:
    try:
        return LossType(loss_type)
    except ValueError:
        raise ValueError(
            f"unknown loss type {loss_type!r}; expected one of {', '.join(t.value for t in LossType)}"
        ) from None


def _as_diffusion(diffusion: Any) -> GaussianDiffusion:
    if isinstance(diffusion, GaussianDiffusion):
        return diffusion
    process = getattr(diffusion, "diffusion", None)
    if isinstance(process, GaussianDiffusion):
        return process
    raise ValueError(f"expected a GaussianDiffusion or a guided scheduler, got {type(diffusion).__name__}")


def _call_model(model: Callable[..., Any], x: torch.Tensor, timesteps: torch.Tensor, model_kwargs: Mapping | None):
    output = model(x, timesteps, **(model_kwargs or {}))
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


# ---------------------------------------------------------------------------------------------------------------------
# Likelihood helpers
# ---------------------------------------------------------------------------------------------------------------------


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over every dimension but the first (batch)."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise in nats; arguments broadcast.

    At least one argument must be a tensor; floats are turned into tensors like it.
    """
    like = next((obj for obj in (mean1, logvar1, mean2, logvar2) if isinstance(obj, torch.Tensor)), None)
    if like is None:
        raise ValueError("normal_kl needs at least one tensor argument, got only numbers")
    logvar1, logvar2 = (
        value if isinstance(value, torch.Tensor) else torch.tensor(value).to(like) for value in (logvar1, logvar2)
    )
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by the originals."""
    return 0.5 * (1.0 + torch.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood (nats) of 8-bit images under a Gaussian discretised to their 256 bins.

    Args:
        x (`torch.Tensor`): images whose values were uint8, rescaled to [-1, 1].
        means (`torch.Tensor`): the Gaussian means, shaped like ``x``.
        log_scales (`torch.Tensor`): the Gaussian log standard deviations, shaped like ``x``.

    Returns:
        `torch.Tensor`: per-element log probabilities; the edge bins take the tails.
    """
    if not x.shape == means.shape == log_scales.shape:
        raise ValueError(
            f"x, means and log_scales must share one shape, got {tuple(x.shape)}, {tuple(means.shape)}, "
            f"{tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def vb_terms_bpd(
    diffusion: GaussianDiffusion | Any,
    model_output: torch.Tensor,
    x_start: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    clip_denoised: bool = True,
) -> dict[str, torch.Tensor]:
    """One term of the variational bound, in bits per dimension, from the model's output at x_t.

    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0; the discretised decoder NLL -log p(x_0 | x_1) at t = 0.

    Args:
        diffusion: the process ([`GaussianDiffusion`] or a guided scheduler).
        model_output (`torch.Tensor`): the model's raw output at (x_t, t).
        x_start (`torch.Tensor`): the clean images.
        x_t (`torch.Tensor`): the noised images at t.
        t (`torch.Tensor`): (batch,) steps of the process.
        clip_denoised (`bool`, defaults to True): clip the model's x_0 prediction.

    Returns:
        `dict`: ``output`` ((batch,) bits per dimension) and ``pred_original_sample``.
    """
    diffusion = _as_diffusion(diffusion)
    t = diffusion.timestep_batch(t, x_start.shape[0], device=x_start.device)
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    prediction = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, prediction.mean, prediction.log_variance)) / _LOG2
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_start, means=prediction.mean, log_scales=0.5 * prediction.log_variance
    )
    decoder_nll = mean_flat(decoder_nll) / _LOG2
    output = torch.where(t == 0, decoder_nll, kl)
    return {"output": output, "pred_original_sample": prediction.pred_original_sample}


# ---------------------------------------------------------------------------------------------------------------------
# Training loss
# ---------------------------------------------------------------------------------------------------------------------


def training_losses(
    diffusion: GaussianDiffusion | Any,
    model: Callable[..., Any],
    x_start: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    loss_type: LossType | str = LossType.MSE,
    model_kwargs: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Per-example training losses at the given timesteps, as the originals compute them.

    The model sees x_t = q_sample(x_start, t, noise) and ``diffusion.model_timesteps(t)``. With ``mse`` /
    ``rescaled_mse`` the target is the noise (``epsilon``), x_0 (``sample``) or the posterior mean
    (``previous_sample``); learned-variance models add the vb term computed with the mean prediction detached (so it
    only trains the variance), scaled by T / 1000 for ``rescaled_mse``. ``kl`` / ``rescaled_kl`` use the vb term
    (without clipping), times T for ``rescaled_kl``.

    Args:
        diffusion: the process ([`GaussianDiffusion`] or a guided scheduler, whose full process is used).
        model (`Callable`): called as ``model(x_t, model_timesteps, **model_kwargs)``.
        x_start (`torch.Tensor`): the clean images in [-1, 1].
        timesteps (`torch.Tensor`): (batch,) steps of the process.
        loss_type ([`LossType`] or `str`, defaults to ``"mse"``): the objective.
        model_kwargs (`dict`, *optional*): extra model arguments, e.g. ``{"class_labels": y}``.
        noise (`torch.Tensor`, *optional*): the noise for q_sample; drawn (with ``generator``) when absent.
        generator (`torch.Generator`, *optional*): for the drawn noise.

    Returns:
        `dict[str, torch.Tensor]`: ``loss`` ((batch,)), plus ``mse`` and, for learned variances, ``vb`` for the MSE
        objectives.
    """
    diffusion = _as_diffusion(diffusion)
    loss_type = _as_loss_type(loss_type)
    t = diffusion.timestep_batch(timesteps, x_start.shape[0], device=x_start.device)
    if noise is None:
        noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    model_output = _call_model(model, x_t, diffusion.model_timesteps(t), model_kwargs)
    terms: dict[str, torch.Tensor] = {}

    if loss_type.is_vb:
        terms["loss"] = vb_terms_bpd(diffusion, model_output, x_start, x_t, t, clip_denoised=False)["output"]
        if loss_type == LossType.RESCALED_KL:
            terms["loss"] = terms["loss"] * diffusion.num_timesteps
        return terms

    prediction, variance_values = diffusion.split_model_output(model_output, x_t)
    if variance_values is not None:
        # The vb term trains the variance only: the mean prediction is frozen inside it.
        frozen_output = torch.cat([prediction.detach(), variance_values], dim=1)
        terms["vb"] = vb_terms_bpd(diffusion, frozen_output, x_start, x_t, t, clip_denoised=False)["output"]
        if loss_type == LossType.RESCALED_MSE:
            # Divided by 1000 for equivalence with the initial implementation (the vb term would swamp the MSE).
            terms["vb"] = terms["vb"] * (diffusion.num_timesteps / 1000.0)

    if diffusion.mean_type == "previous_sample":
        target = diffusion.q_posterior_mean_variance(x_start, x_t, t)[0]
    elif diffusion.mean_type == "sample":
        target = x_start
    else:
        target = noise
    terms["mse"] = mean_flat((target - prediction) ** 2)
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms


# ---------------------------------------------------------------------------------------------------------------------
# The whole bound
# ---------------------------------------------------------------------------------------------------------------------


def prior_bpd(diffusion: GaussianDiffusion | Any, x_start: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per image (the bound's prior term)."""
    diffusion = _as_diffusion(diffusion)
    mean, _, log_variance = diffusion.q_mean_variance(x_start, diffusion.num_timesteps - 1)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / _LOG2


@torch.no_grad()
def calc_bpd_loop(
    diffusion: GaussianDiffusion | Any,
    model: Callable[..., Any],
    x_start: torch.Tensor,
    *,
    clip_denoised: bool = True,
    model_kwargs: Mapping[str, Any] | None = None,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The whole variational bound per image in bits per dimension, and related per-step quantities.

    Steps run from T - 1 down to 0, each with fresh noise.

    Args:
        diffusion: the process ([`GaussianDiffusion`] or a guided scheduler, whose full process is used).
        model (`Callable`): called as ``model(x_t, model_timesteps, **model_kwargs)``.
        x_start (`torch.Tensor`): the images, uint8 values rescaled to [-1, 1].
        clip_denoised (`bool`, defaults to True): clip the model's x_0 predictions.
        model_kwargs (`dict`, *optional*): extra model arguments, e.g. ``{"class_labels": y}``.
        noise (`torch.Tensor`, *optional*): (T, *x_start.shape) noise, ``noise[k]`` used at step T - 1 - k (the order
            of the loop); drawn (with ``generator``) when absent.
        generator (`torch.Generator`, *optional*): for the drawn noise.
        progress (`bool`, defaults to False): show a tqdm progress bar.

    Returns:
        `dict`: ``total_bpd`` and ``prior_bpd`` ((batch,)); ``vb``, ``xstart_mse`` and ``mse`` (epsilon MSE), each
        (batch, T) in loop order as in the originals: column k is step T - 1 - k.
    """
    diffusion = _as_diffusion(diffusion)
    num_timesteps = diffusion.num_timesteps
    if noise is not None and tuple(noise.shape) != (num_timesteps, *x_start.shape):
        raise ValueError(
            f"noise must have shape {(num_timesteps, *x_start.shape)} (one draw per step), got {tuple(noise.shape)}"
        )
    steps = list(range(num_timesteps))[::-1]
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps)
    vb, xstart_mse, mse = [], [], []
    for k, step in enumerate(steps):
        t = torch.full((x_start.shape[0],), step, dtype=torch.long, device=x_start.device)
        if noise is None:
            step_noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
        else:
            step_noise = noise[k].to(x_start)
        x_t = diffusion.q_sample(x_start, t, noise=step_noise)
        model_output = _call_model(model, x_t, diffusion.model_timesteps(t), model_kwargs)
        out = vb_terms_bpd(diffusion, model_output, x_start, x_t, t, clip_denoised=clip_denoised)
        vb.append(out["output"])
        xstart_mse.append(mean_flat((out["pred_original_sample"] - x_start) ** 2))
        eps = diffusion.predict_noise_from_start(x_t, t, out["pred_original_sample"])
        mse.append(mean_flat((eps - step_noise) ** 2))
    vb_terms = torch.stack(vb, dim=1)
    prior = prior_bpd(diffusion, x_start)
    return {
        "total_bpd": vb_terms.sum(dim=1) + prior,
        "prior_bpd": prior,
        "vb": vb_terms,
        "xstart_mse": torch.stack(xstart_mse, dim=1),
        "mse": torch.stack(mse, dim=1),
    }
