"""What a new user meets first: every console script's --help without importing torch or diffusers (so it answers at
once), an install line that works today, a missing extra (scikit-learn, Gradio, scipy, a tracker) named in one line
before any work, and a preset that does not fit the file refused in one line that says which flags to pass."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusers.conversion.model_card import install_lines

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
HEAVY = ("torch", "diffusers", "transformers", "accelerate")
HELP_PROBE = """
import importlib, io, json, sys, contextlib
results = {}
for name, target in json.loads(sys.argv[1]).items():
    module, function = target.split(":")
    sys.argv = ["/usr/local/bin/" + name, "--help"]  # what the installed console script's process has
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            getattr(importlib.import_module(module), function)()
        except SystemExit as exit:
            code = exit.code
    results[name] = {"code": code, "usage": out.getvalue().startswith("usage:"),
                     "heavy": sorted(m for m in %r if m in sys.modules)}
print(json.dumps(results))
""" % (HEAVY,)


def test_every_console_script_help_imports_no_torch():
    """Run as the console script runs (argv[0] is its name), --help builds the parser without torch or diffusers: 0.05
    to 0.13 s, where importing them took 4 to 10 s."""
    assert len(SCRIPTS) == 11
    result = subprocess.run([sys.executable, "-c", HELP_PROBE, json.dumps(SCRIPTS)], capture_output=True, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(results) == set(SCRIPTS)
    for name, found in results.items():
        assert found == {"code": 0, "usage": True, "heavy": []}, (name, found)


def test_every_module_form_and_checkout_wrapper_help_imports_no_torch():
    """`python -m guided_diffusers.cli.<name> --help` (what `accelerate launch -m` runs; its sys.argv[0] is "-m" while
    the package imports) and the checkout's `python scripts/<name>.py --help` answer without torch or diffusers too:
    the modules each process imported, as -X importtime lists them."""
    modules = [module if function == "main" else f"guided_diffusers.cli.{function}"  # train.py's three: train_*.py
               for module, function in (target.split(":") for target in SCRIPTS.values())]
    wrappers = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "convert").glob("*.py"))
    commands = [["-m", module] for module in modules] + [[str(path)] for path in wrappers]
    assert len(commands) == 2 * len(SCRIPTS)
    for command in commands:
        result = subprocess.run([sys.executable, "-X", "importtime", *command, "--help"], capture_output=True, text=True,
                                cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=600)
        assert result.returncode == 0 and result.stdout.startswith("usage:"), (command, result.stderr[-3000:])
        imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
        assert "guided_diffusers.cli" in imported and not imported & set(HEAVY), (command, sorted(imported & set(HEAVY)))


@pytest.mark.slow
def test_a_console_script_process_still_registers_the_classes_on_first_use():
    """In a console script's process the package defers its classes; the first one asked for imports them all and
    registers them with diffusers, as `import guided_diffusers` does elsewhere."""
    probe = ("import sys; sys.argv = ['/usr/local/bin/guided-diffusers-sample']\n"
             "import guided_diffusers\nassert 'diffusers' not in sys.modules\n"
             "guided_diffusers.GuidedDDIMScheduler\nimport diffusers\n"
             "print(diffusers.ClassifierGuidedPipeline is guided_diffusers.ClassifierGuidedPipeline, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT,
                            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert result.returncode == 0 and result.stdout.split() == ["True", "True"], result.stderr[-3000:]


def test_readme_and_cards_install_from_the_source_not_a_registry():
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install"):readme.index("## Quick start")]
    assert "not yet published on a package registry" in install
    commands = re.findall(r"^pip install (\S+)", install, flags=re.M)
    assert commands and not any(c.startswith(("guided-diffusers", '"guided-diffusers')) for c in commands), commands
    assert "pip install guided-diffusers " not in readme and "pip install guided-diffusers\n" not in readme
    for template in (ROOT / "guided_diffusers" / "model_cards").glob("*.md"):
        assert "pip install guided-diffusers" not in template.read_text() and "{{ install }}" in template.read_text(), template
    assert "not yet published on a package registry" in install_lines()


def test_quickstart_without_scikit_learn_names_the_extra_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import importlib.util

    from guided_diffusers.cli.quickstart import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "sklearn" else find_spec(name, *args))
    with pytest.raises(SystemExit) as info:
        main(["--output_dir", str(tmp_path / "demo")])
    message = str(info.value.code)
    assert len(message.splitlines()) == 1 and message.startswith("error: expected scikit-learn installed for the quick start")
    assert "[demo]" in message and not (tmp_path / "demo").exists()


def test_web_app_without_gradio_names_the_extra(monkeypatch):
    import importlib.util

    from guided_diffusers.cli.app import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "gradio" else find_spec(name, *args))
    with pytest.raises(SystemExit) as info:
        main(["--pipeline", "nowhere"])
    message = str(info.value.code)
    assert len(message.splitlines()) == 1 and message.startswith("error: expected Gradio installed for the web demo") and "[app]" in message


def test_lms_without_scipy_is_one_line_before_any_step(monkeypatch):
    from diffusers import LMSDiscreteScheduler

    from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler
    from guided_diffusers.pipelines import sampling as stepping

    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,))
    pipe = ClassifierGuidedPipeline(unet=unet, scheduler=GuidedDDPMScheduler(num_train_timesteps=20))
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    calls = []
    monkeypatch.setattr(ADMUNet2DModel, "forward", lambda *args, **kwargs: calls.append(1))
    monkeypatch.setattr(stepping, "is_scipy_available", lambda: False)
    with pytest.raises(ValueError, match=r"^expected scipy installed for LMSDiscreteScheduler, got it missing: pip install scipy \(or the \[lms\] extra\)$"):
        pipe(batch_size=1, num_inference_steps=2)
    assert calls == []
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("scipy") for r in pyproject["lms"]) and any(r.startswith("scipy") for r in pyproject["dev"])


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(tmp_path, monkeypatch):
    import accelerate.utils.imports as accelerate_imports

    from guided_diffusers.cli.train import main
    from guided_diffusers.training import tasks

    available = accelerate_imports._is_package_available
    monkeypatch.setattr(accelerate_imports, "_is_package_available",
                        lambda name, *args: False if name.startswith("tensorboard") else available(name, *args))
    monkeypatch.setattr(tasks, "run_training", lambda args: pytest.fail("training started"))
    data = tmp_path / "images"
    data.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(data / "a_0.png")
    with pytest.raises(SystemExit) as info:
        main("diffusion", ["--train_data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--resolution", "8",
                           "--max_train_steps", "1", "--report_to", "tensorboard"])
    assert str(info.value.code) == ("error: expected tensorboard installed for --report_to tensorboard, got it missing "
                                    "(pip install tensorboard, or --report_to none)")
    assert not (tmp_path / "out").exists()


def test_a_ddpm_preset_that_does_not_fit_is_one_short_line(tmp_path, capsys):
    from original_layout import ddpm_state_dict

    from guided_diffusers.cli.convert_ddpm import main

    tiny = dict(ch=32, out_ch=3, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, resolution=8, in_channels=3)
    torch.save(ddpm_state_dict(tiny), tmp_path / "model.ckpt")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "model.ckpt"), "--preset", "cifar10", "--output", str(tmp_path / "out")])
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and len(message) < 300, message
    assert re.fullmatch(r"error: preset 'cifar10' does not fit the file \(\d+ missing keys(, \d+ unexpected keys)?(, \d+ shape mismatches)?\): "
                        r"the file is not that release; pass its own flags with --model_config instead of a preset", message), message
    assert not (tmp_path / "out").exists()
