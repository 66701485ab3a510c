"""Bad input to the converters and to folder loading: each case gets ONE line naming what was expected, exit status 2,
before any work, and nothing is written; plus the converter's inputs that must work (inline JSON, a classifier given
as --checkpoint) and its on-disk guarantees (no stale temp folders, atomic --overwrite, normal permissions)."""

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from original_layout import adm_classifier_state_dict, adm_unet_state_dict
from safetensors.torch import load_file

from guided_diffusers import ADMClassifier, ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler
from guided_diffusers.cli import convert_ddpm as ddpm_cli
from guided_diffusers.cli import convert_guided_diffusion as adm_cli
from guided_diffusers.conversion import classifier_kwargs_from_flags, unet_kwargs_from_flags
from guided_diffusers.conversion import presets as presets_module
from guided_diffusers import publishing

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FLAGS = "--image_size 8 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 2 --learn_sigma True"
CLASSIFIER_FLAGS = ("--image_size 8 --classifier_width 32 --classifier_depth 1 --classifier_channel_mult 1,2 "
                    "--classifier_attention_resolutions 2 --classifier_pool adaptive")
UNET_CONFIG = dict(image_size=8, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=[2],
                   channel_mult=[1, 2], num_heads=4)


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    torch.save(adm_unet_state_dict(unet_kwargs_from_flags(FLAGS, "guided-diffusion")), folder / "unet.pt")
    clf = {k: list(v) if isinstance(v, tuple) else v for k, v in classifier_kwargs_from_flags(CLASSIFIER_FLAGS).items()}
    torch.save(adm_classifier_state_dict(clf), folder / "classifier.pt")
    (folder / "classifier.json").write_text(json.dumps(clf))
    (folder / "random.pt").write_bytes(os.urandom(4096))
    (folder / "empty.pt").write_bytes(b"")
    torch.save({"weight": Evil()}, folder / "payload.pt")
    return folder


