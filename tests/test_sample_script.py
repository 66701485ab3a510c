"""scripts/sample.py: N samples in the originals' .npz layout, the same from one process or two."""

import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from launch import accelerate_cpu_launcher

from guided_diffusers import ADMUNet2DModel, ClassifierGuidedPipeline, GuidedDDPMScheduler

ROOT = Path(__file__).resolve().parents[1]


def _save_pipeline(folder):
    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                          attention_downsample_factors=(2,), num_classes=10, out_channels=6)
    scheduler = GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range", timestep_respacing="3")
    ClassifierGuidedPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)


def _run_here(argv, monkeypatch):
    """``python scripts/sample.py ARGV`` in this process, on one thread (as the launched processes run); its exit code."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "scripts" / "sample.py"), *argv])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(SystemExit) as info:
            runpy.run_path(str(ROOT / "scripts" / "sample.py"), run_name="__main__")
    finally:
        torch.set_num_threads(threads)
    return info.value.code


@pytest.mark.slow  # several processes
def test_one_and_two_processes_give_the_same_samples(tmp_path, monkeypatch):
    _save_pipeline(tmp_path / "pipe")
    common = ["--pipeline", str(tmp_path / "pipe"), "--num_samples", "5", "--batch_size", "2", "--seed", "7"]
    assert _run_here([*common, "--output_dir", str(tmp_path / "one")], monkeypatch) == 0
    launcher, env = accelerate_cpu_launcher(2)
    two = subprocess.run([*launcher, str(ROOT / "scripts" / "sample.py"), *common, "--output_dir", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "sampled with 2 processes" in two.stdout
    one = np.load(tmp_path / "one" / "samples_5x8x8x3.npz")
    two = np.load(tmp_path / "two" / "samples_5x8x8x3.npz")
    assert one["arr_0"].dtype == np.uint8 and one["arr_0"].shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(one["arr_1"], two["arr_1"])  # random classes, drawn per sample index
    assert np.abs(one["arr_0"].astype(int) - two["arr_0"].astype(int)).max() <= 1
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == [f"{k:06d}.png" for k in range(5)]
    assert not (tmp_path / "two" / ".shards").exists()


def test_fixed_labels_by_name_and_bad_flags(tmp_path, monkeypatch, capsys):
    _save_pipeline(tmp_path / "pipe")
    assert _run_here(["--pipeline", str(tmp_path / "pipe"), "--num_samples", "3", "--class_labels", "4,2",
                      "--output_dir", str(tmp_path / "out")], monkeypatch) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "samples_3x8x8x3.npz")["arr_1"], [4, 2, 4])
    capsys.readouterr()
    code = _run_here(["--pipeline", str(tmp_path / "pipe"), "--class_labels", "12", "--output_dir", str(tmp_path / "bad")], monkeypatch)
    assert code != 0 and "expected class labels in [0, 10), got [12]" in capsys.readouterr().err


@pytest.mark.parametrize("channels", [1, 3, 2])
def test_samples_keep_the_models_channels_in_the_npz_and_the_pngs(channels, tmp_path, capsys, single_torch_thread):
    # Grey (the quick start's digits model), RGB, and a count no PNG holds: arr_0 is (N, H, W, C) uint8 in each; the
    # PNGs are grey (mode L) or RGB and hold exactly arr_0's pixels; a 2-channel model gets the .npz alone, and is told.
    from PIL import Image

    from guided_diffusers.cli import sample as sample_cli

    torch.manual_seed(0)
    unet = ADMUNet2DModel(sample_size=8, in_channels=channels, out_channels=2 * channels, model_channels=32, channel_mult=(1, 2),
                          num_res_blocks=1, attention_downsample_factors=(2,))
    pipe = ClassifierGuidedPipeline(unet=unet, scheduler=GuidedDDPMScheduler(num_train_timesteps=20, variance_type="learned_range"))
    pipe.save_pretrained(tmp_path / "pipe")
    assert sample_cli.main(["--pipeline", str(tmp_path / "pipe"), "--num_samples", "3", "--batch_size", "2", "--seed", "5",
                            "--timestep_respacing", "2", "--output_dir", str(tmp_path / "out")]) == 0
    samples = np.load(tmp_path / "out" / f"samples_3x8x8x{channels}.npz")["arr_0"]
    assert samples.dtype == np.uint8 and samples.shape == (3, 8, 8, channels)
    # The pipeline's own samples (sample k from seed + k, batches of 2), quantised as the originals quantise them.
    expected = np.concatenate([
        (pipe(batch_size=len(ks), generator=[torch.Generator().manual_seed(5 + k) for k in ks], timestep_respacing="2",
              output_type="pt").images * 255).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        for ks in ([0, 1], [2])
    ])
    np.testing.assert_array_equal(samples, expected)
    pngs = sorted((tmp_path / "out").glob("*.png"))
    out = capsys.readouterr().out
    if channels == 2:
        assert pngs == [] and "(no PNGs: a PNG holds 1 or 3 channels, these samples have 2)" in out
        return
    assert [p.name for p in pngs] == ["000000.png", "000001.png", "000002.png"]
    for path, sample in zip(pngs, samples):
        with Image.open(path) as image:
            assert image.mode == ("L" if channels == 1 else "RGB")
            np.testing.assert_array_equal(np.asarray(image).reshape(8, 8, channels), sample)
