"""ADMInpaintPipeline (RePaint) and ADMImg2ImgPipeline (SDEdit) on tiny models: what is kept, what changes, guidance
direction, reproducibility, schedulers, loading, and bad input refused before the U-Net runs."""

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from guided_diffusers import (
    ADMClassifier,
    ADMImg2ImgPipeline,
    ADMInpaintPipeline,
    ADMUNet2DModel,
    ClassifierGuidedPipeline,
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
)
from guided_diffusers.pipelines.pipeline_adm_inpaint import repaint_schedule, to_mask

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZE = 8
STEPS = 10


def _randomized(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the zero-initialised output convs would make every step trivial
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.eval()


def _unet(out_channels=6, class_dropout_prob=0.1):
    torch.manual_seed(0)
    return _randomized(ADMUNet2DModel(sample_size=SIZE, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                      attention_downsample_factors=(2,), num_classes=10, out_channels=out_channels,
                                      class_dropout_prob=class_dropout_prob, num_head_channels=16), 1)


def _classifier():
    torch.manual_seed(2)
    return _randomized(ADMClassifier(sample_size=SIZE, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                     attention_downsample_factors=(2,), num_classes=10, num_head_channels=16), 3)


@pytest.fixture(scope="module")
def components():
    unet = _unet()
    scheduler = GuidedDDPMScheduler(num_train_timesteps=40, beta_schedule="cosine", variance_type="learned_range")
    return dict(unet=unet, scheduler=scheduler, classifier=_classifier())


def _make(cls, components, **overrides):
    pipe = cls(**{**components, **overrides})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images(n=2, seed=0):
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _box_mask():
    mask = torch.zeros(SIZE, SIZE)
    mask[2:6, 1:7] = 1  # white: fill
    return mask


def _seed(seed=0):
    return torch.Generator().manual_seed(seed)


class ForwardCounter:
    """Counts the U-Net's forward calls (a hook: the pipelines call the module as they do in use)."""

    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._count)

    def _count(self, *_):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def _log_prob(classifier, images, label):
    """log p(y | x) of the noisy classifier at t = 0, per image."""
    with torch.no_grad():
        logits = classifier(images, torch.zeros(len(images), dtype=torch.long)).logits
    return torch.log_softmax(logits, dim=-1)[:, label]


SCALES = (0.0, 50.0, 200.0)


def _assert_rising(classifier, outputs, label):
    """log p(label | x) of the outputs at SCALES rises with the scale: on average at each step, and for every image."""
    log_probs = [_log_prob(classifier, images, label) for images in outputs]
    means = [float(values.mean()) for values in log_probs]
    assert means == sorted(means) and means[-1] - means[0] > 0.02, means
    assert (log_probs[-1] > log_probs[0]).all(), log_probs


# -- RePaint's schedule -----------------------------------------------------------------------------------------------


def test_repaint_schedule_has_the_papers_shape():
    visited = repaint_schedule(250, 10, 10)
    assert visited[0] == 249 and visited[-1] == -1
    assert all(abs(a - b) == 1 for a, b in zip(visited, visited[1:]))
    reverse = sum(b < a for a, b in zip(visited, visited[1:]))
    # 250 steps down, plus 9 resamplings of 10 steps at each of the 24 jump points 0, 10, ..., 230
    assert reverse == 250 + 24 * 9 * 10
    assert max(visited[1:]) <= 249
    assert repaint_schedule(20, 10, 1) == list(range(19, -2, -1))  # r = 1: no resampling
    assert repaint_schedule(5, 10, 10) == list(range(4, -2, -1))  # jumps longer than the chain: none


