"""The evaluator's inputs beyond a good .npz pair: feature caches that must not be served (stale, damaged, a row short:
recomputed and replaced, said in one line; issue 23), image folders read as --write_reference reads them and grey
batches read as RGB (issue 26). The network is a stand-in computing features from the pixels (no Inception pass:
these tests are about which images and features reach the metrics, not about the network)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusers.evaluation import (
    BatchFeatures,
    StaleCacheError,
    cache_path,
    compute_activations,
    inspect_image_batch,
    iterate_image_batches,
    load_cached_features,
)
from guided_diffusers.evaluation.feature_cache import cache_key, save_cached_features, weights_fingerprint

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES = 8


class PixelFeatures(torch.nn.Module):
    """A stand-in for the FID Inception: fixed random maps of the 8x8 average-pooled pixels to the pool (2048) and
    spatial (2023) features and the 1008 class logits; it records every image batch it is given."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("pool_map", torch.randn(3 * 8 * 8, 2048, generator=generator))
        self.register_buffer("spatial_map", torch.randn(3 * 8 * 8, 2023, generator=generator))
        self.register_buffer("class_map", torch.randn(2048, 1008, generator=generator) / 50)
        self.seen: list[torch.Tensor] = []

    def forward(self, images: torch.Tensor) -> SimpleNamespace:
        self.seen.append(images.clone())
        pixels = torch.nn.functional.adaptive_avg_pool2d(images.float() / 255, 8).flatten(1)
        return SimpleNamespace(pool_features=torch.relu(pixels @ self.pool_map), spatial_features=pixels @ self.spatial_map)

    def class_logits(self, pool_features: torch.Tensor) -> torch.Tensor:
        return pool_features @ self.class_map

    def images_seen(self) -> np.ndarray:
        """Every image given since the last call, as uint8 NHWC."""
        seen, self.seen = self.seen, []
        return torch.cat(seen).permute(0, 2, 3, 1).numpy() if seen else np.zeros((0, 32, 32, 3), np.uint8)


def _images(seed, count=NUM_IMAGES, size=32):
    coarse = np.random.default_rng(seed).uniform(0, 255, size=(count, 4, 4, 3))
    return np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2).astype(np.uint8)


def _load_evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO_ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def network(monkeypatch):
    """The stand-in, also what the command line loads as its network."""
    model = PixelFeatures()
    import guided_diffusers.evaluation

    monkeypatch.setattr(guided_diffusers.evaluation, "load_fid_inception", lambda *args, **kwargs: model)
    return model


def _batches(tmp_path):
    ref, samples = tmp_path / "ref.npz", tmp_path / "samples.npz"
    np.savez(ref, _images(0))
    np.savez(samples, _images(1))
    return ref, samples


def _damage(path, kind):
    """Rewrite the cache at ``path`` damaged in one way."""
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return
    if kind == "empty":
        path.write_bytes(b"")
        return
    with np.load(path) as stored:
        arrays = {name: stored[name] for name in stored.files}
    if kind == "a row short":
        arrays["pool_features"], arrays["spatial_features"] = arrays["pool_features"][:-1], arrays["spatial_features"][:-1]
    elif kind == "wrong width":
        arrays["pool_features"] = arrays["pool_features"][:, :100]
    elif kind == "nan":
        arrays["pool_features"][2, 7] = np.nan
    elif kind == "no sigma":
        del arrays["sigma"]
    elif kind == "misshapen mu_s":
        arrays["mu_s"] = arrays["mu_s"][:5]
    elif kind == "no key":
        del arrays["key"]
    elif kind == "another key":
        arrays["key"] = np.array(str(arrays["key"]).replace('"allow_tf32": false', '"allow_tf32": true'))
    np.savez(path, **arrays)


DAMAGE = [
    ("a row short", "is damaged (pool_features of shape (7, 2048) for the batch's 8 images of 2048 features)"),
    ("wrong width", "is damaged (pool_features of shape (8, 100) for the batch's 8 images of 2048 features)"),
    ("nan", "is damaged (pool_features is not finite floats)"),
    ("no sigma", "is damaged (no sigma)"),
    ("misshapen mu_s", "is damaged (mu_s of shape (5,), expected (2023,))"),
    ("no key", "is damaged (no key)"),
    ("truncated", "is damaged (unreadable: BadZipFile: File is not a zip file)"),
    ("empty", "is damaged (unreadable: EOFError: No data left in file)"),
    ("another key", "is stale (another file, other weights or TF32 setting)"),
]


@pytest.fixture(scope="module")
def good_cache(tmp_path_factory):
    """A batch and its valid cache (features of random numbers: the checks read shapes, values and the key)."""
    folder = tmp_path_factory.mktemp("cache")
    batch = folder / "ref.npz"
    np.savez(batch, _images(0))
    key = cache_key(batch, weights_fingerprint(PixelFeatures()), allow_tf32=False)
    rng = np.random.default_rng(0)
    save_cached_features(batch, key, BatchFeatures.from_features(rng.random((NUM_IMAGES, 2048)), rng.random((NUM_IMAGES, 2023))))
    return batch, key, cache_path(batch).read_bytes()


