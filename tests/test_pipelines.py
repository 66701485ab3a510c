"""ClassifierGuidedPipeline, ADMUpsamplingPipeline and DDIMInversionPipeline: parity, guidance modes, loading, errors."""

import functools

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from diffusers.models.unets.unet_2d import UNet2DOutput
from oracles import hand_ddpm_loop, textbook_stock_loop
from parity import assert_close, load_case, load_case_model, process_model
from PIL import Image

from guided_diffusers import (
    ADMClassifier,
    ADMSuperResUNet2DModel,
    ADMUNet2DModel,
    ADMUpsamplingPipeline,
    ClassifierGuidedPipeline,
    DDIMInversionPipeline,
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
)
from guided_diffusers.conversion import scheduler_config_from_diffusion_flags

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DIFFUSION_CASES = ["diffusion_learned_range", "diffusion_kl_cosine", "diffusion_fixed_large_rescaled", "diffusion_xstart_rescaled_mse"]


@functools.lru_cache(maxsize=None)
def _model(name):
    return load_case_model(name)


def _parity_pipeline(name, scheduler_class):
    case, io = load_case(name)
    config = scheduler_config_from_diffusion_flags(case["diffusion_flags"])
    config["clip_sample"] = case["clip_denoised"]
    pipe = ClassifierGuidedPipeline(
        unet=process_model(case), scheduler=scheduler_class(**config), classifier=process_model(case, "classifier_case")
    )
    pipe.set_progress_bar_config(disable=True)
    return case, io, pipe


def _final_latents(pipe, **kwargs):
    """Run the pipeline and return the last x (before conversion to images), via the step callback."""
    seen = {}

    def keep(pipeline, step, timestep, tensors):
        seen["latents"] = tensors["latents"]
        return tensors

    pipe(callback_on_step_end=keep, output_type="pt", **kwargs)
    return seen["latents"]


@pytest.mark.parametrize("name", DIFFUSION_CASES)
@pytest.mark.parametrize("kind", ["plain", "guided"])
def test_ddpm_pipeline_reproduces_original_trajectory(name, kind):
    case, io, pipe = _parity_pipeline(name, GuidedDDPMScheduler)
    final = _final_latents(
        pipe,
        class_labels=io["guide_y"],
        classifier_scale=case["classifier_scale"] if kind == "guided" else 0.0,
        timestep_respacing=case["sample_respacing"],
        latents=io["p_x_T"],
        step_noise=io[f"p_{kind}_noise"],
    )
    tolerance = {"atol": case["tolerance"]["trajectory_atol"], "rtol": case["tolerance"]["rtol"]}
    assert_close(final, io[f"p_{kind}_trajectory"][-1], tolerance, f"{name} p_{kind}")


@pytest.mark.parametrize("name", DIFFUSION_CASES)
@pytest.mark.parametrize("kind", ["eta0", "eta0_guided"])
def test_ddim_pipeline_reproduces_original_trajectory(name, kind):
    case, io, pipe = _parity_pipeline(name, GuidedDDIMScheduler)
    final = _final_latents(
        pipe,
        class_labels=io["guide_y"],
        classifier_scale=case["classifier_scale"] if kind.endswith("guided") else 0.0,
        timestep_respacing=case["ddim_respacing"],
        latents=io["p_x_T"],
        eta=0.0,
    )
    tolerance = {"atol": case["tolerance"]["trajectory_atol"], "rtol": case["tolerance"]["rtol"]}
    assert_close(final, io[f"ddim_{kind}_trajectory"][-1], tolerance, f"{name} ddim_{kind}")


