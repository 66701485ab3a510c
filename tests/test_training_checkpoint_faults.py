"""Checkpoint folders under faults: a kill while pruning, a ``checkpoint-N`` that is not ours at the step being saved,
the files' permissions. A one-layer model under a real single-process accelerator; no training run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from guided_diffusers.publishing import normal_file_mode, write_folder_atomically
from guided_diffusers.training import checkpointing
from guided_diffusers.training.checkpointing import (
    TrainingProgress,
    check_checkpoint_folders,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    accelerator.prepare(model, optimizer, scheduler)
    yield accelerator
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _save(accelerator, output: Path, step: int, total_limit: int | None = None) -> Path:
    progress = TrainingProgress(1, 1, 1, 0)
    progress.global_step = step
    return save_checkpoint(accelerator, output, step, state_objects={"progress": progress}, total_limit=total_limit)


def test_a_kill_while_pruning_leaves_no_half_deleted_checkpoint(accelerator, tmp_path, monkeypatch):
    for step in (1, 2, 3):
        _save(accelerator, tmp_path, step)
    deleted = []

    def killed_midway(path, *args, **kwargs):  # the file list happened to go first, then the run was killed
        deleted.append(Path(path).name)
        (Path(path) / "training_state.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpointing.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(tmp_path, total_limit=2)
    monkeypatch.undo()
    assert deleted == [".checkpoint-1.trash"]  # what was being deleted no longer had a checkpoint's name
    assert sorted(entry.name for entry in tmp_path.iterdir()) == [".checkpoint-1.trash", "checkpoint-2", "checkpoint-3"]
    check_checkpoint_folders(tmp_path)  # the run can go on: no checkpoint-N that is not a whole checkpoint
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    _save(accelerator, tmp_path, 4, total_limit=2)  # the next save removes what the kill left
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-4"]


def test_a_backup_left_by_a_swap_cut_short_is_put_back_not_deleted(accelerator, tmp_path):
    _save(accelerator, tmp_path, 1)
    _save(accelerator, tmp_path, 2)
    os.replace(tmp_path / "checkpoint-2", tmp_path / ".checkpoint-2.old")  # killed between the fallback's two renames
    _save(accelerator, tmp_path, 3)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("contents", [["model.safetensors", "optimizer.bin", "random_states_0.pkl"], []])
def test_saving_a_step_never_replaces_a_folder_that_is_not_our_checkpoint(accelerator, tmp_path, contents):
    foreign = tmp_path / "checkpoint-5"  # as diffusers' example scripts write them (or emptied by hand)
    foreign.mkdir()
    for name in contents:
        (foreign / name).write_bytes(b"theirs")
    with pytest.raises(ValueError) as raised:
        _save(accelerator, tmp_path, 5)
    message = str(raised.value)
    assert message.startswith("expected to save step 5 as") and "without training_state.json" in message and "\n" not in message
    assert sorted(p.name for p in foreign.iterdir()) == sorted(contents) and all((foreign / n).read_bytes() == b"theirs" for n in contents)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint-5"]  # nothing else written either
    with pytest.raises(ValueError, match=r"got \['checkpoint-5'\] without one \(another tool's, or its file list lost\)"):
        check_checkpoint_folders(tmp_path)


def test_pruning_never_deletes_a_folder_that_is_not_our_checkpoint(accelerator, tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "optimizer.bin").write_bytes(b"theirs")
    for step in (2, 3, 4):
        _save(accelerator, tmp_path, step, total_limit=1)
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-4"]


def test_checkpoint_files_get_the_umask_permissions_not_safetensors_0600(accelerator, tmp_path):
    old_umask = os.umask(0o022)
    try:
        folder = _save(accelerator, tmp_path, 1)
    finally:
        os.umask(old_umask)
    modes = {entry.name: entry.stat().st_mode & 0o777 for entry in folder.iterdir()}
    assert {"model.safetensors", "trainer_state.safetensors"} <= set(modes)
    assert modes == dict.fromkeys(modes, 0o644)


def test_every_file_of_a_folder_written_atomically_gets_the_umask_permissions(tmp_path):
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        (folder / "unet").mkdir()
        save_file({"weight": torch.zeros(2)}, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        (folder / "model_index.json").write_text("{}")
        (folder / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(folder / "run.sh", 0o755)

    for umask, expected in ((0o022, 0o644), (0o077, 0o600)):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        old_umask = os.umask(umask)
        try:
            assert normal_file_mode() == expected
            write_folder_atomically(tmp_path / "out", write)
        finally:
            os.umask(old_umask)
        assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mode & 0o777 == expected
        assert (tmp_path / "out" / "model_index.json").stat().st_mode & 0o777 == expected
        assert (tmp_path / "out" / "run.sh").stat().st_mode & 0o777 == 0o755  # bits beyond the usual ones are kept
