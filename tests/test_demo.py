"""The quick start's pieces (digits data, judge, report line) and a tiny end-to-end run of it."""

import numpy as np
import pytest
from PIL import Image

from guided_diffusers.demo.digits import (
    DigitsJudge,
    DigitsReference,
    channel_spread,
    class_balance,
    load_digits_images,
    mean_pairwise_distance,
    save_grid,
    to_judge_space,
    write_digits_folder,
)
from guided_diffusers.demo.quickstart import QuickstartSettings, Row, report, run_quickstart, training_curve

QUICKSTART_KEYS = {
    "accuracy_classifier", "accuracy_free", "distance_unguided", "distance_classifier", "distance_free", "distance_floor",
    "colour_spread", "class_share_unguided", "fast", "fast_accuracy_classifier", "fast_accuracy_free",
    "fast_distance_classifier", "fast_speedup", "classifier_scale", "guidance_scale",
}


def quickstart_fields(line: str) -> dict[str, str]:
    """The quickstart line's key=value pairs (what checks read)."""
    assert line.startswith("quickstart: "), line
    return dict(pair.split("=", 1) for pair in line.removeprefix("quickstart: ").split())


def test_digits_folder_is_labelled_the_originals_way(tmp_path):
    folder = write_digits_folder(tmp_path / "digits", resolution=16)
    files = sorted(folder.glob("*.png"))
    assert len(files) == 1797
    assert {f.name.split("_")[0] for f in files} == {str(d) for d in range(10)}
    assert Image.open(files[0]).size == (16, 16)


def test_judge_reads_real_digits_back_from_16px():
    judge = DigitsJudge.fit()
    assert judge.held_out_accuracy > 0.95
    images, labels = load_digits_images(16)
    predictions = judge.predict(images[:300].astype(np.float32) / 255.0)
    assert (predictions == labels[:300]).mean() > 0.9  # upscaled and brought back to 8x8, still readable
    assert to_judge_space(np.zeros((2, 16, 16, 3))).shape == (2, 64)
    with pytest.raises(ValueError, match="expected images whose size is a multiple of 8"):
        to_judge_space(np.zeros((1, 12, 12, 3)))


def test_diversity_and_grid(tmp_path):
    same = np.zeros((4, 16, 16, 3))
    assert mean_pairwise_distance(same) == 0.0
    assert mean_pairwise_distance(np.random.default_rng(0).random((4, 16, 16, 3))) > 0.5
    path = save_grid(np.random.default_rng(0).random((6, 16, 16, 3)), rows=2, path=tmp_path / "g.png")
    assert Image.open(path).size == (2 * (3 * 17 + 1), 2 * (2 * 17 + 1))


def test_quality_measures_on_real_and_made_up_images():
    grey = np.repeat(np.random.default_rng(0).random((3, 8, 8, 1)), 3, axis=-1)
    assert channel_spread(grey) == 0.0 and channel_spread(grey[..., :1]) == 0.0
    tinted = grey.copy()
    tinted[..., 0] = np.clip(tinted[..., 0] + 0.1, 0, 1)
    assert 0 < channel_spread(tinted) <= 0.1 + 1e-9
    np.testing.assert_allclose(class_balance(np.array([0, 0, 1, 9])), [0.5, 0.25] + [0.0] * 7 + [0.25])
    reference = DigitsReference.load()
    assert reference.floor(1000) < reference.floor(200)  # the finite-sample bias shrinks with more samples
    real, labels = load_digits_images(8)
    pick = np.random.default_rng(1).choice(len(real), 200, replace=False)  # the file's order is not random
    real_grey = real[pick, :, :, :1].astype(np.float64) / 255.0
    noise = np.random.default_rng(0).random((200, 8, 8, 1))
    assert reference.distance(real_grey) < 2 * reference.floor(200) < reference.distance(noise)
    with pytest.raises(ValueError, match="expected between 2 and 1797 samples for the floor, got 1"):
        reference.floor(1)


def _row(sampler, mode, cs, w, accuracy, distance, seconds=1.0):
    return Row(sampler, mode, cs, w, accuracy, distance, 0.0, 0.08, 0.12, 0.3, seconds)


def test_report_ends_with_the_quickstart_line(tmp_path):
    rows = [_row("ddpm:50", "unguided", 0.0, None, None, 60.0), _row("ddpm:50", "classifier", 2.0, None, 0.95, 55.0, 4.0),
            _row("ddpm:50", "classifier-free", 0.0, 2.0, 0.97, 58.0), _row("ddpm:25", "unguided", 0.0, None, None, 62.0),
            _row("ddpm:25", "classifier", 2.0, None, 0.94, 56.0, 2.0), _row("ddpm:25", "classifier-free", 0.0, 2.0, 0.96, 59.0)]
    settings = QuickstartSettings(output_dir=tmp_path, fast="ddpm:25")
    text = report(rows, DigitsJudge(model=None, held_out_accuracy=0.98), 35.0, {"diffusion training": 100.0}, settings)
    fields = quickstart_fields(text.splitlines()[-1])
    assert QUICKSTART_KEYS <= set(fields)
    assert fields["accuracy_classifier"] == "0.950" and fields["distance_unguided"] == "60.0" and fields["distance_floor"] == "35.0"
    assert fields["class_share_unguided"] == "0.080-0.120" and fields["fast"] == "ddpm:25" and fields["fast_speedup"] == "2.0x"
    assert fields["seconds_diffusion_training"] == "100"
    assert (tmp_path / "results.json").is_file()