def test_inversion_pipeline_reproduces_original_reconstruction():
    case, io = load_case("diffusion_learned_range")
    config = scheduler_config_from_diffusion_flags(case["diffusion_flags"])
    pipe = DDIMInversionPipeline(unet=process_model(case), scheduler=GuidedDDIMScheduler(**config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(io["x_start"], class_labels=io["guide_y"], timestep_respacing=case["ddim_respacing"], output_type="pt")
    tolerance = {"atol": case["tolerance"]["trajectory_atol"], "rtol": case["tolerance"]["rtol"]}
    assert_close(out.latents, io["inv_trajectory"][-1], tolerance, "inverted latents")
    assert_close(out.images * 2 - 1, io["inv_reconstruction"].clamp(-1, 1), tolerance, "reconstruction")
    expected_error = (io["inv_reconstruction"] - io["x_start"]).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.reconstruction_error, expected_error, atol=1e-3, rtol=1e-3)


# -- tiny models -------------------------------------------------------------------------------------------------------


def _tiny_unet(num_classes=10, class_dropout_prob=0.1, out_channels=6, seed=0, in_channels=3):
    torch.manual_seed(seed)
    unet = ADMUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_classes=num_classes, class_dropout_prob=class_dropout_prob,
                          out_channels=out_channels, num_head_channels=16, in_channels=in_channels)
    with torch.no_grad():  # the zero-initialised output conv would make every step trivial
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return unet.eval()


def _tiny_classifier(num_classes=10, in_channels=3):
    torch.manual_seed(1)
    return ADMClassifier(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, in_channels=in_channels,
                         attention_downsample_factors=(2,), num_classes=num_classes, num_head_channels=16).eval()


def _pipe(unet=None, scheduler=None, classifier=None, **kwargs):
    unet = unet if unet is not None else _tiny_unet()
    learned = unet.config.out_channels == 2 * unet.config.in_channels
    scheduler = scheduler or GuidedDDPMScheduler(num_train_timesteps=40, variance_type="learned_range" if learned else "fixed_large", timestep_respacing="4")
    pipe = ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, seed=0, **kwargs):
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="pt", **kwargs).images


