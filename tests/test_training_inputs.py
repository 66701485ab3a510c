"""Training inputs end to end: fine-tuning maps classes by name, bad images and settings stop the run in one line
before training, accelerate's accumulation variable is taken, and --report_to trackers really log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_training_scripts import TINY_UNET, _image_folder, _metrics, _train_here, count_forwards

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine

SMALL = ["--resolution", "8", "--train_batch_size", "2", *TINY_UNET, "--channel_mult", "1,2", "--attention_resolutions", "4"]


def _refused(task: str, argv: list[str], output: Path) -> str:
    with pytest.MonkeyPatch.context() as patch:
        forwards = count_forwards(patch)
        with pytest.raises(SystemExit) as raised:
            _train_here(task, [*argv, "--output_dir", str(output)])
    message = str(raised.value)
    assert message.startswith("error: expected") and "\n" not in message, message
    assert forwards == []  # refused before the model ran once
    assert not output.exists() or not any(output.glob("checkpoint-*"))
    return message


def _cut_png(path: Path) -> None:
    """A PNG whose header is valid and whose pixel data stops half-way."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-400])


# -- fine-tuning: classes by name ------------------------------------------------------------------------------------------


@pytest.fixture
def cat_dog_fox_pipeline(tmp_path):
    from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                          out_channels=3, num_classes=3)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=100)
    ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def _coloured_subfolders(root: Path, colours: dict[str, tuple[int, int, int]]) -> Path:
    """One class per subfolder (the imagefolder layout), each class a solid colour, files without class prefixes."""
    for name, colour in colours.items():
        (root / name).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (8, 8), colour).save(root / name / f"{k:03d}.png")
    return root


def test_fine_tuning_on_dogs_and_foxes_trains_dogs_as_the_pipelines_dog(tmp_path, cat_dog_fox_pipeline, monkeypatch):
    from guided_diffusers.training.diffusion_task import DiffusionTask

    data = _coloured_subfolders(tmp_path / "data", {"dog": (255, 0, 0), "fox": (0, 0, 255)})
    seen = []
    compute_loss = DiffusionTask.compute_loss

    def recording(self, model, batch):
        red = batch["pixel_values"][:, 0].mean(dim=(1, 2)) > 0
        seen.extend(("dog" if is_red else "fox", int(label)) for is_red, label in zip(red, batch["class_labels"]))
        return compute_loss(self, model, batch)

    monkeypatch.setattr(DiffusionTask, "compute_loss", recording)
    output = tmp_path / "tuned"
    _train_here("diffusion", ["--train_data_dir", str(data), "--init_pipeline", str(cat_dog_fox_pipeline), "--output_dir", str(output),
                              "--train_batch_size", "2", "--max_train_steps", "3", "--use_ema", "False"])
    assert {"dog", "fox"} == {name for name, _ in seen}
    assert {label for name, label in seen if name == "dog"} == {1}
    assert {label for name, label in seen if name == "fox"} == {2}
    assert json.loads((output / "model_index.json").read_text())["id2label"] == {"0": "cat", "1": "dog", "2": "fox"}


def test_fine_tuning_on_a_class_the_pipeline_lacks_is_refused(tmp_path, cat_dog_fox_pipeline):
    data = _coloured_subfolders(tmp_path / "data", {"dog": (255, 0, 0), "wolf": (90, 90, 90)})
    message = _refused("diffusion", ["--train_data_dir", str(data), "--init_pipeline", str(cat_dog_fox_pipeline),
                                     "--train_batch_size", "2", "--max_train_steps", "2"], tmp_path / "out")
    assert "expected the data's classes among the --init_pipeline model's 3 classes (matched by name to its id2label), got 1 it lacks: ['wolf']" in message


# -- images scanned before training ------------------------------------------------------------------------------------------


def test_a_png_cut_short_stops_the_run_before_training_naming_it(tmp_path):
    data = _image_folder(tmp_path / "data", 4, (8, 8))
    _cut_png(data / "cat_cut.png")
    message = _refused("diffusion", ["--train_data_dir", str(data), *SMALL, "--max_train_steps", "2"], tmp_path / "out")
    assert message.startswith("error: expected readable training images, got 1 unreadable: ") and "cat_cut.png" in message


def test_a_bad_image_in_the_classifiers_validation_folder_is_called_a_validation_image(tmp_path):
    data = _image_folder(tmp_path / "data", 4, (8, 8), classes=("cat", "dog"))
    validation = _image_folder(tmp_path / "val", 2, (8, 8), classes=("cat", "dog"))
    _cut_png(validation / "dog_cut.png")
    message = _refused("classifier", ["--train_data_dir", str(data), "--validation_data_dir", str(validation), "--resolution", "8",
                                      "--classifier_width", "32", "--classifier_depth", "1", "--classifier_attention_resolutions", "4",
                                      "--train_batch_size", "2", "--max_train_steps", "2"], tmp_path / "out")
    assert message.startswith("error: expected readable validation images, got 1 unreadable: ") and "dog_cut.png" in message


# -- accelerate's gradient-accumulation variable ------------------------------------------------------------------------------


def test_accelerates_accumulation_variable_is_taken_or_a_conflict_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    data = _image_folder(tmp_path / "data", 8, (8, 8))
    output = tmp_path / "out"
    _train_here("diffusion", ["--train_data_dir", str(data), *SMALL, "--max_train_steps", "2", "--output_dir", str(output)])
    assert [m["samples"] for m in _metrics(output)] == [4, 8]  # 2 images x 2 micro-batches per step
    message = _refused("diffusion", ["--train_data_dir", str(data), *SMALL, "--max_train_steps", "2", "--gradient_accumulation_steps", "1"],
                       tmp_path / "conflict")
    assert "expected accelerate's gradient accumulation (2, from ACCELERATE_GRADIENT_ACCUMULATION_STEPS" in message


# -- trackers -------------------------------------------------------------------------------------------------------------------


def test_report_to_tensorboard_writes_the_logged_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = _image_folder(tmp_path / "data", 4, (8, 8))
    output = tmp_path / "out"
    _train_here("diffusion", ["--train_data_dir", str(data), *SMALL, "--max_train_steps", "3", "--output_dir", str(output),
                              "--report_to", "tensorboard", "--use_ema", "False"])
    event_files = list((output / "logs" / "diffusion").glob("events.out.tfevents.*"))  # (the run's config is in a subfolder)
    assert len(event_files) == 1
    events = EventAccumulator(str(event_files[0].parent))
    events.Reload()
    logged = [(event.step, event.value) for event in events.Scalars("loss")]
    expected = [(m["step"], m["loss"]) for m in _metrics(output)]
    assert [step for step, _ in logged] == [1, 2, 3]
    np.testing.assert_allclose([value for _, value in logged], [value for _, value in expected], rtol=1e-6)


def test_a_tracker_asked_for_but_not_installed_is_refused_before_training(tmp_path, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    data = _image_folder(tmp_path / "data", 4, (8, 8))
    message = _refused("diffusion", ["--train_data_dir", str(data), *SMALL, "--max_train_steps", "2", "--report_to", "tensorboard,wandb"],
                       tmp_path / "out")
    assert message == "error: expected wandb installed for --report_to tensorboard,wandb, got it missing (pip install wandb, or --report_to none)"
