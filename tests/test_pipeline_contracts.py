"""Pipelines drive every stock scheduler as diffusers' own pipelines do, with diffusers' call conventions."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import (
    AutoModel,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.models.unets.unet_2d import UNet2DOutput
from oracles import randomize_zeros
from PIL import Image

from guided_diffusers.pipelines.sampling import stock_clip_settings
from guided_diffusers import (
    ADMClassifier,
    ADMUNet2DModel,
    ClassifierGuidedPipeline,
    DDIMInversionPipeline,
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

STOCK = [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler,
         HeunDiscreteScheduler]
T = 40
SHAPE = (2, 3, 8, 8)


def _unet(class_dropout_prob: float = 0.0, in_channels: int = 3) -> ADMUNet2DModel:
    # improved-diffusion's network: learned range, embeds t * 1000 / T (its timestep_scale)
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, in_channels=in_channels, model_channels=32, channel_mult=(1, 2),
                          num_res_blocks=1, attention_downsample_factors=(2,), num_classes=10,
                          out_channels=2 * in_channels, class_dropout_prob=class_dropout_prob,
                          timestep_scale=1000 / T)
    return randomize_zeros(unet, 1)


def _classifier() -> ADMClassifier:
    torch.manual_seed(2)
    classifier = ADMClassifier(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                               attention_downsample_factors=(2,), num_classes=10, num_head_channels=16,
                               timestep_scale=1000 / T)
    return randomize_zeros(classifier, 3)


def _guided_scheduler() -> GuidedDDPMScheduler:
    # improved-diffusion's process: cosine, learned range
    return GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="learned_range")


def _pipeline(stock=None, **kwargs) -> ClassifierGuidedPipeline:
    scheduler = _guided_scheduler()
    if stock is not None:
        scheduler = stock.from_config(scheduler.config)  # the diffusers way to swap
    pipe = ClassifierGuidedPipeline(unet=_unet(**kwargs), scheduler=scheduler, classifier=_classifier())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _textbook_loop(pipe, labels: torch.Tensor, steps: int, seed: int, scale: float) -> torch.Tensor:
    """diffusers' canonical sampling loop written out, with classifier guidance on epsilon at the VP input."""
    scheduler, unet, classifier = pipe.scheduler, pipe.unet, pipe.classifier
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(SHAPE, generator=generator) * scheduler.init_noise_sigma
    keeps_variance = isinstance(scheduler, DDPMScheduler)
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(latents, t)
        output = unet(model_input, t, class_labels=labels).sample  # the network scales t itself
        eps = output[:, :3]
        if scale:
            with torch.enable_grad():
                x = model_input.detach().requires_grad_(True)
                log_probs = torch.log_softmax(classifier(x, t).logits, dim=-1)
                gradient = torch.autograd.grad(log_probs[torch.arange(len(labels)), labels].sum(), x)[0] * scale
            if scheduler.init_noise_sigma != 1:  # sigma space: the scheduler's own sigma at this step
                alpha_bar = 1 / (1 + scheduler.sigmas[scheduler.step_index] ** 2)
            else:
                alpha_bar = scheduler.alphas_cumprod[int(t)]
            eps = eps - (1 - alpha_bar) ** 0.5 * gradient
        model_output = torch.cat([eps, output[:, 3:]], dim=1) if keeps_variance else eps
        kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        latents = scheduler.step(model_output, t, latents, **kwargs).prev_sample
    return (latents / 2 + 0.5).clamp(0, 1)


@pytest.mark.parametrize("scale", [0.0, 2.0], ids=["unguided", "classifier_guided"])
@pytest.mark.parametrize("stock", STOCK, ids=lambda c: c.__name__)
def test_pipeline_matches_textbook_loop_for_every_stock_scheduler(stock, scale, record_property):
    pipe = _pipeline(stock)
    labels = torch.tensor([1, 7])
    with torch.no_grad():
        images = pipe(class_labels=labels, num_inference_steps=6, classifier_scale=scale, output_type="pt",
                      generator=torch.Generator().manual_seed(0)).images
        expected = _textbook_loop(pipe, labels, 6, 0, scale)
    error = (images - expected).abs().max().item()
    record_property("max_abs_error", error)
    print(f"\n{stock.__name__} scale={scale}: max |pipeline - textbook| = {error:.2e}")
    assert error < 1e-4
    assert images.std() > 0.01  # a real image, not a constant
    if scale:  # and the guidance reached it
        unguided = pipe(class_labels=labels, num_inference_steps=6, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).images
        assert (images - unguided).abs().max() > 1e-3


