"""The quick start's pieces (digits data, judge, report line) and a tiny end-to-end run of it."""

import re

import numpy as np
import pytest
from PIL import Image

from guided_diffusers.demo.digits import DigitsJudge, load_digits_images, mean_pairwise_distance, save_grid, to_judge_space, write_digits_folder
from guided_diffusers.demo.quickstart import QuickstartSettings, Row, report, run_quickstart

QUICKSTART_LINE = re.compile(r"^quickstart: class accuracy unguided \d+%, best guided \d+% at classifier scale [0-9.]+$")


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


def test_report_ends_with_the_quickstart_line(tmp_path):
    rows = [Row("unguided", 0.0, None, 0.11, 0.4, 1.0), Row("classifier", 1.0, None, 0.6, 0.3, 1.0),
            Row("classifier", 4.0, None, 0.93, 0.2, 1.0), Row("classifier-free", 0.0, 2.0, 0.9, 0.2, 1.0)]
    text = report(rows, DigitsJudge(model=None, held_out_accuracy=0.98), QuickstartSettings(output_dir=tmp_path))
    assert text.splitlines()[-1] == "quickstart: class accuracy unguided 11%, best guided 93% at classifier scale 4"
    assert (tmp_path / "results.json").is_file()


def test_tiny_quickstart_end_to_end(tmp_path):
    """The whole job with the real training scripts, at a size that runs in seconds (the numbers are not the point)."""
    settings = QuickstartSettings(output_dir=tmp_path / "demo", diffusion_train_steps=4, classifier_train_steps=4,
                                  samples_per_class=2, sampling="3", classifier_scales=(0.0, 2.0), guidance_scales=(2.0,),
                                  extra_env={"OMP_NUM_THREADS": "1"})
    text = run_quickstart(settings)
    assert QUICKSTART_LINE.match(text.splitlines()[-1]), text
    assert (settings.pipeline_dir / "model_index.json").is_file() and (settings.pipeline_dir / "classifier").is_dir()
    assert {p.name for p in (settings.output_dir / "grids").glob("*.png")} == {"unguided_cs0.png", "classifier_cs0.png", "classifier_cs2.png", "classifier-free_cs0_w2.png"}
    again = run_quickstart(settings)  # reuses the trained pipeline
    assert again.splitlines()[-1] == text.splitlines()[-1]
