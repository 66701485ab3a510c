"""The web demo's pieces without a browser: the step-by-step chain, the pipeline options, the images."""

from __future__ import annotations

import pytest
import torch

from guided_diffusers import ADMClassifier, ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler
from guided_diffusers.app import DenoisingChain, Guidance, PipelineOptions, load_pipeline
from guided_diffusers.app.images import to_grid_image
from guided_diffusers.app.options import UNCONDITIONAL, parse_class_choice

NUM_CLASSES = 3


def tiny_pipeline(
    class_dropout_prob: float = 0.1, classifier: bool = True, respacing: str = "5", channels: int = 3
) -> ClassifierGuidedPipeline:
    """A randomly initialised 8 px class-conditional pipeline (learned sigma, T = 50) with a noisy classifier."""
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, in_channels=channels, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_head_channels=16, num_classes=NUM_CLASSES,
                          class_dropout_prob=class_dropout_prob, out_channels=2 * channels)
    with torch.no_grad():  # the zero-initialised output conv would make every prediction trivial
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    noisy_classifier = None
    if classifier:
        noisy_classifier = ADMClassifier(sample_size=8, in_channels=channels, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                         attention_downsample_factors=(2,), num_head_channels=16, num_classes=NUM_CLASSES)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=50, variance_type="learned_range", timestep_respacing=respacing)
    pipeline = ClassifierGuidedPipeline(unet=unet.eval(), scheduler=scheduler,
                                        classifier=noisy_classifier.eval() if noisy_classifier else None,
                                        id2label={0: "zero", 1: "one", 2: "two"}, classifier_scale=2.0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def pipe() -> ClassifierGuidedPipeline:
    return tiny_pipeline()


GUIDED = Guidance(class_label=1, classifier_scale=2.0, guidance_scale=2.5)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim"])
def test_denoising_the_whole_chain_is_the_pipeline(pipe, scheduler):
    chain = DenoisingChain(pipe, scheduler=scheduler, num_inference_steps=5, batch_size=2, seed=3,
                           eta=0.5 if scheduler == "ddim" else 0.0)
    chain.denoise(2, GUIDED)
    chain.pred_original_sample(GUIDED)  # looking draws no noise: the trajectory is unchanged
    chain.denoise(3, GUIDED)
    original = pipe.scheduler
    try:
        from guided_diffusers.app.chain import SCHEDULER_CLASSES

        pipe.scheduler = SCHEDULER_CLASSES[scheduler].from_config(original.config)
        expected = pipe(class_labels=[1, 1], num_inference_steps=5, classifier_scale=2.0, guidance_scale=2.5,
                        eta=chain.eta, generator=torch.Generator().manual_seed(3), output_type="pt").images
    finally:
        pipe.scheduler = original
    torch.testing.assert_close((chain.sample / 2 + 0.5).clamp(0, 1), expected, atol=1e-5, rtol=1e-5)
    assert chain.at_end and torch.equal(chain.pred_original_sample(GUIDED), chain.sample)


def test_step_counter_moves_with_denoise_and_diffuse(pipe):
    chain = DenoisingChain(pipe, num_inference_steps=5)
    timesteps = chain.timesteps.tolist()
    assert timesteps == sorted(timesteps, reverse=True) and len(timesteps) == 5
    assert (chain.position, chain.timestep) == (0, timesteps[0])
    assert chain.describe() == f"step 0 of 5, t = {timesteps[0]}"
    chain.denoise(3, Guidance(class_label=0))
    assert (chain.position, chain.timestep) == (3, timesteps[3])
    chain.diffuse(2)
    assert (chain.position, chain.timestep) == (1, timesteps[1])
    chain.denoise(4, Guidance(class_label=2))
    assert chain.at_end and chain.timestep is None and chain.describe() == "step 5 of 5: the sample x_0"
    chain.diffuse(5)
    assert chain.position == 0
    chain.reset(seed=7)
    assert chain.position == 0 and chain.seed == 7


def test_stepping_past_either_end_is_refused(pipe):
    chain = DenoisingChain(pipe, num_inference_steps=5)
    with pytest.raises(ValueError, match="cannot diffuse 1 steps from step 0 of 5.*0 left"):
        chain.diffuse(1)
    chain.denoise(4, Guidance(class_label=0))
    with pytest.raises(ValueError, match="cannot denoise 2 steps from step 4 of 5.*1 left"):
        chain.denoise(2, Guidance(class_label=0))
    before = chain.sample.clone()
    with pytest.raises(ValueError, match="whole number >= 1"):
        chain.denoise(0)
    with pytest.raises(ValueError, match="cannot diffuse 5 steps"):
        chain.diffuse(5)
    assert chain.position == 4 and torch.equal(chain.sample, before)  # a refused move changes nothing


def test_diffuse_then_denoise_with_ddim_eta0(pipe):
    """DDIM with eta 0 is deterministic given x_t; diffusing injects fresh noise, so the chain lands elsewhere."""
    chain = DenoisingChain(pipe, scheduler="ddim", num_inference_steps=5, batch_size=2, seed=1)
    chain.denoise(5, Guidance(class_label=1))
    first = chain.sample.clone()
    twin = DenoisingChain(pipe, scheduler="ddim", num_inference_steps=5, batch_size=2, seed=1)
    twin.denoise(5, Guidance(class_label=1))
    torch.testing.assert_close(twin.sample, first, atol=0, rtol=0)

    chain.diffuse(2)
    at_t = chain.sample.clone()
    chain.denoise(2, Guidance(class_label=1))
    assert chain.at_end and torch.isfinite(chain.sample).all()
    assert chain.sample.abs().max() <= 1 + 1e-5  # the last DDIM step returns the clipped x_0
    assert not torch.allclose(chain.sample, first)
    # The reverse steps from a given x_t draw nothing: the same x_t gives the same sample.
    again = DenoisingChain(pipe, scheduler="ddim", num_inference_steps=5, batch_size=2, seed=99)
    again.denoise(3, Guidance(class_label=1))
    again.sample = at_t.clone()
    again.denoise(2, Guidance(class_label=1))
    torch.testing.assert_close(again.sample, chain.sample, atol=0, rtol=0)


def test_diffuse_is_the_forward_process_from_the_current_sample(pipe):
    """Each forward step is N(sqrt(1 - beta) x, beta I) with the respaced betas, which compose to the alpha_bar ratio."""
    chain = DenoisingChain(pipe, num_inference_steps=5, batch_size=4096, seed=0)
    chain.position = chain.num_steps
    chain.sample = torch.full_like(chain.sample, 0.5)  # a fixed x_0
    chain.diffuse(3)
    alpha_bar = float(chain.scheduler.alphas_cumprod[int(chain.timesteps[2])])
    mean, var = chain.sample.mean().item(), chain.sample.var().item()
    assert abs(mean - 0.5 * alpha_bar**0.5) < 0.01 and abs(var - (1 - alpha_bar)) < 0.01
    # From an intermediate x_t: q(x_{t'} | x_t) scales by sqrt(alpha_bar' / alpha_bar), not from x_0.
    chain.position = 3
    chain.sample = torch.full_like(chain.sample, 1.0)
    chain.diffuse(2)
    ratio = float(chain.scheduler.alphas_cumprod[int(chain.timesteps[1])] / chain.scheduler.alphas_cumprod[int(chain.timesteps[3])])
    assert abs(chain.sample.mean().item() - ratio**0.5) < 0.01 and abs(chain.sample.var().item() - (1 - ratio)) < 0.01


def test_guidance_the_pipeline_cannot_do_is_refused(pipe):
    chain = DenoisingChain(pipe, num_inference_steps=5)
    with pytest.raises(ValueError, match="class id in \\[0, 3\\)"):
        chain.denoise(1, Guidance(class_label=3))
    with pytest.raises(ValueError, match="class to guide toward"):
        chain.denoise(1, Guidance(classifier_scale=1.0))
    no_null = DenoisingChain(tiny_pipeline(class_dropout_prob=0.0, classifier=False), num_inference_steps=5)
    with pytest.raises(ValueError, match="without a null class"):
        no_null.denoise(1, Guidance())
    with pytest.raises(ValueError, match="label dropout"):
        no_null.denoise(1, Guidance(class_label=0, guidance_scale=2.0))
    with pytest.raises(ValueError, match="expected a classifier"):
        no_null.denoise(1, Guidance(class_label=0, classifier_scale=1.0))
    assert no_null.position == 0
    with pytest.raises(ValueError, match="eta=0 with the ddpm scheduler"):
        DenoisingChain(pipe, scheduler="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="'ddpm', 'ddim' or 'fast'"):
        DenoisingChain(pipe, scheduler="euler")


def test_fast_recipe_chain_is_the_pipeline_under_the_fast_recipe_and_cannot_diffuse(pipe):
    from guided_diffusers.pipelines.recipes import FAST_RECIPE

    guidance = Guidance(class_label=1, classifier_scale=2.0, guidance_scale=2.0)
    chain = DenoisingChain(pipe, scheduler="fast", num_inference_steps=4, seed=3)
    x0_before = chain.pred_original_sample(guidance)
    torch.testing.assert_close(chain.pred_original_sample(guidance), x0_before)  # looking does not step the solver
    chain.denoise(4, guidance)
    swapped = ClassifierGuidedPipeline(**pipe.components, id2label=pipe.config.id2label)
    swapped.set_progress_bar_config(disable=True)
    swapped.scheduler = FAST_RECIPE.scheduler(pipe.scheduler.config)
    expected = swapped(class_labels=[1], classifier_scale=2.0, guidance_scale=2.0, num_inference_steps=4,
                       generator=torch.Generator().manual_seed(3),
                       output_type="pt").images
    torch.testing.assert_close((chain.sample / 2 + 0.5).clamp(0, 1), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot diffuse with the fast recipe"):
        chain.diffuse(1)
    chain.reset()
    chain.denoise(4, guidance)  # a reset starts the solver's history afresh: the same chain again
    torch.testing.assert_close((chain.sample / 2 + 0.5).clamp(0, 1), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "fast"])
def test_a_grey_learned_sigma_folder_steps_under_every_sampler_of_the_page(scheduler):
    """The page's samplers on a 1-channel learned-sigma model (2 output channels), the quick start's kind: the fast
    recipe's solver gets the prediction channel alone, and the chain reaches a grey x_0."""
    grey = tiny_pipeline(channels=1)
    chain = DenoisingChain(grey, scheduler=scheduler, num_inference_steps=4, batch_size=2, seed=1)
    guidance = Guidance(class_label=2, classifier_scale=1.0, guidance_scale=2.0)
    assert chain.pred_original_sample(guidance).shape == (2, 1, 8, 8)
    chain.denoise(4, guidance)
    assert chain.position == 4 and chain.sample.shape == (2, 1, 8, 8) and torch.isfinite(chain.sample).all()


def test_unconditional_chain_uses_the_null_class(pipe):
    chain = DenoisingChain(pipe, num_inference_steps=5, seed=4)
    chain.denoise(5)
    expected = pipe(batch_size=1, num_inference_steps=5, generator=torch.Generator().manual_seed(4), output_type="pt").images
    torch.testing.assert_close((chain.sample / 2 + 0.5).clamp(0, 1), expected, atol=1e-5, rtol=1e-5)


def test_options_and_loading(pipe, tmp_path):
    options = PipelineOptions.from_pipeline(pipe)
    assert options.class_choices == (("none (unconditional)", UNCONDITIONAL), ("0: zero", "0"), ("1: one", "1"), ("2: two", "2"))
    assert options.default_class == "0" and options.has_classifier and options.has_null_class
    assert (options.default_classifier_scale, options.num_train_timesteps, options.default_steps, options.image_size) == (2.0, 50, 5, 8)
    plain = PipelineOptions.from_pipeline(tiny_pipeline(class_dropout_prob=0.0, classifier=False, respacing=""))
    assert UNCONDITIONAL not in dict(plain.class_choices).values() and not plain.has_classifier
    from guided_diffusers.pipelines.recipes import FAST_RECIPE

    # No recommended respacing in the folder: the fast recipe's sampler and steps (at most T) are the defaults.
    assert (plain.default_scheduler, plain.default_steps) == ("fast", min(50, FAST_RECIPE.steps))
    assert options.default_scheduler == "ddpm"  # the folder's own respacing is kept, with its ancestral sampler
    assert parse_class_choice("2") == 2 and parse_class_choice(UNCONDITIONAL) is None
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(tmp_path / "missing")
    pipe.save_pretrained(tmp_path / "saved")
    loaded = load_pipeline(tmp_path / "saved")
    assert PipelineOptions.from_pipeline(loaded) == options


def test_grid_image():
    samples = torch.linspace(-1, 1, 5 * 3 * 8 * 8).reshape(5, 3, 8, 8)
    image = to_grid_image(samples, display_size=32, padding=2)
    assert image.size == (3 * 32 + 2 * 2, 2 * 32 + 2)  # 5 tiles: 3 columns, 2 rows, each 8 px scaled by 4
    assert to_grid_image(samples[:2, :1], display_size=8).size == (8 * 2 + 2, 8)
    with pytest.raises(ValueError, match="NCHW"):
        to_grid_image(samples[0])
