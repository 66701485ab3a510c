"""What the wheel promises (the wheel itself is built, installed and run by .ci/wheel_smoke.sh): console scripts that
resolve, package data that covers every file the package reads, checkout wrappers that are the same functions,
dependency floors that are the versions CI pins, and a failed Hub push at the end of training in one line."""

import importlib
import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from packaging.version import Version
from PIL import Image

import guided_diffusers

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_console_script_resolves_to_a_function():
    scripts = PYPROJECT["project"]["scripts"]
    assert {"guided-diffusers-convert-guided-diffusion", "guided-diffusers-convert-ddpm", "guided-diffusers-train-diffusion",
            "guided-diffusers-train-classifier", "guided-diffusers-train-super-res", "guided-diffusers-sample",
            "guided-diffusers-evaluate", "guided-diffusers-image-nll", "guided-diffusers-app", "guided-diffusers-quickstart",
            "guided-diffusers-distill"} == set(scripts)
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_checkout_wrappers_call_the_console_script_functions():
    scripts = PYPROJECT["project"]["scripts"]
    targets = {target for target in scripts.values()}
    wrappers = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "convert").glob("*.py"))
    assert len(wrappers) == 11
    for path in wrappers:
        spec = importlib.util.spec_from_file_location(f"wrapper_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        function = getattr(module, "main", None) or getattr(module, path.stem)
        assert f"{function.__module__}:{function.__name__}" in targets, path
        assert len(path.read_text().splitlines()) <= 12, f"{path} holds logic; it belongs in guided_diffusers.cli"


def test_package_data_covers_every_file_the_package_reads():
    package = Path(guided_diffusers.__file__).parent
    globs = PYPROJECT["tool"]["setuptools"]["package-data"]["guided_diffusers"]
    shipped = {p for pattern in globs for p in package.glob(pattern)}
    data_files = {p for p in package.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert data_files and data_files <= shipped, sorted(str(p) for p in data_files - shipped)
    assert {p.name for p in shipped} >= {"trained.md", "guided_diffusion.md", "improved_diffusion.md", "ddpm.md", "imagenet_classes.json"}


def _requirement(text: str) -> tuple[str, str | None]:
    name = re.split(r"[<>=!\[; ]", text, maxsplit=1)[0].lower().replace("_", "-")
    floor = re.search(r">=\s*([0-9][^,;\s]*)", text)
    return name, floor.group(1) if floor else None


def test_floors_are_the_versions_ci_pins_and_runs():
    pins = {}
    for line in (ROOT / ".ci" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    requirements = PYPROJECT["project"]["dependencies"] + [r for extra in PYPROJECT["project"]["optional-dependencies"].values() for r in extra]
    floors = dict(_requirement(r) for r in requirements)
    assert all(floors.values()), f"a dependency without a floor: {floors}"
    assert floors == {name: pins[name] for name in floors}, "pyproject floors and .ci/floors.txt pins differ"
    for name, floor in floors.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # an extra this environment does not have
        assert Version(Version(installed).base_version) >= Version(floor), f"{name} {installed} is below its floor {floor}"


def test_a_failed_push_after_training_is_one_line_and_the_folder_is_intact(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from accelerate.state import AcceleratorState, GradientState
    from diffusers import DiffusionPipeline

    from guided_diffusers.cli.train import train_diffusion

    class FailingApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, exist_ok, private):
            raise ConnectionError("Max retries exceeded\nwith url: /api/repos/create")

    monkeypatch.setattr(huggingface_hub, "HfApi", FailingApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for k in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(data / f"{'cat' if k % 2 else 'dog'}_{k}.png")
    try:
        with pytest.raises(SystemExit) as info:
            train_diffusion(["--train_data_dir", str(data), "--output_dir", str(tmp_path / "out"), "--resolution", "8",
                             "--max_train_steps", "1", "--train_batch_size", "2", "--num_channels", "32", "--num_res_blocks", "1",
                             "--channel_mult", "1,2", "--attention_resolutions", "4", "--diffusion_steps", "20", "--report_to", "none",
                             "--push_to_hub", "--hub_model_id", "me/tiny", "--license", "mit"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    message = str(info.value.code)
    assert len(message.splitlines()) == 1 and message.startswith("error: push to the Hub repo 'me/tiny' failed"), message
    assert "`hf upload me/tiny" in message and "`hf auth login`" in message and "is intact" in message
    assert DiffusionPipeline.from_pretrained(tmp_path / "out") is not None
    assert "license: mit" in (tmp_path / "out" / "README.md").read_text()
