"""Validation while training: the grids and quality scalars reach TensorBoard and the output folder, --keep_best
publishes the weights of the best logged score, early stopping stops, validation leaves the training unchanged, the
held-out bits/dim is the whole bound when every step is evaluated, the pixel space is the quick start judge's, the FID
Inception path works with a weights file, and a two-process run with validation finishes (slow)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_training_inputs import SMALL
from test_training_scripts import LAUNCHED_RUN_TIMEOUT, ROOT, TINY_UNET, _image_folder, _metrics, _train_here

from guided_diffusers.training.validation import (
    BestScore,
    bpd_timesteps,
    estimate_bits_per_dim,
    pixel_features,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine

# Validation in one batch per process, the bits/dim from 3 timesteps: cheap enough to run at every step.
VALIDATION = ["--validation_samples", "8", "--validation_batch_size", "32", "--validation_bpd_timesteps", "3", "--validation_split", "0.25"]
CONDITIONAL = ["--class_cond", "True", "--learning_rate", "3e-2", "--ema_rate", "0.5", "--seed", "1"]


def _run(tmp_path: Path, name: str, extra: list[str], steps: int = 4, task: str = "diffusion", data: Path | None = None) -> Path:
    if data is None:  # written once: a resumed run sees the same files (the reference cache's key)
        data = tmp_path / "data" if (tmp_path / "data").is_dir() else _image_folder(tmp_path / "data", 12, (8, 8))
    output = tmp_path / name
    _train_here(task, ["--train_data_dir", str(data), "--max_train_steps", str(steps), "--output_dir", str(output), *extra])
    return output


@pytest.fixture(scope="module")
def validated_run(tmp_path_factory):
    """A class-conditional run validated and checkpointed at every step, logging to TensorBoard, keeping the best."""
    tmp_path = tmp_path_factory.mktemp("validated")
    return _run(tmp_path, "out", [*SMALL, *CONDITIONAL, *VALIDATION, "--validation_steps", "1", "--checkpointing_steps", "1",
                                  "--report_to", "tensorboard", "--keep_best"])


def _events(output: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_files = list((output / "logs" / "diffusion").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    events = EventAccumulator(str(event_files[0].parent), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events


def test_tensorboard_holds_the_grids_and_quality_scalars_the_log_has(validated_run):
    events = _events(validated_run)
    logged = {key: [(m["step"], m[key]) for m in _metrics(validated_run) if key in m] for key in ("val_frechet_distance", "val_bpd")}
    for key, expected in logged.items():
        assert [step for step, _ in expected] == [1, 2, 3, 4]
        found = [(event.step, event.value) for event in events.Scalars(key)]
        assert [step for step, _ in found] == [1, 2, 3, 4]
        np.testing.assert_allclose([value for _, value in found], [value for _, value in expected], rtol=1e-6)
    images = events.Images("validation/samples")
    assert [image.step for image in images] == [1, 2, 3, 4]
    for image in images:  # the event's picture is the PNG in the output folder: 3 class rows of 8 images of 8x8, x4
        png = np.asarray(Image.open(validated_run / "validation" / f"step-{image.step:07d}.png"))
        assert (image.height, image.width) == png.shape[:2] == ((3 * 9 + 1) * 4, (8 * 9 + 1) * 4)
        decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(decoded, png)


def test_the_grid_has_one_row_per_class_and_is_the_same_noise_each_time(validated_run):
    first, last = (np.asarray(Image.open(validated_run / "validation" / f"step-{step:07d}.png")).astype(int) for step in (1, 4))
    assert not np.array_equal(first, last)  # the weights changed
    # The same noise at every evaluation: early and late grids are far closer than two different grids would be.
    rows = [first[4 + r * 36 : 4 + r * 36 + 32] for r in range(3)]
    assert np.abs(first - last).mean() < np.mean([np.abs(rows[0] - rows[1]).mean(), np.abs(rows[1] - rows[2]).mean()])


def test_keep_best_publishes_the_ema_weights_of_the_best_logged_score(validated_run):
    from guided_diffusers import ADMUNet2DModel

    scores = [(m["step"], m["val_frechet_distance"]) for m in _metrics(validated_run)]
    best_step = min(scores, key=lambda pair: pair[1])[0]
    assert best_step != scores[-1][0]  # else this run could not tell the best from the last
    published = ADMUNet2DModel.from_pretrained(validated_run / "unet")
    names = [name for name, _ in published.named_parameters()]
    for step in {best_step, scores[-1][0]}:
        ema = load_file(validated_run / f"checkpoint-{step}" / "trainer_state.safetensors")
        equal = all(torch.equal(dict(published.named_parameters())[name], ema[f"ema.averages.0.{i}"]) for i, name in enumerate(names))
        assert equal == (step == best_step), step
    # The last step's weights are kept beside, and the card says which step was published.
    last = ADMUNet2DModel.from_pretrained(validated_run / "weights" / "ema_0.5")
    ema = load_file(validated_run / f"checkpoint-{scores[-1][0]}" / "trainer_state.safetensors")
    assert all(torch.equal(dict(last.named_parameters())[name], ema[f"ema.averages.0.{i}"]) for i, name in enumerate(names))
    assert json.loads((validated_run / "checkpoint-best" / "best.json").read_text())["step"] == best_step
    assert f"step {best_step}'s (--keep_best)" in (validated_run / "README.md").read_text()


def test_validation_leaves_the_training_as_without_it(validated_run, tmp_path):
    plain = _run(tmp_path, "plain", [*SMALL, *CONDITIONAL, "--validation_split", "0.25", "--checkpointing_steps", "4"])
    assert [m["loss"] for m in _metrics(plain)] == [m["loss"] for m in _metrics(validated_run)]
    raw, raw_plain = (load_file(folder / "weights" / "model" / "diffusion_pytorch_model.safetensors") for folder in (validated_run, plain))
    assert all(torch.equal(raw[key], raw_plain[key]) for key in raw)


def test_early_stopping_stops_after_the_patience_and_a_resume_stays_stopped_reading_the_cached_reference(tmp_path, capsys, caplog):
    argv = [*SMALL, *CONDITIONAL, *VALIDATION, "--validation_steps", "1", "--early_stopping_patience", "1", "--checkpointing_steps", "100"]
    output = _run(tmp_path, "out", argv, steps=12)
    assert " left, " in capsys.readouterr().err  # the progress bar shows the time left
    scores = [m["val_frechet_distance"] for m in _metrics(output)]
    first_worse = next(k for k in range(1, len(scores)) if scores[k] >= min(scores[:k]))
    assert len(scores) == first_worse + 1 < 12  # stopped at the first evaluation without improvement
    assert "no better val_frechet_distance than step" in (output / "README.md").read_text()
    caplog.set_level(logging.INFO, logger="guided_diffusers")
    _run(tmp_path, "out", [*argv, "--resume_from_checkpoint", "latest"], steps=12)
    assert len(_metrics(output)) == len(scores)  # nothing trained after the stop
    assert any("reference statistics of 3 images read from" in record.getMessage() for record in caplog.records)


def test_classifier_keeps_the_weights_of_its_best_noisiest_quartile_accuracy(tmp_path):
    from guided_diffusers import ADMClassifier

    data = _image_folder(tmp_path / "data", 24, (8, 8))
    output = _run(tmp_path, "out", [
        "--resolution", "8", "--classifier_width", "32", "--classifier_depth", "1", "--classifier_attention_resolutions", "4",
        "--classifier_channel_mult", "1,2",
        "--train_batch_size", "4", "--diffusion_steps", "100", "--learning_rate", "3e-3", "--validation_split", "0.5", "--seed", "2",
        "--evaluation_steps", "1", "--keep_best", "--checkpointing_steps", "1"], steps=5, task="classifier", data=data)
    scores = [(m["step"], m["eval_acc@1_q3"]) for m in _metrics(output)]
    assert [step for step, _ in scores] == [1, 2, 3, 4, 5]
    best_step = max(scores, key=lambda pair: pair[1])[0]  # the first of equal bests
    assert best_step != 5
    published = ADMClassifier.from_pretrained(output).state_dict()
    for step in (best_step, 5):
        saved = load_file(output / f"checkpoint-{step}" / "model.safetensors")
        assert all(torch.equal(published[key], saved[key]) for key in saved) == (step == best_step)


@pytest.mark.slow  # a 64x64 upsampler / the Inception network on the CPU: about 15 s each
def test_an_upsampler_grid_shows_the_low_res_input_beside_its_output_and_the_original(tmp_path):
    data = _image_folder(tmp_path / "data", 8, (64, 64))
    output = _run(tmp_path, "out", ["--large_size", "64", "--small_size", "16", "--train_batch_size", "2", *TINY_UNET,
                                    "--attention_resolutions", "8", "--validation_steps", "1", "--validation_samples", "2",
                                    "--validation_batch_size", "8"], steps=1, task="super_res", data=data)
    assert np.isfinite(_metrics(output)[-1]["val_frechet_distance"])
    grid = np.asarray(Image.open(output / "validation" / "step-0000001.png")).astype(int)
    assert grid.shape[:2] == (8 * 65 + 1, 3 * 65 + 1)  # 8 rows: low-res input, output, original
    image = lambda row, column: grid[1 + row * 65 : 1 + row * 65 + 64, 1 + column * 65 : 1 + column * 65 + 64]
    from guided_diffusers.data import TrainingImageDataset, images_from_folder

    reference = TrainingImageDataset(images_from_folder(data), 64)
    for row in range(8):
        original = np.round((reference[row]["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5)
        np.testing.assert_allclose(image(row, 2), original, atol=1)
        low_res = original.reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
        np.testing.assert_allclose(image(row, 0), np.repeat(np.repeat(low_res, 4, 0), 4, 1), atol=1)


@pytest.mark.slow  # a 64x64 upsampler / the Inception network on the CPU: about 15 s each
def test_the_distance_in_the_fid_inception_space_of_a_weights_file(tmp_path):
    from safetensors.torch import save_file

    from guided_diffusers.evaluation import random_fid_inception

    weights = tmp_path / "inception.safetensors"
    state = {key: value for key, value in random_fid_inception(seed=0).state_dict().items() if not key.endswith("num_batches_tracked")}
    save_file(state, str(weights))
    output = _run(tmp_path, "out", [*SMALL, "--validation_steps", "1", "--validation_samples", "2", "--validation_batch_size", "8",
                                    "--validation_split", "0.25", "--inception_weights", str(weights), "--use_ema", "False"], steps=1)
    assert np.isfinite(_metrics(output)[-1]["val_frechet_distance"])
    with np.load(output / "logs" / "validation_reference.npz") as cache:  # 3 held-out images in the 2048 pool features
        assert cache["mu"].shape == (2048,) and cache["factor"].shape == (3, 2048)
        assert json.loads(str(cache["key"]))["features"].startswith("inception:")


@pytest.mark.parametrize("task, argv, message", [
    ("diffusion", ["--keep_best"], "expected --validation_steps and --validation_samples > 0 or held-out images (--validation_split or "
     "--validation_data_dir) for --keep_best, got no --validation_steps"),
    ("diffusion", ["--validation_steps", "2", "--validation_samples", "0", "--early_stopping_patience", "2"],
     "expected --validation_steps and --validation_samples > 0 or held-out images (--validation_split or --validation_data_dir) "
     "for --early_stopping_patience, got nothing to score"),
    ("diffusion", ["--validation_steps", "2", "--inception_weights", "nowhere.safetensors"],
     "expected the FID Inception weights file at --inception_weights 'nowhere.safetensors', got no such file"),
    ("diffusion", ["--validation_bpd_timesteps", "1"], "expected --validation_bpd_timesteps >= 2, got 1"),
    ("classifier", ["--keep_best", "--early_stopping_patience", "3"], "expected --evaluation_steps and held-out images (--validation_split "
     "or --validation_data_dir) for --keep_best and --early_stopping_patience, got no --evaluation_steps"),
    ("classifier", ["--evaluation_steps", "5", "--validation_split", "0", "--keep_best"], "expected --evaluation_steps and held-out "
     "images (--validation_split or --validation_data_dir) for --keep_best, got nothing to score"),
])
def test_validation_flags_that_cannot_work_are_refused_in_one_line(task, argv, message):
    from guided_diffusers.training.args import build_parser, check_arguments

    args = build_parser(task).parse_args(["--train_data_dir", "x", "--max_train_steps", "2", *argv])
    with pytest.raises(ValueError) as raised:
        check_arguments(args, task)
    assert str(raised.value) == message


@pytest.mark.parametrize("kind, use_ema, steps, message", [
    ("diffusion", True, 5, "for --use_ema and --validation_steps .*; pass --use_ema False and leave out --validation_steps$"),
    ("diffusion", False, 5, "for --validation_steps .*; leave out --validation_steps$"),
    ("classifier", False, 5, "for --evaluation_steps .*; leave out --evaluation_steps$"),
    ("diffusion", False, None, None),
])
def test_sharded_parameters_are_refused_naming_the_flags_that_need_whole_ones(kind, use_ema, steps, message):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from guided_diffusers.training.trainer import Trainer

    task = SimpleNamespace(kind=kind, validation_steps=steps)
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP)
    trainer = Trainer(SimpleNamespace(use_ema=use_ema), task)
    if message is None:
        trainer._check_distributed_support(accelerator)  # nothing needs whole parameters
        return
    with pytest.raises(ValueError, match="^expected whole parameters on every process " + message):
        trainer._check_distributed_support(accelerator)


# -- the pieces -------------------------------------------------------------------------------------------------------------


def test_every_timestep_gives_the_whole_bound_of_calc_bpd_loop():
    from guided_diffusers import ADMUNet2DModel, GuidedDDPMScheduler
    from guided_diffusers.evaluation import calc_bpd_loop

    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                          out_channels=6, num_classes=3).eval()
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range", beta_schedule="squaredcos_cap_v2")
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    kwargs = {"class_labels": torch.tensor([0, 1, 2])}
    steps, weights = bpd_timesteps(20, 20)
    estimate = estimate_bits_per_dim(scheduler, unet, images, steps, weights, torch.Generator().manual_seed(5), kwargs)
    whole = calc_bpd_loop(scheduler, unet, images, model_kwargs=kwargs, generator=torch.Generator().manual_seed(5))["total_bpd"]
    torch.testing.assert_close(estimate, whole, rtol=1e-6, atol=0)


def test_the_grid_asks_one_class_per_row_spread_over_the_ids_with_each_images_own_seed():
    """What ``_grid`` asks the pipeline for, with a stand-in pipeline: 40 classes show 16 rows of 8 (0 to 39, evenly
    spread), each row one class, image k seeded by the grid's stream and k alone, the same at every evaluation."""
    from types import SimpleNamespace

    from guided_diffusers.training.validation import GRID_COLUMNS, GRID_MAX_CLASSES, DiffusionValidation, sample_seed

    calls = []

    def pipeline(class_labels, generator, output_type, **_):
        calls.append((list(class_labels), [g.initial_seed() for g in generator]))
        return SimpleNamespace(images=np.zeros((len(generator), 8, 8, 1), np.float32))

    validation = DiffusionValidation(None, 8, 1, 40, None, None, [], None, None, None, 0, 50, 2, 3, Path("unused"))
    accelerator = SimpleNamespace(process_index=0, num_processes=1, is_main_process=True, device=torch.device("cpu"))
    images, rows = validation._grid(accelerator, pipeline, {})
    assert rows == GRID_MAX_CLASSES and images.shape == (GRID_MAX_CLASSES * GRID_COLUMNS, 8, 8, 1)
    labels = [label for call_labels, _ in calls for label in call_labels]
    per_row = [labels[r * GRID_COLUMNS : (r + 1) * GRID_COLUMNS] for r in range(rows)]
    assert all(len(set(row)) == 1 for row in per_row)
    shown = [row[0] for row in per_row]
    assert shown[0] == 0 and shown[-1] == 39 and shown == sorted(set(shown)) and max(np.diff(shown)) - min(np.diff(shown)) <= 1
    seeds = [seed for _, call_seeds in calls for seed in call_seeds]
    assert seeds == [sample_seed(3, 0, k) for k in range(len(labels))] and len(set(seeds)) == len(seeds)
    first = list(calls)
    calls.clear()
    validation._grid(accelerator, pipeline, {})
    assert calls == first


