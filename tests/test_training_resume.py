"""Resuming from a checkpoint: nothing in it is unpickled, every file is verified, and every refusal is one line.

One tiny run writes a checkpoint; each test copies it, plants a payload or damages a file, and resumes.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_scripts import TINY_UNET, _image_folder, _train_here

ARGV = [
    "--resolution", "8", "--train_batch_size", "2", *TINY_UNET, "--channel_mult", "1,2", "--attention_resolutions", "4",
    "--learn_sigma", "True", "--schedule_sampler", "loss-second-moment", "--ema_rate", "0.9", "--checkpointing_steps", "2",
]  # fmt: skip
FILES = ["model.safetensors", "optimizer.bin", "scheduler.bin", "rng_state_0.json", "trainer_state.json",
         "trainer_state.safetensors", "training_state.json"]  # fmt: skip


class _Payload:
    """Unpickling this creates the file ``marker`` (what a hostile checkpoint would do with os.system)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run with its checkpoint-2 (EMA, importance sampler)."""
    root = tmp_path_factory.mktemp("trained")
    data = _image_folder(root / "data", 6, (10, 10))
    output = root / "out"
    _train_here("diffusion", ["--train_data_dir", str(data), "--output_dir", str(output), *ARGV, "--max_train_steps", "2"])
    return data, output


def _copy(trained, tmp_path) -> tuple[Path, Path]:
    data, output = trained
    copy = tmp_path / "out"
    shutil.copytree(output / "checkpoint-2", copy / "checkpoint-2")
    return data, copy


def _resume(data: Path, output: Path, *extra: str) -> str:
    """Resume to step 3; the one-line refusal (the test fails if it trains)."""
    with pytest.raises(SystemExit) as raised:
        _train_here("diffusion", ["--train_data_dir", str(data), "--output_dir", str(output), *ARGV, *extra,
                                  "--max_train_steps", "3", "--resume_from_checkpoint", "latest"])
    message = str(raised.value)
    assert message.startswith("error: expected") and "\n" not in message, message
    assert not (output / "checkpoint-3").exists() and not (output / "model_index.json").exists()
    return message


def _rehash(checkpoint: Path, name: str) -> None:
    """Record ``name``'s new contents in the file list, as a forger who edits the checkpoint would."""
    import hashlib

    manifest = json.loads((checkpoint / "training_state.json").read_text())
    manifest["files"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    (checkpoint / "training_state.json").write_text(json.dumps(manifest))


def test_the_checkpoint_holds_only_files_read_without_unpickling(trained):
    _, output = trained
    checkpoint = output / "checkpoint-2"
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(FILES)
    manifest = json.loads((checkpoint / "training_state.json").read_text())
    assert sorted(manifest["files"]) == sorted(set(FILES) - {"training_state.json"})


@pytest.mark.parametrize("name", FILES)
def test_a_payload_planted_in_any_checkpoint_file_never_runs(trained, tmp_path, name):
    data, output = _copy(trained, tmp_path)
    checkpoint = output / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    path = checkpoint / name
    if path.suffix == ".bin":  # what torch.load reads
        torch.save({"state": _Payload(marker)}, path)
        torch.load(path, weights_only=False)  # the payload is live: an unpickling load runs it
    else:
        path.write_bytes(pickle.dumps({"state": _Payload(marker)}))
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    if name != "training_state.json":
        _rehash(checkpoint, name)  # the hashes alone do not have to stop it
    message = _resume(data, output)
    assert not marker.exists()
    assert name in message, message


def test_an_unexpected_pickle_beside_the_state_is_refused_unread(trained, tmp_path):
    data, output = _copy(trained, tmp_path)
    checkpoint = output / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    (checkpoint / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    _rehash(checkpoint, "custom_checkpoint_0.pkl")
    message = _resume(data, output)
    assert "unexpected ['custom_checkpoint_0.pkl']" in message and not marker.exists()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("truncate rng_state_0.json", "got ['rng_state_0.json'] damaged"),
        ("delete rng_state_0.json", "expected ['rng_state_0.json'] in the checkpoint"),
        ("flip a byte of optimizer.bin", "got ['optimizer.bin'] damaged"),
        ("rewrite rng_state_0.json", "expected RNG states in"),
        ("delete trainer_state.safetensors", "expected ['trainer_state.safetensors'] in the checkpoint"),
    ],
)
def test_a_damaged_or_missing_file_is_refused_never_skipped(trained, tmp_path, damage, expected):
    data, output = _copy(trained, tmp_path)
    checkpoint = output / "checkpoint-2"
    action, name = damage.split(" ", 1)[0], damage.rsplit(" ", 1)[-1]
    path = checkpoint / name
    if action == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif action == "delete":
        path.unlink()
    elif action == "flip":
        data_bytes = bytearray(path.read_bytes())
        data_bytes[len(data_bytes) // 2] ^= 0xFF
        path.write_bytes(bytes(data_bytes))
    else:  # valid JSON with the hashes recorded again: the contents themselves are checked
        state = json.loads(path.read_text())
        state["torch"] = state["torch"][:40]
        path.write_text(json.dumps(state))
        _rehash(checkpoint, name)
    assert expected in _resume(data, output)


def test_resuming_with_another_architecture_or_without_ema_is_one_line(trained, tmp_path):
    data, output = _copy(trained, tmp_path)
    wider = _resume(data, output, "--num_channels", "64")
    assert "expected a checkpoint of this model (ADMUNet2DModel), got another architecture" in wider
    assert "of other shapes" in wider
    no_ema = _resume(data, output, "--use_ema", "False")
    assert "expected saved states ['progress', 'timestep_sampler']" in no_ema and "'ema'" in no_ema


# -- files that are not weights-only tensor files, RNG states of another version ----------------------------------------


@pytest.mark.parametrize("content", ["a plain pickle", "random bytes"])
@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin"])
def test_a_file_that_is_not_a_tensor_file_is_refused_with_our_reason(trained, tmp_path, name, content):
    data, output = _copy(trained, tmp_path)
    checkpoint = output / "checkpoint-2"
    marker = tmp_path / "payload-ran"
    if content == "a plain pickle":  # pickle's own protocol, not torch.save's archive
        (checkpoint / name).write_bytes(pickle.dumps({"state": _Payload(marker)}))
    else:
        (checkpoint / name).write_bytes(np.random.default_rng(0).bytes(4096))
    _rehash(checkpoint, name)
    message = _resume(data, output)
    assert f"expected a weights-only tensor file in {str(checkpoint / name)!r}" in message, message
    assert "got a file that is not a torch.save archive" in message
    assert "weights_only=False" not in message and "weights_only` set to `False`" not in message and "Re-running" not in message
    assert not marker.exists()


def test_a_torch_save_payload_is_refused_naming_what_it_calls(trained, tmp_path):
    data, output = _copy(trained, tmp_path)
    checkpoint = output / "checkpoint-2"
    torch.save({"state": _Payload(tmp_path / "payload-ran")}, checkpoint / "optimizer.bin")
    _rehash(checkpoint, "optimizer.bin")
    message = _resume(data, output)
    assert "optimizer.bin" in message and "got a pickle that calls io.open, which is code, not data" in message
    assert "Re-running" not in message and not (tmp_path / "payload-ran").exists()


@pytest.mark.parametrize(("part", "value"), [("python", 4), ("python", 1)])
def test_an_rng_state_of_another_version_is_refused_naming_its_file(trained, tmp_path, part, value):
    data, output = _copy(trained, tmp_path)
    checkpoint = output / "checkpoint-2"
    state = json.loads((checkpoint / "rng_state_0.json").read_text())
    state[part]["version"] = value
    (checkpoint / "rng_state_0.json").write_text(json.dumps(state))
    _rehash(checkpoint, "rng_state_0.json")
    message = _resume(data, output)
    assert f"expected RNG states in {str(checkpoint / 'rng_state_0.json')!r}, got an unusable file" in message
    assert f"state with version {value} passed to Random.setstate()" in message


# -- checkpoint-N folders that are not ours ----------------------------------------------------------------------------


def _diffusers_checkpoint(folder: Path) -> Path:
    """A checkpoint folder as diffusers' example scripts write it (accelerate's save_state; no training_state.json)."""
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(b"theirs")
    return folder


@pytest.mark.parametrize("resume", ["latest", None])
def test_a_checkpoint_folder_without_its_file_list_refuses_the_run(trained, tmp_path, resume):
    data, output = _copy(trained, tmp_path)  # checkpoint-2, complete
    theirs = _diffusers_checkpoint(output / "checkpoint-4")
    argv = ["--train_data_dir", str(data), "--output_dir", str(output), *ARGV, "--max_train_steps", "4"]
    with pytest.raises(SystemExit) as raised:
        _train_here("diffusion", [*argv, *(["--resume_from_checkpoint", resume] if resume else [])])
    message = str(raised.value)
    assert message.startswith("error: expected only checkpoints with training_state.json in --output_dir") and "\n" not in message
    assert "got ['checkpoint-4'] without one" in message
    # Nothing ran: not resumed from checkpoint-2, nothing saved, the folder as it was.
    assert sorted(entry.name for entry in output.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert sorted(entry.name for entry in theirs.iterdir()) == ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin"]
    assert all(entry.read_bytes() == b"theirs" for entry in theirs.iterdir())


def test_a_lone_checkpoint_folder_without_its_file_list_is_not_a_fresh_start(trained, tmp_path):
    data, _ = trained
    output = tmp_path / "out"
    _diffusers_checkpoint(output / "checkpoint-1")
    message = _resume(data, output)  # latest: no silent new run beside it
    assert "got ['checkpoint-1'] without one" in message


# -- permissions --------------------------------------------------------------------------------------------------------


def test_every_file_the_run_wrote_has_the_umask_permissions(trained):
    from guided_diffusers.publishing import normal_file_mode

    _, output = trained
    modes = {str(path.relative_to(output)): path.stat().st_mode & 0o777 for path in output.rglob("*") if path.is_file()}
    assert "unet/diffusion_pytorch_model.safetensors" in modes and "checkpoint-2/model.safetensors" in modes
    assert modes == dict.fromkeys(modes, normal_file_mode())
