"""Training checkpoints that a kill at any moment cannot corrupt, and that a resume verifies and reads safely.

A checkpoint ``checkpoint-N/`` holds accelerate's model, optimizer, LR-scheduler and gradient-scaler files
(``model.safetensors``, ``optimizer.bin``, ``scheduler.bin``, ``scaler.pt``), each process's RNG states in our own
JSON (``rng_state_{i}.json``), our own training state (EMA averages, timestep-sampler history, the step counter) in
``trainer_state.json`` + ``trainer_state.safetensors``, and ``training_state.json``: a summary plus the SHA-256 of
every other file. It is written into ``.checkpoint-N.partial`` and renamed to ``checkpoint-N`` only once complete,
and a pruned one is renamed to ``.checkpoint-N.trash`` before it is deleted, so ``checkpoint-N`` folders are always
whole; what a killed run leaves is never picked up and is removed by the next save. A ``checkpoint-N`` without
``training_state.json`` (diffusers' example scripts write such folders; or its file list was lost) is not ours to
resume, replace or delete: a run into that ``--output_dir`` is refused ([`check_checkpoint_folders`]).

A resume reads nothing before the folder checks out: every file listed and none other (any other file, e.g. a
``custom_checkpoint_0.pkl``, refuses the resume), every hash matching, the model's parameter names and shapes equal
to the run's. The ``.bin`` / ``.pt`` files are then read with ``torch.load(weights_only=True)`` (tensors and plain
containers, never code), the rest as JSON and safetensors. Checkpoints of FSDP, DeepSpeed or Megatron-LM runs are
written by those engines' pickle-based savers, which we cannot read safely: resuming them is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..publishing import normalize_file_modes, recover_directory, replace_directory
from ..safe_loading import load_weights_only

__all__ = [
    "CHECKPOINT_STATE_FILE",
    "TrainingProgress",
    "check_checkpoint_folders",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "remove_checkpoint_leftovers",
    "resolve_resume_checkpoint",
    "save_checkpoint",
]

CHECKPOINT_STATE_FILE = "training_state.json"
_OWN_STATE_JSON = "trainer_state.json"
_OWN_STATE_TENSORS = "trainer_state.safetensors"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER = re.compile(r"^\.(checkpoint-\d+)\.(partial|old|trash)$")
# accelerate's files of a single-process or DDP run (read here with weights_only=True), and ours.
_ACCELERATE_FILES = re.compile(r"^(model(_\d+)?\.safetensors|optimizer(_\d+)?\.bin|scheduler(_\d+)?\.bin|scaler\.pt)$")
_RNG_FILE = re.compile(r"^rng_state_(\d+)\.json$")
_ACCELERATE_RNG_FILE = "random_states_{}.pkl"


class TrainingProgress:
    """The optimizer-step counter and the run's shape, kept in checkpoints.

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


def check_checkpoint_folders(output_dir: str | os.PathLike) -> None:
    """Refuse an ``output_dir`` that holds a ``checkpoint-N`` other than a complete checkpoint of ours (one without
    ``training_state.json``, as diffusers' example scripts write them, or whose file list was lost): ``latest`` would
    pass it over for an older one or start over, and saving step N would replace it. Call it before a run starts.

    Raises:
        ValueError: one line naming the folders.
    """
    folder = Path(output_dir)
    entries = folder.iterdir() if folder.is_dir() else ()
    foreign = sorted((int(match.group(1)), entry.name) for entry in entries
                     if (match := _CHECKPOINT.match(entry.name)) and not (entry / CHECKPOINT_STATE_FILE).is_file())
    if foreign:
        names = [name for _, name in foreign]
        raise ValueError(
            f"expected only checkpoints with {CHECKPOINT_STATE_FILE} in --output_dir {str(folder)!r}, got {names[:5]} without "
            "one (another tool's, or its file list lost), which a run neither resumes from nor replaces: move it out of --output_dir"
        )


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


def remove_checkpoint_leftovers(output_dir: str | os.PathLike) -> None:
    """Remove what killed saves and prunes left in ``output_dir`` (``.checkpoint-N.partial``, ``.trash``); a
    ``.checkpoint-N.old`` backup of a swap cut short is put back where ``checkpoint-N`` is missing."""
    folder = Path(output_dir)
    for entry in list(folder.iterdir()) if folder.is_dir() else ():
        match = _LEFTOVER.match(entry.name)
        if match and match.group(2) == "old":
            recover_directory(folder / match.group(1))
        if match and entry.exists():
            shutil.rmtree(entry, ignore_errors=True)