def test_seeded_pipeline_is_reproducible_and_output_types():
    pipe = _pipe()
    a = _run(pipe, class_labels=[1, 2])
    b = _run(pipe, class_labels=[1, 2])
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    np_images = pipe(class_labels=[1], generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np_images.shape == (1, 16, 16, 3) and np_images.dtype == np.float32
    pil = pipe(class_labels=3, generator=torch.Generator().manual_seed(0)).images
    assert isinstance(pil[0], Image.Image) and pil[0].size == (16, 16)
    assert not torch.equal(_run(pipe, seed=1, class_labels=[1, 2]), a)
    as_tuple = pipe(class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt", return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], a)


def test_grey_models_sample_grey_images_with_guidance():
    pipe = _pipe(_tiny_unet(out_channels=2, in_channels=1), classifier=_tiny_classifier(in_channels=1))
    images = pipe(class_labels=[1, 2], classifier_scale=2.0, guidance_scale=2.0, generator=torch.Generator().manual_seed(0)).images
    assert [image.mode for image in images] == ["L", "L"] and images[0].size == (16, 16)
    assert _run(pipe, class_labels=[1, 2]).shape == (2, 1, 16, 16)
    from guided_diffusers.pipelines.sampling import to_model_input

    rgb = Image.new("RGB", (16, 16), (200, 100, 0))
    assert to_model_input(rgb, 16, channels=1).shape == (1, 1, 16, 16)  # read in the model's mode (PIL's L)
    with pytest.raises(ValueError, match="expected image with the model's 1 channel\\(s\\), got 3"):
        to_model_input(torch.zeros(1, 3, 16, 16), 16, channels=1)


def test_ddim_eta0_is_deterministic_without_generator():
    pipe = _pipe(scheduler=GuidedDDIMScheduler(num_train_timesteps=40, variance_type="learned_range", timestep_respacing="ddim8"))
    latents = torch.randn(2, 3, 16, 16)
    a = pipe(class_labels=[0, 1], latents=latents, output_type="pt").images
    b = pipe(class_labels=[0, 1], latents=latents, output_type="pt").images
    assert torch.equal(a, b)
    c = pipe(class_labels=[0, 1], latents=latents, eta=1.0, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert not torch.equal(a, c)


def test_classifier_free_guidance():
    # A fixed-variance model: with learned sigma the guided output keeps the conditional variance (as GLIDE does).
    pipe = _pipe(unet=_tiny_unet(out_channels=3))
    conditional = _run(pipe, class_labels=[4, 5])
    # w = 1 is plain conditional sampling; w = 0 is sampling under the null label
    torch.testing.assert_close(_run(pipe, class_labels=[4, 5], guidance_scale=1.0), conditional, atol=1e-5, rtol=1e-5)
    unconditional = _run(pipe, batch_size=2)
    torch.testing.assert_close(_run(pipe, class_labels=[4, 5], guidance_scale=0.0), unconditional, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_run(pipe, class_labels=[4, 5], guidance_scale=4.0), conditional, atol=1e-3)


def _log_p(classifier, images, labels):
    """log p(y | x_0) of the final images, as the classifier sees them at t = 0."""
    with torch.no_grad():
        logits = classifier(images * 2 - 1, torch.zeros(len(labels), dtype=torch.long)).logits
    return torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), torch.tensor(labels)]


def test_classifier_guidance_raises_log_p_of_the_class_on_conditional_and_unconditional_unets():
    labels = [3, 7]
    for unet in (_tiny_unet(), _tiny_unet(num_classes=None)):
        classifier = _tiny_classifier()
        pipe = _pipe(unet=unet, classifier=classifier)
        plain = _run(pipe, class_labels=labels) if unet.config.num_classes else _run(pipe, batch_size=2)
        assert torch.equal(_run(pipe, class_labels=labels, classifier_scale=0.0), plain)
        guided = _run(pipe, class_labels=labels, classifier_scale=100.0)
        # the direction, per sample: guidance toward the class raises log p(y | x) (a flipped sign lowers it)
        assert (_log_p(classifier, guided, labels) > _log_p(classifier, plain, labels)).all()
        if unet.config.num_classes:
            both = _run(pipe, class_labels=labels, classifier_scale=100.0, guidance_scale=2.0)
            assert both.shape == (2, 3, 16, 16) and not torch.allclose(both, guided, atol=1e-4)
            # both together: the classifier-free guided epsilon, then the classifier's mean shift, by hand
            with torch.no_grad():
                latents = hand_ddpm_loop(pipe, torch.tensor(labels), torch.Generator().manual_seed(0), 100.0, 2.0, 10)
            torch.testing.assert_close(both, (latents / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)


def _tiny_clip():
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    torch.manual_seed(2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=4),
        projection_dim=16,
    )
    return CLIPModel(config).eval(), tokenizer


def _clip_similarity(clip_model, tokenizer, images, prompt):
    """The cosine similarity of CLIP's image features to the prompt's, with CLIP's own preprocessing."""
    from guided_diffusers.pipelines.sampling import _CLIP_MEAN, _CLIP_STD

    with torch.no_grad():
        text = clip_model.get_text_features(**tokenizer([prompt] * len(images), padding="max_length", return_tensors="pt"))
        size = clip_model.config.vision_config.image_size
        pixels = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        pixels = (pixels - torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
        features = clip_model.get_image_features(pixel_values=pixels)
    text, features = (value if torch.is_tensor(value) else value.pooler_output for value in (text, features))
    return torch.nn.functional.cosine_similarity(features, text, dim=-1)


@pytest.mark.parametrize("scheduler_class", [GuidedDDPMScheduler, GuidedDDIMScheduler])
def test_clip_guidance_raises_the_prompts_similarity_on_an_unconditional_model(scheduler_class, tmp_path):
    clip_model, tokenizer = _tiny_clip()
    unet = _tiny_unet(num_classes=None)
    scheduler = scheduler_class(num_train_timesteps=40, variance_type="learned_range", timestep_respacing="4")
    pipe = _pipe(unet=unet, scheduler=scheduler, clip_model=clip_model, tokenizer=tokenizer)
    plain = _run(pipe, batch_size=1)
    cat = _run(pipe, batch_size=1, prompt="a cat", clip_guidance_scale=20.0)
    dog = _run(pipe, batch_size=1, prompt="a dog", clip_guidance_scale=20.0)

    def similarity(images, prompt):
        return _clip_similarity(clip_model, tokenizer, images, prompt).item()

    # each prompt's guidance raises that prompt's similarity over the unguided run and over the other prompt's run
    assert similarity(cat, "a cat") > similarity(plain, "a cat") and similarity(cat, "a cat") > similarity(dog, "a cat")
    assert similarity(dog, "a dog") > similarity(plain, "a dog") and similarity(dog, "a dog") > similarity(cat, "a dog")
    assert torch.equal(cat, _run(pipe, batch_size=1, prompt="a cat", clip_guidance_scale=20.0))
    pipe.save_pretrained(tmp_path)
    loaded = ClassifierGuidedPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    # The reloaded CLIP's features differ by ~1e-7; guidance amplifies that, and x_0 clipping can flip a pixel.
    difference = (_run(loaded, batch_size=1, prompt="a cat", clip_guidance_scale=20.0) - cat).abs()
    assert difference.mean() < 1e-4 and difference.max() < 1e-2


def test_stock_dpm_solver_runs_a_learned_sigma_unet():
    unet = _tiny_unet()
    guided = GuidedDDPMScheduler(num_train_timesteps=40, variance_type="learned_range")
    pipe = _pipe(unet=unet, scheduler=DPMSolverMultistepScheduler.from_config(guided.config), classifier=_tiny_classifier())
    images = _run(pipe, class_labels=[1, 2], num_inference_steps=5)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    guided_images = _run(pipe, class_labels=[1, 2], num_inference_steps=5, classifier_scale=5.0)
    assert not torch.allclose(images, guided_images, atol=1e-4)
    # each is diffusers' loop on the prediction channels, the guided one with eps - sqrt(1 - alpha_bar) * gradient
    for scale, result in ((0.0, images), (5.0, guided_images)):
        with torch.no_grad():
            latents = textbook_stock_loop(pipe, torch.tensor([1, 2]), 5, torch.Generator().manual_seed(0), scale)
        torch.testing.assert_close(result, (latents / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)


def _embedded_timesteps(unet) -> list[float]:
    """The timesteps the network's embedding receives (after its timestep_scale), recorded on every forward."""
    seen = []
    unet.time_proj.register_forward_pre_hook(lambda module, args: seen.append(float(args[0].reshape(-1)[0])))
    return seen


def test_stock_pipeline_gives_a_rescaled_network_its_own_timesteps():
    """improved-diffusion's networks embed t * 1000 / T: the network owns that scale, so stock diffusers pipelines and
    solvers hand it their own timesteps and it sees what it was trained on (at most 1000), with no foreign key in
    the stock scheduler's config."""
    from diffusers import DDPMPipeline, DDPMScheduler

    unet = _tiny_unet(num_classes=None)
    unet.register_to_config(timestep_scale=1000 / 4000)
    seen = _embedded_timesteps(unet)
    guided = GuidedDDPMScheduler(num_train_timesteps=4000, beta_schedule="cosine", variance_type="learned_range")
    stock = DPMSolverMultistepScheduler.from_config(guided.config)
    assert "rescale_timesteps" not in stock.config and "timestep_respacing" not in stock.config
    _run(_pipe(unet=unet, scheduler=stock), batch_size=1, num_inference_steps=3)
    assert seen == pytest.approx([t * 1000.0 / 4000 for t in stock.timesteps.tolist()]) and max(seen) <= 1000
    seen.clear()
    ddpm = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(guided.config))
    ddpm.set_progress_bar_config(disable=True)
    ddpm(batch_size=1, num_inference_steps=3, output_type="np")
    assert seen == pytest.approx([t * 1000.0 / 4000 for t in ddpm.scheduler.timesteps.tolist()]) and max(seen) <= 1000


def test_an_old_folder_with_the_scheduler_key_moves_it_to_the_networks_once(tmp_path, caplog):
    """Folders written before the networks owned their timestep scale keep ``rescale_timesteps`` in the scheduler
    config: loading moves it to the U-Net's and the classifier's ``timestep_scale`` with one notice."""
    import json
    import logging

    unet, classifier = _tiny_unet(), _tiny_classifier()
    scheduler = GuidedDDPMScheduler(num_train_timesteps=40, variance_type="learned_range")
    ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier).save_pretrained(tmp_path)
    config_path = tmp_path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["rescale_timesteps"] = True  # as the converters wrote it before
    config_path.write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        pipe = ClassifierGuidedPipeline.from_pretrained(tmp_path)
    notices = [r for r in caplog.records if "rescale_timesteps" in r.getMessage()]
    assert len(notices) == 1
    assert pipe.unet.config.timestep_scale == pipe.classifier.config.timestep_scale == 1000 / 40
    assert not pipe.scheduler.config.get("rescale_timesteps")
    pipe.save_pretrained(tmp_path / "again")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = ClassifierGuidedPipeline.from_pretrained(tmp_path / "again")
    assert again.unet.config.timestep_scale == 1000 / 40 and not [r for r in caplog.records if "rescale" in r.getMessage()]


def test_callback_sees_every_step():
    pipe = _pipe()
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, int(timestep), tensors["latents"].shape, tensors["pred_original_sample"].abs().max().item()))
        return tensors

    _run(pipe, class_labels=[1], callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents", "pred_original_sample"])
    assert [s[0] for s in seen] == [0, 1, 2, 3]
    assert [s[1] for s in seen] == pipe.scheduler.timesteps.tolist()
    assert all(s[3] <= 1.0 for s in seen)  # x_0 clipped


def test_half_precision_unets_sample():
    """Half-precision networks sample what float32 samples, within their rounding: the relative L2 error of the final
    latents is at most 2 eps of the dtype (measured 1.11-1.22 eps over three seeds, both dtypes), where the classifier
    alone moves them by 0.12 and a bfloat16 network embedding bfloat16-rounded timesteps is at 3.1 eps. The networks
    see t * 1000 / T, as improved-diffusion's do."""

    def networks(dtype):
        unet, classifier = _tiny_unet(), _tiny_classifier()
        for network in (unet, classifier):
            network.register_to_config(timestep_scale=1000 / 40)
        return dict(unet=unet.to(dtype), classifier=classifier.to(dtype))

    run = dict(class_labels=[3, 5], classifier_scale=1000.0, guidance_scale=2.0, output_type="latent")
    reference = _pipe(**networks(torch.float32))(generator=torch.Generator().manual_seed(0), **run).images
    for dtype in (torch.bfloat16, torch.float16):
        pipe = _pipe(**networks(dtype))
        images = _run(pipe, class_labels=[1], classifier_scale=1.0, guidance_scale=2.0)
        assert images.dtype == torch.float32 and torch.isfinite(images).all()
        latents = pipe(generator=torch.Generator().manual_seed(0), **run).images
        error = ((latents - reference).norm() / reference.norm()).item()
        assert error < 2 * torch.finfo(dtype).eps, f"{dtype}: relative error {error:.3g} ({error / torch.finfo(dtype).eps:.2f} eps)"


def test_class_names():
    pipe = _pipe(id2label={i: f"digit {i}, number {i}" for i in range(10)})
    assert torch.equal(_run(pipe, class_labels=["digit 3", "number 4"]), _run(pipe, class_labels=[3, 4]))
    with pytest.raises(ValueError, match="unknown class name 'cat'"):
        pipe(class_labels=["cat"])
    imagenet = _pipe(unet=_tiny_unet(num_classes=1000))
    assert imagenet.labels["golden retriever"] == 207
    assert imagenet.labels["Golden Retriever"] == 207 == imagenet.labels[" golden retriever "]  # as class_labels takes it
    assert "golden retriever" in list(imagenet.labels) and len(imagenet.labels) > 1000
    with pytest.raises(KeyError, match="ambiguous"):
        imagenet.labels["crane"]
    assert torch.equal(_run(imagenet, class_labels=["golden retriever"]), _run(imagenet, class_labels=[207]))
    with pytest.raises(ValueError, match="class name 'crane' is ambiguous: ids \\[134, 517\\]"):
        imagenet(class_labels=["crane"])


def test_bad_input_is_refused_before_sampling():
    pipe = _pipe()
    unconditional = _pipe(unet=_tiny_unet(num_classes=None))
    no_null = _pipe(unet=_tiny_unet(class_dropout_prob=0.0))
    cases = [
        (lambda: pipe(class_labels=[10]), r"expected class labels in \[0, 10\), got \[10\]"),
        (lambda: unconditional(class_labels=[1]), "expected no class_labels"),
        (lambda: pipe(class_labels=[1], classifier_scale=1.0), "expected a classifier for classifier_scale"),
        (lambda: no_null(batch_size=2), "expected class_labels for a class-conditional U-Net"),
        (lambda: no_null(class_labels=[1], guidance_scale=3.0), "expected a U-Net trained with label dropout"),
        (lambda: pipe(class_labels=[1], latents=torch.randn(1, 3, 8, 8)), r"expected latents of shape \(1, 3, 16, 16\)"),
        (lambda: pipe(class_labels=[1], timestep_respacing="99"), "cannot|impossible|respac"),
        (lambda: pipe(class_labels=[1, 2], batch_size=3), "expected 3 class labels"),
        (lambda: pipe(class_labels=[1], output_type="jpg"), "expected output_type"),
        (lambda: pipe(class_labels=[1], prompt="a cat"), "expected clip_model and tokenizer"),
        (lambda: pipe(class_labels=[1], num_inference_steps=3, timestep_respacing="3"), "got both"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_saved_pipeline_loads_with_diffusers(tmp_path):
    pipe = _pipe(classifier=_tiny_classifier(), id2label={i: f"digit {i}" for i in range(10)})
    pipe.save_pretrained(tmp_path)
    index = (tmp_path / "model_index.json").read_text()
    assert '"guided_diffusers",\n    "ADMUNet2DModel"' in index
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded, ClassifierGuidedPipeline) and isinstance(loaded.classifier, ADMClassifier)
    loaded.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=["digit 2"], classifier_scale=2.0, guidance_scale=1.5)
    torch.testing.assert_close(_run(loaded, **kwargs), _run(pipe, **kwargs), atol=1e-5, rtol=1e-5)


# -- upsampling ----------------------------------------------------------------------------------------------------------


def _tiny_upsampler():
    torch.manual_seed(3)
    unet = ADMSuperResUNet2DModel(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                  attention_downsample_factors=(2,), num_classes=10, out_channels=6, num_heads=2)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=40, variance_type="learned_range", timestep_respacing="4")
    pipe = ADMUpsamplingPipeline(unet=unet.eval(), scheduler=scheduler, low_res_size=8)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_cascade_base_then_upsampler(tmp_path):
    base = ClassifierGuidedPipeline(
        unet=ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attention_downsample_factors=(2,), num_classes=10, out_channels=6),
        scheduler=GuidedDDPMScheduler(num_train_timesteps=40, variance_type="learned_range", timestep_respacing="3"),
    )
    base.set_progress_bar_config(disable=True)
    low = base(class_labels=[1, 2], generator=torch.Generator().manual_seed(0)).images
    up = _tiny_upsampler()
    high = up(low, class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert high.shape == (2, 3, 16, 16)
    # PIL, uint8 arrays and [-1, 1] tensors are the same input
    as_array = np.stack([np.asarray(im) for im in low])
    as_tensor = torch.from_numpy(as_array).permute(0, 3, 1, 2).float() / 127.5 - 1
    for images in (as_array, as_tensor):
        again = up(images, class_labels=[1, 2], generator=torch.Generator().manual_seed(0), output_type="pt").images
        torch.testing.assert_close(again, high)
    up.save_pretrained(tmp_path)
    loaded = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded, ADMUpsamplingPipeline) and loaded.config.low_res_size == 8


