"""GuidedDDPMScheduler and GuidedDDIMScheduler: config, timesteps, steps, errors, and stock diffusers schedulers."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

from guided_diffusers.schedulers import (
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
    space_timesteps,
)
from guided_diffusers.conversion import scheduler_config_from_diffusion_flags
from parity import load_case, load_case_model, process_model

SCHEDULERS = [GuidedDDPMScheduler, GuidedDDIMScheduler]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _public(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def _learned_range(cls=GuidedDDPMScheduler, **kwargs):
    config = {"num_train_timesteps": 100, "beta_schedule": "cosine", "variance_type": "learned_range", **kwargs}
    return cls(**config)


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_config_save_load_round_trip_reproduces_the_numbers(cls, tmp_path):
    scheduler = cls(
        num_train_timesteps=60,
        beta_schedule="cosine",
        prediction_type="sample",
        variance_type="learned_range",
        rescale_timesteps=True,
        timestep_respacing="5,3",
    )
    scheduler.save_pretrained(tmp_path / "scheduler")
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == cls.__name__
    assert saved["timestep_respacing"] == "5,3" and saved["rescale_timesteps"] is True
    loaded = cls.from_pretrained(tmp_path, subfolder="scheduler")
    assert _public(loaded.config) == _public(scheduler.config)
    assert torch.equal(loaded.timesteps, scheduler.timesteps)
    torch.testing.assert_close(loaded.sampling_diffusion.betas, scheduler.sampling_diffusion.betas, rtol=0, atol=0)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 3, 4, 4, generator=generator)
    output = torch.randn(2, 6, 4, 4, generator=generator)
    noise = torch.randn(2, 3, 4, 4, generator=generator)
    t = scheduler.timesteps[2]
    expected = scheduler.step(output, t, sample, variance_noise=noise).prev_sample
    reloaded = loaded.step(output, t, sample, variance_noise=noise).prev_sample
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=0)


def test_trained_betas_round_trip(tmp_path):
    betas = [0.01 * (i + 1) for i in range(10)]
    scheduler = GuidedDDIMScheduler(num_train_timesteps=10, trained_betas=betas)
    scheduler.save_config(tmp_path)
    loaded = GuidedDDIMScheduler.from_config(GuidedDDIMScheduler.load_config(tmp_path))
    torch.testing.assert_close(loaded.betas, torch.tensor(betas, dtype=torch.float64))


def test_schedulers_load_from_each_others_config():
    ddpm = _learned_range(timestep_respacing="ddim10")
    ddim = GuidedDDIMScheduler.from_config(ddpm.config)
    assert _public(ddim.config) == _public(ddpm.config)
    assert torch.equal(ddim.timesteps, ddpm.timesteps)


def test_diffusion_flags_build_the_scheduler():
    config = scheduler_config_from_diffusion_flags({"steps": 50, "learn_sigma": True, "timestep_respacing": "10"})
    scheduler = GuidedDDPMScheduler(**config)
    assert scheduler.timesteps.tolist() == space_timesteps(50, "10")[::-1]
    assert scheduler.config.variance_type == "learned_range"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta_schedule": "squaredcos"}, "unknown beta_schedule 'squaredcos'"),
        ({"timestep_spacing": "even"}, "unknown timestep_spacing 'even'"),
        ({"prediction_type": "v_prediction"}, "unknown prediction_type"),
        ({"variance_type": "fixed_small_log"}, "unknown variance_type"),
        ({"timestep_respacing": "ddim300"}, "cannot take exactly 300 steps from 1000"),
        ({"num_train_timesteps": 0}, "num_diffusion_timesteps as a whole number >= 1"),
    ],
)
@pytest.mark.parametrize("cls", SCHEDULERS)
def test_bad_config_is_an_error(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Timesteps
# ---------------------------------------------------------------------------------------------------------------------


def test_set_timesteps_variants():
    scheduler = GuidedDDPMScheduler(num_train_timesteps=1000)
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    # An int N is diffusers' grid ("leading" by default, as DDPMScheduler and DDIMScheduler); a string the originals'.
    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == list(range(900, -1, -100))
    scheduler.set_timesteps("250")
    assert scheduler.timesteps.flip(0).tolist() == space_timesteps(1000, "250")
    assert scheduler.num_inference_steps == 250
    scheduler.set_timesteps("ddim25")
    assert scheduler.timesteps.flip(0).tolist() == list(range(0, 1000, 40))
    scheduler.set_timesteps("10,15,20")
    assert len(scheduler.timesteps) == 45
    scheduler.set_timesteps(timesteps=[999, 500, 0])
    assert scheduler.timesteps.tolist() == [999, 500, 0]
    assert scheduler.timesteps.dtype == torch.long
    scheduler.set_timesteps()
    assert len(scheduler.timesteps) == 1000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, r"in \[1, 100\].*got 0"),
        ({"num_inference_steps": 101}, r"in \[1, 100\].*got 101"),
        ({"num_inference_steps": "200"}, "cannot take 200 steps from a section of 100"),
        ({"num_inference_steps": "fast"}, "integer counts"),
        ({"timesteps": [100]}, r"in \[0, 100\)"),
        ({"num_inference_steps": 10, "timesteps": [5]}, "either num_inference_steps or timesteps"),
        ({"timesteps": [0, 50, 99]}, r"strictly descending.*\[0, 50, 99\]"),
        ({"timesteps": [50, 50, 0]}, "strictly descending"),
        ({"timesteps": [50.5, 0]}, "integers"),
        ({"timesteps": []}, "non-empty"),
    ],
)
def test_bad_set_timesteps_is_an_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _learned_range().set_timesteps(**kwargs)


def test_previous_timestep_walks_the_grid():
    scheduler = _learned_range(GuidedDDIMScheduler, timestep_respacing="ddim10")
    assert scheduler.previous_timestep(30) == 20 and scheduler.previous_timestep(0) == -1


def test_an_old_configs_rescale_key_is_kept_for_the_pipelines_and_unused_by_the_scheduler():
    """Folders from before the networks owned their timestep scale say ``rescale_timesteps`` in the scheduler config:
    the scheduler still reads such a config (the pipelines move the key to the networks), and its process is the same."""
    old, new = _learned_range(rescale_timesteps=True), _learned_range()
    assert old.config.rescale_timesteps is True
    torch.testing.assert_close(old.alphas_cumprod, new.alphas_cumprod, rtol=0, atol=0)
    assert old.timesteps.tolist() == new.timesteps.tolist()


# ---------------------------------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------------------------------


def _inputs(channels=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 8, 8, generator=generator), torch.randn(2, 3, 8, 8, generator=generator)


def test_ddpm_step_maps_original_timesteps_to_the_respaced_process():
    scheduler = _learned_range(timestep_respacing="10")
    output, sample = _inputs()
    noise = torch.randn_like(sample)
    t = scheduler.timesteps[3]
    process, step = scheduler.sampling_diffusion, len(scheduler.timesteps) - 1 - 3
    prediction = process.p_mean_variance(output, sample, step)
    expected = prediction.mean + torch.exp(0.5 * prediction.log_variance) * noise
    result = scheduler.step(output, t, sample, variance_noise=noise)
    torch.testing.assert_close(result.prev_sample, expected)
    torch.testing.assert_close(result.pred_original_sample, prediction.pred_original_sample)
    prev_sample, pred_original_sample = scheduler.step(output, t, sample, variance_noise=noise, return_dict=False)
    torch.testing.assert_close(prev_sample, expected)


def test_ddpm_step_draws_reproducible_noise_and_none_at_the_last_step():
    scheduler = _learned_range(timestep_respacing="10")
    output, sample = _inputs()
    first = scheduler.step(output, 11, sample, generator=torch.Generator().manual_seed(5)).prev_sample
    second = scheduler.step(output, 11, sample, generator=torch.Generator().manual_seed(5)).prev_sample
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    last = scheduler.step(output, 0, sample, generator=torch.Generator().manual_seed(5))
    again = scheduler.step(output, 0, sample, variance_noise=torch.zeros_like(sample))
    torch.testing.assert_close(last.prev_sample, again.prev_sample, rtol=0, atol=0)


def test_ddpm_guidance_shifts_the_mean_by_variance_times_gradient():
    scheduler = _learned_range(timestep_respacing="10")
    output, sample = _inputs()
    gradient = torch.randn_like(sample)
    noise = torch.zeros_like(sample)
    plain = scheduler.step(output, 22, sample, variance_noise=noise).prev_sample
    guided = scheduler.step(output, 22, sample, variance_noise=noise, guidance_gradient=gradient).prev_sample
    step = scheduler._to_process_steps(22, sample)
    variance = scheduler.sampling_diffusion.p_mean_variance(output, sample, step).variance
    torch.testing.assert_close(guided - plain, variance * gradient)
    with pytest.raises(ValueError, match="guidance_gradient must have the sample's shape"):
        scheduler.step(output, 22, sample, guidance_gradient=gradient[:1])


def test_ddim_guidance_shifts_epsilon():
    scheduler = GuidedDDIMScheduler(num_train_timesteps=100, timestep_respacing="ddim10", clip_sample=False)
    output, sample = _inputs(channels=3)
    gradient = torch.randn_like(sample)
    guided = scheduler.step(output, 50, sample, guidance_gradient=gradient).prev_sample
    alpha_bar = scheduler.sampling_diffusion.alphas_cumprod[5].float()
    shifted = output - (1 - alpha_bar).sqrt() * gradient
    torch.testing.assert_close(guided, scheduler.step(shifted, 50, sample).prev_sample, atol=1e-5, rtol=1e-5)


def test_ddim_eta_needs_noise_only_when_positive():
    scheduler = _learned_range(GuidedDDIMScheduler, timestep_respacing="ddim10")
    output, sample = _inputs()
    deterministic = scheduler.step(output, 50, sample).prev_sample
    torch.testing.assert_close(deterministic, scheduler.step(output, 50, sample, eta=0.0).prev_sample)
    a = scheduler.step(output, 50, sample, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    b = scheduler.step(output, 50, sample, eta=1.0, generator=torch.Generator().manual_seed(1)).prev_sample
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, deterministic)
    with pytest.raises(ValueError, match="eta must be a non-negative number"):
        scheduler.step(output, 50, sample, eta=-1.0)


def test_ddim_accepts_learned_sigma_outputs_under_a_fixed_variance_config():
    scheduler = GuidedDDIMScheduler(num_train_timesteps=100, timestep_respacing="ddim10")
    output, sample = _inputs()
    torch.testing.assert_close(
        scheduler.step(output, 50, sample).prev_sample, scheduler.step(output[:, :3], 50, sample).prev_sample
    )


def test_clip_sample_override_and_denoised_fn():
    scheduler = GuidedDDPMScheduler(num_train_timesteps=100, prediction_type="sample")
    sample = torch.zeros(1, 3, 2, 2)
    output = torch.full((1, 3, 2, 2), 3.0)
    assert scheduler.step(output, 10, sample).pred_original_sample.max() == 1.0
    assert scheduler.step(output, 10, sample, clip_sample=False).pred_original_sample.max() == 3.0
    halved = scheduler.step(output, 10, sample, denoised_fn=lambda x: x / 6).pred_original_sample
    assert halved.max() == pytest.approx(0.5)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_step_errors(cls):
    scheduler = _learned_range(cls, timestep_respacing="10")
    output, sample = _inputs()
    with pytest.raises(ValueError, match=r"timestep \[12\] is not one of this scheduler's timesteps"):
        scheduler.step(output, 12, sample)
    with pytest.raises(ValueError, match=r"steps 0..99, got \[100\]"):
        scheduler.step(output, 100, sample)
    with pytest.raises(ValueError, match="expects a model output with 6 channels for 3-channel samples.*got 4"):
        scheduler.step(output[:, :4], 11, sample)
    if cls is GuidedDDPMScheduler:
        with pytest.raises(ValueError, match="6 channels for 3-channel samples.*got 3"):
            scheduler.step(output[:, :3], 11, sample)
        fixed = GuidedDDPMScheduler(num_train_timesteps=100, variance_type="fixed_small")
        with pytest.raises(ValueError, match="3 channels.*learned-sigma model needs variance_type.*got 6"):
            fixed.step(output, 11, sample)


def test_add_noise_uses_the_full_process():
    scheduler = _learned_range(timestep_respacing="5")
    original, noise = torch.ones(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    noisy = scheduler.add_noise(original, noise, torch.tensor([1, 2]))
    expected = scheduler.alphas_cumprod[[1, 2]].sqrt().float()
    torch.testing.assert_close(noisy[:, 0, 0, 0], expected)
    assert len(scheduler) == 100


def test_inverse_step_then_step_returns_along_an_exact_prediction():
    scheduler = GuidedDDIMScheduler(num_train_timesteps=100, prediction_type="sample", timestep_respacing="ddim10")
    generator = torch.Generator().manual_seed(4)
    x_start = torch.rand(1, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(1, 3, 4, 4, generator=generator, dtype=torch.float64)
    x = scheduler.add_noise(x_start, noise, 30)
    x_next = scheduler.inverse_step(x_start, 30, x).next_sample
    torch.testing.assert_close(x_next, scheduler.add_noise(x_start, noise, 40))
    torch.testing.assert_close(scheduler.step(x_start, 40, x_next).prev_sample, x)


# ---------------------------------------------------------------------------------------------------------------------
# Stock diffusers schedulers from our config
# ---------------------------------------------------------------------------------------------------------------------


def test_stock_schedulers_from_our_config_run_the_same_process():
    """``X.from_config(ours.config)``, the diffusers way: our config is in diffusers' terms (the cosine schedule by
    diffusers' name), and our own keys are dropped silently (our classes are known to diffusers by name)."""
    config = GuidedDDPMScheduler(num_train_timesteps=50, beta_schedule="cosine", variance_type="learned_range").config
    stock = DPMSolverMultistepScheduler.from_config(config)
    assert stock.config.num_train_timesteps == 50 and stock.config.beta_schedule == "squaredcos_cap_v2"
    assert stock.config.trained_betas is None and stock.config.prediction_type == "epsilon"
    assert "timestep_respacing" not in stock.config and "rescale_timesteps" not in stock.config
    torch.testing.assert_close(stock.alphas_cumprod.double(), GuidedDDPMScheduler.from_config(config).alphas_cumprod.double(),
                               atol=1e-6, rtol=0)
    assert DDIMScheduler.from_config(config).config.clip_sample is True
    assert DDPMScheduler.from_config(GuidedDDPMScheduler(variance_type="fixed_large").config).config.variance_type == "fixed_large"


