"""Expected sampling results computed by hand, for tests to compare the pipelines with: the exact denoiser of a
two-image distribution, and guided sampling loops written out from the noise levels (alpha_bar) alone; and the
randomisation that makes a tiny model's zero-initialised layers non-trivial for them."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput


def randomize_zeros(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """``model`` in eval mode with its all-zero parameters (the originals zero-initialise output layers, which would
    make every step and guidance term trivial) drawn from N(0, 0.05^2) by a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def two_image_denoiser(images: torch.Tensor, alphas_cumprod: torch.Tensor) -> Callable[..., UNet2DOutput]:
    """A U-Net forward that is exact for data drawn uniformly from ``images`` (K, C, H, W): epsilon from the posterior
    mean of x_0 over the images at alpha_bar = ``alphas_cumprod[t]`` of the (integer) timestep t it is given.

    At x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps the posterior weight of image k is proportional to
    exp(-|x_t - sqrt(ab) x_k|^2 / (2 (1 - ab))), and eps = (x_t - sqrt(ab) E[x_0 | x_t]) / sqrt(1 - ab).
    """
    images = images.double()

    def forward(sample, timestep, class_labels=None, **kwargs):
        alpha_bar = float(alphas_cumprod[int(torch.as_tensor(timestep).reshape(-1)[0])])
        x = sample.double()
        distances = ((x[:, None] - alpha_bar**0.5 * images[None]) ** 2).flatten(2).sum(-1)
        weights = torch.softmax(-distances / (2 * (1 - alpha_bar)), dim=1)
        mean = torch.einsum("nk,kchw->nchw", weights, images)
        eps = (x - alpha_bar**0.5 * mean) / (1 - alpha_bar) ** 0.5
        return UNet2DOutput(sample=eps.to(sample.dtype))

    return forward


def guided_eps(unet, x, t, labels, guidance_scale, null_label):
    """(epsilon, variance channels or None) of one step: eps_uncond + w (eps_cond - eps_uncond), the conditional and
    null-class outputs from one batch (as the pipelines batch them, so that the rounding is the same); a learned-sigma
    model's variance channels are the conditional ones."""
    channels = x.shape[1]
    if guidance_scale is None:
        conditional = unet(x, t, class_labels=labels).sample
        eps = conditional[:, :channels]
    else:
        both = unet(torch.cat([x, x]), t, class_labels=torch.cat([labels, torch.full_like(labels, null_label)])).sample
        conditional, unconditional = both.chunk(2)
        eps = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
    variance = conditional[:, channels:] if conditional.shape[1] > channels else None
    return eps, variance


def classifier_score(classifier, x, t, labels, scale):
    """``scale`` times the gradient of sum_i log p(y_i | x) at x."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x, t).logits, dim=-1)
        (gradient,) = torch.autograd.grad(log_probs[torch.arange(len(labels)), labels].sum(), x)
    return gradient * scale


def textbook_stock_loop(pipe, labels, steps, generator, classifier_scale=0.0, guidance_scale=None, null_label=None):
    """diffusers' canonical loop under a stock scheduler with classifier-free guidance on epsilon, then the
    classifier's score shift eps - sqrt(1 - alpha_bar) * gradient at the VP input; returns the final latents."""
    scheduler, unet = pipe.scheduler, pipe.unet
    scheduler.set_timesteps(steps)
    channels, size = unet.config.in_channels, unet.config.sample_size
    latents = torch.randn((len(labels), channels, size, size), generator=generator) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        eps, variance = guided_eps(unet, model_input, t, labels, guidance_scale, null_label)
        if classifier_scale:
            gradient = classifier_score(pipe.classifier, model_input, t, labels, classifier_scale)
            if scheduler.init_noise_sigma != 1:  # sigma space: the scheduler's own sigma at this step
                alpha_bar = 1 / (1 + scheduler.sigmas[scheduler.step_index] ** 2)
            else:
                alpha_bar = scheduler.alphas_cumprod[int(t)]
            eps = eps - (1 - alpha_bar) ** 0.5 * gradient
        model_output = torch.cat([eps, variance], 1) if isinstance(scheduler, DDPMScheduler) and variance is not None else eps
        kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        latents = scheduler.step(model_output, t, latents, **kwargs).prev_sample
    return latents


