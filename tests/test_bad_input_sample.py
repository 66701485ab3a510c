"""guided-diffusers-sample (scripts/sample.py) with bad input: one line, exit status 2, before the pipeline's weights
load, nothing written; and a second run never mixes its samples with the first's (issue 13, harm 4)."""

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from guided_diffusers import ADMSuperResUNet2DModel, ADMUNet2DModel, ADMUpsamplingPipeline, ClassifierGuidedPipeline, GuidedDDPMScheduler
from guided_diffusers.cli import sample as sample_cli

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-inputs")
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample_factors=(2,),
                          num_classes=3, out_channels=6)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range", timestep_respacing="2")
    ClassifierGuidedPipeline(unet=unet, scheduler=scheduler, id2label={0: "cat", 1: "dog", 2: "fox"}).save_pretrained(root / "pipe")
    upsampler = ADMSuperResUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                                       attention_downsample_factors=(2,), num_classes=3, out_channels=6)
    ADMUpsamplingPipeline(unet=upsampler, scheduler=scheduler, low_res_size=4).save_pretrained(root / "upsampler")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    np.savez(root / "base.npz", images, np.array([0, 2, 1]))
    np.savez(root / "base_no_labels.npz", images)
    np.savez(root / "base_float_labels.npz", images, np.array([0.0, 1.7, 2.0]))
    np.savez(root / "base_float_images.npz", images.astype(np.float32))
    np.savez(root / "base_other_name.npz", pictures=images)
    (root / "random.npz").write_bytes(rng.bytes(512))
    return root


def _refused(argv, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("the pipeline's weights were loaded before the arguments were checked")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", no_loading)
    with pytest.raises(SystemExit) as info:
        sample_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


CASES = [
    ("zero samples", "pipe", ["--num_samples", "0"], "expected --num_samples and --batch_size >= 1, got 0"),
    ("unknown class name", "pipe", ["--class_labels", "zebra"], "unknown class name 'zebra'"),
    ("negative class id", "pipe", ["--class_labels", "-1"], "expected class ids >= 0 (integers) or class names in --class_labels, got '-1'"),
    ("float class id", "pipe", ["--class_labels", "1.7"], "got '1.7'"),
    ("class id out of range", "pipe", ["--class_labels", "3"], "expected class labels in [0, 3), got [3]"),
    ("malformed respacing", "pipe", ["--timestep_respacing", "abc"], "abc"),
    ("respacing over T", "pipe", ["--timestep_respacing", "300"], "cannot take 300 steps from a section of 20 steps"),
    ("steps over T", "pipe", ["--num_inference_steps", "300"], "cannot take 300 steps"),
    ("nan guidance", "pipe", ["--classifier_scale", "nan"], "expected a finite --classifier_scale, got nan"),
    ("base samples for a non-upsampler", "pipe", ["--base_samples", "{root}/base.npz"], "expected --base_samples only for an ADMUpsamplingPipeline"),
    ("no base samples for an upsampler", "upsampler", [], "expected --base_samples"),
    ("missing base samples", "upsampler", ["--base_samples", "{root}/missing.npz"], "got one numpy cannot read"),
    ("random bytes as base samples", "upsampler", ["--base_samples", "{root}/random.npz"], "got one numpy cannot read"),
    ("base samples without arr_0", "upsampler", ["--base_samples", "{root}/base_other_name.npz"], "expected arr_0 (uint8 NHWC images)"),
    ("float base images", "upsampler", ["--base_samples", "{root}/base_float_images.npz"], "as uint8 NHWC RGB images, got float32"),
    ("too few base samples", "upsampler", ["--base_samples", "{root}/base.npz", "--num_samples", "5"], "expected at least 5 (--num_samples) base samples, got 3"),
    ("base samples without labels", "upsampler", ["--base_samples", "{root}/base_no_labels.npz", "--num_samples", "2"],
     "expected labels (arr_1) in --base_samples"),
    ("float base labels", "upsampler", ["--base_samples", "{root}/base_float_labels.npz", "--num_samples", "2"],
     "as 1-D integer labels, got float64"),
    ("not a pipeline", "nowhere", [], "expected a pipeline folder or Hub id at --pipeline"),
]


@pytest.mark.parametrize("case, pipe, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_sample_refuses_in_one_line_before_loading(case, pipe, extra, expected, folders, tmp_path, capsys, monkeypatch):
    argv = ["--pipeline", str(folders / pipe), "--output_dir", str(tmp_path / "out"), "--num_samples", "2",
            *[a.format(root=folders) for a in extra]]
    err = _refused(argv, capsys, monkeypatch)
    assert expected in err, err
    assert list(tmp_path.iterdir()) == []


def test_a_second_run_never_mixes_with_the_first(folders, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    common = ["--pipeline", str(folders / "pipe"), "--output_dir", str(out), "--batch_size", "3"]
    assert sample_cli.main([*common, "--num_samples", "3"]) == 0
    first = sorted(p.name for p in out.iterdir())
    assert first == ["000000.png", "000001.png", "000002.png", "samples_3x8x8x3.npz"]
    capsys.readouterr()
    err = _refused([*common, "--num_samples", "2"], capsys, monkeypatch)  # harm 4: refused, the first run intact
    assert "expected a new or empty output folder, got non-empty" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == first
    monkeypatch.undo()
    assert sample_cli.main([*common, "--num_samples", "2", "--overwrite", "--class_labels", "dog"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "samples_2x8x8x3.npz"]
    np.testing.assert_array_equal(np.load(out / "samples_2x8x8x3.npz")["arr_1"], [1, 1])
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left beside it


def test_upsampler_takes_the_base_labels(folders, tmp_path):
    assert sample_cli.main(["--pipeline", str(folders / "upsampler"), "--base_samples", str(folders / "base.npz"), "--num_samples", "3",
                            "--output_dir", str(tmp_path / "up")]) == 0
    result = np.load(tmp_path / "up" / "samples_3x8x8x3.npz")
    np.testing.assert_array_equal(result["arr_1"], [0, 2, 1])
    assert result["arr_0"].dtype == np.uint8
