"""The pipelines against results known without them: RePaint's fill under the exact denoiser of two images,
classifier plus classifier-free guidance against the sampling loops written out by hand (tests/oracles.py), and what
the guidance reads (noise levels, alpha_bar, x_0, clipping, CLIP's similarity gradient) against its definition."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from oracles import hand_ddim_loop, hand_ddpm_loop, randomize_zeros, textbook_stock_loop, two_image_denoiser

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


def _unet() -> ADMUNet2DModel:
    torch.manual_seed(0)
    return randomize_zeros(ADMUNet2DModel(sample_size=SIZE, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                      attention_downsample_factors=(2,), num_classes=10, out_channels=6,
                                      class_dropout_prob=0.1, num_head_channels=16, timestep_scale=1000 / T), 1)


def _classifier() -> ADMClassifier:
    torch.manual_seed(2)
    return randomize_zeros(ADMClassifier(sample_size=SIZE, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
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
    labels, steps, scale, weight = torch.tensor([1, 7, 4]), 5, 20.0, 3.0  # an odd batch: the halves are found by size
    latents = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

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


# -- what the guidance reads: noise levels, alpha_bar, x_0 and clipping of stock schedulers (found by mutation testing)


def test_noise_levels_and_stock_alpha_bars_are_the_processes():
    """sigma = sqrt((1 - alpha_bar) / alpha_bar) (inf where alpha_bar is 0); a stock VP scheduler between its table's
    steps is at the linearly interpolated alpha_bar, a sigma-space one at 1 / (1 + sigma^2) of its own sigma."""
    from guided_diffusers.pipelines.sampling import noise_level, stock_alpha_bar

    ours = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine")
    table = ours.alphas_cumprod.tolist()
    for t in (0, 7, T - 1):
        assert noise_level(ours, torch.tensor(t)) == pytest.approx(((1 - table[t]) / table[t]) ** 0.5, rel=1e-12)
    jsd = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="jsd")  # its last beta is 1: alpha_bar_T = 0
    assert float(jsd.alphas_cumprod[-1]) == 0 and noise_level(jsd, torch.tensor(T - 1)) == float("inf")
    like = torch.zeros((), dtype=torch.float64)
    ddpm = DDPMScheduler.from_config(ours.config)
    table = ddpm.alphas_cumprod.tolist()  # diffusers' own (float32) table
    for position in (12.25, T - 1.5, T - 1.0):
        low = int(position)
        weight = position - low
        expected = table[low] * (1 - weight) + table[min(low + 1, T - 1)] * weight
        assert float(stock_alpha_bar(ddpm, torch.tensor(position), like)) == pytest.approx(expected, rel=1e-12)
        assert noise_level(ddpm, torch.tensor(position)) == pytest.approx(((1 - expected) / expected) ** 0.5, rel=1e-12)
    euler = EulerDiscreteScheduler.from_config(ours.config)
    for i in range(7):
        euler.set_timesteps(7)  # a fresh walk: the scheduler finds its step from the timestep
        sigma = float(euler.sigmas[i])
        assert float(stock_alpha_bar(euler, euler.timesteps[i], like)) == pytest.approx(1 / (1 + sigma**2), rel=1e-6)
    assert any(float(t) != int(t) for t in euler.timesteps)  # fractional timesteps among them


def test_stock_clip_settings_make_a_scheduler_clip_as_asked():
    from guided_diffusers.pipelines.sampling import stock_clip_settings, stock_clips

    assert stock_clip_settings(DDIMScheduler, True) == {"clip_sample": True}
    assert stock_clip_settings(DDIMScheduler, False) == {"clip_sample": False}
    assert stock_clip_settings(DPMSolverMultistepScheduler, True) == {"thresholding": True, "sample_max_value": 1.0}
    assert stock_clip_settings(DPMSolverMultistepScheduler, False) == {"thresholding": False}
    assert stock_clip_settings(EulerDiscreteScheduler, False) == {}
    with pytest.raises(ValueError, match=r"^expected clip_sample_range 1 for clipping under DPMSolverMultistepScheduler"):
        stock_clip_settings(DPMSolverMultistepScheduler, True, {"clip_sample_range": 2.0})
    config = GuidedDDPMScheduler(num_train_timesteps=T).config
    for stock, made, clips in (
        (DDIMScheduler, {"clip_sample": True}, True),
        (DDIMScheduler, {"clip_sample": False}, False),
        (DPMSolverMultistepScheduler, {"thresholding": True, "sample_max_value": 1.0}, True),
        (DPMSolverMultistepScheduler, {"thresholding": True, "sample_max_value": 2.0}, False),  # a threshold, not [-1, 1]
        (DPMSolverMultistepScheduler, {"thresholding": False}, False),
        (EulerDiscreteScheduler, {}, None),
    ):
        assert stock_clips(stock.from_config(config, **made)) is clips, (stock.__name__, made)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_a_stock_solvers_pred_original_sample_is_x0_of_the_prediction(prediction_type):
    """DPM-Solver's step gives no x_0: the callback's is (x - sqrt(1 - ab) eps) / sqrt(ab), or sqrt(ab) x -
    sqrt(1 - ab) v, of what the network saw and said at that step."""
    config = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="learned_range").config
    scheduler = DPMSolverMultistepScheduler.from_config(config, prediction_type=prediction_type)
    pipe = ClassifierGuidedPipeline(unet=_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    forwards, seen = [], []
    pipe.unet.register_forward_hook(lambda module, args, output: forwards.append((args[0], output.sample)))
    pipe(class_labels=[1, 7], num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0),
         callback_on_step_end=lambda p, i, t, tensors: seen.append((t, tensors["pred_original_sample"])) or {},
         callback_on_step_end_tensor_inputs=["pred_original_sample"])
    assert len(seen) == len(forwards) == 4
    for (t, x0), (x, output) in zip(seen, forwards):
        alpha_bar = float(scheduler.alphas_cumprod[int(t)])
        prediction = output[:, :3]
        if prediction_type == "epsilon":
            expected = (x - (1 - alpha_bar) ** 0.5 * prediction) / alpha_bar**0.5
        else:
            expected = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * prediction
        # float32 alpha_bar against float64 here, amplified by 1 / sqrt(alpha_bar) at the noisiest step
        torch.testing.assert_close(x0, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "grey"])
def test_clip_guidance_gradient_is_the_similarity_gradient_written_out(channels):
    """CLIP guidance's gradient at x_t: of the sum over images of cos(CLIP image features, prompt features), the
    image being the predicted x_0 (classifier-free guided epsilon) clamped, mapped to [0, 1], resized bilinearly to
    CLIP's size, grey repeated to RGB and normalised with CLIP's mean and std; the prompt's features those of its
    tokens padded and truncated to the tokenizer's length; times the scale. Two different prompts, one per image."""
    from test_pipelines import _tiny_clip

    from guided_diffusers.pipelines.sampling import _CLIP_MEAN, _CLIP_STD, Guidance, clip_gradient, clip_text_embeddings

    clip_model, tokenizer = _tiny_clip()
    torch.manual_seed(0)
    unet = randomize_zeros(ADMUNet2DModel(sample_size=SIZE, in_channels=channels, model_channels=32, channel_mult=(1, 2),
                                      num_res_blocks=1, attention_downsample_factors=(2,), num_classes=10,
                                      out_channels=2 * channels, class_dropout_prob=0.1, num_head_channels=16), 1)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="learned_range")
    prompts = ["a cat", "a dog that is very very long and goes on past the end"]  # the second one is truncated
    labels, t, scale, weight = torch.tensor([1, 7]), torch.tensor(20), 30.0, 3.0
    x = torch.randn(2, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

    with torch.no_grad():
        tokens = tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt")
        text = clip_model.get_text_features(**tokens)
        text = text if torch.is_tensor(text) else text.pooler_output
        text = text / text.norm(dim=-1, keepdim=True)
    embedded = clip_text_embeddings(clip_model, tokenizer, prompts, 2, torch.device("cpu"))
    torch.testing.assert_close(embedded, text)

    with torch.enable_grad():
        x_in = x.clone().requires_grad_(True)
        both = unet(torch.cat([x_in, x_in]), t, class_labels=torch.tensor([1, 7, 10, 10])).sample
        conditional, unconditional = both[:2, :channels], both[2:, :channels]
        eps = unconditional + weight * (conditional - unconditional)
        alpha_bar = float(scheduler.alphas_cumprod[20])
        x0 = (x_in - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5
        size = clip_model.config.vision_config.image_size
        images = torch.nn.functional.interpolate((x0.clamp(-1, 1) + 1) / 2, size=(size, size), mode="bilinear",
                                                 align_corners=False)
        images = images.repeat(1, 3 // channels, 1, 1)
        pixels = (images - torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
        features = clip_model.get_image_features(pixel_values=pixels)
        features = features if torch.is_tensor(features) else features.pooler_output
        similarity = (features / features.norm(dim=-1, keepdim=True) * text).sum()
        (expected,) = torch.autograd.grad(similarity, x_in)

    guidance = Guidance(labels, labels, 2, guidance_scale=weight, text=embedded, clip_guidance_scale=scale)
    output, gradient = clip_gradient(clip_model, scheduler, unet, x, t, guidance)
    torch.testing.assert_close(gradient, expected * scale, rtol=1e-4, atol=1e-6)
    assert gradient.abs().max() > 1e-3  # a gradient that is there
    torch.testing.assert_close(output[:, :channels], eps.detach())
