"""guided-diffusers-sample (scripts/sample.py) with bad input: one line, exit status 2, before the pipeline's weights
load, nothing written; a second run never mixes its samples with the first's (issue 13, harm 4); an unwritable
output is refused before any work, and finished samples that cannot be moved into place are kept (issue 23)."""

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from guided_diffusers import publishing
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
    np.savez(root / "base_grey.npz", images[..., :1], np.array([0, 2, 1]))
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
    ("grey base images for an RGB upsampler", "upsampler", ["--base_samples", "{root}/base_grey.npz"],
     "as uint8 NHWC RGB images, got uint8 of shape (3, 4, 4, 1)"),
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


# --- the output place: taken before any work, and finished samples never deleted (issue 23) -----------------------


def _simulate_read_only(folder, monkeypatch):
    """Folders cannot be made in ``folder`` (EROFS), as on a read-only mount; chmod means nothing to root."""
    make_folder = os.mkdir

    def mkdir(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return make_folder(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


@pytest.mark.parametrize("how", ["simulated", "chmod"])
def test_an_unwritable_output_is_refused_before_any_work(how, folders, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only folder anyway (the simulated case covers it)")
        locked.chmod(0o555)
    else:
        _simulate_read_only(locked, monkeypatch)
    try:
        err = _refused(["--pipeline", str(folders / "pipe"), "--output_dir", str(locked / "out"), "--num_samples", "2"], capsys, monkeypatch)
    finally:
        locked.chmod(0o755)
    assert f"expected a writable place for --output_dir {str(locked / 'out')!r}" in err and f"in {str(locked)!r}" in err, err
    assert list(locked.iterdir()) == []


def test_a_failed_final_move_keeps_the_finished_samples_and_says_where(folders, tmp_path, capsys, monkeypatch):
    # An empty folder that cannot be swapped (a mount point not recognised as one): the kernel answers EBUSY.
    volume = tmp_path / "volume"
    volume.mkdir()

    def busy(source, target):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(target))

    monkeypatch.setattr(publishing, "_exchange", busy)
    with pytest.raises(SystemExit) as info:
        sample_cli.main(["--pipeline", str(folders / "pipe"), "--output_dir", str(volume), "--num_samples", "3", "--class_labels", "dog"])
    lines = [line for line in capsys.readouterr().err.splitlines() if "%|" not in line and line.strip()]  # no progress bars
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    err = lines[0]
    kept = [path for path in tmp_path.iterdir() if path.name.startswith("volume.finished-")]
    assert len(kept) == 1 and f"they are all in {str(kept[0])!r}" in err and "Device or resource busy" in err, err
    assert sorted(p.name for p in kept[0].iterdir()) == ["000000.png", "000001.png", "000002.png", "samples_3x8x8x3.npz"]
    np.testing.assert_array_equal(np.load(kept[0] / "samples_3x8x8x3.npz")["arr_1"], [1, 1, 1])
    assert list(volume.iterdir()) == []  # nothing half-moved
    # The kept folder is not a temporary folder a later run removes.
    monkeypatch.undo()
    assert sample_cli.main(["--pipeline", str(folders / "pipe"), "--output_dir", str(tmp_path / "next"), "--num_samples", "1"]) == 0
    assert kept[0].is_dir() and len(list(kept[0].iterdir())) == 4


def test_an_empty_mount_point_receives_the_samples_in_place(folders, tmp_path, capsys, monkeypatch):
    # A mount point cannot be swapped for a folder written beside it: the samples are written inside it and moved in.
    volume = tmp_path / "volume"
    volume.mkdir()
    is_mount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == volume or is_mount(path))
    inode = volume.stat().st_ino
    argv = ["--pipeline", str(folders / "pipe"), "--output_dir", str(volume), "--num_samples", "2"]
    assert sample_cli.main(argv) == 0
    assert volume.stat().st_ino == inode  # the same folder, filled; not replaced
    assert sorted(p.name for p in volume.iterdir()) == ["000000.png", "000001.png", "samples_2x8x8x3.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["volume"]  # nothing written beside it
    capsys.readouterr()
    # A non-empty mount point cannot be replaced whole: refused before any work, even with --overwrite.
    err = _refused([*argv, "--overwrite"], capsys, monkeypatch)
    assert f"expected an empty --output_dir, got non-empty {str(volume)!r}: it is a mount point" in err, err
    assert sorted(p.name for p in volume.iterdir()) == ["000000.png", "000001.png", "samples_2x8x8x3.npz"]