def test_samples_shared_out_over_two_processes_gather_to_the_one_process_samples(monkeypatch):
    """Process p of P draws samples p, p + P, ... with their own seeds; the main process gathers them in index order: the
    same samples, labels and order as one process draws (a stand-in pipeline returns each image's seed and label)."""
    from types import SimpleNamespace

    import accelerate.utils

    from guided_diffusers.training.validation import DiffusionValidation, _gather_in_order, _mine

    def pipeline(class_labels, generator, output_type, **_):
        return SimpleNamespace(images=np.stack([np.full((8, 8, 1), [g.initial_seed() % 997 + 1000 * label])
                                                for g, label in zip(generator, class_labels)]).astype(np.float64))

    validation = DiffusionValidation(None, 8, 1, 3, None, None, [], None, None, None, 11, 4, 2, 7, Path("unused"))

    def draw(process_index, num_processes):
        accelerator = SimpleNamespace(process_index=process_index, num_processes=num_processes, is_main_process=process_index == 0,
                                      device=torch.device("cpu"))
        mine = _mine(accelerator, 11)
        return accelerator, mine, validation._sample(pipeline, {}, 1, mine, [k % 3 for k in mine], accelerator.device)

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda pairs: pairs)
    single = _gather_in_order(*draw(0, 1))
    (main, mine0, samples0), (_, mine1, samples1) = draw(0, 2), draw(1, 2)
    assert mine0 == [0, 2, 4, 6, 8, 10] and mine1 == [1, 3, 5, 7, 9]
    others = [(k, row) for k, row in zip(mine1, samples1)]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda pairs: pairs + others)  # process 0's, then process 1's
    shared = _gather_in_order(main, mine0, samples0)
    assert single.shape == (11, 8, 8, 1) and len(np.unique(single[:, 0, 0, 0])) == 11
    np.testing.assert_array_equal(shared, single)


