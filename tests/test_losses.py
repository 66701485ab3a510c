"""Training losses, likelihood helpers and the bits/dim loop on synthetic models (parity: test_diffusion_parity)."""

from __future__ import annotations

import math

import pytest
import torch

from guided_diffusers.schedulers import GaussianDiffusion, GuidedDDPMScheduler, get_named_beta_schedule
from guided_diffusers.evaluation import calc_bpd_loop
from guided_diffusers.training import (
    LossType,
    discretized_gaussian_log_likelihood,
    loss_type_from_flags,
    mean_flat,
    normal_kl,
    prior_bpd,
    training_losses,
    vb_terms_bpd,
)


def _process(**kwargs) -> GaussianDiffusion:
    return GaussianDiffusion(get_named_beta_schedule("linear", 40), **kwargs)


def _data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x_start = torch.randint(0, 256, (2, 3, 4, 4), generator=generator).float() / 127.5 - 1
    noise = torch.randn(2, 3, 4, 4, generator=generator)
    return x_start, noise


def test_normal_kl():
    mean = torch.tensor([0.3, -1.0])
    assert torch.equal(normal_kl(mean, 0.5, mean, 0.5), torch.zeros(2))
    # KL(N(1, e^0) || N(0, e^1)) = 0.5 * (-1 + 1 - 0 + e^-1 + e^-1)
    expected = 0.5 * (2 * math.exp(-1))
    assert normal_kl(torch.tensor(1.0), 0.0, 0.0, 1.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one tensor"):
        normal_kl(0.0, 0.0, 0.0, 0.0)


def test_discretized_likelihood_sums_to_one_over_the_256_bins():
    bins = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    means = torch.full_like(bins, 0.1)
    log_scales = torch.full_like(bins, math.log(0.3))
    probabilities = discretized_gaussian_log_likelihood(bins, means=means, log_scales=log_scales).exp()
    assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-9)
    assert probabilities.argmax().item() == round((0.1 + 1) * 127.5)
    with pytest.raises(ValueError, match="share one shape"):
        discretized_gaussian_log_likelihood(bins, means=means[:3], log_scales=log_scales)


def test_mean_flat():
    assert mean_flat(torch.arange(12.0).reshape(2, 2, 3)).tolist() == [2.5, 8.5]


def test_loss_types():
    assert loss_type_from_flags() is LossType.MSE
    assert loss_type_from_flags(rescale_learned_sigmas=True) is LossType.RESCALED_MSE
    assert loss_type_from_flags(use_kl=True, rescale_learned_sigmas=True) is LossType.RESCALED_KL
    assert LossType("kl").is_vb and not LossType.MSE.is_vb
    with pytest.raises(ValueError, match="unknown loss type 'l1'"):
        training_losses(_process(), lambda x, t: x, *_data(), loss_type="l1")


@pytest.mark.parametrize("mean_type", ["epsilon", "sample", "previous_sample"])
def test_mse_targets_per_mean_type(mean_type):
    process = _process(mean_type=mean_type)
    x_start, noise = _data()
    t = torch.tensor([0, 33])
    x_t = process.q_sample(x_start, t, noise)
    target = {
        "epsilon": noise,
        "sample": x_start,
        "previous_sample": process.q_posterior_mean_variance(x_start, x_t, t)[0],
    }[mean_type]
    seen = {}

    def model(x, model_t):
        seen["x"], seen["t"] = x, model_t
        return target + 0.5

    losses = training_losses(process, model, x_start, t, noise=noise)
    torch.testing.assert_close(seen["x"], x_t)
    assert seen["t"].tolist() == [0, 33]
    torch.testing.assert_close(losses["mse"], torch.full((2,), 0.25))
    assert set(losses) == {"loss", "mse"}


def test_model_outputs_with_sample_attribute_or_tuples_are_unwrapped():
    class Output:
        def __init__(self, sample):
            self.sample = sample

    process = _process()
    x_start, noise = _data()
    t = torch.tensor([3, 4])
    direct = training_losses(process, lambda x, t: noise, x_start, t, noise=noise)["loss"]
    wrapped = training_losses(process, lambda x, t: Output(noise), x_start, t, noise=noise)["loss"]
    tupled = training_losses(process, lambda x, t: (noise,), x_start, t, noise=noise)["loss"]
    assert torch.equal(direct, wrapped) and torch.equal(direct, tupled)


