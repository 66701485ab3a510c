"""The variational bound of a Gaussian diffusion process, in bits per dimension, as the originals compute it.

The helpers the training losses and the likelihood evaluation share: [`normal_kl`], the discretized Gaussian
log-likelihood of the decoder, [`vb_terms_bpd`] (one step's bound term) and [`prior_bpd`]. Each takes the process as
a [`~guided_diffusers.schedulers.GaussianDiffusion`] or a guided scheduler (its full training process,
``scheduler.diffusion``), and a model called as ``model(x_t, model_timesteps, **model_kwargs)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from .gaussian import GaussianDiffusion

__all__ = [
    "approx_standard_normal_cdf",
    "as_diffusion",
    "call_model",
    "discretized_gaussian_log_likelihood",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "vb_terms_bpd",
]

LOG2 = math.log(2.0)


def as_diffusion(diffusion: Any) -> GaussianDiffusion:
    if isinstance(diffusion, GaussianDiffusion):
        return diffusion
    process = getattr(diffusion, "diffusion", None)
    if isinstance(process, GaussianDiffusion):
        return process
    raise ValueError(f"expected a GaussianDiffusion or a guided scheduler, got {type(diffusion).__name__}")


def call_model(model: Callable[..., Any], x: torch.Tensor, timesteps: torch.Tensor, model_kwargs: Mapping | None):
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
    diffusion = as_diffusion(diffusion)
    t = diffusion.timestep_batch(t, x_start.shape[0], device=x_start.device)
    true_mean, _, true_log_variance = diffusion.q_posterior_mean_variance(x_start, x_t, t)
    prediction = diffusion.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, prediction.mean, prediction.log_variance)) / LOG2
    decoder_nll = -discretized_gaussian_log_likelihood(
        x_start, means=prediction.mean, log_scales=0.5 * prediction.log_variance
    )
    decoder_nll = mean_flat(decoder_nll) / LOG2
    output = torch.where(t == 0, decoder_nll, kl)
    return {"output": output, "pred_original_sample": prediction.pred_original_sample}


def prior_bpd(diffusion: GaussianDiffusion | Any, x_start: torch.Tensor) -> torch.Tensor:
    """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, per image (the bound's prior term)."""
    diffusion = as_diffusion(diffusion)
    mean, _, log_variance = diffusion.q_mean_variance(x_start, diffusion.num_timesteps - 1)
    return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / LOG2
