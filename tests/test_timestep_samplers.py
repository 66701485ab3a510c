"""Timestep samplers: uniform, loss-second-moment (parity with the original's weights), distributed updates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from guided_diffusers.schedulers import GuidedDDPMScheduler
from guided_diffusers.training import (
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)
from parity import load_case


def test_loss_second_moment_weights_match_original():
    _, io = load_case("schedules")
    sampler = LossSecondMomentResampler(20, history_per_term=3, uniform_prob=0.001)
    sampler.update_with_all_losses(io["lsm_history_ts"].tolist(), io["lsm_history_losses"].tolist())
    torch.testing.assert_close(torch.from_numpy(sampler.weights()), io["lsm_weights"], atol=1e-15, rtol=1e-12)


def test_warm_up_is_uniform_and_history_shifts():
    sampler = LossSecondMomentResampler(3, history_per_term=2, uniform_prob=0.0)
    sampler.update_with_all_losses([0, 0, 1, 1], [1.0, 1.0, 2.0, 2.0])
    assert not sampler.warmed_up()
    np.testing.assert_array_equal(sampler.weights(), np.ones(3))
    sampler.update_with_all_losses([2, 2, 0], [3.0, 3.0, 5.0])  # t=0 history becomes [1, 5]
    assert sampler.warmed_up()
    expected = np.array([np.sqrt(13.0), 2.0, 3.0])
    np.testing.assert_allclose(sampler.weights(), expected / expected.sum())
    with pytest.raises(ValueError, match="out of range: expected 0..2, got 3"):
        sampler.update_with_all_losses([3], [1.0])


def test_sample_returns_importance_weights():
    sampler = LossSecondMomentResampler(4, history_per_term=1, uniform_prob=0.0)
    sampler.update_with_all_losses([0, 1, 2, 3], [1.0, 1.0, 1.0, 5.0])
    timesteps, weights = sampler.sample(1000, generator=torch.Generator().manual_seed(0))
    probabilities = sampler.weights() / sampler.weights().sum()
    assert timesteps.dtype == torch.long and weights.dtype == torch.float32
    torch.testing.assert_close(weights, torch.from_numpy(1 / (4 * probabilities[timesteps.numpy()])).float())
    assert (timesteps == 3).float().mean().item() == pytest.approx(probabilities[3], abs=0.05)


def test_uniform_sampler_and_names():
    scheduler = GuidedDDPMScheduler(num_train_timesteps=7, beta_schedule="cosine")
    sampler = create_named_schedule_sampler("uniform", scheduler)
    assert isinstance(sampler, UniformSampler) and sampler.num_timesteps == 7
    timesteps, weights = sampler.sample(16, generator=torch.Generator().manual_seed(0))
    assert timesteps.max() < 7 and torch.equal(weights, torch.ones(16))
    second_moment = create_named_schedule_sampler("loss-second-moment", scheduler.diffusion)
    assert isinstance(second_moment, LossSecondMomentResampler)
    with pytest.raises(ValueError, match="unknown schedule sampler 'importance'"):
        create_named_schedule_sampler("importance", 10)
    with pytest.raises(ValueError, match="positive number of timesteps"):
        UniformSampler(0)


def test_local_update_without_distributed():
    sampler = LossSecondMomentResampler(2, history_per_term=1)
    sampler.update_with_local_losses(torch.tensor([0, 1]), torch.tensor([2.0, 4.0]))
    np.testing.assert_array_equal(sampler.loss_history[:, 0], [2.0, 4.0])
    with pytest.raises(ValueError, match="one loss per timestep"):
        sampler.update_with_local_losses(torch.tensor([0, 1]), torch.tensor([2.0]))


def _distributed_worker(rank, world_size, init_file, results):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        sampler = LossSecondMomentResampler(4, history_per_term=2)
        # Ranks bring batches of different sizes.
        if rank == 0:
            sampler.update_with_local_losses(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
        else:
            sampler.update_with_local_losses(torch.tensor([3]), torch.tensor([4.0]))
        results[rank] = sampler.loss_history.copy()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed gloo missing")
def test_distributed_update_gathers_every_rank(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    # fork: the workers need nothing re-imported, which keeps this test fast.
    mp.start_processes(
        _distributed_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True, start_method="fork"
    )
    expected = np.zeros((4, 2))
    expected[:, 0] = [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_array_equal(results[0], expected)
    np.testing.assert_array_equal(results[1], expected)