def test_upsampler_refuses_wrong_size_and_labels():
    up = _tiny_upsampler()
    with pytest.raises(ValueError, match="expected low_res_images of size 8x8, got 4x4"):
        up(torch.zeros(1, 3, 4, 4), class_labels=[1])
    with pytest.raises(ValueError, match="expected class_labels for a class-conditional upsampler"):
        up(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"expected low_res_images float arrays in \[0, 1\], got values in \[255, 255\]"):
        up(np.full((1, 8, 8, 3), 255.0, dtype=np.float32), class_labels=[1])
    with pytest.raises(ValueError, match=r"expected low_res_images tensors in \[-1, 1\], got values in \[255, 255\]"):
        up(torch.full((1, 3, 8, 8), 255.0), class_labels=[1])


# -- inversion -----------------------------------------------------------------------------------------------------------


class _OracleUNet(ADMUNet2DModel):
    """The exact epsilon of a data distribution that is a single image: DDIM inversion of it is exact."""

    def set_target(self, target, alphas_cumprod):
        self.target, self.alphas_cumprod_table = target, alphas_cumprod

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        alpha_bar = self.alphas_cumprod_table[timestep.long()].float().view(-1, 1, 1, 1)
        eps = (sample - alpha_bar.sqrt() * self.target) / (1 - alpha_bar).sqrt()
        return UNet2DOutput(sample=torch.cat([eps, torch.zeros_like(eps)], dim=1))