class _GaussianClassifier(torch.nn.Module):
    """log p(y | x) up to a constant for classes at fixed means: its gradient points from x toward the class mean."""

    def __init__(self, means: torch.Tensor):
        super().__init__()
        self.register_buffer("means", means)

    def forward(self, x, timesteps):
        distances = ((x[:, None] - self.means[None]) ** 2).flatten(2).sum(-1)
        return type("Output", (), {"logits": -2 * distances})()  # a Gaussian likelihood of standard deviation 0.5


@pytest.mark.parametrize("stock", [EulerDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler,
                                   UniPCMultistepScheduler, DDIMScheduler], ids=lambda c: c.__name__)
def test_guidance_moves_samples_toward_the_class(stock):
    """The gradient is taken at the VP-scaled input and shifts epsilon the right way: from the same x_T, guided
    samples end nearer the class the classifier favours, in sigma-space and VP schedulers alike."""
    means = torch.stack([torch.full((3, 8, 8), -0.5), torch.full((3, 8, 8), 0.5)])
    pipe = _pipeline(stock)
    # "leading" starts at t = 36 (sigma 6) rather than the cosine schedule's last step (sigma 800), where one Euler
    # step of a strong, stiff guidance overshoots whatever its sign
    pipe.scheduler = stock.from_config(pipe.scheduler.config, timestep_spacing="leading",
                                       **stock_clip_settings(stock, False))  # unclipped, as made
    pipe.classifier.forward = _GaussianClassifier(means).forward  # the pipeline's classifier, with known log-probs
    table = _guided_scheduler().alphas_cumprod

    def exact_unet(sample, timestep, class_labels=None, **kwargs):
        """The exact model of N(0, 0.5^2) data: eps = sqrt(1 - ab) x_t / (ab / 4 + 1 - ab), at the scheduler's t."""
        position = float(torch.as_tensor(timestep).reshape(-1)[0])
        low = int(position)
        weight = position - low
        alpha_bar = float(table[low] * (1 - weight) + table[min(low + 1, T - 1)] * weight)
        eps = (1 - alpha_bar) ** 0.5 * sample / (alpha_bar / 4 + 1 - alpha_bar)
        return UNet2DOutput(sample=torch.cat([eps, torch.zeros_like(eps)], dim=1))

    pipe.unet.forward = exact_unet

    def sample(scale, label=1):
        return pipe(class_labels=[label, label], num_inference_steps=10, classifier_scale=scale, output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    unguided, guided = sample(0.0), sample(10.0)
    assert 0.3 < unguided.std().item() < 0.8  # the exact model samples its data, N(0, 0.5^2), in 10 steps
    assert (guided - unguided).mean() > 5e-4  # toward the class mean 0.5 ...
    assert (guided - means[1]).pow(2).mean() < (unguided - means[1]).pow(2).mean()  # ... and nearer it
    assert (sample(10.0, label=0) - unguided).mean() < -5e-4  # and toward -0.5 for the other class


def test_variance_channels_kept_only_where_the_scheduler_reads_them():
    from guided_diffusers.pipelines.sampling import reads_variance_channels

    config = _guided_scheduler().config
    assert reads_variance_channels(_guided_scheduler())
    assert reads_variance_channels(DDPMScheduler.from_config(config))  # its step splits them by the sample's channels
    for stock in (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
                  UniPCMultistepScheduler):
        swapped = stock.from_config(config)
        assert not reads_variance_channels(swapped), stock.__name__


def _every_scheduler():
    from diffusers.utils.import_utils import is_scipy_available

    from guided_diffusers.pipelines.recipes import FAST_RECIPE

    config = _guided_scheduler().config
    schedulers = {"GuidedDDPMScheduler": GuidedDDPMScheduler.from_config(config),
                  "GuidedDDIMScheduler": GuidedDDIMScheduler.from_config(config), "FAST_RECIPE": FAST_RECIPE.scheduler(config)}
    for cls in GuidedDDPMScheduler._get_compatibles():
        if cls.__name__ == "LMSDiscreteScheduler" and not is_scipy_available():
            continue  # LMS needs scipy
        schedulers[cls.__name__] = cls.from_config(config)
    return schedulers


@pytest.mark.parametrize("channels", [1, 3], ids=["grey", "rgb"])
def test_learned_sigma_models_sample_under_every_scheduler(channels):
    """A learned-sigma model (2C output channels) under every scheduler our configs swap with: each step gets the
    channels it reads, so grey models sample where a scheduler slicing [:, :3] would see variance channels."""
    from guided_diffusers.pipelines.recipes import FAST_RECIPE

    unet = _unet(in_channels=channels)
    names = []
    for name, scheduler in _every_scheduler().items():
        pipe = ClassifierGuidedPipeline(unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        steps = FAST_RECIPE.steps if name == "FAST_RECIPE" else 4
        images = pipe(class_labels=[1, 2], num_inference_steps=steps, output_type="pt",
                      generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (2, channels, 8, 8), name
        assert torch.isfinite(images).all() and images.std() > 0.01, name
        names.append(name)
    assert len(names) >= 14  # ours, the fast recipe and the stock schedulers of _compatibles


def test_step_noise_is_refused_by_a_scheduler_that_cannot_take_it():
    pipe = _pipeline(EulerDiscreteScheduler)
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    noise = torch.zeros(4, *SHAPE)
    with pytest.raises(ValueError, match="expected no step_noise with EulerDiscreteScheduler"):
        pipe(class_labels=[1, 2], num_inference_steps=4, step_noise=noise)
    assert calls == []


def test_fractional_timesteps_reach_the_embedding_rescaled():
    """Euler's fractional timesteps reach the network as they are, and the network embeds them times its own
    timestep_scale (1000 / T here), continuous, not truncated."""
    pipe = _pipeline(EulerDiscreteScheduler)
    given, embedded = [], []
    pipe.unet.register_forward_pre_hook(lambda module, args: given.append(float(torch.as_tensor(args[1]).reshape(-1)[0])))
    pipe.unet.time_proj.register_forward_pre_hook(lambda module, args: embedded.append(float(args[0].reshape(-1)[0])))
    pipe(class_labels=[1, 2], num_inference_steps=5, output_type="latent", generator=torch.Generator().manual_seed(0))
    assert given == pytest.approx(pipe.scheduler.timesteps.float().tolist(), rel=1e-6)
    assert embedded == pytest.approx([t * 1000 / T for t in given], rel=1e-6)
    assert any(value != int(value) for value in embedded)


def test_clip_denoised_is_honoured_or_refused():
    """Our schedulers clip per call; a stock scheduler clips as it was made, and a call asking otherwise is refused
    before any work (no config is changed during a call)."""
    pipe = _pipeline(GuidedDDIMScheduler)
    run = dict(class_labels=[1, 2], num_inference_steps=4, output_type="latent")
    clipped = pipe(**run, clip_denoised=True, generator=torch.Generator().manual_seed(0)).images
    unclipped = pipe(**run, clip_denoised=False, generator=torch.Generator().manual_seed(0)).images
    assert (clipped - unclipped).abs().max() > 1e-4
    assert pipe.scheduler.config.clip_sample is True
    for stock, made in ((DDIMScheduler, {"clip_sample": True}), (DPMSolverMultistepScheduler, {})):
        stock_pipe = _pipeline(stock)
        stock_pipe.scheduler = stock.from_config(stock_pipe.scheduler.config, **made)
        before = dict(stock_pipe.scheduler.config)
        calls = []
        stock_pipe.unet.register_forward_hook(lambda *args: calls.append(1))
        asked = not made.get("clip_sample", False)
        with pytest.raises(ValueError, match=f"expected clip_denoised None for this {stock.__name__}"):
            stock_pipe(**run, clip_denoised=asked)
        assert calls == [] and dict(stock_pipe.scheduler.config) == before
        stock_pipe(**run, clip_denoised=not asked)  # as it was made: accepted
    # made with clipping (as the recipes make it), DDIM's stock clipping is what clip_sample=True gives
    from guided_diffusers.pipelines.sampling import stock_clip_settings

    dpm = _pipeline(DPMSolverMultistepScheduler)
    dpm.scheduler = DPMSolverMultistepScheduler.from_config(
        dpm.scheduler.config, **stock_clip_settings(DPMSolverMultistepScheduler, True))
    clipped_dpm = dpm(**run, clip_denoised=True, generator=torch.Generator().manual_seed(0)).images
    plain_dpm = _pipeline(DPMSolverMultistepScheduler)(**run, generator=torch.Generator().manual_seed(0)).images
    assert (clipped_dpm - plain_dpm).abs().max() > 1e-4
    # Euler cannot clip: True refused, False accepted
    euler = _pipeline(EulerDiscreteScheduler)
    with pytest.raises(ValueError, match="EulerDiscreteScheduler, which cannot clip"):
        euler(**run, clip_denoised=True)
    euler(**run, clip_denoised=False)


def test_stock_step_counts_are_checked_before_work():
    pipe = _pipeline(DPMSolverMultistepScheduler)
    with pytest.raises(ValueError, match=r"expected num_inference_steps as a whole number in \[1, 40\].*got 41"):
        pipe(class_labels=[1], num_inference_steps=41)
    with pytest.raises(ValueError, match=r"expected num_inference_steps as a whole number in \[1, 40\].*got 0"):
        pipe(class_labels=[1], num_inference_steps=0)


# ---------------------------------------------------------------------------------------------------------------------
# Call conventions
# ---------------------------------------------------------------------------------------------------------------------


def test_callback_sees_the_properties_and_may_replace_latents():
    pipe = _pipeline(guided := None, class_dropout_prob=0.1)
    seen = []
    replacement = torch.full(SHAPE, 0.25)

    def callback(pipeline, step, timestep, tensors):
        seen.append((pipeline.num_timesteps, pipeline.guidance_scale, pipeline.do_classifier_free_guidance))
        return {"latents": replacement} if step == pipeline.num_timesteps - 1 else {}

    out = pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=3.0, callback_on_step_end=callback,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert seen == [(4, 3.0, True)] * 4
    torch.testing.assert_close(out, replacement)
    assert guided is None and not pipe(class_labels=[1], num_inference_steps=1, guidance_scale=1.0,
                                       output_type="latent").images.isnan().any()
    assert pipe.do_classifier_free_guidance is False  # w = 1 is the conditional model alone


def test_callback_latents_of_another_shape_are_refused():
    pipe = _pipeline()
    with pytest.raises(ValueError, match=r"expected callback latents of shape \(2, 3, 8, 8\), got \(1, 3, 8, 8\)"):
        pipe(class_labels=[1, 2], num_inference_steps=3,
             callback_on_step_end=lambda p, i, t, k: {"latents": torch.zeros(1, 3, 8, 8)})


def test_interrupt_skips_the_remaining_steps():
    pipe = _pipeline()
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))

    def stop_after_two(pipeline, step, timestep, tensors):
        if step == 1:
            pipeline._interrupt = True
        return {}

    pipe(class_labels=[1, 2], num_inference_steps=5, callback_on_step_end=stop_after_two, output_type="latent")
    assert len(calls) == 2 and pipe.interrupt is True
    pipe(class_labels=[1, 2], num_inference_steps=5, output_type="latent")  # a new call starts uninterrupted
    assert len(calls) == 7


def test_output_type_latent_is_the_final_sample():
    pipe = _pipeline()
    latent = pipe(class_labels=[1, 2], num_inference_steps=3, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images
    images = pipe(class_labels=[1, 2], num_inference_steps=3, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(images, (latent / 2 + 0.5).clamp(0, 1))


@pytest.mark.parametrize("stock", [None, EulerDiscreteScheduler], ids=["guided_ddpm", "euler"])
def test_batch_consistency_with_per_image_generators(stock):
    pipe = _pipeline(stock)
    both = pipe(class_labels=[1, 2], num_inference_steps=3, output_type="latent",
                generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]).images
    first = pipe(class_labels=[1], num_inference_steps=3, output_type="latent",
                 generator=[torch.Generator().manual_seed(5)]).images
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-4)


def test_inversion_pipeline_takes_a_generator():
    scheduler = GuidedDDIMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type="learned_range")
    pipe = DDIMInversionPipeline(unet=_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 8, 8) * 2 - 1
    run = dict(class_labels=[1], edit_class_labels=[4], num_inference_steps=4, eta=1.0, output_type="pt")
    a = pipe(image, generator=torch.Generator().manual_seed(0), **run).images
    b = pipe(image, generator=torch.Generator().manual_seed(0), **run).images
    c = pipe(image, generator=torch.Generator().manual_seed(1), **run).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_image_inputs_accept_what_diffusers_accepts():
    from guided_diffusers.pipelines.sampling import to_model_input

    array = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    reference = torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1
    variants = {
        "uint8 array": array,
        "list of uint8 arrays": list(array),
        "float array in [0, 1]": array.astype(np.float32) / 255,
        "list of PIL": [Image.fromarray(a) for a in array],
        "tensor": reference,
        "list of CHW tensors": list(reference),
        "list of 1CHW tensors": [r[None] for r in reference],
    }
    for name, images in variants.items():
        torch.testing.assert_close(to_model_input(images, 8), reference, rtol=1e-6, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match=r"expected image tensors in \[-1, 1\], got values in \[0, 255\]"):
        to_model_input((reference + 1) * 127.5)
    with pytest.raises(ValueError, match="one kind"):
        to_model_input([array[0], reference[0]])


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------


