"""The training scripts end to end: two processes under accelerate launch, checkpoints, resumption with identical
state after a kill, the saved folders loaded and sampled, bad data refused, and the loss falling on easy data.

Runs in this process are plain ``main(task, argv)`` calls (what ``python scripts/train_*.py`` runs); the accelerate
runs launch two CPU processes with torchrun (``--multi_gpu`` with ``ACCELERATE_USE_CPU=1``: accelerate's
``--cpu --num_processes 2`` starts a single process unless given an MPI hostfile).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from launch import accelerate_cpu_launcher, run_with_watchdog
from PIL import Image

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine

ROOT = Path(__file__).resolve().parents[1]
# A launched run longer than this is hung: its processes' stacks are shown and the test fails.
LAUNCHED_RUN_TIMEOUT = 420
TINY_UNET = ["--num_channels", "32", "--num_res_blocks", "1", "--diffusion_steps", "100"]


def _image_folder(folder: Path, count: int, size: tuple[int, int], classes=("cat", "dog", "fox")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{classes[k % len(classes)]}_{k:03d}.png")
    return folder


def _train_here(task: str, argv: list[str]) -> None:
    """One run in this process, as ``python scripts/train_{task}.py`` runs it."""
    from accelerate.state import AcceleratorState, GradientState

    from guided_diffusers.cli.train import main

    try:
        main(task, [*argv, *([] if "--report_to" in argv else ["--report_to", "none"])])
    finally:  # accelerate keeps process-wide state between Accelerator objects
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def count_forwards(monkeypatch) -> list[str]:
    """Record every forward of our models (U-Nets and classifiers) from now on, by class name."""
    from guided_diffusers import ADMClassifier, ADMSuperResUNet2DModel, ADMUNet2DModel

    calls: list[str] = []
    for model_class in (ADMUNet2DModel, ADMSuperResUNet2DModel, ADMClassifier):
        def counting(self, *args, _forward=model_class.forward, **kwargs):
            calls.append(type(self).__name__)
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(model_class, "forward", counting)
    return calls


def _train_launched(task: str, argv: list[str]) -> None:
    launcher, env = accelerate_cpu_launcher(2)
    command = [*launcher, str(ROOT / "scripts" / f"train_{task}.py"), *argv, "--report_to", "none"]
    result = run_with_watchdog(command, cwd=ROOT, env=env, timeout=LAUNCHED_RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]


def _check_checkpoints(output: Path, steps: list[int], processes: int) -> None:
    found = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    assert found == steps
    latest = output / f"checkpoint-{steps[-1]}"
    assert json.loads((latest / "training_state.json").read_text())["global_step"] == steps[-1]
    assert sorted(p.name for p in latest.glob("rng_state_*.json")) == [f"rng_state_{i}.json" for i in range(processes)]
    assert not list(latest.glob("*.pkl"))  # nothing a resume would have to unpickle
    assert not list(output.glob(".*"))  # nothing half-written left


# -- each script: train, checkpoint, resume with latest, load and sample ------------------------------------------------


def _run_twice(task, argv, launched, tmp_path):
    output = tmp_path / "out"
    run = _train_launched if launched else _train_here
    common = ["--output_dir", str(output), "--checkpointing_steps", "2", "--checkpoints_total_limit", "2", "--seed", "3", *argv]
    run(task, [*common, "--max_train_steps", "4"])
    run(task, [*common, "--max_train_steps", "6", "--resume_from_checkpoint", "latest"])
    processes = 2 if launched else 1
    _check_checkpoints(output, [4, 6], processes)
    metrics = _metrics(output)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    batch = int(argv[argv.index("--train_batch_size") + 1])
    accumulation = int(argv[argv.index("--gradient_accumulation_steps") + 1]) if "--gradient_accumulation_steps" in argv else 1
    assert [m["samples"] for m in metrics] == [step * batch * accumulation * processes for step in range(1, 7)]
    return output, metrics


@pytest.mark.parametrize("launched", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_diffusion_script(tmp_path, launched):
    data = _image_folder(tmp_path / "data", 12, (11, 9))
    argv = [
        "--train_data_dir", str(data), "--resolution", "8", "--train_batch_size", "2", *TINY_UNET, "--channel_mult", "1,2",
        "--attention_resolutions", "4", "--learn_sigma", "True", "--class_cond", "True", "--class_dropout_prob", "0.2",
        "--schedule_sampler", "loss-second-moment", "--ema_rate", "0.9999,0.99", "--random_flip",
    ]
    output, metrics = _run_twice("diffusion", argv, launched, tmp_path)
    assert all(np.isfinite(m["loss"]) and {"mse", "vb", "lr", "samples_per_second"} <= set(m) for m in metrics)
    assert any(key.startswith("loss_q") for key in metrics[-1])

    import guided_diffusers  # noqa: F401
    from diffusers import DiffusionPipeline

    from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline

    pipeline = DiffusionPipeline.from_pretrained(output)
    assert isinstance(pipeline, ClassifierGuidedPipeline)
    assert pipeline.config.id2label == {"0": "cat", "1": "dog", "2": "fox"}
    assert pipeline.unet.config.num_classes == 3 and pipeline.unet.config.class_dropout_prob == 0.2
    images = pipeline(class_labels=["fox", 0], guidance_scale=2.0, num_inference_steps=3, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 3) and np.isfinite(images).all()
    for name in ("model", "ema_0.99"):
        ADMUNet2DModel.from_pretrained(output / "weights" / name)
    # The importance sampler saw every process's losses: 6 steps x 2 images x the processes.
    from safetensors.torch import load_file

    loss_counts = load_file(output / "checkpoint-6" / "trainer_state.safetensors")["timestep_sampler.loss_counts"]
    assert int(loss_counts.sum()) == 6 * 2 * (2 if launched else 1)
    card = (output / "README.md").read_text()
    assert "guided-diffusers-train-diffusion" in card and "| optimizer steps | 6 |" in card


@pytest.mark.parametrize("launched", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_classifier_script(tmp_path, launched):
    data = _image_folder(tmp_path / "data", 16, (70, 66))
    argv = [
        "--train_data_dir", str(data), "--resolution", "64", "--train_batch_size", "2", "--classifier_width", "32",
        "--classifier_depth", "1", "--classifier_attention_resolutions", "8", "--diffusion_steps", "100",
        "--validation_split", "0.25", "--validation_steps", "2", "--lr_scheduler", "linear", "--adam_weight_decay", "0.05",
    ]
    output, metrics = _run_twice("classifier", argv, launched, tmp_path)
    assert {"train_loss", "train_acc@1", "train_acc@5", "val_loss", "val_acc@1"} <= set(metrics[1])
    assert metrics[-1]["lr"] < metrics[0]["lr"]  # the linear anneal
    results = json.loads((output / "eval_results.json").read_text())
    assert results["val_images"] == 4 and 0.0 <= results["val_acc@1"] <= results["val_acc@5"] <= 1.0

    from guided_diffusers import ADMClassifier, ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

    classifier = ADMClassifier.from_pretrained(output)
    scheduler = GuidedDDPMScheduler.from_pretrained(output)
    assert classifier.config.num_classes == 3 and classifier.config.id2label == {"0": "cat", "1": "dog", "2": "fox"}
    assert scheduler.config.num_train_timesteps == 100
    unet = ADMUNet2DModel(sample_size=64, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=())
    pipeline = ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, classifier=classifier, id2label=classifier.config.id2label)
    images = pipeline(class_labels=["dog"], classifier_scale=1.0, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3)


@pytest.mark.parametrize("launched", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_super_res_script(tmp_path, launched):
    data = _image_folder(tmp_path / "data", 8, (64, 64))
    argv = [
        "--train_data_dir", str(data), "--large_size", "64", "--small_size", "16", "--train_batch_size", "1", *TINY_UNET,
        "--attention_resolutions", "8", "--class_cond", "True", "--gradient_accumulation_steps", "2",
    ]
    output, metrics = _run_twice("super_res", argv, launched, tmp_path)
    assert all(np.isfinite(m["loss"]) for m in metrics)

    import guided_diffusers  # noqa: F401
    from diffusers import DiffusionPipeline

    from guided_diffusers import ADMUpsamplingPipeline

    pipeline = DiffusionPipeline.from_pretrained(output)
    assert isinstance(pipeline, ADMUpsamplingPipeline) and pipeline.config.low_res_size == 16
    low_res = torch.rand(1, 3, 16, 16) * 2 - 1
    images = pipeline(low_res, class_labels=["cat"], num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 64, 64, 3)


def test_classifier_on_clean_images(tmp_path):
    data = _image_folder(tmp_path / "data", 8, (64, 64), classes=("a", "b"))
    output = tmp_path / "out"
    _train_here("classifier", [
        "--train_data_dir", str(data), "--output_dir", str(output), "--resolution", "64", "--train_batch_size", "2",
        "--classifier_width", "32", "--classifier_depth", "1", "--classifier_attention_resolutions", "8",
        "--classifier_pool", "adaptive", "--noised", "False", "--validation_split", "0.25", "--max_train_steps", "2",
    ])
    assert all(not key.startswith(("train_loss_q1", "train_loss_q2", "train_loss_q3")) for m in _metrics(output) for key in m)
    assert json.loads((output / "eval_results.json").read_text())["val_timesteps"] == "t = 0 (clean)"


def test_upsampler_sees_the_target_downsampled_by_area(tmp_path):
    import torch.nn.functional as F

    from guided_diffusers.training.args import parse_training_args
    from guided_diffusers.training.diffusion_task import DiffusionTask

    args = parse_training_args("super_res", ["--train_data_dir", "x", "--max_train_steps", "1", "--large_size", "64",
                                             "--small_size", "16", *TINY_UNET])
    task = DiffusionTask(args)

    class Images:  # what build() reads of the data
        num_classes = None
        id2label = None
        named = True

    model = task.build(Images())
    seen = {}

    def recording_model(sample, timestep, low_res):
        seen["low_res"] = low_res
        return model(sample, timestep, low_res=low_res)

    images = torch.rand(2, 3, 64, 64) * 2 - 1
    task.compute_loss(recording_model, {"pixel_values": images})
    torch.testing.assert_close(seen["low_res"], F.avg_pool2d(images, 4))


# -- fine-tuning ---------------------------------------------------------------------------------------------------------


def test_fine_tune_a_pipeline_on_a_datasets_dataset_in_bf16(tmp_path):
    import datasets
    from safetensors.torch import load_file

    from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                          out_channels=6, num_classes=4, class_dropout_prob=0.1)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=100, variance_type="learned_range", beta_schedule="cosine", timestep_respacing="10")
    ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, id2label={0: "a", 1: "b", 2: "c", 3: "d"}).save_pretrained(tmp_path / "base")
    rows = {"picture": [Image.new("RGB", (10, 10), (40 * k, 0, 0)) for k in range(6)], "kind": [0, 1, 2, 0, 1, 2]}
    features = datasets.Features({"picture": datasets.Image(), "kind": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "saved")
    common = ["--dataset_name", str(tmp_path / "saved"), "--image_column", "picture", "--label_column", "kind",
              "--init_pipeline", str(tmp_path / "base"), "--train_batch_size", "2", "--max_train_steps", "2"]
    with pytest.raises(SystemExit, match="expected no model or process flags with --init_pipeline .* got --num_channels"):
        _train_here("diffusion", [*common, "--output_dir", str(tmp_path / "bad"), "--num_channels", "64"])
    output = tmp_path / "tuned"
    _train_here("diffusion", [*common, "--output_dir", str(output), "--mixed_precision", "bf16", "--class_dropout_prob", "0.1"])
    tuned = json.loads((output / "unet" / "config.json").read_text())
    assert {key: tuned[key] for key in ("num_classes", "class_dropout_prob", "out_channels")} == {"num_classes": 4, "class_dropout_prob": 0.1, "out_channels": 6}
    assert json.loads((output / "scheduler" / "scheduler_config.json").read_text())["timestep_respacing"] == "10"
    before = load_file(tmp_path / "base" / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(output / "weights" / "model" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(before[key], after[key]) for key in before)
    assert "bf16" in (output / "README.md").read_text()


# -- a kill at any moment -------------------------------------------------------------------------------------------------


def test_run_killed_while_checkpointing_resumes_with_identical_state(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from guided_diffusers.training import checkpointing

    data = _image_folder(tmp_path / "data", 10, (12, 10))
    argv = [
        "--train_data_dir", str(data), "--resolution", "8", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
        *TINY_UNET, "--channel_mult", "1,2", "--attention_resolutions", "4", "--learn_sigma", "True", "--dropout", "0.1",
        "--schedule_sampler", "loss-second-moment", "--lr_scheduler", "linear", "--random_crop", "--random_flip",
        "--ema_rate", "0.9", "--max_train_steps", "4", "--checkpointing_steps", "2",
    ]
    _train_here("diffusion", [*argv, "--output_dir", str(tmp_path / "straight")])

    real_fsync = checkpointing._fsync_tree
    saves = []

    def killed_on_second_save(folder):
        saves.append(folder)
        if len(saves) == 2:  # step 4's checkpoint is written but not yet renamed
            raise KeyboardInterrupt
        real_fsync(folder)

    monkeypatch.setattr(checkpointing, "_fsync_tree", killed_on_second_save)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _train_here("diffusion", [*argv, "--output_dir", str(killed)])
    monkeypatch.setattr(checkpointing, "_fsync_tree", real_fsync)
    assert [p.name for p in killed.glob("checkpoint-*")] == ["checkpoint-2"]
    assert (killed / ".checkpoint-4.partial").is_dir() and not (killed / "model_index.json").exists()

    _train_here("diffusion", [*argv, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"])
    assert not (killed / ".checkpoint-4.partial").exists()
    for part in ("unet/diffusion_pytorch_model.safetensors", "weights/model/diffusion_pytorch_model.safetensors"):
        straight, resumed = load_file(tmp_path / "straight" / part), load_file(killed / part)
        assert all(torch.equal(straight[key], resumed[key]) for key in straight), part
    # The raw weights are the last checkpoint's model; the published ones are the EMA average, not the same.
    raw = load_file(killed / "weights/model/diffusion_pytorch_model.safetensors")
    checkpointed = load_file(killed / "checkpoint-4" / "model.safetensors")
    published = load_file(killed / "unet/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(raw[key], checkpointed[key]) for key in raw)
    assert any(not torch.equal(raw[key], published[key]) for key in raw)
    # The killed run had logged steps 1-4; the resumed run dropped 3-4 and logged them again, as the uninterrupted run.
    straight_log, killed_log = _metrics(tmp_path / "straight"), _metrics(killed)
    assert [m["step"] for m in killed_log] == [1, 2, 3, 4]
    for expected, got in zip(straight_log, killed_log):
        assert {k: v for k, v in expected.items() if k != "samples_per_second"} == {k: v for k, v in got.items() if k != "samples_per_second"}

    with pytest.raises(SystemExit, match="expected an --output_dir without checkpoints for a new run, got checkpoint-4"):
        _train_here("diffusion", [*argv, "--output_dir", str(killed)])


# -- bad data ---------------------------------------------------------------------------------------------------------------


def _bad_data(tmp_path, case):
    folder = tmp_path / "data"
    folder.mkdir()
    if case == "unreadable":
        _image_folder(folder, 4, (8, 8))
        (folder / "cat_broken.png").write_bytes(b"\x89PNG truncated")
        return ["--train_data_dir", str(folder)]
    if case == "no label column":
        import datasets

        rows = {"image": [Image.new("RGB", (8, 8)) for _ in range(4)]}
        datasets.Dataset.from_dict(rows, features=datasets.Features({"image": datasets.Image()})).save_to_disk(tmp_path / "saved")
        return ["--dataset_name", str(tmp_path / "saved"), "--class_cond", "True"]
    if case == "resolution":
        _image_folder(folder, 4, (8, 8))
        return ["--train_data_dir", str(folder), "--resolution", "7"]
    return ["--train_data_dir", str(folder)]  # empty


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "error: expected image files (jpg, jpeg, png, gif, webp) under"),
        ("unreadable", "error: expected readable training images, got 1 unreadable: "),
        ("no label column", "error: expected a label column 'label' (--label_column) for class-conditional training"),
        ("resolution", "error: expected --resolution divisible by 2 (2 levels, each but the last halving it), got 7"),
    ],
)
def test_bad_data_is_refused_before_training(tmp_path, case, message, monkeypatch):
    argv = [*_bad_data(tmp_path, case), "--output_dir", str(tmp_path / "out"), "--max_train_steps", "2",
            "--train_batch_size", "2", *TINY_UNET, "--channel_mult", "1,2", "--attention_resolutions", "4"]
    forwards = count_forwards(monkeypatch)
    with pytest.raises(SystemExit) as raised:
        _train_here("diffusion", argv)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)
    assert forwards == []  # refused before the model ran once
    assert not (tmp_path / "out" / "checkpoint-2").exists()


# -- learning ---------------------------------------------------------------------------------------------------------------


def test_loss_falls_on_a_trivially_learnable_dataset(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = tmp_path / "digits"
    folder.mkdir()
    for k, (pixels, label) in enumerate(zip(digits.images[:128], digits.target[:128])):
        gray = (pixels / 16 * 255).astype(np.uint8)
        Image.fromarray(np.stack([gray] * 3, axis=-1)).save(folder / f"{label}_{k:04d}.png")
    output = tmp_path / "out"
    _train_here("diffusion", [
        "--train_data_dir", str(folder), "--output_dir", str(output), "--resolution", "8", "--train_batch_size", "16",
        *TINY_UNET, "--channel_mult", "1,2", "--attention_resolutions", "4", "--learning_rate", "2e-3",
        "--max_train_steps", "20", "--checkpointing_steps", "1000", "--use_ema", "False",
    ])
    losses = [m["loss"] for m in _metrics(output)]
    first, last = np.mean(losses[:8]), np.mean(losses[-8:])  # steps 1-8 against 13-20 (about 0.4 here)
    assert last < 0.6 * first, (first, last)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_matches_the_uninterrupted_run(tmp_path):
    import signal
    import time

    from safetensors.torch import load_file

    data = _image_folder(tmp_path / "data", 10, (12, 10))
    argv = ["--train_data_dir", str(data), "--resolution", "8", "--train_batch_size", "2", *TINY_UNET, "--channel_mult", "1,2",
            "--attention_resolutions", "4", "--learn_sigma", "True", "--schedule_sampler", "loss-second-moment",
            "--max_train_steps", "30", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--report_to", "none"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    script = str(ROOT / "scripts" / "train_diffusion.py")
    subprocess.run([sys.executable, script, *argv, "--output_dir", str(tmp_path / "straight")], env=env, check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, script, *argv, "--output_dir", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoint-5").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    time.sleep(float(np.random.default_rng().uniform(0, 0.5)))  # somewhere in a step or a save
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model_index.json").exists(), "the run finished before it was killed"
    subprocess.run([sys.executable, script, *argv, "--output_dir", str(killed), "--resume_from_checkpoint", "latest"],
                   env=env, check=True, capture_output=True)
    straight = load_file(tmp_path / "straight" / "unet" / "diffusion_pytorch_model.safetensors")
    resumed = load_file(killed / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