def _run(cli, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    return exit_info.value.code, err


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# (case, argv builder (inputs, work) -> argv, the message's expected part); for convert_guided_diffusion
ADM_CASES = [
    ("output in a missing parent", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_flags", FLAGS, "--output", f"{w}/no/such/out"],
     "expected --output in an existing folder"),
    ("output under a file", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_flags", FLAGS, "--output", f"{i}/unet.pt/out"],
     "expected --output in an existing folder"),
    ("output in /proc", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_flags", FLAGS, "--output", "/proc/guided-diffusers-out"],
     "expected a writable place for --output '/proc/guided-diffusers-out'"),
    ("output . --overwrite", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_flags", FLAGS, "--output", ".", "--overwrite"],
     "the current directory or a parent of it"),
    ("output holding the checkpoint", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_flags", FLAGS, "--output", str(i), "--overwrite"],
     "replacing it would delete the input"),
    ("model_config missing keys", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_config", '{"image_size": 8, "model_channels": 32}', "--output", f"{w}/out"],
     "got none for ['out_channels', 'num_res_blocks', 'attention_resolutions']"),
    ("model_config wrong type", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_config", json.dumps(dict(UNET_CONFIG, model_channels="32")), "--output", f"{w}/out"],
     "expected ADMUNet2DModel config 'model_channels' as int, got '32' (str)"),
    ("random bytes", lambda i, w: ["--checkpoint", f"{i}/random.pt", "--model_flags", FLAGS, "--output", f"{w}/out"],
     "expected a PyTorch checkpoint (torch.save) in"),
    ("empty file", lambda i, w: ["--checkpoint", f"{i}/empty.pt", "--model_flags", FLAGS, "--output", f"{w}/out"],
     "got an empty file (0 bytes)"),
    ("pickled payload", lambda i, w: ["--checkpoint", f"{i}/payload.pt", "--model_flags", FLAGS, "--output", f"{w}/out"],
     "code, not data"),
    ("classifier with unet flags", lambda i, w: ["--checkpoint", f"{i}/classifier.pt", "--model_flags", FLAGS, "--output", f"{w}/out"],
     "got a noisy classifier's (EncoderUNetModel: no output_blocks)"),
    ("missing checkpoint", lambda i, w: ["--checkpoint", f"{i}/missing.pt", "--model_flags", FLAGS, "--output", f"{w}/out"],
     "expected an original checkpoint file"),
]


# The refusals that need the checkpoint's content: torch.load reads it once (and refuses it, or its keys); every other
# case is refused before any checkpoint is read.
READ_ONCE = {"random bytes", "pickled payload", "classifier with unet flags"}


@pytest.mark.parametrize("case, argv, expected", ADM_CASES, ids=[c[0] for c in ADM_CASES])
def test_convert_guided_diffusion_refuses_in_one_line(case, argv, expected, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before_inputs, before_work = _listing(inputs), _listing(tmp_path)
    loads, built = [], []
    real_load, real_init = torch.load, ADMUNet2DModel.__init__

    @functools.wraps(real_init)  # the same signature, which the config checks read
    def counting_init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: (loads.append(args[0]), real_load(*args, **kwargs))[1])
    monkeypatch.setattr(ADMUNet2DModel, "__init__", counting_init)
    code, err = _run(adm_cli, argv(inputs, tmp_path), capsys)
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert expected in err, err
    assert len(loads) == (1 if case in READ_ONCE else 0), loads
    assert built == []  # no model was built, so nothing ran forward
    assert _listing(tmp_path) == before_work and _listing(inputs) == before_inputs  # nothing written, nothing run
    assert not Path("pwned").exists()


DDPM_CASES = [
    ("model_config missing keys", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_config", '{"ch": 32}', "--output", f"{w}/out"],
     "expected DDPM Model constructor kwargs with"),
    ("model_config not an object", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--model_config", "[1, 2]", "--output", f"{w}/out"],
     None),  # argparse's own one-line usage error
    ("output . --overwrite", lambda i, w: ["--checkpoint", f"{i}/unet.pt", "--preset", "cifar10", "--output", ".", "--overwrite"],
     "the current directory or a parent of it"),
]


@pytest.mark.parametrize("case, argv, expected", DDPM_CASES, ids=[c[0] for c in DDPM_CASES])
def test_convert_ddpm_refuses_in_one_line(case, argv, expected, inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = _run(ddpm_cli, argv(inputs, tmp_path), capsys)
    assert code == 2 and err.splitlines()[-1].startswith(("error: ", "usage: ", "convert_ddpm")) or "error:" in err, err
    if expected is None:
        assert "expected a JSON object" in err, err
    else:
        assert len(err.splitlines()) == 1 and expected in err, err
    assert _listing(tmp_path) == []


def test_inline_json_and_a_classifier_given_as_checkpoint(inputs, tmp_path):
    config = (inputs / "classifier.json").read_text()
    assert adm_cli.main(["--classifier", str(inputs / "classifier.pt"), "--classifier_config", config, "--output", str(tmp_path / "inline")]) == 0
    assert adm_cli.main(["--checkpoint", str(inputs / "classifier.pt"), "--classifier_config", config, "--output", str(tmp_path / "as-checkpoint")]) == 0
    assert adm_cli.main(["--checkpoint", str(inputs / "classifier.pt"), "--classifier_flags", CLASSIFIER_FLAGS, "--output", str(tmp_path / "flags")]) == 0
    weights = [ADMClassifier.from_pretrained(tmp_path / name).state_dict() for name in ("inline", "as-checkpoint", "flags")]
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
    unet = adm_unet_state_dict(UNET_CONFIG)
    torch.save(unet, tmp_path / "u.pt")
    assert adm_cli.main(["--checkpoint", str(tmp_path / "u.pt"), "--model_config", json.dumps(UNET_CONFIG), "--output", str(tmp_path / "unet")]) == 0


def test_a_classifier_preset_file_given_as_checkpoint_converts_as_classifier(tmp_path, monkeypatch):
    preset = presets_module.PRESETS["adm"]["64x64_classifier"]
    reduced = dataclasses.replace(preset, flags=CLASSIFIER_FLAGS.replace("--image_size 8", "--image_size 64").replace("width 32", "width 64"))
    monkeypatch.setitem(presets_module.PRESETS["adm"], "64x64_classifier", reduced)
    torch.save(adm_classifier_state_dict(classifier_kwargs_from_flags(reduced.flags)), tmp_path / "64x64_classifier.pt")
    assert adm_cli.main(["--checkpoint", str(tmp_path / "64x64_classifier.pt"), "--output", str(tmp_path / "out")]) == 0
    assert ADMClassifier.from_pretrained(tmp_path / "out").config.num_classes == 1000


def test_stale_temp_folders_are_removed_and_folders_get_normal_permissions(inputs, tmp_path):
    dead_pid = 2**22 + 12345  # above pid_max's default: no such process
    stale = tmp_path / f".out.pipe.{dead_pid}.deadbeef"
    live = tmp_path / f".out.pipe.{os.getpid()}.cafecafe"
    stale.mkdir()
    live.mkdir()
    old_umask = os.umask(0o022)
    try:
        assert adm_cli.main(["--checkpoint", str(inputs / "unet.pt"), "--model_flags", FLAGS, "--output", str(tmp_path / "out")]) == 0
    finally:
        os.umask(old_umask)
    assert not stale.exists() and live.exists()  # a running conversion's folder is left alone
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "out"]
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "out" / "unet").stat().st_mode & 0o777 == 0o755