def test_automodel_loads_our_models_from_a_pipeline_folder(tmp_path):
    pipe = _pipeline()
    pipe.save_pretrained(tmp_path)
    # diffusers imports the library named in model_index.json itself; (its load id needs the path as a str)
    unet = AutoModel.from_pretrained(str(tmp_path), subfolder="unet")
    classifier = AutoModel.from_pretrained(str(tmp_path), subfolder="classifier")
    assert type(unet) is ADMUNet2DModel and type(classifier) is ADMClassifier
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(unet(x, torch.tensor([5]), class_labels=torch.tensor([1])).sample,
                               pipe.unet(x, torch.tensor([5]), class_labels=torch.tensor([1])).sample)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is ClassifierGuidedPipeline


# ---------------------------------------------------------------------------------------------------------------------
# Guidance in a limited interval of noise levels
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stock", [None, DPMSolverMultistepScheduler], ids=["guided_ddpm", "dpm_solver"])
def test_interval_covering_every_step_is_plain_guidance(stock):
    pipe = _pipeline(stock, class_dropout_prob=0.1)
    run = dict(class_labels=[1, 2], num_inference_steps=5, classifier_scale=2.0, guidance_scale=3.0, output_type="latent")
    plain = pipe(**run, generator=torch.Generator().manual_seed(0)).images
    covering = pipe(**run, guidance_interval=(0.0, float("inf")), generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(covering, plain, rtol=0, atol=0)


def test_interval_guides_only_inside_and_saves_evaluations():
    pipe = _pipeline(class_dropout_prob=0.1)
    pipe.scheduler.set_timesteps(6)
    alpha_bars = [float(pipe.scheduler.alphas_cumprod[int(t)]) for t in pipe.scheduler.timesteps]
    levels = [float(np.sqrt((1 - alpha_bar) / alpha_bar)) for alpha_bar in alpha_bars]  # sigma, by hand
    low, high = sorted(levels)[1], sorted(levels)[3]  # inside: the 3rd and 4th lowest noise levels
    unet_batches, classifier_calls = [], []
    pipe.unet.register_forward_hook(lambda module, args, output: unet_batches.append((int(args[1]), args[0].shape[0])))
    pipe.classifier.register_forward_hook(lambda module, args, output: classifier_calls.append(int(args[1])))
    run = dict(class_labels=[1, 2], num_inference_steps=6, classifier_scale=2.0, guidance_scale=3.0, output_type="latent")
    inside = pipe(**run, guidance_interval=(low, high), generator=torch.Generator().manual_seed(0)).images
    # exactly the steps whose noise level is in (low, high]: the classifier and the null-class batch there, not elsewhere
    timesteps = pipe.scheduler.timesteps.tolist()
    guided = [t for t, level in zip(timesteps, levels) if low < level <= high]
    assert len(guided) == 2 and classifier_calls == guided
    assert unet_batches == [(t, 4 if t in guided else 2) for t in timesteps]
    nowhere = pipe(**run, guidance_interval=(0.0, min(levels) / 2), generator=torch.Generator().manual_seed(0)).images
    conditional = pipe(class_labels=[1, 2], num_inference_steps=6, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(nowhere, conditional, rtol=0, atol=0)
    assert (inside - conditional).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"expected guidance_interval \(low, high\) with 0 <= low < high"):
        pipe(**run, guidance_interval=(2.0, 1.0))


def test_automodel_loads_our_model_folders_saved_alone(tmp_path):
    """diffusers' AutoModel finds our classes by a model folder's own config (not only through model_index.json)."""
    unet, classifier = _unet(), _classifier()
    unet.save_pretrained(tmp_path / "unet")
    classifier.save_pretrained(tmp_path / "classifier")
    loaded_unet = AutoModel.from_pretrained(str(tmp_path / "unet"))
    loaded_classifier = AutoModel.from_pretrained(str(tmp_path / "classifier"))
    assert type(loaded_unet) is ADMUNet2DModel and type(loaded_classifier) is ADMClassifier
    for name, parameter in unet.state_dict().items():
        assert torch.equal(loaded_unet.state_dict()[name], parameter), name


def test_a_variant_folder_loaded_without_its_variant_fails_in_diffusers_words(tmp_path):
    unet = _unet()
    unet.save_pretrained(tmp_path, variant="fp16")
    with pytest.raises(OSError, match=r"^Error no file named diffusion_pytorch_model\.safetensors found in directory") as error:
        ADMUNet2DModel.from_pretrained(tmp_path)
    assert "pass variant='fp16'" in str(error.value) and "\n" not in str(error.value)
    assert torch.equal(ADMUNet2DModel.from_pretrained(tmp_path, variant="fp16").conv_in.weight, unet.conv_in.weight)


@pytest.mark.parametrize("stock", ["DDIMScheduler", "DDIMInverseScheduler"])
def test_inversion_refuses_diffusers_ddim_schedulers_naming_ours(stock):
    import diffusers

    scheduler = getattr(diffusers, stock).from_config(_guided_scheduler().config)
    with pytest.raises(ValueError, match=r"expected a GuidedDDIMScheduler.*GuidedDDIMScheduler\.from_config"):
        DDIMInversionPipeline(unet=_unet(), scheduler=scheduler)


def test_num_images_per_prompt_repeats_each_label_as_diffusers_repeats_each_prompt():
    pipe = _pipeline()
    run = dict(num_inference_steps=3, output_type="pt")
    repeated = pipe(class_labels=[1, 7], num_images_per_prompt=3, generator=torch.Generator().manual_seed(0), **run).images
    spelled = pipe(class_labels=[1, 1, 1, 7, 7, 7], generator=torch.Generator().manual_seed(0), **run).images
    assert repeated.shape[0] == 6
    torch.testing.assert_close(repeated, spelled, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected num_images_per_prompt as a whole number >= 1, got 0"):
        pipe(class_labels=[1], num_images_per_prompt=0)


def test_bad_inputs_of_the_sampling_pipelines_are_one_line_before_any_work():
    """The issue-23 rows the pipelines own: each refused in one line, before a network runs."""
    from guided_diffusers.pipelines.pipeline_adm_inpaint import MAX_JUMP_N_SAMPLE, repaint_schedule, to_mask
    from guided_diffusers.pipelines.recipes import SamplingRecipe

    pipe = _pipeline(DPMSolverMultistepScheduler)
    calls = []
    pipe.unet.register_forward_hook(lambda *args: calls.append(1))
    # as many DPM-Solver steps as trained ones: diffusers' grid repeats a timestep, and the solver divides by zero
    with pytest.raises(ValueError, match="expected fewer steps: DPMSolverMultistepScheduler lays 40 steps.*repeated"):
        pipe(class_labels=[1], num_inference_steps=T)
    assert calls == []
    with pytest.raises(ValueError, match=f"expected jump_n_sample as a whole number in \\[1, {MAX_JUMP_N_SAMPLE}\\], got 100000000"):
        repaint_schedule(250, 10, 10**8)
    with pytest.raises(ValueError, match=r"expected a one-channel mask_image array, got shape \(8, 8, 3\)"):
        to_mask(np.zeros((8, 8, 3), dtype=np.uint8), (8, 8), 1)
    with pytest.raises(ValueError, match="expected a sampling recipe as NAME:STEPS"):
        SamplingRecipe.parse("ddpm:\u00b2")
    with pytest.raises(ValueError, match="expected id2label keys as whole-number class ids, got 'cat'"):
        ClassifierGuidedPipeline(unet=_unet(), scheduler=_guided_scheduler(), id2label={"cat": "a cat"})


def _unconditional_unet(out_channels: int) -> ADMUNet2DModel:
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), out_channels=out_channels)
    return randomize_zeros(unet, 1)