def _learned_output(noise, seed=1):
    generator = torch.Generator().manual_seed(seed)
    prediction = (noise + 0.1 * torch.randn(noise.shape, generator=generator)).requires_grad_(True)
    variance_values = torch.rand(noise.shape, generator=generator).mul(2).sub(1).requires_grad_(True)
    return prediction, variance_values


def test_hybrid_loss_trains_the_variance_only_through_the_vb_term():
    process = _process(variance_type="learned_range")
    x_start, noise = _data()
    t = torch.tensor([0, 11])
    prediction, variance_values = _learned_output(noise)
    losses = training_losses(
        process, lambda x, model_t: torch.cat([prediction, variance_values], 1), x_start, t, noise=noise
    )
    assert set(losses) == {"loss", "mse", "vb"}
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    losses["vb"].sum().backward()
    assert prediction.grad is None or torch.count_nonzero(prediction.grad) == 0
    assert torch.count_nonzero(variance_values.grad) > 0


def test_rescaled_losses_scale_the_vb_term():
    process = _process(variance_type="learned_range")
    x_start, noise = _data()
    t = torch.tensor([2, 37])
    prediction, variance_values = _learned_output(noise)
    model = lambda x, model_t: torch.cat([prediction, variance_values], 1).detach()  # noqa: E731
    mse = training_losses(process, model, x_start, t, noise=noise, loss_type="mse")
    rescaled = training_losses(process, model, x_start, t, noise=noise, loss_type=LossType.RESCALED_MSE)
    torch.testing.assert_close(rescaled["vb"], mse["vb"] * 40 / 1000)
    torch.testing.assert_close(rescaled["mse"], mse["mse"])
    kl = training_losses(process, model, x_start, t, noise=noise, loss_type="kl")
    rescaled_kl = training_losses(process, model, x_start, t, noise=noise, loss_type="rescaled_kl")
    assert set(kl) == {"loss"}
    torch.testing.assert_close(kl["loss"], mse["vb"])
    torch.testing.assert_close(rescaled_kl["loss"], kl["loss"] * 40)


def test_vb_term_is_the_decoder_nll_at_zero_and_zero_for_the_true_posterior():
    process = _process(variance_type="fixed_small")
    x_start, noise = _data()
    t = torch.tensor([0, 9])
    x_t = process.q_sample(x_start, t, noise)
    out = vb_terms_bpd(process, noise, x_start, x_t, t)
    assert out["output"][1].abs().item() < 1e-5  # exact eps: p equals the posterior
    mean = process.q_posterior_mean_variance(x_start, x_t, t)[0]
    log_variance = process.extract(process.tables.posterior_log_variance_clipped, t, x_t)
    nll = -discretized_gaussian_log_likelihood(x_start, means=mean, log_scales=0.5 * log_variance)
    torch.testing.assert_close(out["output"][0], mean_flat(nll)[0] / math.log(2.0))


def test_bpd_loop_with_an_exact_model():
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, beta_schedule="cosine", variance_type="fixed_small")
    x_start, _ = _data()
    noise = torch.randn(20, *x_start.shape, generator=torch.Generator().manual_seed(3))

    def exact_model(x_t, t):
        return scheduler.diffusion.predict_noise_from_start(x_t, t, x_start)

    result = calc_bpd_loop(scheduler, exact_model, x_start, noise=noise)
    assert result["vb"].shape == result["mse"].shape == result["xstart_mse"].shape == (2, 20)
    assert result["mse"].max() < 1e-6 and result["xstart_mse"].max() < 1e-6
    torch.testing.assert_close(result["total_bpd"], result["vb"].sum(1) + result["prior_bpd"])
    torch.testing.assert_close(result["prior_bpd"], prior_bpd(scheduler, x_start))
    assert result["vb"][:, :-1].abs().max() < 1e-4  # every KL but the decoder term (last column, t = 0) vanishes
    with pytest.raises(ValueError, match=r"noise must have shape \(20, 2, 3, 4, 4\)"):
        calc_bpd_loop(scheduler, exact_model, x_start, noise=noise[:5])
    with pytest.raises(ValueError, match="expected a GaussianDiffusion or a guided scheduler"):
        calc_bpd_loop(object(), exact_model, x_start)
