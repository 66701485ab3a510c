"""Evaluation at scale: shards, the feature cache, reference batches, the float32 network pass, and scripts/evaluate.py
in one and two processes giving the same features and figures. Seeded random Inception weights (no download)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from guided_diffusers.evaluation import (
    NpzImages,
    RunningMoments,
    StaleCacheError,
    cache_path,
    compute_activations,
    compute_statistics,
    evaluate_image_batches,
    float32_precision,
    inspect_image_batch,
    random_fid_inception,
    read_precomputed_statistics,
)
from guided_diffusers.evaluation.evaluator import shard_bounds
from guided_diffusers.evaluation.feature_cache import cache_key, file_sha256, load_cached_features, weights_fingerprint
from guided_diffusers.data import center_crop_array

sys.path.insert(0, str(Path(__file__).parent))
from launch import accelerate_cpu_launcher  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "scripts" / "evaluate.py"


def _load_evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(seed, count, size=32):
    # Smooth random images, so the random network sees structure.
    coarse = np.random.default_rng(seed).uniform(0, 255, size=(count, 4, 4, 3))
    return np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return random_fid_inception(seed=0)


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "random_inception.safetensors"
    save_file({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, str(path))
    return path


class _ForwardCounter:
    """Counts the images that go through the network."""

    def __init__(self, model):
        self.images = 0
        self._handle = model.register_forward_pre_hook(lambda module, args: self._count(args[0]))

    def _count(self, images):
        self.images += len(images)

    def remove(self):
        self._handle.remove()


def test_shards_are_whole_batches_covering_every_image_once():
    for num_images, batch_size, world in [(10, 3, 2), (7, 4, 3), (2, 8, 4), (64, 64, 2), (50000, 64, 8)]:
        bounds = [shard_bounds(num_images, batch_size, p, world) for p in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == num_images
        assert all(bounds[p][1] == bounds[p + 1][0] for p in range(world - 1))
        assert all(start % batch_size == 0 or start == num_images for start, _ in bounds)


def test_sharded_reading_gives_the_images_of_one_pass(tmp_path):
    images = _images(0, 11)
    path = tmp_path / "batch.npz"
    np.savez(path, images)
    source = NpzImages(path, 11)
    pieces = [np.concatenate(list(source.batches(*shard_bounds(11, 3, p, 3), 3))) for p in range(3)]
    np.testing.assert_array_equal(np.concatenate(pieces), images)
    np.testing.assert_array_equal(source.take(np.array([0, 4, 10])), images[[0, 4, 10]])


def test_running_moments_merged_in_any_parts_are_the_whole_sets_statistics():
    # Offset features (mean 100, spread ~0.5): a naive sum of squares would lose the variance to cancellation.
    features = np.random.default_rng(0).gamma(2.0, 0.3, size=(500, 40)) + 100
    whole = compute_statistics(features)
    for cuts in ([0, 500], [0, 1, 2, 250, 499, 500], [0, 0, 77, 77, 300, 500]):
        merged = RunningMoments.of(features[:0])
        for low, high in zip(cuts[:-1], cuts[1:]):
            merged = merged.merge(RunningMoments.of(features[low:high]))
        assert merged.count == 500
        statistics = merged.statistics()
        np.testing.assert_allclose(statistics.mu, whole.mu, rtol=1e-13)
        np.testing.assert_allclose(statistics.sigma, whole.sigma, rtol=1e-9, atol=1e-12 * np.abs(whole.sigma).max())
    with pytest.raises(ValueError, match="expected statistics of at least 2 vectors, got 1"):
        RunningMoments.of(features[:1]).statistics()


def test_float32_precision_switches_tf32_off_and_restores_it():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    try:
        conv.fp32_precision, matmul.fp32_precision = "tf32", "tf32"
        with float32_precision():
            assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        conv.fp32_precision = "ieee"
        with float32_precision(allow_tf32=True):
            assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
        assert conv.fp32_precision == "ieee"
        with pytest.raises(RuntimeError), float32_precision():
            raise RuntimeError("restored on errors too")
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "tf32")
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


@pytest.mark.slow  # an Inception pass on CPU each: tens of seconds
def test_cache_serves_a_second_run_without_network_pass_and_never_a_changed_file(tmp_path, model):
    ref, samples = tmp_path / "ref.npz", tmp_path / "samples.npz"
    np.savez(ref, _images(1, 5))
    np.savez(samples, _images(2, 4))
    counter = _ForwardCounter(model)
    try:
        kwargs = dict(batch_size=4, log=None, progress=False, cache=True)
        first = evaluate_image_batches(ref, samples, model, **kwargs)
        assert counter.images == 9 and cache_path(samples).is_file() and cache_path(ref).is_file()
        assert cache_path(samples).name == "samples.inception-features.npz"
        second = evaluate_image_batches(ref, samples, model, **kwargs)
        assert counter.images == 9  # no image went through the network again
        assert second == first
        # A changed file (same name) is recomputed: its 4 images, not the reference's.
        np.savez(samples, _images(3, 4))
        messages = []
        third = evaluate_image_batches(ref, samples, model, **{**kwargs, "log": messages.append})
        assert counter.images == 13 and third != first
        assert f"reading reference batch activations from {cache_path(ref)}..." in messages
        assert f"{cache_path(samples)} is stale (another file, other weights or TF32 setting): replacing it" in messages
        # The cache holds arrays only (loads without pickle): the features of the file now there.
        with np.load(cache_path(samples), allow_pickle=False) as cached:
            expected_pool, _ = compute_activations(model, [_images(3, 4)])
            np.testing.assert_allclose(cached["pool_features"], expected_pool, rtol=1e-5, atol=1e-6)
            key = json.loads(str(cached["key"]))
        assert key["allow_tf32"] is False and key["batch_sha256"] == file_sha256(samples)
        # Other weights or another TF32 setting are other keys: not served.
        other = cache_key(samples, weights_fingerprint(random_fid_inception(seed=1)), allow_tf32=False)
        with pytest.raises(StaleCacheError, match="is stale"):
            load_cached_features(samples, other, 4)
        with pytest.raises(StaleCacheError, match="is stale"):
            load_cached_features(samples, cache_key(samples, weights_fingerprint(model), allow_tf32=True), 4)
        assert load_cached_features(samples, cache_key(samples, weights_fingerprint(model), allow_tf32=False), 4) is not None
    finally:
        counter.remove()


@pytest.mark.slow  # an Inception pass on CPU each: tens of seconds
def test_write_reference_from_an_image_folder_and_from_an_npz(tmp_path, weights, model):
    folder = tmp_path / "images"
    folder.mkdir()
    originals = _images(4, 5, size=40)[:, :, :36]  # 40 x 36: the centre crop to 32 matters
    for index, image in enumerate(originals):
        Image.fromarray(image).save(folder / f"img_{index}.png")
    out = tmp_path / "ref.npz"
    evaluate = _load_evaluate_script()
    argv = ["--write_reference", str(out), "--source", str(folder), "--image_size", "32", "--num_images", "4"]
    argv += ["--batch_size", "4", "--inception_weights", str(weights), "--no_progress"]
    assert evaluate.main(argv) == 0
    cropped = np.stack([center_crop_array(Image.fromarray(image), 32) for image in originals])
    pool, spatial = compute_activations(model, [cropped])
    with np.load(out, allow_pickle=False) as written:
        assert sorted(written.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
        kept = written["arr_0"]
        assert kept.shape == (4, 32, 32, 3) and kept.dtype == np.uint8
        # 4 of the source's 5 images, in source order; the statistics are over all 5.
        matches = [int(np.flatnonzero((cropped == image).all(axis=(1, 2, 3)))[0]) for image in kept]
        assert matches == sorted(set(matches))
        np.testing.assert_allclose(written["mu"], compute_statistics(pool).mu, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(written["sigma_s"], compute_statistics(spatial).sigma, rtol=1e-3, atol=1e-8)
    # It is a reference batch the evaluator reads, statistics included.
    info = inspect_image_batch(out)
    assert info.has_statistics and info.num_images == 4
    np.testing.assert_allclose(read_precomputed_statistics(out)[1].mu, compute_statistics(spatial).mu, rtol=1e-4, atol=1e-6)
    # An existing output is refused without --overwrite; an .npz source's images are used as they are.
    assert evaluate.main(argv) == 2
    source = tmp_path / "source.npz"
    np.savez(source, cropped[:4])
    assert evaluate.main(["--write_reference", str(out), "--source", str(source), "--overwrite", *argv[6:]]) == 0
    with np.load(out, allow_pickle=False) as written:
        np.testing.assert_array_equal(written["arr_0"], cropped[:4])  # 4 of 4: all, in order
        np.testing.assert_allclose(written["mu"], compute_statistics(pool[:4]).mu, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_two_processes_give_the_features_and_figures_of_one(tmp_path, weights, single_torch_thread):
    # The production path: scripts/evaluate.py, once in this process and once under `accelerate launch` with two
    # processes (gloo on the CPU), each on its own copy of the batches with --cache, whose features are compared.
    # One thread each (the launcher sets OMP_NUM_THREADS=1), so the float32 sums are the same up to rounding.
    runs = {}
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        np.savez(folder / "ref.npz", _images(5, 9))
        np.savez(folder / "samples.npz", _images(6, 7))
        runs[name] = folder
    common = ["--batch_size", "2", "--cache", "--inception_weights", str(weights), "--no_progress", "--device", "cpu"]
    one = runs["one"]
    assert _load_evaluate_script().main([str(one / "ref.npz"), str(one / "samples.npz"), "--json", str(one / "r.json"), *common]) == 0
    two = runs["two"]
    launcher, env = accelerate_cpu_launcher(2)
    command = [*launcher, str(SCRIPT), str(two / "ref.npz"), str(two / "samples.npz"), "--json", str(two / "r.json"), *common[:-2]]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line.split(":")[0] for line in result.stdout.splitlines() if ": " in line] == [
        "Inception Score", "FID", "sFID", "Precision", "Recall"
    ]  # the main process reports, once
    one_report, two_report = (json.loads((folder / "r.json").read_text()) for folder in (one, two))
    assert (one_report["num_processes"], two_report["num_processes"]) == (1, 2)
    for batch in ("ref", "samples"):
        with np.load(cache_path(one / f"{batch}.npz")) as a, np.load(cache_path(two / f"{batch}.npz")) as b:
            for key in ("pool_features", "spatial_features", "mu", "sigma", "mu_s", "sigma_s"):
                np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=f"{batch} {key}")
    for key in ("inception_score", "fid", "sfid"):
        assert two_report[key] == pytest.approx(one_report[key], rel=1e-5)
    assert (two_report["precision"], two_report["recall"]) == (one_report["precision"], one_report["recall"])
    # A reference batch written by two processes (moments merged across them) is the one-process one.
    reference = ["--write_reference", "REF", "--source", str(one / "samples.npz"), "--num_images", "5", *common[:-2]]
    assert _load_evaluate_script().main([*reference[:1], str(one / "written.npz"), *reference[2:]]) == 0
    command = [*launcher, str(SCRIPT), *reference[:1], str(two / "written.npz"), *reference[2:]]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(one / "written.npz") as a, np.load(two / "written.npz") as b:
        np.testing.assert_array_equal(b["arr_0"], a["arr_0"])
        for key in ("mu", "sigma", "mu_s", "sigma_s"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-9, err_msg=key)
        with np.load(cache_path(one / "samples.npz")) as cached:  # and the statistics of all 7 images' features
            np.testing.assert_allclose(a["sigma"], cached["sigma"], rtol=1e-6, atol=1e-12)
    shutil.rmtree(tmp_path)
