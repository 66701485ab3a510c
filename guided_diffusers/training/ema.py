"""Exponential moving averages of a model's parameters at one or several rates, as the originals keep them.

The originals update every rate after each optimizer step with ``ema = rate * ema + (1 - rate) * param`` (no
warm-up, unlike diffusers' ``EMAModel``), keep one copy per rate (``--ema_rate 0.9999,0.999``) and save each.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage", "parse_ema_rates"]


def parse_ema_rates(text: str | float | Sequence[float]) -> tuple[float, ...]:
    """``"0.9999,0.999"`` (the originals' ``--ema_rate``) to a tuple of rates, each checked to lie in [0, 1)."""
    if isinstance(text, (int, float)):
        values = [text]
    elif isinstance(text, str):
        values = [part for part in text.split(",") if part.strip()]
    else:
        values = list(text)
    try:
        rates = tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise ValueError(f"expected --ema_rate as comma-separated numbers such as 0.9999,0.999, got {text!r}") from None
    if not rates:
        raise ValueError(f"expected at least one EMA rate, got {text!r}")
    bad = [rate for rate in rates if not 0.0 <= rate < 1.0]
    if bad:
        raise ValueError(f"expected EMA rates in [0, 1), got {bad}")
    if len(set(rates)) != len(rates):
        raise ValueError(f"expected distinct EMA rates, got {list(rates)}")
    return rates


class ExponentialMovingAverage:
    """EMA copies of a list of parameters, one per rate.

    The copies live on the parameters' device in their dtype (the fp32 master weights under accelerate's mixed
    precision). Its state (tensors and numbers) is kept in training checkpoints (safetensors and JSON).

    Args:
        parameters (iterable of `torch.nn.Parameter`): the trained parameters (after ``accelerator.prepare``, the
            unwrapped model's).
        rates (sequence of `float`): the decay rates, e.g. ``(0.9999,)``.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], rates: Sequence[float]):
        self.rates = parse_ema_rates(rates)
        params = [param.detach() for param in parameters]
        if not params:
            raise ValueError("expected parameters to average, got none")
        self.averages: list[list[torch.Tensor]] = [[param.clone() for param in params] for _ in self.rates]
        self.num_updates = 0

    @torch.no_grad()
    def update(self, parameters: Iterable[nn.Parameter]) -> None:
        """One step of every average toward the current ``parameters`` (call after each optimizer step)."""
        params = [param.detach() for param in parameters]
        if len(params) != len(self.averages[0]):
            raise ValueError(f"expected {len(self.averages[0])} parameters, got {len(params)}")
        for rate, average in zip(self.rates, self.averages):
            torch._foreach_mul_(average, rate)
            torch._foreach_add_(average, params, alpha=1.0 - rate)
        self.num_updates += 1

    def average(self, rate: float | None = None) -> list[torch.Tensor]:
        """The averaged tensors at ``rate`` (default: the first rate)."""
        index = 0 if rate is None else self._index(rate)
        return self.averages[index]

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[nn.Parameter], rate: float | None = None) -> None:
        """Write the average at ``rate`` (default: the first) into ``parameters``."""
        params = list(parameters)
        average = self.average(rate)
        if len(params) != len(average):
            raise ValueError(f"expected {len(average)} parameters, got {len(params)}")
        for param, value in zip(params, average):
            param.copy_(value.to(param.dtype))

    def _index(self, rate: float) -> int:
        for index, known in enumerate(self.rates):
            if known == float(rate):
                return index
        raise ValueError(f"expected one of the EMA rates {list(self.rates)}, got {rate}")

    def state_dict(self) -> dict[str, Any]:
        """Rates, update count and averages (tensors only, so checkpoints load with ``weights_only``)."""
        return {
            "rates": list(self.rates),
            "num_updates": self.num_updates,
            "averages": [[tensor.clone() for tensor in average] for average in self.averages],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a [`state_dict`] taken with the same rates and parameter shapes."""
        rates = tuple(float(rate) for rate in state_dict.get("rates", ()))
        if rates != self.rates:
            raise ValueError(f"expected a checkpoint with EMA rates {list(self.rates)} (--ema_rate), got {list(rates)}")
        averages = state_dict["averages"]
        for loaded, average in zip(averages, self.averages):
            if len(loaded) != len(average) or any(a.shape != b.shape for a, b in zip(loaded, average)):
                raise ValueError("expected EMA averages shaped like the model's parameters, got a different model's")
            for target, value in zip(average, loaded):
                target.copy_(value.to(device=target.device, dtype=target.dtype))
        self.num_updates = int(state_dict.get("num_updates", 0))
