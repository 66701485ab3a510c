"""The pipelines against results known without them: RePaint's fill under the exact denoiser of two images, and
classifier plus classifier-free guidance against the sampling loops written out by hand (tests/oracles.py)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from oracles import hand_ddim_loop, hand_ddpm_loop, textbook_stock_loop, two_image_denoiser

from guided_diffusers import (
    ADMClassifier,
    ADMInpaintPipeline,
    ADMUNet2DModel,
    ClassifierGuidedPipeline,
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZE = 8
T = 40
# float32 sampling against the same formulas in another order (and the two forwards of classifier-free guidance
# batched or not): a few float32 ulps per step; every guidance term below moves the samples by more than 1e-2
ATOL = 1e-5


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised output layers would make the guidance terms trivial
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def _unet() -> ADMUNet2DModel:
    torch.manual_seed(0)
    return _randomized(ADMUNet2DModel(sample_size=SIZE, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                      attention_downsample_factors=(2,), num_classes=10, out_channels=6,
                                      class_dropout_prob=0.1, num_head_channels=16, timestep_scale=1000 / T), 1)


def _classifier() -> ADMClassifier:
    torch.manual_seed(2)
    return _randomized(ADMClassifier(sample_size=SIZE, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_downsample_factors=(2,), num_classes=10, num_head_channels=16,
                                     timestep_scale=1000 / T), 3)


# -- RePaint under an exact model --------------------------------------------------------------------------------------


def test_inpainting_fills_with_the_image_its_known_half_belongs_to():
    """Data = {A, B} (B = -A) and a U-Net replaced by their exact denoiser: given A's left half, every fill is A's
    right half (RePaint merges the forward-noised known half in at every step, so the posterior collapses onto A).
    Filling the whole image instead samples the data itself, A or B (about half each): the known half is what
    decides, and a sampler that left it out of the loop (pasting it only at the end) would fill B's half about half
    the time."""
    image_a = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    data = torch.stack([image_a, -image_a])
    scheduler = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="fixed_small")
    unet = ADMUNet2DModel(sample_size=SIZE, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                          attention_downsample_factors=(), out_channels=3, num_head_channels=16)
    unet.forward = two_image_denoiser(data, scheduler.alphas_cumprod)
    pipe = ADMInpaintPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    right = torch.zeros(SIZE, SIZE)
    right[:, SIZE // 2:] = 1  # white: fill

    def fills(mask, n=16):
        out = pipe(image_a.expand(n, -1, -1, -1), mask, num_inference_steps=10, jump_length=3, jump_n_sample=2,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images
        region = mask == 1
        near = [(out[:, :, region] - image[:, region]).abs().amax(dim=(1, 2)) < 0.05 for image in data]
        return int(near[0].sum()), int(near[1].sum())

    assert fills(right) == (16, 0)
    from_a, from_b = fills(torch.ones(SIZE, SIZE))
    assert from_a + from_b == 16 and from_a >= 3 and from_b >= 3


# -- guidance written out ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["guided_ddpm", "guided_ddim", "dpm_solver"])
def test_classifier_and_classifier_free_guidance_together_match_the_hand_computed_loop(kind):
    """eps_uncond + w (eps_cond - eps_uncond), then the classifier's gradient (DDPM: mean + variance * gradient;
    DDIM and a stock solver: eps - sqrt(1 - alpha_bar) * gradient), step by step as written out in tests/oracles.py;
    the guidance terms each move the result far more than the tolerance."""
    scheduler = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="learned_range")
    if kind == "guided_ddim":
        scheduler = GuidedDDIMScheduler.from_config(scheduler.config)
    elif kind == "dpm_solver":
        # clipping x_0 (thresholding at 1): unclipped, the cosine schedule's last noise level (sigma ~ 800) makes
        # the samples thousands wide and float32 rounding as large as the tolerance
        scheduler = DPMSolverMultistepScheduler.from_config(scheduler.config, thresholding=True, sample_max_value=1.0)
    pipe = ClassifierGuidedPipeline(unet=_unet(), scheduler=scheduler, classifier=_classifier())
    pipe.set_progress_bar_config(disable=True)
    labels, steps, scale, weight = torch.tensor([1, 7]), 5, 20.0, 3.0
    latents = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    def sample(classifier_scale=0.0, guidance_scale=None):
        run = dict(generator=torch.Generator().manual_seed(0))
        if kind == "guided_ddim":
            run = dict(latents=latents)
        return pipe(class_labels=labels, num_inference_steps=steps, classifier_scale=classifier_scale,
                    guidance_scale=guidance_scale, output_type="latent", **run).images

    def by_hand(classifier_scale=0.0, guidance_scale=None):
        guide = dict(classifier_scale=classifier_scale, guidance_scale=guidance_scale, null_label=10)
        with torch.no_grad():
            if kind == "guided_ddpm":
                return hand_ddpm_loop(pipe, labels, torch.Generator().manual_seed(0), **guide)
            if kind == "guided_ddim":
                return hand_ddim_loop(pipe, labels, latents, **guide)
            return textbook_stock_loop(pipe, labels, steps, torch.Generator().manual_seed(0), **guide)

    both = sample(scale, weight)
    torch.testing.assert_close(both, by_hand(scale, weight), rtol=0, atol=ATOL)
    torch.testing.assert_close(sample(), by_hand(), rtol=0, atol=ATOL)  # the unguided loop is the textbook's too
    for alone in (sample(scale), sample(guidance_scale=weight)):  # each term of the pair matters
        assert (both - alone).abs().max() > 1e-2