def test_overwrite_always_leaves_a_complete_folder(inputs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert adm_cli.main(["--checkpoint", str(inputs / "unet.pt"), "--model_flags", FLAGS, "--output", str(out)]) == 0
    first = (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    # killed right after the swap, before the old folder is removed: the output is the complete new folder
    seen = []

    def killed(path, *args, **kwargs):
        seen.append((out / "model_index.json").is_file())
        raise KeyboardInterrupt

    monkeypatch.setattr(publishing.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        adm_cli.main(["--checkpoint", str(inputs / "unet.pt"), "--model_flags", FLAGS, "--dtype", "float16", "--output", str(out), "--overwrite"])
    monkeypatch.undo()
    assert seen and all(seen)  # the new folder was in place whenever the run could have died
    stored = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}  # the new conversion, complete
    assert ClassifierGuidedPipeline.from_pretrained(out) is not None
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != first
    # the fallback of systems without an atomic exchange: a backup left between its two renames is put back
    shutil.rmtree(out)
    backup = tmp_path / ".out.old"
    backup.mkdir()
    (backup / "model_index.json").write_text("{}")
    publishing.recover_directory(out)
    assert (out / "model_index.json").is_file() and not backup.exists()


def test_exchange_is_atomic_here(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old").write_text("old")
    publishing.replace_directory(tmp_path / "a", tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"] and (tmp_path / "b" / "new").is_file()
    assert publishing._exchange(tmp_path / "b", tmp_path / "b") in (True, False)


# -- folders: what loading a damaged folder says ---------------------------------------------------------------------


@pytest.fixture()
def pipeline_folder(tmp_path):
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                          num_classes=10, out_channels=6)
    classifier = ADMClassifier(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                               num_classes=10, pool="adaptive")
    ClassifierGuidedPipeline(unet=unet, scheduler=GuidedDDPMScheduler(num_train_timesteps=20), classifier=classifier).save_pretrained(tmp_path / "pipe")
    return tmp_path / "pipe"


def _wrong_type(folder):
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["model_channels"] = "32"
    (folder / "unet" / "config.json").write_text(json.dumps(config))


FOLDER_CASES = [
    ("config value of the wrong type", _wrong_type, ValueError, "expected ADMUNet2DModel config 'model_channels' as int, got '32' (str)"),
    ("missing weights file", lambda f: (f / "unet" / "diffusion_pytorch_model.safetensors").unlink(), OSError,
     "Error no file named diffusion_pytorch_model.safetensors found in directory"),
    ("missing classifier folder", lambda f: shutil.rmtree(f / "classifier"), OSError,
     "expected the classifier/ folder of ADMClassifier in"),
]


@pytest.mark.parametrize("case, damage, error, expected", FOLDER_CASES, ids=[c[0] for c in FOLDER_CASES])
def test_damaged_folders_say_what_is_wrong_in_one_line(case, damage, error, expected, pipeline_folder):
    from diffusers import DiffusionPipeline

    damage(pipeline_folder)
    with pytest.raises(error) as info:
        DiffusionPipeline.from_pretrained(pipeline_folder)
    assert expected in str(info.value) and len(str(info.value).splitlines()) == 1, str(info.value)


def test_a_terminated_conversion_leaves_no_temporary_folder(inputs, tmp_path, monkeypatch):
    import signal
    import time

    from guided_diffusers.conversion import writing as convert_module

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` mid-conversion
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the conversion")

    monkeypatch.setattr(convert_module, "convert_unet_checkpoint", terminated)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        adm_cli.main(["--checkpoint", str(inputs / "unet.pt"), "--model_flags", FLAGS, "--output", str(tmp_path / "out")])
    assert info.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []  # neither the output nor its .out.pipe.* temporary folder
    assert signal.getsignal(signal.SIGTERM) is previous