@pytest.mark.parametrize("kind, reason", DAMAGE, ids=[kind for kind, _ in DAMAGE])
def test_a_cache_that_does_not_fit_its_batch_is_never_served(kind, reason, good_cache):
    batch, key, good = good_cache
    cache_path(batch).write_bytes(good)
    assert load_cached_features(batch, key, NUM_IMAGES).pool_features.shape == (NUM_IMAGES, 2048)
    _damage(cache_path(batch), kind)
    with pytest.raises(StaleCacheError) as miss:
        load_cached_features(batch, key, NUM_IMAGES)
    assert str(miss.value) == f"{cache_path(batch)} {reason}"


def test_cli_recomputes_a_short_or_damaged_cache_says_so_in_one_line_and_reports_the_batchs_figures(tmp_path, capsys, network):
    # Issue 23: a cache with the right key but a row short gave another FID, precision and recall with exit code 0;
    # a damaged one ended in a traceback. Both are cache misses: recomputed, replaced, said in one line each.
    ref, samples = _batches(tmp_path)
    evaluate = _load_evaluate_script()
    argv = [str(ref), str(samples), "--cache", "--batch_size", "4", "--no_progress", "--device", "cpu"]
    assert evaluate.main(argv) == 0
    first = capsys.readouterr().out.splitlines()[-5:]
    assert len(network.images_seen()) == 2 * NUM_IMAGES
    _damage(cache_path(ref), "a row short")
    _damage(cache_path(samples), "truncated")
    assert evaluate.main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert f"{cache_path(ref)} is damaged (pool_features of shape (7, 2048) for the batch's 8 images of 2048 features): replacing it" in lines
    assert f"{cache_path(samples)} is damaged (unreadable: BadZipFile: File is not a zip file): replacing it" in lines
    assert lines[-5:] == first and captured.err == ""
    np.testing.assert_array_equal(network.images_seen(), np.concatenate([_images(0), _images(1)]))  # both recomputed
    for batch in (ref, samples):  # and replaced, whole
        key = cache_key(batch, weights_fingerprint(network), allow_tf32=False)
        assert load_cached_features(batch, key, NUM_IMAGES).pool_features.shape == (NUM_IMAGES, 2048)


def test_cli_evaluates_an_image_folder_as_the_reference_writer_prepares_it(tmp_path, capsys, network):
    # Issue 26: a folder of images was refused ("expected an .npz image batch at 'pngs', no such file"). Each PNG is
    # a sample at twice the size with a margin left and right: halved and centre-cropped to 32, as --write_reference
    # prepares a folder, it is the sample again, byte for byte, so the figures are those of the samples' .npz.
    ref, _ = _batches(tmp_path)
    folder = tmp_path / "pngs"
    folder.mkdir()
    margin = np.random.default_rng(2).integers(0, 256, (NUM_IMAGES, 32, 4, 3), dtype=np.uint8)
    for index, image in enumerate(_images(1)):
        wide = np.concatenate([margin[index], image, margin[index][:, ::-1]], axis=1)
        Image.fromarray(wide.repeat(2, axis=0).repeat(2, axis=1)).save(folder / f"sample_{index}.png")
    argv = [str(ref), str(folder), "--image_size", "32", "--json", str(tmp_path / "r.json"), "--batch_size", "4", "--no_progress"]
    assert _load_evaluate_script().main([*argv, "--device", "cpu"]) == 0
    np.testing.assert_array_equal(network.images_seen(), np.concatenate([_images(0), _images(1)]))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["sample_batch"] == str(folder) and report["num_sample_images"] == NUM_IMAGES
    assert capsys.readouterr().out.splitlines()[-1].startswith("Recall: ")


def test_cli_refuses_bad_folder_batches_in_one_line_before_any_work(tmp_path, capsys, network):
    ref, _ = _batches(tmp_path)
    folder, three = tmp_path / "pngs", tmp_path / "three"
    folder.mkdir()
    three.mkdir()
    for index, image in enumerate(_images(1)):
        Image.fromarray(image).save(folder / f"{index}.png")
        if index < 3:
            Image.fromarray(image).save(three / f"{index}.png")
    evaluate = _load_evaluate_script()
    cases = [
        ([str(ref), str(folder)], f"expected --image_size >= 1 for the image folder {str(folder)!r}"),
        ([str(ref), str(folder), "--image_size", "32", "--cache"],
         f"expected .npz batches with --cache (features are cached beside an .npz file), got the folder {str(folder)!r}"),
        ([str(ref), str(three), "--image_size", "32"], f"expected at least 4 images in {str(three)!r}, got 3"),
        ([str(ref), str(tmp_path / "nowhere")], "expected an .npz image batch or a folder of images at"),
        ([str(ref), str(ref), "--image_size", "32"], "expected --image_size only with --write_reference or an image folder batch"),
    ]
    for argv, message in cases:
        assert evaluate.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert network.seen == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["pngs", "ref.npz", "samples.npz", "three"]


def test_a_grey_batch_is_read_as_rgb(tmp_path, network):
    # guided-diffusers-sample writes a grey model's samples as (N, H, W, 1): the evaluator takes them as RGB, the
    # channel repeated (as PIL converts grey to RGB).
    grey = _images(1)[..., :1]
    np.savez(tmp_path / "grey.npz", grey)
    info = inspect_image_batch(tmp_path / "grey.npz")
    assert (info.num_images, info.height, info.width) == (NUM_IMAGES, 32, 32)
    compute_activations(network, iterate_image_batches(tmp_path / "grey.npz", 4))
    np.testing.assert_array_equal(network.images_seen(), np.repeat(grey, 3, axis=-1))