def test_q_step_composes_to_the_forward_process():
    """Forward steps q(x_t | x_{t-1}) from x_0 up to step k give q(x_k | x_0): mean sqrt(alpha_bar_k) x_0 and variance
    1 - alpha_bar_k (the noise terms' variances accumulated through the later steps' sqrt(1 - beta) factors)."""
    scheduler = GuidedDDPMScheduler(num_train_timesteps=40, beta_schedule="cosine")
    scheduler.set_timesteps(10)
    process = scheduler.sampling_diffusion
    x0 = _images(1, seed=4).double()
    x, variance = x0, 0.0
    for t in range(process.num_timesteps):
        x = process.q_step(x, t, torch.zeros_like(x))
        unit = process.q_step(torch.zeros_like(x), t, torch.ones_like(x))[0, 0, 0, 0].item()  # sqrt(beta_t)
        variance = variance * (1 - unit**2) + unit**2
        alpha_bar = process.alphas_cumprod[t].item()
        assert torch.allclose(x, alpha_bar**0.5 * x0, atol=1e-12) and abs(variance - (1 - alpha_bar)) < 1e-12


# -- inpainting -------------------------------------------------------------------------------------------------------


def test_inpainting_keeps_known_pixels_exactly_and_changes_the_unknown(components):
    pipe = _make(ADMInpaintPipeline, components)
    images, mask = _images(), _box_mask()
    out = pipe(images, mask, class_labels=[1, 2], num_inference_steps=STEPS, jump_length=3, jump_n_sample=2,
               generator=_seed(), output_type="latent").images
    known = mask == 0
    assert torch.equal(out[:, :, known], images[:, :, known])
    assert (out[:, :, ~known] - images[:, :, ~known]).abs().mean() > 0.1
    assert torch.isfinite(out).all()


def test_inpainting_keeps_known_pixels_of_pil_inputs_exactly(components):
    pipe = _make(ADMInpaintPipeline, components)
    array = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:4] = 255
    out = pipe(Image.fromarray(array), Image.fromarray(mask), class_labels=3, num_inference_steps=STEPS,
               jump_n_sample=2, jump_length=3, generator=_seed()).images[0]
    result = np.asarray(out)
    assert np.array_equal(result[4:], array[4:])
    assert not np.array_equal(result[:4], array[:4])


def test_inpainting_is_reproducible_with_a_generator(components):
    pipe = _make(ADMInpaintPipeline, components)
    kwargs = dict(class_labels=[1, 2], num_inference_steps=STEPS, jump_length=3, jump_n_sample=2, output_type="latent")
    first = pipe(_images(), _box_mask(), generator=_seed(5), **kwargs).images
    again = pipe(_images(), _box_mask(), generator=_seed(5), **kwargs).images
    other = pipe(_images(), _box_mask(), generator=_seed(6), **kwargs).images
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_inpainting_runs_the_schedules_reverse_steps(components):
    pipe = _make(ADMInpaintPipeline, components)
    visited = repaint_schedule(STEPS, 3, 3)
    with ForwardCounter(pipe.unet) as counter:
        pipe(_images(1), _box_mask(), class_labels=1, num_inference_steps=STEPS, jump_length=3, jump_n_sample=3,
             generator=_seed(), output_type="latent")
    assert counter.calls == sum(b < a for a, b in zip(visited, visited[1:])) == STEPS + 3 * 2 * 3


def test_inpainting_steps_follow_the_schedule_on_the_scheduler_grid(components):
    pipe = _make(ADMInpaintPipeline, components)
    seen = []
    pipe(_images(1), _box_mask(), class_labels=1, num_inference_steps=STEPS, jump_length=3, jump_n_sample=2,
         generator=_seed(), output_type="latent", callback_on_step_end=lambda p, i, t, d: seen.append(int(t)) or d)
    grid = pipe.scheduler.timesteps.tolist()  # descending; process step s is grid[-1 - s]
    visited = repaint_schedule(STEPS, 3, 2)
    assert seen == [grid[-1 - a] for a, b in zip(visited, visited[1:]) if b < a]


@pytest.mark.parametrize("out_channels,variance_type", [(6, "learned_range"), (3, "fixed_large")])
def test_inpainting_with_learned_and_fixed_variance_models(out_channels, variance_type):
    unet = _unet(out_channels=out_channels, class_dropout_prob=0.0)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=40, variance_type=variance_type)
    pipe = _make(ADMInpaintPipeline, dict(unet=unet, scheduler=scheduler))
    images, mask = _images(), _box_mask()
    out = pipe(images, mask, class_labels=[0, 1], num_inference_steps=STEPS, jump_length=3, jump_n_sample=2,
               generator=_seed(), output_type="latent").images
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, :, mask == 0], images[:, :, mask == 0])
    assert out[:, :, mask == 1].std() > 0.05