@pytest.mark.parametrize("evaluations", [2, 5, 50, 999, 1000, 5000])
def test_bpd_strata_cover_every_step_once(evaluations):
    steps, weights = bpd_timesteps(1000, evaluations)
    assert len(steps) == min(evaluations, 1000) and steps[-1] == 0 and weights[-1] == 1
    assert sum(weights) == 1000 and steps == sorted(set(steps), reverse=True)


def test_the_pixel_space_of_grey_8x8_images_is_the_quick_start_judges():
    from guided_diffusers.demo.digits import to_judge_space

    images = np.random.default_rng(0).random((5, 16, 16, 1))
    np.testing.assert_allclose(pixel_features(images), to_judge_space(images), rtol=1e-12)
    assert pixel_features(np.random.default_rng(0).random((2, 32, 32, 3))).shape == (2, 192)


def test_best_score_counts_evaluations_since_the_best_and_replays_a_log(tmp_path):
    best = BestScore("val_bpd", higher_is_better=False, patience=2)
    assert [best.update(step, value) for step, value in [(1, 5.0), (2, 4.0), (3, 4.0), (4, 4.5)]] == [True, True, False, False]
    assert (best.best_step, best.since_best, best.should_stop) == (2, 2, True)
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(entry) + "\n" for entry in [{"step": 1, "val_bpd": 5.0}, {"step": 2, "loss": 1.0},
                                                                     {"step": 3, "val_bpd": 3.0}, {"step": 6, "val_bpd": 1.0}]))
    replayed = BestScore("val_bpd", higher_is_better=False, patience=2)
    replayed.replay(log, up_to_step=5)
    assert (replayed.best, replayed.best_step, replayed.evaluations, replayed.since_best) == (3.0, 3, 2, 0)
    unscorable = BestScore("val_bpd", higher_is_better=False)  # a NaN never becomes the best, even first
    assert [unscorable.update(1, float("nan")), unscorable.update(2, 7.0)] == [False, True] and unscorable.best_step == 2