def _levels(scheduler):
    """(t, alpha_bar_t, alpha_bar of the previous kept timestep) of each step, descending, from the full process's
    alpha_bar at the kept timesteps (a respaced process's beta is 1 - alpha_bar_t / alpha_bar_prev)."""
    timesteps = [int(t) for t in scheduler.timesteps]
    table = scheduler.alphas_cumprod
    return [(t, float(table[t]), float(table[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0)
            for i, t in enumerate(timesteps)]


def hand_ddpm_loop(pipe, labels, generator, classifier_scale=0.0, guidance_scale=None, null_label=None, clip=True):
    """Ancestral sampling with a learned-range model written out: x_0 from epsilon (clipped), the posterior mean,
    the variance exp(v' log beta + (1 - v') log posterior variance) with v' = (v + 1) / 2 (the posterior variance of
    the first step taken from the second, as the originals clip it), the mean shifted by variance * gradient, and
    noise drawn from ``generator`` at every step (ignored at the last), after x_T."""
    unet = pipe.unet
    channels, size = unet.config.in_channels, unet.config.sample_size
    x = torch.randn((len(labels), channels, size, size), generator=generator)
    levels = _levels(pipe.scheduler)

    def posterior_variance(alpha_bar, alpha_bar_prev):
        return (1 - alpha_bar / alpha_bar_prev) * (1 - alpha_bar_prev) / (1 - alpha_bar)

    for i, (t, alpha_bar, alpha_bar_prev) in enumerate(levels):
        t_in = torch.tensor(t)
        eps, v = guided_eps(unet, x, t_in, labels, guidance_scale, null_label)
        beta = 1 - alpha_bar / alpha_bar_prev
        x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = (beta * math.sqrt(alpha_bar_prev) / (1 - alpha_bar)) * x0 + (
            (1 - alpha_bar_prev) * math.sqrt(1 - beta) / (1 - alpha_bar)) * x
        clipped = posterior_variance(alpha_bar, alpha_bar_prev) if i + 1 < len(levels) else posterior_variance(*levels[i - 1][1:])
        fraction = (v + 1) / 2
        log_variance = fraction * math.log(beta) + (1 - fraction) * math.log(clipped)
        if classifier_scale:
            mean = mean + log_variance.exp() * classifier_score(pipe.classifier, x, t_in, labels, classifier_scale)
        noise = torch.randn(x.shape, generator=generator)
        x = mean + (0.0 if i + 1 == len(levels) else 1.0) * (0.5 * log_variance).exp() * noise
    return x


def hand_ddim_loop(pipe, labels, latents, classifier_scale=0.0, guidance_scale=None, null_label=None, clip=True):
    """Deterministic DDIM (eta 0) written out as guided-diffusion guides it: x_0 from epsilon (clipped), epsilon
    again from that x_0, the score shift eps - sqrt(1 - alpha_bar) * gradient, and the step
    sqrt(alpha_bar_prev) x_0' + sqrt(1 - alpha_bar_prev) eps' with x_0' from the shifted epsilon."""
    x = latents
    for t, alpha_bar, alpha_bar_prev in _levels(pipe.scheduler):
        t_in = torch.tensor(t)
        eps, _ = guided_eps(pipe.unet, x, t_in, labels, guidance_scale, null_label)
        x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)
        if classifier_scale:
            eps = eps - math.sqrt(1 - alpha_bar) * classifier_score(pipe.classifier, x, t_in, labels, classifier_scale)
        x0 = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
        x = math.sqrt(alpha_bar_prev) * x0 + math.sqrt(1 - alpha_bar_prev) * eps
    return x