def _point_mass_model(scheduler, target):
    """The exact learned-sigma model for data that is always ``target``: eps(x_t) then zero variance values."""
    alphas_cumprod = scheduler.alphas_cumprod

    def model(x, t):
        alpha_bar = alphas_cumprod[torch.as_tensor(t).long().reshape(-1)].float().reshape(-1, 1, 1, 1)
        eps = (x - alpha_bar.sqrt() * target) / (1 - alpha_bar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    return model


@pytest.mark.parametrize(
    ("solver", "overrides", "slice_output"),
    [
        (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}, True),
        (UniPCMultistepScheduler, {}, True),
        (EulerDiscreteScheduler, {}, True),
    ],
)
def test_fast_solvers_drive_a_learned_sigma_model(solver, overrides, slice_output):
    ours = GuidedDDPMScheduler(num_train_timesteps=1000, beta_schedule="cosine", variance_type="learned_range")
    stock = solver.from_config(ours.config, **overrides)
    target = torch.linspace(-0.8, 0.8, 3 * 8 * 8).reshape(1, 3, 8, 8)
    model = _point_mass_model(ours, target)
    stock.set_timesteps(20)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * stock.init_noise_sigma
    for t in stock.timesteps:
        output = model(stock.scale_model_input(x, t), t)
        x = stock.step(output[:, :3] if slice_output else output, t, x).prev_sample
    torch.testing.assert_close(x, target, atol=2e-2, rtol=0)


def test_stock_ddim_with_clipped_model_output_reproduces_ours_on_a_converted_model():
    case, _ = load_case("diffusion_learned_range")
    model_case, model_io = load_case(case["model_case"])
    model = process_model(case)
    config = scheduler_config_from_diffusion_flags(case["diffusion_flags"])
    ours = GuidedDDIMScheduler(**config)
    ours.set_timesteps("ddim10")
    stock = DDIMScheduler.from_config(ours.config)
    stock.set_timesteps(10)
    assert stock.timesteps.tolist() == ours.timesteps.tolist()
    labels = model_io["y"]
    x_ours = x_stock = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in ours.timesteps:
            output = model(x_ours, t.expand(2), class_labels=labels).sample
            assert output.shape[1] == 6
            x_ours = ours.step(output, t, x_ours).prev_sample
            output = model(x_stock, t.expand(2), class_labels=labels).sample
            x_stock = stock.step(output[:, :3], t, x_stock, use_clipped_model_output=True).prev_sample
    torch.testing.assert_close(x_stock, x_ours, atol=1e-3, rtol=1e-3)