def test_inpainting_with_a_ddpm_unet2dmodel():
    torch.manual_seed(0)
    unet = _randomized(diffusers.UNet2DModel(sample_size=SIZE, block_out_channels=(32, 64), layers_per_block=1,
                                             down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                             up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8), 5)
    pipe = _make(ADMInpaintPipeline, dict(unet=unet, scheduler=GuidedDDPMScheduler(num_train_timesteps=40, variance_type="fixed_large")))
    images, mask = _images(), _box_mask()
    out = pipe(images, mask, num_inference_steps=STEPS, jump_length=3, jump_n_sample=2, generator=_seed(), output_type="latent").images
    assert torch.equal(out[:, :, mask == 0], images[:, :, mask == 0]) and out[:, :, mask == 1].std() > 0.05


def test_inpainting_classifier_guidance_raises_the_guided_class_probability(components):
    pipe = _make(ADMInpaintPipeline, components)
    images = _images(6)
    mask = torch.ones(SIZE, SIZE)
    mask[0] = 0  # keep one row: almost all of the image is filled
    label = 4
    kwargs = dict(class_labels=label, num_inference_steps=STEPS, jump_length=3, jump_n_sample=2, output_type="latent")
    outputs = [pipe(images, mask, classifier_scale=scale, generator=_seed(), **kwargs).images for scale in SCALES]
    _assert_rising(components["classifier"], outputs, label)
    assert torch.equal(outputs[-1][:, :, mask == 0], images[:, :, mask == 0])


def test_inpainting_classifier_free_guidance_runs_the_null_class(components):
    pipe = _make(ADMInpaintPipeline, components)
    seen = []
    hook = pipe.unet.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["class_labels"].tolist()),
                                           with_kwargs=True)
    try:
        out = pipe(_images(1), _box_mask(), class_labels=2, guidance_scale=3.0, num_inference_steps=STEPS,
                   jump_n_sample=1, generator=_seed(), output_type="latent").images
    finally:
        hook.remove()
    assert len(seen) == STEPS and all(labels == [2, 10] for labels in seen)  # conditional and null class, batched
    plain = pipe(_images(1), _box_mask(), class_labels=2, num_inference_steps=STEPS, jump_n_sample=1,
                 generator=_seed(), output_type="latent").images
    assert not torch.equal(out, plain)


def test_inpainting_callback_sees_merged_latents_and_can_stop(components, monkeypatch):
    """The callback's latents hold, in the known region, the known image noised by the forward process to the level
    just reached (what the scheduler's add_noise gave in the loop), not the reverse step's own sample there."""
    pipe = _make(ADMInpaintPipeline, components)
    steps, seen, known = [], [], []
    add_noise = pipe.scheduler.add_noise
    monkeypatch.setattr(pipe.scheduler, "add_noise", lambda *args: known.append(add_noise(*args)) or known[-1])

    def callback(p, i, t, tensors):
        steps.append(int(t))
        seen.append(tensors["latents"].clone())
        if i == 2:
            p._interrupt = True
        return tensors

    images = _images(1)
    out = pipe(images, _box_mask(), class_labels=1, num_inference_steps=STEPS, jump_n_sample=1, generator=_seed(),
               callback_on_step_end=callback, output_type="latent").images
    assert len(steps) == 3 and steps == sorted(steps, reverse=True)
    assert torch.equal(out[:, :, _box_mask() == 0], images[:, :, _box_mask() == 0])
    assert len(known) == len(seen) == 3
    for latents, noised in zip(seen, known):
        assert torch.equal(latents[:, :, _box_mask() == 0], noised[:, :, _box_mask() == 0])
        assert not torch.equal(latents[:, :, _box_mask() == 1], noised[:, :, _box_mask() == 1])


# -- image-to-image ---------------------------------------------------------------------------------------------------


def _distance(a, b):
    return (a - b).abs().mean().item()