def _saved_folder(path, out_channels: int):
    variance_type = "learned_range" if out_channels == 6 else "fixed_small"
    scheduler = GuidedDDPMScheduler(num_train_timesteps=T, beta_schedule="cosine", variance_type=variance_type)
    ClassifierGuidedPipeline(unet=_unconditional_unet(out_channels), scheduler=scheduler).save_pretrained(path)
    return path


def test_a_stock_pipeline_whose_scheduler_would_misread_variance_channels_is_one_line_before_any_unet_work(tmp_path, monkeypatch):
    """DDIMPipeline (which makes any scheduler a DDIMScheduler) and other stock pipelines hand a learned-sigma output
    whole to their scheduler's step, which failed on a tensor size naming nothing: refused at the first forward, before
    the network runs, naming the pipeline that hands the scheduler the prediction channels."""
    from diffusers import DDIMPipeline, DDPMPipeline, PNDMPipeline, PNDMScheduler

    folder = _saved_folder(tmp_path / "learned", 6)
    loaded = ClassifierGuidedPipeline.from_pretrained(folder)
    stock = {
        "DDIMPipeline.from_pretrained": (lambda: DDIMPipeline.from_pretrained(folder), "DDIMPipeline", "DDIMScheduler"),
        "DDIMPipeline(unet, scheduler)": (lambda: DDIMPipeline(unet=loaded.unet, scheduler=loaded.scheduler), "DDIMPipeline", "DDIMScheduler"),
        "DDPMPipeline, fixed variance": (lambda: DDPMPipeline(unet=loaded.unet, scheduler=DDPMScheduler(num_train_timesteps=T)),
                                         "DDPMPipeline", "DDPMScheduler"),
        "PNDMPipeline": (lambda: PNDMPipeline(unet=loaded.unet, scheduler=PNDMScheduler.from_config(loaded.scheduler.config)),
                         "PNDMPipeline", "PNDMScheduler"),
    }
    runs = []
    monkeypatch.setattr(ADMUNet2DModel, "_unet", lambda *args: runs.append(1))
    for case, (make, pipeline, scheduler) in stock.items():
        pipe = make()
        pipe.set_progress_bar_config(disable=True)
        with pytest.raises(ValueError) as info:
            pipe(batch_size=1, num_inference_steps=10, output_type="np")
        message = str(info.value)
        assert message == (f"expected 3-channel predictions for {scheduler}.step under {pipeline}, got a learned-sigma model's 6 "
                           f"channels (prediction and variance, which {scheduler} cannot set aside): sample with guided_diffusers' "
                           "ClassifierGuidedPipeline and the same scheduler, which hands it the prediction channels"), case
        assert runs == [], case
    monkeypatch.undo()
    ours = DDPMPipeline(unet=loaded.unet, scheduler=GuidedDDPMScheduler(num_train_timesteps=T))  # fixed_small
    ours.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="^variance type 'fixed_small' expects a model output with 3 channels"):
        ours(batch_size=1, num_inference_steps=2)  # our scheduler speaks for itself: the check leaves ours alone