def test_the_kept_weights_load_only_as_the_logs_best(tmp_path):
    from guided_diffusers import ADMUNet2DModel
    from guided_diffusers.training.validation import load_best_weights, save_best_weights

    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,))
    save_best_weights(unet, tmp_path, step=3, metric="val_bpd", score=2.5)
    best = BestScore("val_bpd", higher_is_better=False)
    best.update(3, 2.5)
    state = load_best_weights(tmp_path, best)
    assert json.loads((tmp_path / "checkpoint-best" / "best.json").read_text()) == {"step": 3, "metric": "val_bpd", "score": 2.5}
    assert state.keys() == unet.state_dict().keys() and all(torch.equal(state[k], v) for k, v in unet.state_dict().items())
    best.update(5, 1.0)  # a later best than the kept weights (a resume from before it that ended sooner)
    with pytest.raises(ValueError, match=r"^expected the weights of step 5 \(the lowest val_bpd logged\) in .* for --keep_best, got step 3$"):
        load_best_weights(tmp_path, best)


@pytest.mark.slow
def test_two_processes_validate_sharded_and_finish(tmp_path):
    from launch import accelerate_cpu_launcher, run_with_watchdog

    data = _image_folder(tmp_path / "data", 16, (8, 8))
    output = tmp_path / "out"
    launcher, env = accelerate_cpu_launcher(2)
    command = [*launcher, str(ROOT / "scripts" / "train_diffusion.py"), "--train_data_dir", str(data), *SMALL, *CONDITIONAL,
               *VALIDATION, "--validation_samples", "9", "--validation_steps", "2", "--keep_best", "--early_stopping_patience", "3",
               "--max_train_steps", "4", "--checkpointing_steps", "2", "--output_dir", str(output), "--report_to", "none"]
    result = run_with_watchdog(command, cwd=ROOT, env=env, timeout=LAUNCHED_RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-4000:]
    validated = [m for m in _metrics(output) if "val_frechet_distance" in m]
    assert [m["step"] for m in validated] == [2, 4] and all(np.isfinite(m["val_bpd"]) for m in validated)
    assert sorted(p.name for p in (output / "validation").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    best = json.loads((output / "checkpoint-best" / "best.json").read_text())
    assert best["score"] == min(m["val_frechet_distance"] for m in validated)