def test_the_training_curve_is_plotted_reported_before_the_quickstart_line_and_kept_in_results_json(tmp_path):
    import json

    rows = [_row("ddpm:50", "unguided", 0.0, None, None, 60.0), _row("ddpm:50", "classifier", 2.0, None, 0.95, 55.0, 4.0),
            _row("ddpm:50", "classifier-free", 0.0, 2.0, 0.97, 58.0), _row("ddpm:25", "classifier", 2.0, None, 0.94, 56.0, 2.0),
            _row("ddpm:25", "classifier-free", 0.0, 2.0, 0.96, 59.0)]
    settings = QuickstartSettings(output_dir=tmp_path, fast="ddpm:25")
    assert training_curve(settings, 35.0) is None  # no training log: no curve
    log = tmp_path / "diffusion" / "logs" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    entries = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4, "val_frechet_distance": 90.0, "val_seconds": 3.0},
               {"step": 3, "loss": 0.3}, {"step": 4, "loss": 0.2, "val_frechet_distance": 70.0, "val_seconds": 5.0}]
    log.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    curve = training_curve(settings, 35.0)
    assert (curve.steps, curve.distances, curve.validation_seconds) == ([2, 4], [90.0, 70.0], 8.0)
    np.testing.assert_allclose(curve.smoothed_losses(window=2), [0.5, 0.45, 0.35, 0.25])
    assert Image.open(tmp_path / "training_curve.png").size == (720, 540)  # two panels
    lines = report(rows, DigitsJudge(model=None, held_out_accuracy=0.98), 35.0, {"diffusion training": 108.0}, settings, curve).splitlines()
    assert lines[-1].startswith("quickstart: ") and lines[-2] == "" and lines[-6].startswith("times: ")
    assert lines[-5].endswith("by step: 2 90.0, 4 70.0") and lines[-4] == "best 70.0 at step 4 (floor 35.0)"
    assert lines[-3].startswith("validation: 2 evaluations, 8.0 s in all (4.00 s each; 8.0% added to the diffusion training")
    assert json.loads((tmp_path / "results.json").read_text())["training_curve"] == {"steps": [2, 4], "distances": [90.0, 70.0],
                                                                                       "validation_seconds": 8.0}


@pytest.mark.slow  # two accelerate launches and a rerun
def test_tiny_quickstart_end_to_end(tmp_path):
    """The whole job with the real training scripts, at a size that runs in seconds (the numbers are not the point)."""
    settings = QuickstartSettings(output_dir=tmp_path / "demo", diffusion_train_steps=4, classifier_train_steps=4,
                                  samples_per_class=2, balance_samples=40, baseline="ddpm:3", fast="ddim:2", classifier_scales=(0.0, 2.0),
                                  guidance_scales=(2.0,), extra_env={"OMP_NUM_THREADS": "1"})
    text = run_quickstart(settings)
    fields = quickstart_fields(text.splitlines()[-1])
    assert QUICKSTART_KEYS | {"seconds_diffusion_training", "seconds_classifier_training"} <= set(fields), text
    assert fields["colour_spread"] == "0.000"  # a grey model (in_channels 1): grey samples
    assert (settings.pipeline_dir / "model_index.json").is_file() and (settings.pipeline_dir / "classifier").is_dir()
    assert {p.name for p in (settings.output_dir / "grids").glob("*.png")} == {
        "ddpm3_unguided_cs0.png", "ddpm3_classifier_cs0.png", "ddpm3_classifier_cs2.png", "ddpm3_classifier-free_cs0_w2.png",
        "ddim2_unguided_cs0.png", "ddim2_classifier_cs2.png", "ddim2_classifier-free_cs0_w2.png"}
    assert (settings.output_dir / "training_curve.png").is_file()  # one validation, at the last step
    assert "distance of the EMA weights' fast-recipe samples by step: 4 " in text
    again = run_quickstart(settings)  # reuses the trained pipeline: the same samples
    assert quickstart_fields(again.splitlines()[-1])["distance_classifier"] == fields["distance_classifier"]


@pytest.mark.slow  # three accelerate launches
def test_tiny_quickstart_with_distillation(tmp_path):
    """--distill: the student folder is written, judged at 1, 2 and 4 steps beside 250 teacher steps, unguided and
    classifier-free, with a grid per row; the quickstart line stays the last."""
    settings = QuickstartSettings(output_dir=tmp_path / "demo", diffusion_train_steps=4, classifier_train_steps=4,
                                  samples_per_class=2, balance_samples=40, baseline="ddpm:3", fast="ddim:2", classifier_scales=(0.0, 2.0),
                                  guidance_scales=(2.0,), distill=True, distill_train_steps=2, extra_env={"OMP_NUM_THREADS": "1"})
    text = run_quickstart(settings)
    assert text.splitlines()[-1].startswith("quickstart: ")
    distilled = next(line for line in text.splitlines() if line.startswith("distilled: student1_"))
    assert "student2_accuracy_free=" in distilled and "teacher_free_distance=" in distilled and "seconds_distillation=" in distilled
    assert (settings.distilled_dir / "model_index.json").is_file()
    grids = {p.name for p in (settings.output_dir / "grids").glob("student*.png")} | {p.name for p in (settings.output_dir / "grids").glob("teacher*.png")}
    assert grids == {f"student{n}_{mode}_seed0.png" for n in (1, 2, 4) for mode in ("unguided", "classifier-free_w2")} | {
        "teacher250_unguided_seed0.png", "teacher250_classifier-free_w2_seed0.png"}
