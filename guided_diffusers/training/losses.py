"""Training losses of improved-diffusion / guided-diffusion.

- [`training_losses`]: the per-example training loss for a batch of timesteps: ``mse`` (L_simple, with the
  learned-sigma hybrid term), ``rescaled_mse``, ``kl`` (the variational bound term) or ``rescaled_kl``.
- The variational-bound helpers live with the process in [`~guided_diffusers.schedulers.likelihood`], and the whole
  bound per image ([`~guided_diffusers.evaluation.calc_bpd_loop`]) in evaluation.

Each takes the process as a [`~guided_diffusers.schedulers.GaussianDiffusion`] or a guided scheduler (its full
training process, ``scheduler.diffusion``, is used), and a model called as ``model(x_t, model_timesteps,
**model_kwargs)``; an output with ``.sample`` (diffusers' UNet2DOutput) or a tuple is unwrapped.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..schedulers.gaussian import GaussianDiffusion
from ..schedulers.likelihood import as_diffusion, call_model, mean_flat, vb_terms_bpd

__all__ = ["LossType", "loss_type_from_flags", "training_losses"]


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
    diffusion = as_diffusion(diffusion)
    loss_type = _as_loss_type(loss_type)
    t = diffusion.timestep_batch(timesteps, x_start.shape[0], device=x_start.device)
    if noise is None:
        noise = torch.randn(x_start.shape, generator=generator, device=x_start.device, dtype=x_start.dtype)
    x_t = diffusion.q_sample(x_start, t, noise=noise)
    model_output = call_model(model, x_t, diffusion.model_timesteps(t), model_kwargs)
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
