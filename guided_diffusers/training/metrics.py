"""What a training step logs: the loss terms, their means per quartile of t (as the originals log them), top-k
accuracy; and where it goes: accelerate's trackers (TensorBoard by default) and ``logs/metrics.jsonl``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..publishing import write_text_atomically

__all__ = ["MetricsWriter", "available_trackers", "summarize_terms", "top_k_correct"]


def summarize_terms(terms: Mapping[str, torch.Tensor], timesteps: torch.Tensor | None, num_timesteps: int) -> dict[str, float]:
    """Each per-example term's mean, and its mean over the examples in each quartile of t (``{key}_q{0..3}``).

    Args:
        terms (mapping of `torch.Tensor`): (N,) values per term, e.g. ``loss``, ``mse``, ``vb``.
        timesteps (`torch.Tensor`, *optional*): (N,) timesteps of the examples; no quartiles without them.
        num_timesteps (`int`): T; quartile = int(4 * t / T).
    """
    summary: dict[str, float] = {}
    quartiles = None
    if timesteps is not None:
        quartiles = (4 * timesteps.long().cpu() // num_timesteps).clamp(0, 3)
    for key, values in terms.items():
        values = values.detach().float().cpu().reshape(-1)
        summary[key] = values.mean().item()
        if quartiles is None:
            continue
        for quartile in range(4):
            mask = quartiles == quartile
            if mask.any():
                summary[f"{key}_q{quartile}"] = values[mask].mean().item()
    return summary


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(batch,) 1.0 where the label is among the ``k`` highest logits (``k`` capped at the number of classes)."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels[:, None]).any(dim=-1).float()


def available_trackers(report_to: str | None) -> list[str]:
    """The trackers of ``--report_to``, checked to be installed.

    ``None`` (the default) is TensorBoard when installed, else none; ``"none"`` gives no tracker; ``"all"`` every
    installed one. ``logs/metrics.jsonl`` is written regardless.

    Raises:
        ValueError: an unknown tracker name, or one asked for by name that is not installed.
    """
    from accelerate.utils import is_comet_ml_available, is_tensorboard_available, is_wandb_available

    installed = {"tensorboard": is_tensorboard_available(), "wandb": is_wandb_available(), "comet_ml": is_comet_ml_available()}
    if report_to is None:
        return ["tensorboard"] if installed["tensorboard"] else []
    if report_to == "none":
        return []
    if report_to == "all":
        return [name for name, present in installed.items() if present]
    wanted = [name.strip() for name in report_to.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in installed]
    if unknown or not wanted:
        raise ValueError(f"expected --report_to among {sorted(installed)}, 'all' or 'none', got {unknown or repr(report_to)}")
    missing = [name for name in wanted if not installed[name]]
    if missing:
        packages = " ".join(name.replace("_", "-") for name in missing)
        raise ValueError(f"expected {', '.join(missing)} installed for --report_to {report_to}, got it missing (pip install {packages}, or --report_to none)")
    return wanted


class MetricsWriter:
    """Per-step metrics to accelerate's trackers and, on the main process, to a JSON-lines file.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator (trackers initialised or not).
        path (`str` or `os.PathLike`): the JSON-lines file (appended to, so a resumed run continues it).
    """

    def __init__(self, accelerator: Any, path: str | os.PathLike):
        self.accelerator = accelerator
        self.path = Path(path)
        if accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop the lines of steps after ``step`` (logged by a run that was killed after its last checkpoint, which
        the resumed run logs again), and a last line cut short by the kill. Main process only."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("step", 0) <= step:
                kept.append(line)
        write_text_atomically(self.path, "".join(line + "\n" for line in kept))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.accelerator.log(dict(metrics), step=step)
        if self.accelerator.is_main_process:
            with open(self.path, "a") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")