def test_inversion_reconstructs_and_edits():
    scheduler = GuidedDDIMScheduler(num_train_timesteps=40, variance_type="learned_range")
    image = torch.rand(1, 3, 16, 16) * 1.6 - 0.8
    oracle = _OracleUNet(sample_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                         attention_downsample_factors=(2,), out_channels=6, num_head_channels=16)
    oracle.set_target(image, scheduler.alphas_cumprod)
    exact = DDIMInversionPipeline(unet=oracle, scheduler=scheduler)
    exact.set_progress_bar_config(disable=True)
    out = exact(image, timestep_respacing="ddim20", output_type="pt")
    assert out.latents.shape == (1, 3, 16, 16) and out.reconstruction_error.shape == (1,)
    assert out.reconstruction_error.item() < 1e-4, out.reconstruction_error
    torch.testing.assert_close(out.images * 2 - 1, image, atol=1e-4, rtol=0)

    pipe = DDIMInversionPipeline(unet=_tiny_unet(class_dropout_prob=0.0), scheduler=scheduler, classifier=_tiny_classifier())
    pipe.set_progress_bar_config(disable=True)
    reconstructed = pipe(image, class_labels=[2], timestep_respacing="ddim20", output_type="pt")
    edited = pipe(image, class_labels=[2], edit_class_labels=[7], timestep_respacing="ddim20", output_type="pt")
    assert torch.equal(edited.latents, reconstructed.latents)  # the same inversion, decoded under another label
    assert (edited.images - reconstructed.images).abs().mean() > 1e-3
    guided = pipe(image, class_labels=[2], classifier_scale=20.0, timestep_respacing="ddim20", output_type="pt")
    assert (guided.images - reconstructed.images).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="expected a GuidedDDIMScheduler"):
        DDIMInversionPipeline(unet=oracle, scheduler=GuidedDDPMScheduler())
