"""Every diffusion_* parity case: our schedulers and losses, driven by the converted models, against the originals.

Tensors of the full process (q_*, pmv*, loss_*, bpd_*) use the scheduler's ``diffusion``; p_* trajectories use
GuidedDDPMScheduler on ``sample_respacing`` and ddim_* / inv_* GuidedDDIMScheduler on ``ddim_respacing``, fed the
recorded noise through ``variance_noise``. Guidance is classifier_scale * d/dx sum log_softmax(classifier)[guide_y],
evaluated at the timestep ``t`` (the networks own their timestep scale) and passed as ``guidance_gradient``.
"""

from __future__ import annotations

import functools

import pytest
import torch

from guided_diffusers.schedulers import (
    GuidedDDIMScheduler,
    GuidedDDPMScheduler,
)
from guided_diffusers.conversion import scheduler_config_from_diffusion_flags
from guided_diffusers.evaluation import calc_bpd_loop
from guided_diffusers.training import loss_type_from_flags, training_losses
from parity import assert_close, load_case, load_case_model, process_model

CASES = [
    "diffusion_fixed_large_rescaled",
    "diffusion_kl_cosine",
    "diffusion_learned_range",
    "diffusion_xstart_rescaled_mse",
]


pytestmark = pytest.mark.usefixtures("single_torch_thread")


@functools.lru_cache(maxsize=None)
def _case(name):
    return load_case(name)


@functools.lru_cache(maxsize=None)
def _model(name):
    return load_case_model(name)


def _config(case) -> dict:
    config = scheduler_config_from_diffusion_flags(case["diffusion_flags"])
    config["clip_sample"] = case["clip_denoised"]
    return config


def _unet(case, labels):
    model = process_model(case)

    def call(x, t):
        with torch.no_grad():
            return model(x, t, class_labels=labels if case["class_cond"] else None).sample

    return call


def _guidance(case, labels):
    classifier = process_model(case, "classifier_case")
    scale = case["classifier_scale"]

    def gradient(x, t):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = classifier(x_in, t).logits.log_softmax(dim=-1)
            selected = log_probs[torch.arange(len(labels)), labels].sum()
            return torch.autograd.grad(selected, x_in)[0] * scale

    return gradient


def _trajectory_tolerance(case) -> dict:
    return {"atol": case["tolerance"]["trajectory_atol"], "rtol": case["tolerance"]["rtol"]}


def _batch_timestep(scheduler, t, batch_size):
    return torch.as_tensor(t).expand(batch_size)


# ---------------------------------------------------------------------------------------------------------------------
# No model needed
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_betas_and_respaced_timesteps(name):
    case, io = _case(name)
    scheduler = GuidedDDPMScheduler(**_config(case))
    torch.testing.assert_close(scheduler.betas, io["base_betas"], atol=1e-15, rtol=0)
    scheduler.set_timesteps(case["sample_respacing"])
    assert scheduler.timesteps.flip(0).tolist() == io["p_use_timesteps"].tolist()
    torch.testing.assert_close(scheduler.sampling_diffusion.betas, io["p_spaced_betas"], atol=1e-15, rtol=0)
    ddim = GuidedDDIMScheduler(**_config(case))
    ddim.set_timesteps(case["ddim_respacing"])
    assert ddim.timesteps.flip(0).tolist() == io["ddim_use_timesteps"].tolist()


@pytest.mark.parametrize("name", CASES)
def test_forward_process_and_posterior(name):
    case, io = _case(name)
    scheduler = GuidedDDPMScheduler(**_config(case))
    tolerance = case["tolerance"]
    x_start, t = io["x_start"], io["q_t"]
    assert_close(scheduler.add_noise(x_start, io["q_noise"], t), io["q_sample"], tolerance, "q_sample")
    mean, variance, log_variance = scheduler.diffusion.q_posterior_mean_variance(x_start, io["q_sample"], t)
    assert_close(mean, io["q_posterior_mean"], tolerance, "q_posterior_mean")
    assert_close(variance, io["q_posterior_variance"], tolerance, "q_posterior_variance")
    assert_close(log_variance, io["q_posterior_log_variance"], tolerance, "q_posterior_log_variance")


# ---------------------------------------------------------------------------------------------------------------------
# Model-driven
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_p_mean_variance(name, index):
    case, io = _case(name)
    process = GuidedDDPMScheduler(**_config(case)).diffusion
    x_t, t = io[f"pmv{index}_x_t"], io[f"pmv{index}_t"]
    output = _unet(case, io.get("y"))(x_t, process.model_timesteps(t))
    prediction = process.p_mean_variance(output, x_t, t, clip_denoised=case["clip_denoised"])
    tolerance = case["tolerance"]
    assert_close(prediction.variance, io[f"pmv{index}_variance"], tolerance, "variance")
    assert_close(prediction.log_variance, io[f"pmv{index}_log_variance"], tolerance, "log_variance")
    # The converted model matches the original within the model cases' own atol; an epsilon model's x_0 (and mean)
    # multiply that difference by sqrt(1 / alpha_bar - 1), up to 1600 at the last step of a cosine schedule.
    derived = dict(tolerance)
    if process.mean_type == "epsilon":
        amplification = process.extract(process.tables.sqrt_recipm1_alphas_cumprod, t, x_t).max().item()
        derived["atol"] = tolerance["atol"] * max(1.0, amplification)
    assert_close(prediction.pred_original_sample, io[f"pmv{index}_pred_xstart"], derived, "pred_xstart")
    assert_close(prediction.mean, io[f"pmv{index}_mean"], derived, "mean")