@pytest.mark.parametrize("stock", [None, DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_img2img_small_strength_stays_closer_to_the_input(components, stock):
    scheduler = components["scheduler"] if stock is None else stock.from_config(components["scheduler"].config)
    pipe = _make(ADMImg2ImgPipeline, components, scheduler=scheduler)
    images = _images(4)
    kwargs = dict(class_labels=[1, 2, 3, 4], num_inference_steps=STEPS, output_type="latent")
    near = pipe(images, strength=0.2, generator=_seed(), **kwargs).images
    middle = pipe(images, strength=0.6, generator=_seed(), **kwargs).images
    far = pipe(images, strength=1.0, generator=_seed(), **kwargs).images
    assert _distance(near, images) < _distance(middle, images) < _distance(far, images)


def test_img2img_runs_strength_times_the_steps(components):
    pipe = _make(ADMImg2ImgPipeline, components)
    for strength, expected in ((1.0, STEPS), (0.5, STEPS // 2), (0.25, 2)):
        with ForwardCounter(pipe.unet) as counter:
            pipe(_images(1), strength=strength, class_labels=1, num_inference_steps=STEPS, generator=_seed(), output_type="latent")
        assert counter.calls == expected, strength


def test_img2img_class_guidance_moves_toward_the_target_class(components):
    pipe = _make(ADMImg2ImgPipeline, components)
    images, target = _images(6, seed=3), 7
    kwargs = dict(strength=0.8, class_labels=target, num_inference_steps=STEPS, output_type="latent")
    outputs = [pipe(images, classifier_scale=scale, generator=_seed(), **kwargs).images for scale in SCALES]
    _assert_rising(components["classifier"], outputs, target)


def test_img2img_with_ddim_eta0_is_deterministic_given_the_noise(components):
    scheduler = GuidedDDIMScheduler.from_config(components["scheduler"].config)
    pipe = _make(ADMImg2ImgPipeline, components, scheduler=scheduler)
    first = pipe(_images(), strength=0.5, class_labels=[1, 2], num_inference_steps=STEPS, generator=_seed(1), output_type="latent").images
    again = pipe(_images(), strength=0.5, class_labels=[1, 2], num_inference_steps=STEPS, generator=_seed(1), output_type="latent").images
    assert torch.equal(first, again)


# -- loading ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ADMImg2ImgPipeline, ADMInpaintPipeline])
def test_save_and_load_round_trip(components, cls, tmp_path):
    pipe = _make(cls, components)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is cls and isinstance(loaded.classifier, ADMClassifier)
    call = (lambda p: p(_images(), strength=0.5, class_labels=[1, 2], num_inference_steps=STEPS, generator=_seed(), output_type="latent")) \
        if cls is ADMImg2ImgPipeline else \
        (lambda p: p(_images(), _box_mask(), class_labels=[1, 2], num_inference_steps=STEPS, jump_length=3, jump_n_sample=2, generator=_seed(), output_type="latent"))
    assert torch.equal(call(pipe).images, call(loaded).images)


def test_from_pipe_shares_the_components(components):
    base = _make(ClassifierGuidedPipeline, components)
    for cls in (ADMInpaintPipeline, ADMImg2ImgPipeline):
        derived = cls.from_pipe(base)
        assert derived.unet is base.unet and derived.classifier is base.classifier


# -- bad input, refused before any U-Net forward --------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda p: p(_images(), torch.zeros(SIZE, SIZE + 1), class_labels=[1, 2]), "expected mask_image of size 8x8"),
        (lambda p: p(_images(), torch.zeros(3, SIZE, SIZE), class_labels=[1, 2]), "expected 1 or 2 masks for 2 images"),
        (lambda p: p(_images(), torch.full((SIZE, SIZE), 2.0), class_labels=[1, 2]), "expected mask_image values in"),
        (lambda p: p(_images(), "mask.png", class_labels=[1, 2]), "expected mask_image as a PIL image"),
        (lambda p: p(_images(), _box_mask(), class_labels=[1, 2], jump_length=0), "expected jump_length as a whole number >= 1"),
        (lambda p: p(_images(), _box_mask(), class_labels=[1, 2], jump_n_sample=2.5), "expected jump_n_sample as a whole number"),
        (lambda p: p(_images(), _box_mask(), class_labels=[1, 2, 3]), "expected 2 class labels"),
        (lambda p: p(torch.rand(1, 3, 16, 16), torch.zeros(16, 16), class_labels=1), "expected image of size 8x8"),
    ],
)
def test_inpainting_bad_input_is_refused_before_any_forward(components, call, message):
    pipe = _make(ADMInpaintPipeline, components)
    with ForwardCounter(pipe.unet) as counter, pytest.raises(ValueError, match=message) as error:
        call(pipe)
    assert counter.calls == 0 and "\n" not in str(error.value)


def test_inpainting_refuses_a_non_ancestral_scheduler_before_any_forward(components):
    pipe = _make(ADMInpaintPipeline, components, scheduler=GuidedDDIMScheduler.from_config(components["scheduler"].config))
    with ForwardCounter(pipe.unet) as counter, pytest.raises(ValueError, match="expected a GuidedDDPMScheduler for RePaint"):
        pipe(_images(), _box_mask(), class_labels=[1, 2])
    assert counter.calls == 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(strength=0.0), r"expected strength in \(0, 1\], got 0.0"),
        (dict(strength=1.5), r"expected strength in \(0, 1\], got 1.5"),
        (dict(strength="high"), "expected strength as a number"),
        (dict(strength=0.05), "expected strength >= 1/10"),
        (dict(strength=0.5, classifier_scale=float("nan")), "expected classifier_scale as a finite number"),
        (dict(strength=0.5, eta=-1.0), "expected eta as a finite number >= 0"),
    ],
)
def test_img2img_bad_input_is_refused_before_any_forward(components, kwargs, message):
    pipe = _make(ADMImg2ImgPipeline, components)
    with ForwardCounter(pipe.unet) as counter, pytest.raises(ValueError, match=message) as error:
        pipe(_images(), class_labels=[1, 2], num_inference_steps=STEPS, **kwargs)
    assert counter.calls == 0 and "\n" not in str(error.value)