def _delete_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder so that a kill at any moment leaves it whole or gone: renamed out of the
    ``checkpoint-N`` names in one step, then deleted (a kill during the deletion leaves a ``.trash`` folder, which
    the next save removes)."""
    trash = path.with_name(f".{path.name}.trash")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``total_limit``, and leftovers of interrupted saves and prunes."""
    remove_checkpoint_leftovers(output_dir)
    removed = []
    if total_limit is not None:
        checkpoints = list_checkpoints(output_dir)
        for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
            _delete_checkpoint(path)
            removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------------------------------
# Our own state: JSON for the structure and numbers, safetensors for the tensors; RNG states as JSON
# ---------------------------------------------------------------------------------------------------------------------

_TENSOR_KEY = "__tensor__"


def _flatten(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, its tensors moved into ``tensors`` under dotted keys (replaced by ``{"__tensor__": key}``)."""
    if torch.is_tensor(value):
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR_KEY: key}
    if isinstance(value, dict):
        if _TENSOR_KEY in value or not all(isinstance(name, str) for name in value):
            raise TypeError(f"expected string keys other than {_TENSOR_KEY!r} in a training state at {key!r}, got {list(value)[:5]}")
        return {name: _flatten(item, f"{key}.{name}", tensors) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flatten(item, f"{key}.{index}", tensors) for index, item in enumerate(value)]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"expected tensors, numbers, strings, lists and dicts in a training state at {key!r}, got {type(value).__name__}")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_KEY}:
            if value[_TENSOR_KEY] not in tensors:
                raise ValueError(f"expected the tensor {value[_TENSOR_KEY]!r} in {_OWN_STATE_TENSORS}, got none")
            return tensors[value[_TENSOR_KEY]]
        return {name: _unflatten(item, tensors) for name, item in value.items()}
    if isinstance(value, list):
        return [_unflatten(item, tensors) for item in value]
    return value


def _rng_state(accelerator: Any) -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states and accelerate's micro-batch counter, as JSON."""
    version, internal, gauss_next = random.getstate()
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "accelerator_step": accelerator.step,
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"keys": [int(key) for key in keys], "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(text: Any, like: torch.Tensor) -> torch.Tensor:
    data = base64.b64decode(text, validate=True)
    if len(data) != like.numel():
        raise ValueError(f"{len(data)} bytes instead of {like.numel()}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _parse_rng_state(state: Any) -> dict[str, Any]:
    """The RNG states of ``rng_state_{i}.json`` checked and decoded, ready to set (raises on any defect)."""
    python, numpy_state = state["python"], state["numpy"]
    internal = tuple(int(value) for value in python["state"])
    gauss = python["gauss_next"]
    keys = np.asarray(numpy_state["keys"], dtype=np.uint32)
    if len(internal) != len(random.getstate()[1]) or keys.shape != (624,):
        raise ValueError("a state of the wrong length")
    parsed = {
        "accelerator_step": int(state["accelerator_step"]),
        "python": (int(python["version"]), internal, None if gauss is None else float(gauss)),
        "numpy": ("MT19937", keys, int(numpy_state["pos"]), int(numpy_state["has_gauss"]), float(numpy_state["cached_gaussian"])),
        "torch": _byte_tensor(state["torch"], torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        current = torch.cuda.get_rng_state_all()
        if len(state.get("cuda", ())) != len(current):
            raise ValueError(f"CUDA states of {len(state.get('cuda', ()))} devices, this process sees {len(current)}")
        parsed["cuda"] = [_byte_tensor(text, like) for text, like in zip(state["cuda"], current)]
    # Set on throwaway generators first: a state of another version (Python's Random, NumPy's MT19937, torch's) is
    # refused here, with the file named, not halfway through restoring the run.
    random.Random().setstate(parsed["python"])
    np.random.RandomState().set_state(parsed["numpy"])
    torch.Generator().set_state(parsed["torch"])
    return parsed


def _set_rng_state(accelerator: Any, parsed: dict[str, Any]) -> None:
    random.setstate(parsed["python"])
    np.random.set_state(parsed["numpy"])
    torch.set_rng_state(parsed["torch"])
    if "cuda" in parsed:
        torch.cuda.set_rng_state_all(parsed["cuda"])
    accelerator.step = parsed["accelerator_step"]


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _write_json(path: Path, value: Any) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle, indent=2, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------------------------------
# Save
# ---------------------------------------------------------------------------------------------------------------------


def save_checkpoint(
    accelerator: Any,
    output_dir: str | os.PathLike,
    step: int,
    *,
    state_objects: dict[str, Any] | None = None,
    total_limit: int | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Save the run as ``output_dir/checkpoint-{step}``, atomically. Call it on every process.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator (model, optimizer and LR scheduler prepared).
        output_dir: the run's output folder.
        step (`int`): the optimizer step just completed.
        state_objects (`dict`, *optional*): our objects with ``state_dict``/``load_state_dict`` (progress, EMA,
            timestep sampler) by name; their states hold tensors, numbers, strings, lists and dicts. The main
            process saves them (they are the same on every process).
        total_limit (`int`, *optional*): keep at most this many checkpoints (the oldest go, after the new one is
            complete).
        summary (`dict`, *optional*): facts written to ``training_state.json`` next to the file hashes.

    Returns:
        `Path`: the checkpoint folder.

    Raises:
        ValueError: ``checkpoint-{step}`` exists and is not a checkpoint of ours (it is never replaced).
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if final.exists() and not (final / CHECKPOINT_STATE_FILE).is_file():  # checked on every process: all stop
        raise ValueError(
            f"expected to save step {step} as {str(final)!r}, got a folder there without {CHECKPOINT_STATE_FILE} (not a "
            "checkpoint of ours): it is left as it is; move it out of --output_dir and resume"
        )
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    # accelerate pickles the RNG states; ours go to JSON, which a resume reads without unpickling anything.
    index = accelerator.process_index
    (partial / _ACCELERATE_RNG_FILE.format(index)).unlink(missing_ok=True)
    _write_json(partial / f"rng_state_{index}.json", _rng_state(accelerator))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        skeleton = {name: _flatten(obj.state_dict(), name, tensors) for name, obj in (state_objects or {}).items()}
        save_file(tensors, str(partial / _OWN_STATE_TENSORS))
        _write_json(partial / _OWN_STATE_JSON, skeleton)
        normalize_file_modes(partial)  # safetensors' files (ours and accelerate's model) are 0600 otherwise
        files = {entry.name: _sha256(entry) for entry in sorted(partial.iterdir())}
        _write_json(partial / CHECKPOINT_STATE_FILE, {"global_step": step, **(summary or {}), "files": files})
        _fsync_tree(partial)
        replace_directory(partial, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------------------------------
# Verify and load
# ---------------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"expected JSON in {str(path)!r}, could not read it ({type(error).__name__}: {error})") from error


def _model_mismatch(unwrapped: torch.nn.Module, path: Path) -> str | None:
    """How the checkpoint's model differs from the run's (names and shapes), or None when they match."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            saved = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - a damaged file refuses the resume in one line
        raise ValueError(f"expected a safetensors model in {str(path)!r}, could not read it ({type(error).__name__}: {error})") from error
    expected = {key: tuple(value.shape) for key, value in unwrapped.state_dict().items()}
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = sorted(key for key in set(saved) & set(expected) if saved[key] != expected[key])
    if not (missing or unexpected or reshaped):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} of its tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensors it lacks (e.g. {unexpected[0]})")
    if reshaped:
        key = reshaped[0]
        parts.append(f"{len(reshaped)} of other shapes (e.g. {key}: {list(saved[key])} saved, {list(expected[key])} here)")
    return "; ".join(parts)


def load_checkpoint(
    accelerator: Any, folder: str | os.PathLike, model: Any, optimizer: Any, lr_scheduler: Any, state_objects: dict[str, Any]
) -> None:
    """Verify a checkpoint completely, then restore the run from it. Call it on every process.

    Nothing is read into the run before the whole folder checks out; every problem is one ``ValueError`` line.

    Args:
        accelerator (`accelerate.Accelerator`): the run's accelerator (model, optimizer and LR scheduler prepared).
        folder: the checkpoint folder.
        model, optimizer, lr_scheduler: the prepared ones.
        state_objects (`dict`): the objects given to [`save_checkpoint`], by name.

    Raises:
        ValueError: a checkpoint of a sharded engine, unexpected, missing or damaged files, another model, other
            saved states, or a file that does not hold what it should.
    """
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file, load_model

    folder = Path(folder)
    where = repr(str(folder))
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ValueError(
            f"expected a single-process or DDP run to resume (its checkpoint files are read without unpickling), got "
            f"{accelerator.distributed_type}, whose engine saves pickles that cannot be read safely"
        )
    manifest = _read_json(folder / CHECKPOINT_STATE_FILE)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise ValueError(f"expected a file list with hashes in {CHECKPOINT_STATE_FILE} of {where}, got none (a checkpoint of an older version?)")
    present = sorted(entry.name for entry in folder.iterdir() if entry.name != CHECKPOINT_STATE_FILE)
    known = {_OWN_STATE_JSON, _OWN_STATE_TENSORS}
    unexpected = [name for name in present if name not in files or not (name in known or _ACCELERATE_FILES.match(name) or _RNG_FILE.match(name))]
    if unexpected:
        raise ValueError(f"expected only the files a checkpoint holds in {where}, got unexpected {unexpected[:5]} (nothing was read)")
    saved_processes = manifest.get("num_processes")
    required = {"model.safetensors", "optimizer.bin", "scheduler.bin", _OWN_STATE_JSON, _OWN_STATE_TENSORS}
    if accelerator.scaler is not None:
        required.add("scaler.pt")
    rng_file = f"rng_state_{accelerator.process_index}.json"
    if saved_processes == accelerator.num_processes or rng_file in files:
        required.add(rng_file)
    missing = sorted((set(files) | required) - set(present))
    if missing:
        raise ValueError(f"expected {missing[:5]} in the checkpoint {where}, got none (missing)")
    damaged = [name for name in present if _sha256(folder / name) != files[name]]
    if damaged:
        raise ValueError(f"expected the files of {where} as saved, got {damaged[:5]} damaged (SHA-256 differs from {CHECKPOINT_STATE_FILE})")

    unwrapped = accelerator.unwrap_model(model)
    mismatch = _model_mismatch(unwrapped, folder / "model.safetensors")
    if mismatch:
        raise ValueError(f"expected a checkpoint of this model ({type(unwrapped).__name__}), got another architecture in {where}: {mismatch}")
    skeleton = _read_json(folder / _OWN_STATE_JSON)
    if not isinstance(skeleton, dict) or sorted(skeleton) != sorted(state_objects):
        got = sorted(skeleton) if isinstance(skeleton, dict) else type(skeleton).__name__
        raise ValueError(f"expected saved states {sorted(state_objects)} (this task and --use_ema), got {got} in {where}")
    try:
        tensors = load_file(str(folder / _OWN_STATE_TENSORS))
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"expected safetensors in {str(folder / _OWN_STATE_TENSORS)!r}, could not read it ({type(error).__name__}: {error})") from error
    rng = None
    if rng_file in required:
        try:
            rng = _parse_rng_state(_read_json(folder / rng_file))
        except ValueError as error:
            raise ValueError(f"expected RNG states in {str(folder / rng_file)!r}, got an unusable file ({error})") from error
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"expected RNG states in {str(folder / rng_file)!r}, got an unusable file ({type(error).__name__}: {error})") from error
    optimizer_state = load_weights_only(folder / "optimizer.bin")
    scheduler_state = load_weights_only(folder / "scheduler.bin")
    scaler_state = load_weights_only(folder / "scaler.pt") if accelerator.scaler is not None else None

    load_model(unwrapped, str(folder / "model.safetensors"), strict=True, device="cpu")
    optimizer.load_state_dict(optimizer_state)
    lr_scheduler.load_state_dict(scheduler_state)
    if scaler_state is not None:
        accelerator.scaler.load_state_dict(scaler_state)
    for name, obj in state_objects.items():
        obj.load_state_dict(_unflatten(skeleton[name], tensors))
    if rng is not None:
        _set_rng_state(accelerator, rng)
