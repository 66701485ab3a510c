"""Training checkpoints that a kill at any moment cannot corrupt.

A checkpoint is ``accelerator.save_state`` (model, optimizer, LR scheduler, gradient scaler, every process's RNG
states, and the registered EMA, timestep-sampler and progress objects) plus ``training_state.json``, written into
``.checkpoint-N.partial`` and renamed to ``checkpoint-N`` only once complete. ``checkpoint-N`` folders are therefore
always whole; a partial folder left by a killed run is never picked up and is removed by the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..publishing import replace_directory

__all__ = [
    "CHECKPOINT_STATE_FILE",
    "TrainingProgress",
    "list_checkpoints",
    "prune_checkpoints",
    "resolve_resume_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_STATE_FILE = "training_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER = re.compile(r"^\.checkpoint-\d+\.(partial|old)$")


class TrainingProgress:
    """The optimizer-step counter and the run's shape, kept in checkpoints (register it for checkpointing).

    Args:
        num_processes (`int`): processes of the run.
        train_batch_size (`int`): examples per process and micro-batch.
        gradient_accumulation_steps (`int`): micro-batches per optimizer step.
        seed (`int`): the run's seed (data order and augmentations).
    """

    def __init__(self, num_processes: int, train_batch_size: int, gradient_accumulation_steps: int, seed: int):
        self.global_step = 0
        self.run_shape = {
            "num_processes": num_processes,
            "train_batch_size": train_batch_size,
            "gradient_accumulation_steps": gradient_accumulation_steps,
            "seed": seed,
        }
        self.resumed_shape: dict[str, int] | None = None

    @property
    def micro_batches_done(self) -> int:
        """Micro-batches each process has consumed: where the data stream continues."""
        return self.global_step * self.run_shape["gradient_accumulation_steps"]

    def state_dict(self) -> dict[str, Any]:
        return {"global_step": self.global_step, **self.run_shape}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.global_step = int(state_dict["global_step"])
        self.resumed_shape = {key: int(state_dict[key]) for key in self.run_shape if key in state_dict}

    def shape_changes(self) -> list[str]:
        """How the resumed run's shape differs from the checkpoint's (the data order then differs)."""
        if self.resumed_shape is None:
            return []
        return [
            f"{key} {self.resumed_shape[key]} -> {value}"
            for key, value in self.run_shape.items()
            if key in self.resumed_shape and self.resumed_shape[key] != value
        ]


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir`` as (step, folder), oldest first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        match = _CHECKPOINT.match(entry.name)
        if match and entry.is_dir() and (entry / CHECKPOINT_STATE_FILE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint folder to resume from: ``"latest"`` (None when there is none yet) or a folder path.

    Raises:
        ValueError: a path that is not a complete checkpoint folder.
    """
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        raise ValueError(f"expected --resume_from_checkpoint 'latest' or a checkpoint folder, got {str(path)!r} (no such folder)")
    if not (path / CHECKPOINT_STATE_FILE).is_file():
        raise ValueError(
            f"expected a complete checkpoint folder (with {CHECKPOINT_STATE_FILE}) for --resume_from_checkpoint, got {str(path)!r}"
        )
    return path


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folder entries) to disk, so a rename publishes durable data."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        descriptor = os.open(root, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``total_limit``, and leftovers of interrupted saves."""
    folder = Path(output_dir)
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        if _LEFTOVER.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
    if total_limit is not None:
        checkpoints = list_checkpoints(folder)
        for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    *,
    total_limit: int | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Save the accelerator's state as ``output_dir/checkpoint-{step}``, atomically. Call it on every process.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator (with the EMA, sampler and progress objects
            registered for checkpointing).
        output_dir: the run's output folder.
        step (`int`): the optimizer step just completed.
        total_limit (`int`, *optional*): keep at most this many checkpoints (the oldest go, after the new one is
            complete).
        summary (`dict`, *optional*): facts written to ``training_state.json`` next to the state (human-readable).

    Returns:
        `Path`: the checkpoint folder.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(partial / CHECKPOINT_STATE_FILE, "w") as handle:
            json.dump({"global_step": step, **(summary or {})}, handle, indent=2, sort_keys=True, default=str)
        _fsync_tree(partial)
        replace_directory(partial, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final