def test_a_grey_learned_sigma_unet_is_refused_by_a_stock_scheduler_that_keeps_three_channels():
    """DPM-Solver with a learned variance type keeps the output's first three channels (RGB's prediction): a grey
    learned-sigma model's two channels would be misread there, so it is refused; DDPMScheduler splits by the sample's
    channels and samples the grey model."""
    from diffusers import DDPMPipeline, DPMSolverMultistepScheduler

    torch.manual_seed(0)
    grey = randomize_zeros(ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                           attention_downsample_factors=(2,), in_channels=1, out_channels=2), 1)
    solver = DDPMPipeline(unet=grey, scheduler=DPMSolverMultistepScheduler(num_train_timesteps=T, variance_type="learned_range"))
    solver.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"^expected 1-channel predictions for DPMSolverMultistepScheduler\.step under DDPMPipeline, "
                                         r"got a learned-sigma model's 2 channels"):
        solver(batch_size=1, num_inference_steps=4, output_type="np")
    ddpm = DDPMPipeline(unet=grey, scheduler=DDPMScheduler(num_train_timesteps=T, variance_type="learned_range"))
    ddpm.set_progress_bar_config(disable=True)
    images = ddpm(batch_size=1, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 8, 8, 1) and np.isfinite(images).all() and images.std() > 0.01


