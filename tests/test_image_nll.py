"""scripts/image_nll.py: the dataset's bound equals calc_bpd_loop's, from one process or two; bad input is refused."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from PIL import Image

from launch import accelerate_cpu_launcher

from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler
from guided_diffusers.evaluation.image_data import open_evaluation_images
from guided_diffusers.evaluation.nll import evaluate_bits_per_dim
from guided_diffusers.evaluation import calc_bpd_loop

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # tiny models: one thread is fastest on a busy machine

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "image_nll.py"
NUM_IMAGES, BATCH_SIZE, SEED = 5, 2, 3
CLASS_NAMES = ("bird", "cat")  # the folder's file-name prefixes: bird -> 0, cat -> 1


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")


def _load_script():
    spec = importlib.util.spec_from_file_location("image_nll_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny class-conditional learned-sigma pipeline and five 8x8 images with class-prefixed names."""
    root = tmp_path_factory.mktemp("nll")
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_classes=10, out_channels=6)
    # cosine: the linear schedule scaled to T=20 reaches beta=1, where the bound is undefined
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, beta_schedule="cosine", variance_type="learned_range")
    ClassifierGuidedPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(root / "pipe")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (NUM_IMAGES, 8, 8, 3), dtype=np.uint8)
    labels = [0 if k < 2 else 1 for k in range(NUM_IMAGES)]  # so the sorted file names keep index order
    (root / "images").mkdir()
    for k in range(NUM_IMAGES):
        Image.fromarray(images[k]).save(root / "images" / f"{CLASS_NAMES[labels[k]]}_{k:02d}.png")
    # The same images as a save_to_disk folder, with non-default column names.
    features = Features({"img": ImageFeature(), "fine_label": ClassLabel(names=list(CLASS_NAMES))})
    rows = {"img": [Image.fromarray(a) for a in images], "fine_label": labels}
    Dataset.from_dict(rows, features=features).save_to_disk(str(root / "saved"))
    return dict(root=root, unet=unet.eval(), scheduler=scheduler, images=images, labels=labels)


