"""Timestep samplers for training: uniform, and importance sampling by the loss's second moment (improved-diffusion).

A sampler draws a batch of timesteps and the importance weights that keep the objective unbiased:
``loss = (losses["loss"] * weights).mean()``. A [`LossAwareSampler`] learns its distribution from the losses it is
fed with [`LossAwareSampler.update_with_local_losses`], which gathers every process's losses when torch.distributed
is initialised, so all ranks keep the same distribution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "LossAwareSampler",
    "LossSecondMomentResampler",
    "ScheduleSampler",
    "UniformSampler",
    "create_named_schedule_sampler",
]


def _num_timesteps(diffusion_or_num_timesteps: Any) -> int:
    """T from an int, a GaussianDiffusion (``num_timesteps``) or a scheduler (``config.num_train_timesteps``)."""
    value = diffusion_or_num_timesteps
    if not isinstance(value, (int, np.integer)):
        config = getattr(value, "config", None)
        if config is not None and "num_train_timesteps" in config:
            value = config["num_train_timesteps"]
        else:
            value = getattr(value, "num_timesteps", value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            "expected a positive number of timesteps, a GaussianDiffusion or a scheduler, "
            f"got {diffusion_or_num_timesteps!r}"
        )
    return int(value)


class ScheduleSampler(ABC):
    """A distribution over the process's timesteps, sampled with importance weights that keep the objective's mean."""

    num_timesteps: int

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Unnormalised positive float64 weights, one per timestep."""

    def state_dict(self) -> dict[str, Any]:
        """What a training checkpoint keeps of the sampler (nothing for a fixed distribution)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore [`state_dict`]'s output (a fixed distribution has no state)."""
        if state_dict:
            raise ValueError(
                f"expected an empty state for {type(self).__name__}, got keys {sorted(state_dict)} "
                "(a checkpoint of another schedule sampler?)"
            )

    def sample(
        self, batch_size: int, device: str | torch.device | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw timesteps for a batch.

        Args:
            batch_size (`int`): how many timesteps.
            device (`str` or `torch.device`, *optional*): where the results go.
            generator (`torch.Generator`, *optional*): a CPU generator for the draw.

        Returns:
            `tuple`: (timesteps int64 (batch,), weights float32 (batch,)), weight = 1 / (T * p(t)).
        """
        weights = np.asarray(self.weights(), dtype=np.float64)
        probabilities = weights / np.sum(weights)
        indices = torch.multinomial(torch.from_numpy(probabilities), batch_size, replacement=True, generator=generator)
        importance = 1.0 / (len(probabilities) * probabilities[indices.numpy()])
        return indices.to(device), torch.from_numpy(importance).float().to(device)


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely (weights all 1).

    Args:
        diffusion_or_num_timesteps: T, a GaussianDiffusion or a guided scheduler.
    """

    def __init__(self, diffusion_or_num_timesteps: Any):
        self.num_timesteps = _num_timesteps(diffusion_or_num_timesteps)
        self._weights = np.ones([self.num_timesteps], dtype=np.float64)

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that adapts to the model's losses."""

    def update_with_local_losses(self, local_timesteps: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Update from this process's batch of (timestep, loss) pairs, gathering every process's when distributed.

        Call it on every rank with that rank's batch (sizes may differ); all ranks then apply the same update.

        Args:
            local_timesteps (`torch.Tensor`): (batch,) int timesteps.
            local_losses (`torch.Tensor`): (batch,) losses (detached values are used).
        """
        local_timesteps = local_timesteps.detach().reshape(-1)
        local_losses = local_losses.detach().reshape(-1)
        if local_timesteps.shape != local_losses.shape:
            raise ValueError(
                f"need one loss per timestep, got {tuple(local_timesteps.shape)} timesteps and "
                f"{tuple(local_losses.shape)} losses"
            )
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            self.update_with_all_losses(local_timesteps.tolist(), local_losses.tolist())
            return
        world_size = dist.get_world_size()
        device = local_timesteps.device
        batch_sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size)]
        dist.all_gather(batch_sizes, torch.tensor([len(local_timesteps)], dtype=torch.int64, device=device))
        sizes = [int(size.item()) for size in batch_sizes]
        max_size = max(sizes)
        # all_gather needs equal shapes: pad every batch to the largest.
        padded_timesteps = torch.zeros(max_size, dtype=local_timesteps.dtype, device=device)
        padded_timesteps[: len(local_timesteps)] = local_timesteps
        padded_losses = torch.zeros(max_size, dtype=local_losses.dtype, device=device)
        padded_losses[: len(local_losses)] = local_losses
        timestep_batches = [torch.zeros_like(padded_timesteps) for _ in sizes]
        loss_batches = [torch.zeros_like(padded_losses) for _ in sizes]
        dist.all_gather(timestep_batches, padded_timesteps)
        dist.all_gather(loss_batches, padded_losses)
        timesteps = [t for batch, size in zip(timestep_batches, sizes) for t in batch[:size].tolist()]
        losses = [loss for batch, size in zip(loss_batches, sizes) for loss in batch[:size].tolist()]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, timesteps: Sequence[int], losses: Sequence[float]) -> None:
        """Update from every process's (timestep, loss) pairs, identically on every rank (deterministic).

        Args:
            timesteps (sequence of `int`): timesteps.
            losses (sequence of `float`): one loss per timestep.
        """


class LossSecondMomentResampler(LossAwareSampler):
    """Importance sampling with p(t) proportional to sqrt(E[L_t^2]) (Nichol & Dhariwal), mixed with uniform.

    Each timestep keeps its last ``history_per_term`` losses; until every timestep has a full history the sampler is
    uniform (warm-up). Then weights = sqrt(mean(history^2)), normalised, times (1 - uniform_prob), plus
    uniform_prob / T.

    Args:
        diffusion_or_num_timesteps: T, a GaussianDiffusion or a guided scheduler.
        history_per_term (`int`, defaults to 10): losses kept per timestep.
        uniform_prob (`float`, defaults to 0.001): the uniform mixture weight.
    """

    def __init__(self, diffusion_or_num_timesteps: Any, history_per_term: int = 10, uniform_prob: float = 0.001):
        if history_per_term < 1:
            raise ValueError(f"history_per_term must be at least 1, got {history_per_term}")
        if not 0 <= uniform_prob <= 1:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob}")
        self.num_timesteps = _num_timesteps(diffusion_or_num_timesteps)
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self.loss_history = np.zeros([self.num_timesteps, history_per_term], dtype=np.float64)
        self.loss_counts = np.zeros([self.num_timesteps], dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """The loss history and counts, as tensors (so checkpoints load with ``weights_only``)."""
        return {
            "loss_history": torch.from_numpy(self.loss_history.copy()),
            "loss_counts": torch.from_numpy(self.loss_counts.copy()),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a [`state_dict`] of a sampler with the same number of timesteps and history length."""
        expected = (self.num_timesteps, self.history_per_term)
        if set(state_dict) != {"loss_history", "loss_counts"}:
            raise ValueError(
                f"expected a LossSecondMomentResampler state with loss_history and loss_counts, got keys {sorted(state_dict)}"
            )
        history = torch.as_tensor(state_dict["loss_history"]).numpy()
        if tuple(history.shape) != expected:
            raise ValueError(
                f"expected a loss history of shape {expected} (timesteps, history_per_term), got {tuple(history.shape)}"
            )
        self.loss_history = history.astype(np.float64, copy=True)
        self.loss_counts = torch.as_tensor(state_dict["loss_counts"]).numpy().astype(np.int64, copy=True)

    def warmed_up(self) -> bool:
        """Whether every timestep has a full loss history."""
        return bool((self.loss_counts == self.history_per_term).all())

    def weights(self) -> np.ndarray:
        if not self.warmed_up():
            return np.ones([self.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self.loss_history**2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, timesteps: Sequence[int], losses: Sequence[float]) -> None:
        for t, loss in zip(timesteps, losses):
            t = int(t)
            if not 0 <= t < self.num_timesteps:
                raise ValueError(f"timestep out of range: expected 0..{self.num_timesteps - 1}, got {t}")
            if self.loss_counts[t] == self.history_per_term:
                # Shift out the oldest loss.
                self.loss_history[t, :-1] = self.loss_history[t, 1:]
                self.loss_history[t, -1] = loss
            else:
                self.loss_history[t, self.loss_counts[t]] = loss
                self.loss_counts[t] += 1


def create_named_schedule_sampler(name: str, diffusion_or_num_timesteps: Any) -> ScheduleSampler:
    """The originals' named samplers: ``"uniform"`` or ``"loss-second-moment"``.

    Args:
        name (`str`): the sampler's name.
        diffusion_or_num_timesteps: T, a GaussianDiffusion or a guided scheduler.
    """
    if name == "uniform":
        return UniformSampler(diffusion_or_num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion_or_num_timesteps)
    raise ValueError(f"unknown schedule sampler {name!r}; expected 'uniform' or 'loss-second-moment'")