@pytest.mark.parametrize("name", CASES)
def test_training_losses(name):
    case, io = _case(name)
    flags = case["diffusion_flags"]
    scheduler = GuidedDDPMScheduler(**_config(case))
    losses = training_losses(
        scheduler,
        _unet(case, io.get("y")),
        io["x_start"],
        io["loss_t"],
        loss_type=loss_type_from_flags(flags.get("use_kl", False), flags.get("rescale_learned_sigmas", False)),
        noise=io["loss_noise"],
    )
    expected = {key[len("loss_") :] for key in io if key.startswith("loss_") and key not in ("loss_t", "loss_noise")}
    assert set(losses) == expected
    for key in expected:
        assert_close(losses[key], io[f"loss_{key}"], case["tolerance"], key)


@pytest.mark.parametrize("name", CASES)
def test_variational_bound_in_bits_per_dim(name):
    case, io = _case(name)
    scheduler = GuidedDDPMScheduler(**_config(case))
    result = calc_bpd_loop(
        scheduler,
        _unet(case, io.get("y")),
        io["x_start"],
        clip_denoised=case["clip_denoised"],
        noise=io["bpd_noise"],
    )
    for key in ("total_bpd", "prior_bpd", "vb", "xstart_mse", "mse"):
        assert_close(result[key], io[f"bpd_{key}"], case["tolerance"], key)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("kind", ["plain", "guided"])
def test_ancestral_sampling_trajectory(name, kind):
    case, io = _case(name)
    labels = io["guide_y"]
    unet, gradient = _unet(case, labels), _guidance(case, labels)
    scheduler = GuidedDDPMScheduler(**_config(case))
    scheduler.set_timesteps(case["sample_respacing"])
    noise, trajectory = io[f"p_{kind}_noise"], io[f"p_{kind}_trajectory"]
    assert len(scheduler.timesteps) == len(trajectory)
    x = io["p_x_T"]
    for i, t in enumerate(scheduler.timesteps):
        model_t = _batch_timestep(scheduler, t, x.shape[0])
        guidance = gradient(x, model_t) if kind == "guided" else None
        x = scheduler.step(unet(x, model_t), t, x, variance_noise=noise[i], guidance_gradient=guidance).prev_sample
        assert_close(x, trajectory[i], _trajectory_tolerance(case), f"p_{kind} step {i}")


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize(("kind", "eta"), [("eta0", 0.0), ("eta05", 0.5), ("eta0_guided", 0.0)])
def test_ddim_trajectory(name, kind, eta):
    case, io = _case(name)
    labels = io["guide_y"]
    unet, gradient = _unet(case, labels), _guidance(case, labels)
    scheduler = GuidedDDIMScheduler(**_config(case))
    scheduler.set_timesteps(case["ddim_respacing"])
    noise, trajectory = io[f"ddim_{kind}_noise"], io[f"ddim_{kind}_trajectory"]
    assert len(scheduler.timesteps) == len(trajectory)
    x = io["p_x_T"]
    for i, t in enumerate(scheduler.timesteps):
        model_t = _batch_timestep(scheduler, t, x.shape[0])
        guidance = gradient(x, model_t) if kind.endswith("guided") else None
        x = scheduler.step(
            unet(x, model_t), t, x, eta=eta, variance_noise=noise[i], guidance_gradient=guidance
        ).prev_sample
        assert_close(x, trajectory[i], _trajectory_tolerance(case), f"ddim_{kind} step {i}")


@pytest.mark.parametrize("name", CASES)
def test_ddim_inversion_and_reconstruction(name):
    case, io = _case(name)
    unet = _unet(case, io["guide_y"])
    scheduler = GuidedDDIMScheduler(**_config(case))
    scheduler.set_timesteps(case["ddim_respacing"])
    x = io["x_start"]
    for i, t in enumerate(scheduler.timesteps.flip(0)):
        x = scheduler.inverse_step(unet(x, _batch_timestep(scheduler, t, x.shape[0])), t, x).next_sample
        assert_close(x, io["inv_trajectory"][i], _trajectory_tolerance(case), f"inversion step {i}")
    x = io["inv_trajectory"][-1]
    for t in scheduler.timesteps:
        x = scheduler.step(unet(x, _batch_timestep(scheduler, t, x.shape[0])), t, x).prev_sample
    assert_close(x, io["inv_reconstruction"], _trajectory_tolerance(case), "reconstruction")
