"""Beta schedules and timestep respacing: which process, and which of its steps a sampler keeps.

- beta schedules: diffusers' names with diffusers' meaning (``linear``, ``scaled_linear``, ``squaredcos_cap_v2``),
  the originals' named ``linear`` (scaled by 1000/T) and ``cosine`` of improved-diffusion and guided-diffusion
  (translated to diffusers' names once, by [`diffusers_schedule`]), the original DDPM ones (``quad``, ``warmup10``,
  ``warmup50``, ``const``, ``jsd``) and explicit betas;
- timestep respacing from the originals' spec strings (``"250"``, ``"10,15,20"``, ``"ddim25"``).

Every table is float64, as the originals compute them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ..checks import check_whole_number
import torch

__all__ = [
    "BETA_SCHEDULES",
    "DIFFUSERS_BETA_SCHEDULES",
    "betas_for_alpha_bar",
    "diffusers_schedule",
    "get_beta_schedule",
    "get_ddpm_beta_schedule",
    "get_named_beta_schedule",
    "linear_schedule_bounds",
    "respace_betas",
    "space_timesteps",
]

#: diffusers' schedule names, with diffusers' meaning: ``linear`` is linspace(beta_start, beta_end, T) at any T.
DIFFUSERS_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: Names accepted by [`get_beta_schedule`] (and the schedulers' ``beta_schedule``): diffusers' names, the originals'
#: ``cosine`` (= ``squaredcos_cap_v2``), DDPM's ``quad`` (= ``scaled_linear``) and DDPM's schedules diffusers lacks.
BETA_SCHEDULES = (*DIFFUSERS_BETA_SCHEDULES, "cosine", "quad", "warmup10", "warmup50", "const", "jsd")

_DDPM_SCHEDULES = ("quad", "linear", "warmup10", "warmup50", "const", "jsd")


# ---------------------------------------------------------------------------------------------------------------------
# Beta schedules
# ---------------------------------------------------------------------------------------------------------------------


def betas_for_alpha_bar(
    num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999
) -> np.ndarray:
    """Discretise a continuous alpha-bar function of t in [0, 1] into betas.

    Args:
        num_diffusion_timesteps (`int`): the number of betas to produce.
        alpha_bar (`Callable[[float], float]`): the cumulative product of (1 - beta) as a function of t in [0, 1].
        max_beta (`float`, defaults to 0.999): the cap on each beta, avoiding the singularity at t = 1.

    Returns:
        `np.ndarray`: float64 betas, beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta).
    """
    betas = []
    for i in range(num_diffusion_timesteps):
        start, end = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        betas.append(min(1 - alpha_bar(end) / alpha_bar(start), max_beta))
    return np.array(betas, dtype=np.float64)


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _check_num_timesteps(num_diffusion_timesteps: Any) -> int:
    return check_whole_number("num_diffusion_timesteps", num_diffusion_timesteps, 1)


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """The named schedules of improved-diffusion and guided-diffusion.

    Args:
        schedule_name (`str`): ``"linear"`` (DDPM's 1e-4 to 0.02 at T = 1000, both ends scaled by 1000 / T so any T
            works) or ``"cosine"`` (alpha-bar = cos^2((t + 0.008) / 1.008 * pi / 2), betas capped at 0.999).
        num_diffusion_timesteps (`int`): T.

    Returns:
        `np.ndarray`: T float64 betas.
    """
    num_diffusion_timesteps = _check_num_timesteps(num_diffusion_timesteps)
    if schedule_name == "linear":
        return np.linspace(*linear_schedule_bounds(num_diffusion_timesteps), num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(num_diffusion_timesteps, _cosine_alpha_bar)
    raise ValueError(f"unknown named beta schedule {schedule_name!r}; expected one of 'linear', 'cosine'")


def get_ddpm_beta_schedule(
    schedule_name: str, *, beta_start: float, beta_end: float, num_diffusion_timesteps: int
) -> np.ndarray:
    """The beta schedules of the original DDPM code (Ho et al.).

    Args:
        schedule_name (`str`): ``"quad"`` (linear in sqrt(beta)), ``"linear"``, ``"warmup10"`` / ``"warmup50"``
            (linear over the first 10% / 50% of steps, then constant at beta_end), ``"const"`` (beta_end everywhere)
            or ``"jsd"`` (1/T, 1/(T-1), ..., 1).
        beta_start (`float`): the first beta.
        beta_end (`float`): the last beta.
        num_diffusion_timesteps (`int`): T.

    Returns:
        `np.ndarray`: T float64 betas.
    """
    num = _check_num_timesteps(num_diffusion_timesteps)
    if schedule_name == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num, dtype=np.float64) ** 2
    elif schedule_name == "linear":
        betas = np.linspace(beta_start, beta_end, num, dtype=np.float64)
    elif schedule_name in ("warmup10", "warmup50"):
        warmup_steps = int(num * (0.1 if schedule_name == "warmup10" else 0.5))
        betas = beta_end * np.ones(num, dtype=np.float64)
        betas[:warmup_steps] = np.linspace(beta_start, beta_end, warmup_steps, dtype=np.float64)
    elif schedule_name == "const":
        betas = beta_end * np.ones(num, dtype=np.float64)
    elif schedule_name == "jsd":
        betas = 1.0 / np.linspace(num, 1, num, dtype=np.float64)
    else:
        raise ValueError(f"unknown DDPM beta schedule {schedule_name!r}; expected one of {', '.join(_DDPM_SCHEDULES)}")
    return betas


def get_beta_schedule(
    beta_schedule: str,
    num_train_timesteps: int,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> np.ndarray:
    """One entry point for every schedule, as the schedulers' configs name them (diffusers' meaning of each name).

    Args:
        beta_schedule (`str`): one of [`BETA_SCHEDULES`]. ``"linear"`` is diffusers' linear schedule,
            linspace(beta_start, beta_end, T), unscaled at any T (the originals' named linear at T steps is this with
            beta_start and beta_end scaled by 1000 / T: see [`linear_schedule_bounds`]). ``"scaled_linear"`` (= DDPM's
            ``"quad"``) is linear in sqrt(beta). ``"squaredcos_cap_v2"`` (= the originals' ``"cosine"``) ignores
            beta_start and beta_end. ``"warmup10"``, ``"warmup50"``, ``"const"`` and ``"jsd"`` are DDPM's.
        num_train_timesteps (`int`): T.
        beta_start (`float`, defaults to 1e-4): the first beta.
        beta_end (`float`, defaults to 0.02): the last beta.
        trained_betas (array-like, *optional*): explicit betas; when given, the name is not used.

    Returns:
        `np.ndarray`: T float64 betas.
    """
    num_train_timesteps = _check_num_timesteps(num_train_timesteps)
    if trained_betas is not None:
        if isinstance(trained_betas, torch.Tensor):
            trained_betas = trained_betas.detach().cpu().double().numpy()
        betas = np.asarray(trained_betas, dtype=np.float64)
        if betas.shape != (num_train_timesteps,):
            raise ValueError(
                f"trained_betas must have shape ({num_train_timesteps},) to match num_train_timesteps, "
                f"got {tuple(betas.shape)}"
            )
        return betas
    if beta_schedule in ("squaredcos_cap_v2", "cosine"):
        return get_named_beta_schedule("cosine", num_train_timesteps)
    if beta_schedule == "scaled_linear":
        beta_schedule = "quad"
    if beta_schedule in _DDPM_SCHEDULES:
        if beta_schedule == "linear" and max(beta_start, beta_end) > 1:
            raise ValueError(f"linear betas must be at most 1, got beta_start {beta_start:g} and beta_end {beta_end:g}")
        return get_ddpm_beta_schedule(
            beta_schedule, beta_start=beta_start, beta_end=beta_end, num_diffusion_timesteps=num_train_timesteps
        )
    raise ValueError(f"unknown beta_schedule {beta_schedule!r}; expected one of {', '.join(BETA_SCHEDULES)}")


def linear_schedule_bounds(num_diffusion_timesteps: int) -> tuple[float, float]:
    """beta_start and beta_end of the originals' named ``linear`` schedule at T steps: 1e-4 and 0.02, times 1000 / T.

    ``get_beta_schedule("linear", T, *linear_schedule_bounds(T))`` is bit-identical to the originals' schedule, and
    diffusers' ``beta_schedule="linear"`` with the same bounds is the same schedule (to float32).
    """
    num_diffusion_timesteps = _check_num_timesteps(num_diffusion_timesteps)
    scale = 1000 / num_diffusion_timesteps
    if 0.02 * scale > 1:
        raise ValueError(
            f"the linear schedule scales betas by 1000 / T: at T = {num_diffusion_timesteps} beta_end becomes "
            f"{0.02 * scale:g}, expected at most 1 (use more steps or another schedule)"
        )
    return scale * 0.0001, scale * 0.02


def diffusers_schedule(
    beta_schedule: str, num_train_timesteps: int, beta_start: float = 0.0001, beta_end: float = 0.02
) -> dict[str, Any]:
    """The config keys that store a schedule under a name every diffusers scheduler reads the same way.

    The originals' ``cosine`` becomes ``squaredcos_cap_v2`` and DDPM's ``quad`` ``scaled_linear`` (the same tables);
    DDPM's schedules that diffusers lacks (``warmup10``, ``warmup50``, ``const``, ``jsd``) are stored as explicit
    ``trained_betas`` beside their name. diffusers' names pass unchanged.

    Returns:
        `dict`: ``beta_schedule`` and, where needed, ``trained_betas``.
    """
    if beta_schedule == "cosine":
        return {"beta_schedule": "squaredcos_cap_v2"}
    if beta_schedule == "quad":
        return {"beta_schedule": "scaled_linear"}
    if beta_schedule in DIFFUSERS_BETA_SCHEDULES:
        return {"beta_schedule": beta_schedule}
    betas = get_beta_schedule(beta_schedule, num_train_timesteps, beta_start=beta_start, beta_end=beta_end)
    return {"beta_schedule": beta_schedule, "trained_betas": betas.tolist()}


# ---------------------------------------------------------------------------------------------------------------------
# Respacing
# ---------------------------------------------------------------------------------------------------------------------


def _parse_section_counts(spec: str | int | Iterable[int]) -> list[int]:
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return [int(spec)]
    if isinstance(spec, str):
        parts = [part.strip() for part in spec.split(",")]
        try:
            counts = [int(part) for part in parts]
        except ValueError:
            raise ValueError(
                f"timestep respacing must be 'N', 'N1,N2,...' or 'ddimN' with integer counts, got {spec!r}"
            ) from None
    else:
        try:
            counts = [int(count) for count in spec]
        except (TypeError, ValueError):
            raise ValueError(f"timestep respacing must be a spec string or a list of ints, got {spec!r}") from None
    if not counts or any(count < 0 for count in counts) or sum(counts) == 0:
        raise ValueError(
            f"timestep respacing needs non-negative section counts taking at least one step, got {spec!r}"
        )
    return counts


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> list[int]:
    """The timesteps of the original process that a respaced process keeps, as the originals choose them.

    Args:
        num_timesteps (`int`): T of the original process.
        section_counts (`str`, `int` or list of `int`): ``"250"`` takes 250 evenly spaced steps (rounded);
            ``"10,15,20"`` splits the process into three equal sections and takes 10, 15 and 20 evenly spaced steps
            from them; ``"ddim25"`` takes ``range(0, T, stride)`` for the smallest integer stride giving exactly 25 steps.

    Returns:
        `list[int]`: the kept timesteps of the original process, ascending.

    Raises:
        `ValueError`: for a malformed spec, a section asked for more steps than it has, or a ``ddimN`` that no integer
        stride can make.
    """
    num_timesteps = _check_num_timesteps(num_timesteps)
    if isinstance(section_counts, str) and section_counts.strip().startswith("ddim"):
        spec = section_counts.strip()
        try:
            desired_count = int(spec[len("ddim") :])
        except ValueError:
            raise ValueError(f"timestep respacing 'ddimN' needs an integer N, got {section_counts!r}") from None
        for stride in range(1, num_timesteps + 1):
            if len(range(0, num_timesteps, stride)) == desired_count:
                return list(range(0, num_timesteps, stride))
        raise ValueError(
            f"cannot take exactly {desired_count} steps from {num_timesteps} with an integer stride ({spec!r})"
        )
    counts = _parse_section_counts(section_counts)
    size_per_section, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: set[int] = set()
    for i, count in enumerate(counts):
        size = size_per_section + (1 if i < extra else 0)
        if size < count:
            raise ValueError(
                f"cannot take {count} steps from a section of {size} steps "
                f"(timestep respacing {section_counts!r} of {num_timesteps} steps)"
            )
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            steps.add(start + round(position))
            position += stride
        start += size
    return sorted(steps)


def respace_betas(betas: np.ndarray | Sequence[float], use_timesteps: Iterable[int]) -> np.ndarray:
    """The betas of the process that keeps only ``use_timesteps`` of the process with ``betas``.

    The respaced process keeps the original alphas_cumprod at the kept steps: beta'_k = 1 - alpha_bar[t_k] /
    alpha_bar[t_{k-1}].

    Args:
        betas (array-like): the original process's betas.
        use_timesteps (iterable of `int`): the original timesteps to keep.

    Returns:
        `np.ndarray`: float64 betas, one per kept timestep, in ascending timestep order.
    """
    betas = np.asarray(betas, dtype=np.float64)
    keep = set(int(t) for t in use_timesteps)
    if not keep:
        raise ValueError("use_timesteps must keep at least one timestep, got none")
    out_of_range = sorted(t for t in keep if not 0 <= t < len(betas))
    if out_of_range:
        raise ValueError(f"use_timesteps must lie in [0, {len(betas)}), got {out_of_range}")
    alphas_cumprod = np.cumprod(1.0 - betas, axis=0)
    last_alpha_cumprod = 1.0
    new_betas = []
    for i, alpha_cumprod in enumerate(alphas_cumprod):
        if i in keep:
            new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
            last_alpha_cumprod = alpha_cumprod
    return np.array(new_betas, dtype=np.float64)