def _direct_bound(setup) -> np.ndarray:
    """Each image's bound straight from calc_bpd_loop, batch b with a generator seeded SEED + b."""
    x = torch.from_numpy(setup["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    y = torch.tensor(setup["labels"])
    totals = []
    for b, start in enumerate(range(0, NUM_IMAGES, BATCH_SIZE)):
        stop = start + BATCH_SIZE
        out = calc_bpd_loop(setup["scheduler"], setup["unet"], x[start:stop], clip_denoised=True,
                            model_kwargs={"class_labels": y[start:stop]}, generator=torch.Generator().manual_seed(SEED + b))
        totals.append(out["total_bpd"].double().numpy())
    return np.concatenate(totals)


def _run_script(setup, output_dir, launcher=None, **env):
    """scripts/image_nll.py in this process (on one thread, as the launched processes run), or under ``launcher``."""
    argv = ["--pipeline", str(setup["root"] / "pipe"), "--dataset", str(setup["root"] / "images"),
            "--batch_size", str(BATCH_SIZE), "--seed", str(SEED), "--output_dir", str(output_dir)]
    if launcher is None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert _load_script().main(argv) == 0
        finally:
            torch.set_num_threads(threads)
    else:
        result = subprocess.run([*launcher, str(SCRIPT), *argv], cwd=ROOT, env={**_env(), **env}, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((output_dir / "bpd_summary.json").read_text()), np.load(output_dir / "bpd_terms.npz")


@pytest.mark.slow  # several processes
def test_script_total_equals_calc_bpd_loop_in_one_and_two_processes(setup):
    expected = _direct_bound(setup)
    assert np.all(np.isfinite(expected))

    one_summary, one = _run_script(setup, setup["root"] / "one")
    np.testing.assert_array_equal(one["indices"], np.arange(NUM_IMAGES))
    np.testing.assert_allclose(one["total_bpd"], expected, rtol=1e-6)
    assert one_summary["total_bpd"] == pytest.approx(expected.mean(), rel=1e-6)
    assert one_summary["num_images"] == NUM_IMAGES and one_summary["num_timesteps"] == 20
    # The parts add up: prior + sum of the per-step means; steps in the originals' loop order T-1..0.
    np.testing.assert_array_equal(one["timesteps"], np.arange(19, -1, -1))
    assert one["vb_terms"].shape == one["mse_terms"].shape == one["xstart_mse_terms"].shape == (20,)
    assert one_summary["total_bpd"] == pytest.approx(one["prior_bpd"].mean() + one["vb_terms"].sum(), rel=1e-6)
    assert one_summary["decoder_nll_bpd"] == pytest.approx(one["vb_terms"][-1])

    launcher, launch_env = accelerate_cpu_launcher(2)
    two_summary, two = _run_script(setup, setup["root"] / "two", launcher, ACCELERATE_USE_CPU=launch_env["ACCELERATE_USE_CPU"])
    assert two_summary["num_processes"] == 2
    assert two_summary["total_bpd"] == pytest.approx(one_summary["total_bpd"], rel=1e-6)
    np.testing.assert_allclose(two["total_bpd"], one["total_bpd"], rtol=1e-6)
    np.testing.assert_allclose(two["vb_terms"], one["vb_terms"], rtol=1e-6)


def test_saved_dataset_gives_the_folder_result(setup):
    common = dict(batch_size=BATCH_SIZE, num_images=4, seed=SEED, progress=False)
    saved = open_evaluation_images(setup["root"] / "saved", image_size=8, image_column="img", label_column="fine_label",
                                   with_labels=True)
    folder = open_evaluation_images(setup["root"] / "images", image_size=8, with_labels=True)
    assert saved.labels == folder.labels == setup["labels"]
    from_saved = evaluate_bits_per_dim(setup["scheduler"], setup["unet"], saved, **common)
    from_folder = evaluate_bits_per_dim(setup["scheduler"], setup["unet"], folder, **common)
    np.testing.assert_allclose(from_saved.total_bpd, from_folder.total_bpd, rtol=1e-6)
    np.testing.assert_allclose(from_saved.total_bpd, _direct_bound(setup)[:4], rtol=1e-6)

    # Larger images are box-halved, resized and centre-cropped to the model's size, as the originals do.
    big = Image.fromarray(np.repeat(np.repeat(setup["images"][0], 4, axis=0), 4, axis=1))
    (setup["root"] / "big").mkdir()
    big.save(setup["root"] / "big" / "x.png")
    loaded, _ = open_evaluation_images(setup["root"] / "big", image_size=8).load([0])
    assert loaded.shape == (1, 3, 8, 8)
    np.testing.assert_allclose(loaded[0].permute(1, 2, 0).numpy(), setup["images"][0] / 127.5 - 1, atol=1e-6)


def test_bad_input_is_refused_before_any_work(setup, tmp_path, capsys):
    script = _load_script()
    root = setup["root"]
    (tmp_path / "empty").mkdir()
    Dataset.from_dict({"image": [Image.fromarray(setup["images"][0])]}).save_to_disk(str(tmp_path / "unlabelled"))
    (tmp_path / "a_file").write_text("")
    pipe, images = ["--pipeline", str(root / "pipe")], ["--dataset", str(root / "images")]
    cases = [
        ([*pipe, *images, "--batch_size", "0"], "expected --batch_size >= 1, got 0"),
        ([*pipe, *images, "--num_samples", "9"], "expected --num_samples <= 5"),
        ([*pipe, "--dataset", str(tmp_path / "empty")], "expected image files"),
        ([*pipe, "--dataset", str(tmp_path / "missing")], "expected a folder of images, a save_to_disk folder or a Hub dataset id"),
        ([*pipe, "--dataset", str(tmp_path / "unlabelled")], "expected a label column 'label'"),
        ([*pipe, "--dataset", str(root / "saved"), "--image_column", "picture"], "expected an image column 'picture'"),
        ([*pipe, *images, "--split", "test"], "expected no --split/--image_column/--label_column"),
        ([*pipe, *images, "--null_label"], "expected a model trained with label dropout"),
        ([*pipe, *images, "--output_dir", str(tmp_path / "a_file")], "expected --output_dir to be a directory"),
        (["--pipeline", str(tmp_path / "empty"), *images], "expected a pipeline folder or Hub id"),
    ]
    for argv, message in cases:
        assert script.main(argv + ["--output_dir", str(tmp_path / "never")] if "--output_dir" not in argv else argv) == 2
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "never").exists()