def test_stock_pipelines_that_can_read_the_output_still_sample(tmp_path):
    """The check refuses only what would fail: DDPMPipeline on a learned-sigma folder (its scheduler, ours or
    DDPMScheduler with a learned variance type, splits the variance channels off; our DDIM sets them aside
    too), DDIMPipeline on a fixed-sigma folder, and our pipelines under a stock scheduler sample as before."""
    from diffusers import DDIMPipeline, DDPMPipeline

    learned, fixed = _saved_folder(tmp_path / "learned", 6), _saved_folder(tmp_path / "fixed", 3)
    ours = ClassifierGuidedPipeline.from_pretrained(learned)
    pipes = {
        "DDPMPipeline, our scheduler": DDPMPipeline.from_pretrained(learned),
        "DDPMPipeline, DDPMScheduler learned_range": DDPMPipeline(unet=ours.unet, scheduler=DDPMScheduler.from_config(ours.scheduler.config)),
        "DDIMPipeline, fixed sigma": DDIMPipeline.from_pretrained(fixed),
        "DDPMPipeline, our DDIM": DDPMPipeline(unet=ours.unet, scheduler=GuidedDDIMScheduler.from_config(ours.scheduler.config)),
    }
    for name, pipe in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=1, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 8, 8, 3) and np.isfinite(images).all() and images.std() > 0.01, name
    assert type(pipes["DDPMPipeline, our scheduler"].scheduler) is GuidedDDPMScheduler
    ours.scheduler = DDIMScheduler.from_config(ours.scheduler.config)
    ours.set_progress_bar_config(disable=True)
    images = ours(batch_size=1, num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 8, 8, 3) and np.isfinite(images).all() and images.std() > 0.01


def test_a_learned_sigma_unet_still_compiles_as_one_graph():
    """The stock-pipeline check looks at Python frames, which torch.compile cannot trace: it is skipped while
    compiling, so a learned-sigma forward stays one graph (fullgraph=True) with the eager output."""
    unet = _unconditional_unet(6).eval()
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        compiled = torch.compile(unet, backend="eager", fullgraph=True)(sample, 10).sample
        assert torch.equal(compiled, unet(sample, 10).sample)
