"""The shared diffusion math: schedules, respacing, the process tables and conversions, guidance shifts, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from guided_diffusers.schedulers import (
    GaussianDiffusion,
    get_beta_schedule,
    get_ddpm_beta_schedule,
    get_named_beta_schedule,
    linear_schedule_bounds,
    respace_betas,
    space_timesteps,
)
from guided_diffusers.conversion import scheduler_config_from_diffusion_flags, timestep_scale_from_flags
from parity import load_case

# ---------------------------------------------------------------------------------------------------------------------
# Parity: every entry of ../shared/parity/schedules
# ---------------------------------------------------------------------------------------------------------------------


def _schedules():
    return load_case("schedules")[1]


@pytest.mark.parametrize("name", ["linear_50", "linear_1000", "linear_4000", "cosine_1000", "cosine_4000"])
def test_named_schedules_match_original(name):
    schedule, steps = name.split("_")
    expected = _schedules()[f"named_{name}"]
    betas = get_named_beta_schedule(schedule, int(steps))
    assert betas.dtype == np.float64
    np.testing.assert_array_equal(betas, expected.numpy())
    # The scheduler-facing entry point, in diffusers' terms: the originals' linear is diffusers' linear between
    # bounds scaled by 1000 / T, their cosine is squaredcos_cap_v2; both bit-identical.
    if schedule == "linear":
        start, end = linear_schedule_bounds(int(steps))
        np.testing.assert_array_equal(get_beta_schedule("linear", int(steps), start, end), expected.numpy())
    else:
        np.testing.assert_array_equal(get_beta_schedule("squaredcos_cap_v2", int(steps)), expected.numpy())
        np.testing.assert_array_equal(get_beta_schedule("cosine", int(steps)), expected.numpy())


@pytest.mark.parametrize("schedule", ["quad", "linear", "warmup10", "warmup50", "const", "jsd"])
def test_ddpm_schedules_match_original(schedule):
    expected = _schedules()[f"ddpm_{schedule}_1000"].numpy()
    betas = get_ddpm_beta_schedule(schedule, beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=1000)
    np.testing.assert_array_equal(betas, expected)
    # The scheduler-facing entry point: DDPM's names (its linear is the named linear at T = 1000).
    np.testing.assert_array_equal(get_beta_schedule(schedule, 1000, beta_start=1e-4, beta_end=0.02), expected)


def test_every_respacing_entry_matches_original():
    entries = {key: value for key, value in _schedules().items() if key.startswith("respace_")}
    assert len(entries) == 8
    for key, expected in entries.items():
        _, steps, spec = key.split("_", 2)
        assert space_timesteps(int(steps), spec.replace("-", ",")) == expected.tolist(), key


def test_spaced_betas_and_posterior_log_variance_match_original():
    schedules = _schedules()
    use_timesteps = space_timesteps(1000, "250")
    betas = respace_betas(get_named_beta_schedule("linear", 1000), use_timesteps)
    torch.testing.assert_close(torch.from_numpy(betas), schedules["spaced_betas_linear_1000_250"], atol=1e-15, rtol=0)
    process = GaussianDiffusion.from_config({"num_train_timesteps": 1000, "beta_schedule": "linear"}, use_timesteps)
    torch.testing.assert_close(process.betas, schedules["spaced_betas_linear_1000_250"], atol=1e-15, rtol=0)
    torch.testing.assert_close(
        process.tables.posterior_log_variance_clipped,
        schedules["spaced_posterior_log_variance_clipped_linear_1000_250"],
        atol=1e-12,
        rtol=0,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Schedules and respacing: behaviour and errors
# ---------------------------------------------------------------------------------------------------------------------


def test_linear_schedule_is_scaled_to_the_number_of_steps():
    betas = get_named_beta_schedule("linear", 250)
    assert betas[0] == pytest.approx(4 * 1e-4) and betas[-1] == pytest.approx(4 * 0.02)


def test_linear_schedule_with_too_few_steps_is_an_error():
    for call in (lambda: get_named_beta_schedule("linear", 7), lambda: linear_schedule_bounds(7)):
        with pytest.raises(ValueError, match="at T = 7 beta_end becomes 2.85714, expected at most 1"):
            call()


def test_jsd_schedule_builds_a_process_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        process = GaussianDiffusion(get_beta_schedule("jsd", 100))
    assert process.alphas_cumprod[-1] == 0


def test_cosine_schedule_is_capped():
    assert get_named_beta_schedule("cosine", 1000).max() == 0.999


def test_trained_betas_override_the_schedule():
    betas = get_beta_schedule("no-such-name", 3, trained_betas=[0.1, 0.2, 0.3])
    np.testing.assert_array_equal(betas, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"shape \(4,\).*got \(3,\)"):
        get_beta_schedule("linear", 4, trained_betas=[0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_named_beta_schedule("quad", 10),
        lambda: get_ddpm_beta_schedule("cosine", beta_start=1e-4, beta_end=0.02, num_diffusion_timesteps=10),
        lambda: get_beta_schedule("squaredcos", 10),
    ],
)
def test_unknown_schedule_names_are_errors(call):
    with pytest.raises(ValueError, match="unknown .*schedule"):
        call()


def test_respacing_specs():
    assert space_timesteps(10, "10") == list(range(10))
    assert space_timesteps(10, 3) == [0, 4, 9]
    assert space_timesteps(10, [1, 1]) == [0, 5]
    assert space_timesteps(100, "ddim10") == list(range(0, 100, 10))
    assert len(space_timesteps(1000, "10,15,20")) == 45


@pytest.mark.parametrize(
    ("steps", "spec", "message"),
    [
        (100, "300", "cannot take 300 steps from a section of 100"),
        (30, "10,15,20", "cannot take 15 steps from a section of 10"),
        (100, "ddim30", "cannot take exactly 30 steps from 100 with an integer stride"),
        (100, "ddimx", "integer N"),
        (100, "abc", "integer counts"),
        (100, "0", "at least one step"),
        (100, "-5", "non-negative"),
    ],
)
def test_impossible_respacing_is_an_error(steps, spec, message):
    with pytest.raises(ValueError, match=message):
        space_timesteps(steps, spec)


def test_respace_betas_keeps_alphas_cumprod():
    betas = get_named_beta_schedule("cosine", 100)
    keep = space_timesteps(100, "7")
    new = GaussianDiffusion(respace_betas(betas, keep))
    full = GaussianDiffusion(betas)
    torch.testing.assert_close(new.alphas_cumprod, full.alphas_cumprod[keep], rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match=r"\[0, 100\).*\[100\]"):
        respace_betas(betas, [0, 100])


def test_flags_to_scheduler_config():
    assert scheduler_config_from_diffusion_flags({}) == {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "prediction_type": "epsilon",
        "variance_type": "fixed_large",
        "timestep_respacing": None,
    }
    config = scheduler_config_from_diffusion_flags(
        {"diffusion_steps": 4000, "noise_schedule": "cosine", "learn_sigma": True, "predict_xstart": True,
         "rescale_timesteps": True, "timestep_respacing": "ddim25", "use_kl": True}
    )
    assert config == {
        "num_train_timesteps": 4000,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample",
        "variance_type": "learned_range",
        "timestep_respacing": "ddim25",
    }
    # rescale_timesteps describes the networks: their timestep_scale, 1000 / T
    assert timestep_scale_from_flags({"diffusion_steps": 4000, "rescale_timesteps": True}) == 0.25
    assert timestep_scale_from_flags({"steps": 300, "rescale_timesteps": True}) == 1000.0 / 300
    assert timestep_scale_from_flags({"diffusion_steps": 4000}) == 1.0
    assert scheduler_config_from_diffusion_flags({"sigma_small": True})["variance_type"] == "fixed_small"
    with pytest.raises(ValueError, match="unknown diffusion flags"):
        scheduler_config_from_diffusion_flags({"learn_sigmas": True})
    with pytest.raises(ValueError, match="unknown noise_schedule"):
        scheduler_config_from_diffusion_flags({"noise_schedule": "quad"})


# ---------------------------------------------------------------------------------------------------------------------
# The process: tables, conversions, variances, guidance, DDIM, timesteps
# ---------------------------------------------------------------------------------------------------------------------


def _process(**kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(get_named_beta_schedule("linear", 50), **kwargs)


def test_tables_are_float64_and_cast_at_use():
    process = _process()
    tables = [getattr(process.tables, field.name) for field in dataclasses.fields(process.tables)]
    assert len(tables) == 18 and all(table.dtype == torch.float64 for table in tables)
    x = torch.zeros(2, 3, 4, 4)
    assert process.extract(process.tables.betas, 3, x).dtype == torch.float32
    assert process.extract(process.tables.betas, 3, x.double()).dtype == torch.float64
    assert process.extract(process.tables.betas, torch.tensor([1, 2]), x)[:, 0, 0, 0].tolist() == pytest.approx(
        process.betas[[1, 2]].tolist()
    )


def test_posterior_log_variance_is_clipped_and_fixed_large_takes_the_posterior_at_zero():
    process = _process()
    assert process.tables.posterior_variance[0] == 0
    assert process.tables.posterior_log_variance_clipped[0] == torch.log(process.tables.posterior_variance[1])
    assert process.tables.fixed_large_variance[0] == process.tables.posterior_variance[1]
    torch.testing.assert_close(process.tables.fixed_large_variance[1:], process.betas[1:])


def test_conversions_between_noise_start_and_previous_are_consistent():
    process = _process()
    generator = torch.Generator().manual_seed(0)
    x_start = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([3, 40])
    x_t = process.q_sample(x_start, t, noise)
    torch.testing.assert_close(process.predict_start_from_noise(x_t, t, noise), x_start)
    torch.testing.assert_close(process.predict_noise_from_start(x_t, t, x_start), noise)
    previous, _, _ = process.q_posterior_mean_variance(x_start, x_t, t)
    torch.testing.assert_close(process.predict_start_from_previous(x_t, t, previous), x_start)


@pytest.mark.parametrize("mean_type", ["epsilon", "sample", "previous_sample"])
def test_p_mean_variance_recovers_the_posterior_from_an_exact_prediction(mean_type):
    process = _process(mean_type=mean_type, variance_type="fixed_small")
    generator = torch.Generator().manual_seed(1)
    x_start = (torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1) * 0.9
    noise = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 30])
    x_t = process.q_sample(x_start, t, noise)
    posterior_mean, posterior_variance, posterior_log_variance = process.q_posterior_mean_variance(x_start, x_t, t)
    output = {"epsilon": noise, "sample": x_start, "previous_sample": posterior_mean}[mean_type]
    seen = []
    prediction = process.p_mean_variance(output, x_t, t, denoised_fn=lambda x: seen.append(x) or x)
    assert len(seen) == 1
    torch.testing.assert_close(prediction.pred_original_sample, x_start)
    torch.testing.assert_close(prediction.mean, posterior_mean)
    torch.testing.assert_close(prediction.variance, posterior_variance)
    torch.testing.assert_close(prediction.log_variance, posterior_log_variance)


def test_a_previous_sample_models_mean_is_its_output_even_when_its_x0_is_clipped():
    """As the originals: with mean type previous_sample the step's mean is the model output itself; only the x_0
    derived from it is clipped (the posterior mean of the clipped x_0 would be another mean)."""
    process = _process(mean_type="previous_sample", variance_type="fixed_small")
    x_t = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    output = torch.full_like(x_t, 0.5)  # its x_0 is far outside [-1, 1] at t = 10
    prediction = process.p_mean_variance(output, x_t, 10)
    assert prediction.pred_original_sample.max() == 1.0
    assert torch.equal(prediction.mean, output)


def test_clipping_bounds_the_start_prediction():
    process = _process(mean_type="sample")
    x_t = torch.zeros(1, 3, 2, 2)
    output = torch.full((1, 3, 2, 2), 5.0)
    assert process.p_mean_variance(output, x_t, 10).pred_original_sample.max() == 1.0
    assert process.p_mean_variance(output, x_t, 10, clip_range=2.0).pred_original_sample.max() == 2.0
    assert process.p_mean_variance(output, x_t, 10, clip_denoised=False).pred_original_sample.max() == 5.0


def test_learned_variances():
    x_t = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 25])
    ranged = _process(variance_type="learned_range")
    low = ranged.p_mean_variance(torch.cat([x_t, -torch.ones_like(x_t)], 1), x_t, t)
    high = ranged.p_mean_variance(torch.cat([x_t, torch.ones_like(x_t)], 1), x_t, t)
    torch.testing.assert_close(low.log_variance, ranged.extract(ranged.tables.posterior_log_variance_clipped, t, x_t))
    torch.testing.assert_close(high.log_variance, ranged.extract(ranged.tables.log_betas, t, x_t))
    torch.testing.assert_close(high.variance, ranged.extract(ranged.tables.betas, t, x_t))
    # v interpolates the log variances: at v = 0 the variance is the geometric mean of the two, not the arithmetic one
    middle = ranged.p_mean_variance(torch.cat([x_t, torch.zeros_like(x_t)], 1), x_t, t)
    geometric = (low.variance * high.variance).sqrt()
    torch.testing.assert_close(middle.variance, geometric)
    torch.testing.assert_close(middle.log_variance, (low.log_variance + high.log_variance) / 2)
    assert (((low.variance + high.variance) / 2 - geometric) / geometric).max() > 1e-3  # the two means differ here
    learned = _process(variance_type="learned")
    values = torch.full_like(x_t, -3.0)
    out = learned.p_mean_variance(torch.cat([x_t, values], 1), x_t, t)
    torch.testing.assert_close(out.log_variance, values)
    torch.testing.assert_close(out.variance, values.exp())


def test_fixed_large_variance():
    process = _process(variance_type="fixed_large")
    x_t = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    out = process.p_mean_variance(x_t, x_t, torch.tensor([0, 7]))
    assert out.variance[0, 0, 0, 0] == process.tables.posterior_variance[1]
    assert out.variance[1, 0, 0, 0] == process.betas[7]


@pytest.mark.parametrize(
    ("variance_type", "channels", "message"),
    [
        ("learned_range", 3, "expects a model output with 6 channels for 3-channel samples.*got 3"),
        ("fixed_small", 6, "expects a model output with 3 channels.*learned-sigma model needs.*got 6"),
        ("learned", 4, "6 channels.*got 4"),
    ],
)
def test_wrong_channel_count_is_an_error(variance_type, channels, message):
    process = _process(variance_type=variance_type)
    with pytest.raises(ValueError, match=message):
        process.p_mean_variance(torch.zeros(1, channels, 2, 2), torch.zeros(1, 3, 2, 2), 1)


def test_out_of_range_timesteps_are_errors():
    process = _process()
    x = torch.zeros(2, 3, 2, 2)
    with pytest.raises(ValueError, match=r"steps 0..49, got \[50\]"):
        process.q_sample(x, 50, torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"got \[-1\]"):
        process.q_sample(x, torch.tensor([-1, 2]), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        process.q_sample(x, torch.tensor([1, 2, 3]), torch.zeros_like(x))
    with pytest.raises(ValueError, match="integers"):
        process.q_sample(x, torch.tensor([1.5, 2.0]), torch.zeros_like(x))


def test_bad_process_arguments_are_errors():
    with pytest.raises(ValueError, match="unknown mean type 'eps'"):
        _process(mean_type="eps")
    with pytest.raises(ValueError, match="unknown variance type"):
        _process(variance_type="fixed")
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        GaussianDiffusion([0.0, 0.5])


def test_model_timesteps_see_the_original_timestep():
    keep = space_timesteps(100, "5")
    process = GaussianDiffusion.from_config({"num_train_timesteps": 100}, keep)
    assert process.model_timesteps(torch.arange(5)).tolist() == keep
    assert process.model_timesteps(torch.arange(5)).dtype == torch.long
    assert process.model_timesteps(2, batch_size=3).tolist() == [keep[2]] * 3


def test_guidance_shifts():
    process = _process()
    generator = torch.Generator().manual_seed(2)
    x_t = torch.randn(2, 3, 4, 4, generator=generator)
    gradient = torch.randn(2, 3, 4, 4, generator=generator)
    t = torch.tensor([5, 45])
    prediction = process.p_mean_variance(torch.randn(2, 3, 4, 4, generator=generator), x_t, t)
    shifted = process.condition_mean(prediction, gradient)
    torch.testing.assert_close(shifted.mean, prediction.mean + prediction.variance * gradient)
    assert shifted.pred_original_sample is prediction.pred_original_sample

    guided_start = process.guided_pred_original_sample(prediction.pred_original_sample, x_t, t, gradient)
    eps = process.predict_noise_from_start(x_t, t, prediction.pred_original_sample)
    alpha_bar = process.extract(process.tables.alphas_cumprod, t, x_t)
    expected_start = process.predict_start_from_noise(x_t, t, eps - (1 - alpha_bar).sqrt() * gradient)
    torch.testing.assert_close(guided_start, expected_start)
    torch.testing.assert_close(process.guided_noise(eps, t, gradient), eps - (1 - alpha_bar).sqrt() * gradient)


def test_ddim_step_and_reverse_step_are_inverse_along_an_exact_prediction():
    process = _process()
    generator = torch.Generator().manual_seed(3)
    x_start = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    t = torch.tensor([10, 10])
    x_t = process.q_sample(x_start, t, noise)
    x_next = process.ddim_reverse_step(x_start, x_t, t)
    torch.testing.assert_close(x_next, process.q_sample(x_start, t + 1, noise))
    torch.testing.assert_close(process.ddim_step(x_start, x_next, t + 1), x_t)
    # The reverse step from the last step lands on alpha_bar = 0: the noise itself.
    last = torch.tensor([49, 49])
    torch.testing.assert_close(process.ddim_reverse_step(x_start, process.q_sample(x_start, last, noise), last), noise)


def test_ddim_eta_one_has_the_posterior_variance_and_step_zero_no_noise():
    process = _process()
    x = torch.zeros(1, 1, 1, 1, dtype=torch.float64)
    sigma = process.ddim_sigma(20, x, eta=1.0)
    torch.testing.assert_close(sigma**2, process.extract(process.tables.posterior_variance, 20, x))
    start = torch.full((1, 1, 1, 1), 0.5, dtype=torch.float64)
    assert process.ddim_step(start, x, 0, eta=1.0, noise=torch.ones_like(x)).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs noise"):
        process.ddim_step(start, x, 3, eta=0.5)


def test_p_sample_adds_no_noise_at_step_zero():
    process = _process(variance_type="fixed_large")
    x_t = torch.zeros(2, 3, 2, 2)
    prediction = process.p_mean_variance(torch.zeros_like(x_t), x_t, torch.tensor([0, 1]))
    sample = process.p_sample(prediction, torch.tensor([0, 1]), torch.ones_like(x_t))
    torch.testing.assert_close(sample[0], prediction.mean[0])
    torch.testing.assert_close(sample[1], prediction.mean[1] + prediction.variance[1].sqrt())


def test_single_step_process_works():
    process = GaussianDiffusion.from_config({"num_train_timesteps": 1000}, space_timesteps(1000, "1"))
    x_t = torch.randn(1, 3, 2, 2)
    prediction = process.p_mean_variance(torch.zeros_like(x_t), x_t, 0)
    assert torch.isfinite(prediction.log_variance).all()
