"""The whole variational bound per image in bits per dimension: the originals' ``calc_bpd_loop`` (NLL evaluation)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..schedulers.gaussian import GaussianDiffusion
from ..schedulers.likelihood import as_diffusion, call_model, mean_flat, prior_bpd, vb_terms_bpd

__all__ = ["calc_bpd_loop"]


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
    diffusion = as_diffusion(diffusion)
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
        model_output = call_model(model, x_t, diffusion.model_timesteps(t), model_kwargs)
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