def test_mask_forms_agree():
    box = _box_mask()
    as_uint8 = (box.numpy() * 255).astype(np.uint8)
    forms = [box, box[None], box[None, None].expand(2, 1, SIZE, SIZE), box.bool(), as_uint8, as_uint8[..., None],
             box.numpy().astype(np.float32), Image.fromarray(as_uint8), Image.fromarray(as_uint8).convert("RGB")]
    for form in forms:
        mask = to_mask(form, (SIZE, SIZE), 2)
        assert mask.shape[1:] == (1, SIZE, SIZE) and torch.equal(mask[0, 0], box), type(form)


# -- the web demo's inpainting (no Gradio needed) ------------------------------------------------------------------


def test_demo_inpaint_fills_the_painted_model_pixels(components):
    from guided_diffusers.app.chain import Guidance
    from guided_diffusers.app.inpaint import inpaint, mask_from_layers

    stroke = Image.new("RGBA", (64, 64))
    stroke.paste((255, 0, 255, 255), (0, 0, 32, 16))  # the top-left quarter-width band: model rows 0-1, columns 0-3
    mask = mask_from_layers([stroke], SIZE)
    assert mask.sum() == 8 and mask[:2, :4].all()
    pipe = _make(ClassifierGuidedPipeline, components)
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with ForwardCounter(pipe.unet) as counter:
        result = inpaint(pipe, photo, [stroke], Guidance(class_label=1, classifier_scale=1.0), steps=STEPS, seed=3,
                         jump_length=3, jump_n_sample=2)
    assert counter.calls == STEPS + 3 * 1 * 3 and f"{counter.calls} U-Net evaluations" in result.status
    assert "Filled 8 of 64 pixels" in result.status and result.filled.size == result.masked.size
    for background, layers, message in ((None, [stroke], "expected an image"), (photo, [], "expected strokes"),
                                        (photo, [Image.new("RGBA", (64, 64))], "expected strokes covering")):
        with ForwardCounter(pipe.unet) as counter, pytest.raises(ValueError, match=message):
            inpaint(pipe, background, layers, Guidance(class_label=1), steps=STEPS, seed=0)
        assert counter.calls == 0
