"""Sample-quality evaluation: the FID Inception's input path and shapes, the metrics on constructed cases, the .npz
batches, weight loading, and scripts/evaluate.py end to end, all with seeded random Inception weights (no download)."""

import importlib.util
import io
import json
import os
import re
import zipfile
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from guided_diffusers.evaluation import (
    INCEPTION_WEIGHTS_ENV,
    FIDStatistics,
    InceptionWeightsUnavailableError,
    compute_activations,
    compute_statistics,
    frechet_distance,
    inception_score,
    inspect_image_batch,
    iterate_image_batches,
    load_fid_inception,
    manifold_radii,
    precision_recall,
    random_fid_inception,
    read_precomputed_statistics,
    resize_bilinear_like_tensorflow1,
    resolve_inception_weights,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_IMAGES = 8


def _load_evaluate_script():
    spec = importlib.util.spec_from_file_location("evaluate_script", REPO_ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model():
    return random_fid_inception(seed=0)


@pytest.fixture(scope="module")
def ref_images():
    # Smooth random images (low-frequency noise upsampled), so the random network sees structure, not pure noise.
    rng = np.random.default_rng(0)
    coarse = rng.uniform(0, 255, size=(NUM_IMAGES, 4, 4, 3))
    return np.clip(np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def shifted_images(ref_images):
    rng = np.random.default_rng(1)
    noisy = ref_images.astype(np.float64) * 0.5 + 100 + rng.normal(0, 30, size=ref_images.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ref_features(model, ref_images):
    return compute_activations(model, [ref_images[:4], ref_images[4:]])


@pytest.fixture(scope="module")
def shifted_features(model, shifted_images):
    return compute_activations(model, [shifted_images])


def _without_counters(state_dict):
    # safetensors files of the network carry no batch-norm step counters (they do not affect inference).
    return {key: value for key, value in state_dict.items() if not key.endswith("num_batches_tracked")}


def _save_batch(path, images, **statistics):
    np.savez(path, images, **statistics)
    return path


# --- the FID Inception ------------------------------------------------------------------------------------------


def _tf1_resize_reference(image: np.ndarray, size: int) -> np.ndarray:
    # TF 1.x resize_bilinear, align_corners=False: output i samples input at i * in / out; width first, then height.
    height, width = image.shape
    out = np.zeros((size, size), dtype=np.float32)
    for i in range(size):
        y = np.float32(i) * np.float32(height / size)
        y0 = int(np.floor(y))
        y1, dy = min(y0 + 1, height - 1), np.float32(y - y0)
        for j in range(size):
            x = np.float32(j) * np.float32(width / size)
            x0 = int(np.floor(x))
            x1, dx = min(x0 + 1, width - 1), np.float32(x - x0)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * dx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("in_size,out_size", [((3, 5), 7), ((9, 8), 4)])
def test_resize_is_tensorflow1_bilinear(in_size, out_size):
    image = np.random.default_rng(0).uniform(0, 255, size=in_size).astype(np.float32)
    ours = resize_bilinear_like_tensorflow1(torch.from_numpy(image)[None, None], out_size)[0, 0].numpy()
    np.testing.assert_allclose(ours, _tf1_resize_reference(image, out_size), rtol=0, atol=1e-4)
    # Not half-pixel centres: 2 px -> 4 px gives a, (a + b) / 2, b, b.
    two = torch.tensor([[[[0.0, 8.0]]]]).expand(1, 1, 2, 2)
    assert resize_bilinear_like_tensorflow1(two, 4)[0, 0, 0].tolist() == [0.0, 4.0, 8.0, 8.0]


def test_preprocess_scales_like_the_graph(model):
    images = torch.tensor([0.0, 128.0, 255.0]).view(3, 1, 1, 1).expand(3, 3, 299, 299)
    scaled = model.preprocess(images)
    assert scaled.shape == (3, 3, 299, 299)
    assert scaled[:, 0, 0, 0].tolist() == [-1.0, 0.0, 127 / 128]
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\)"):
        model.preprocess(torch.zeros(1, 8, 8, 3))


def test_features_shapes_spatial_order_and_batch_size_invariance(model, ref_images, ref_features):
    pool, spatial = ref_features
    assert pool.shape == (NUM_IMAGES, 2048) and spatial.shape == (NUM_IMAGES, 17 * 17 * 7)
    assert pool.dtype == np.float32 and np.isfinite(pool).all() and pool.std(axis=0).mean() > 1e-3
    # Batch size does not change the features (the fixture ran batches of 4).
    captured = {}
    hook = model.Mixed_6d.branch1x1.register_forward_hook(lambda module, args, out: captured.update(out=out))
    try:
        pool_one_batch, spatial_one_batch = compute_activations(model, [ref_images[:3]])
    finally:
        hook.remove()
    np.testing.assert_allclose(pool_one_batch, pool[:3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(spatial_one_batch, spatial[:3], rtol=1e-4, atol=1e-5)
    # mixed_6/conv's first 7 channels, flattened in NHWC order as the TF evaluator reshapes them.
    nhwc = captured["out"][:, :7].permute(0, 2, 3, 1).reshape(3, -1).numpy()
    np.testing.assert_array_equal(spatial_one_batch, nhwc)
    logits = model.class_logits(torch.from_numpy(pool[:2]))
    assert logits.shape == (2, 1008)
    torch.testing.assert_close(logits, torch.from_numpy(pool[:2]) @ model.fc.weight.T)


# --- metrics --------------------------------------------------------------------------------------------------------


def test_fid_identical_batches_is_zero_and_shifted_is_larger(ref_features, shifted_features):
    # Pool features (FID) and spatial features (sFID); the scale is the reference features' own spread.
    for ref, shifted in zip(ref_features, shifted_features):
        ref_stats, shifted_stats = compute_statistics(ref), compute_statistics(shifted)
        scale = np.trace(ref_stats.sigma)
        assert abs(ref_stats.frechet_distance(compute_statistics(ref.copy()))) < 1e-9 * scale
        distance = shifted_stats.frechet_distance(ref_stats)
        assert distance > 0.5 * scale
        assert distance == pytest.approx(ref_stats.frechet_distance(shifted_stats), rel=1e-9)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    # Diagonal Gaussians: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = rng.uniform(0.1, 2, size=6), rng.uniform(0.1, 2, size=6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # General and singular (rank-deficient) covariances: tr sqrtm(s1 s2) = sum of sqrt(eigenvalues of s1 s2).
    for rank2 in (12, 3):
        x, y = rng.normal(size=(12, 12)), rng.normal(size=(12, rank2))
        s1, s2 = x @ x.T, y @ y.T
        trace_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
        expected = np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
        assert frechet_distance(np.zeros(12), s1, np.zeros(12), s2) == pytest.approx(expected, rel=1e-8)
    # Statistics of fewer vectors than dimensions carry a factor; the N x N path equals the D x D one.
    few, other = rng.normal(size=(5, 12)), rng.normal(size=(40, 12)) + 0.5
    few_stats, other_stats = compute_statistics(few), compute_statistics(other)
    assert few_stats.factor.shape == (5, 12) and other_stats.factor is None
    np.testing.assert_allclose(few_stats.factor.T @ few_stats.factor, few_stats.sigma, rtol=1e-12, atol=1e-12)
    dense = frechet_distance(few_stats.mu, few_stats.sigma, other_stats.mu, other_stats.sigma)
    assert few_stats.frechet_distance(other_stats) == pytest.approx(dense, rel=1e-10)
    assert other_stats.frechet_distance(few_stats) == pytest.approx(dense, rel=1e-10)
    with pytest.raises(ValueError, match="expected two mean vectors of one length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="non-finite values in sigma2"):
        FIDStatistics(np.zeros(2), np.eye(2)).frechet_distance(FIDStatistics(np.zeros(2), np.full((2, 2), np.nan)))


def test_inception_score_bounds_and_splits():
    num_classes = 8
    assert inception_score(np.zeros((20, num_classes))) == pytest.approx(1.0)
    confident = np.full((16, num_classes), -1e4)
    confident[np.arange(16), np.arange(16) % num_classes] = 0.0  # one-hot, every class equally often
    assert inception_score(confident) == pytest.approx(num_classes)
    # The original's splits: consecutive runs; two classes per split of 4 -> exp(log 2) each.
    paired = np.full((16, num_classes), -1e4)
    paired[np.arange(16), np.repeat(np.arange(8), 2) % num_classes] = 0.0
    assert inception_score(paired, split_size=4) == pytest.approx(2.0)
    assert inception_score(paired) == pytest.approx(num_classes)


def test_precision_recall_constructed_cases():
    rng = np.random.default_rng(0)
    cluster = rng.normal(size=(30, 16)).astype(np.float32)
    assert precision_recall(cluster, cluster) == (1.0, 1.0)
    assert precision_recall(cluster, cluster + 1000) == (0.0, 0.0)
    # Samples are one of three far-apart reference clusters: every sample is real (precision 1) and exactly that
    # third of the reference is covered (recall 1/3).
    reference = np.concatenate([cluster, cluster[:, ::-1] + 1000, cluster - 1000])
    precision, recall = precision_recall(reference, cluster)
    assert precision == 1.0 and recall == pytest.approx(1 / 3)
    # A subset of that cluster: still all real; its own 20 reference points are covered, at most the cluster's 30.
    precision, recall = precision_recall(reference, cluster[:20])
    assert precision == 1.0 and 20 / 90 <= recall <= 30 / 90
    # ... and the other way round: a third of the samples are real, all of the reference is covered.
    precision, recall = precision_recall(cluster, reference)
    assert precision == pytest.approx(1 / 3) and recall == 1.0


def test_manifold_radii_are_the_third_neighbour():
    points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]], dtype=np.float32)
    # Squared distance to the 3rd nearest other point: 0 -> 6, 1 -> 6, 3 -> 0 (or 6), 6 -> 1, 10 -> 1.
    expected = [36.0, 25.0, 9.0, 25.0, 81.0]
    np.testing.assert_array_equal(manifold_radii(points), expected)
    np.testing.assert_array_equal(manifold_radii(points, row_batch_size=2, col_batch_size=3), expected)
    with pytest.raises(ValueError, match="expected more than 3 feature vectors"):
        manifold_radii(points[:3])


def test_batch_sizes_do_not_change_precision_recall():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(57, 64)).astype(np.float32)
    samples = (rng.normal(size=(43, 64)) * 1.2 + 0.3).astype(np.float32)
    full = precision_recall(ref, samples)
    assert 0.0 < full[0] < 1.0 and 0.0 < full[1] < 1.0
    radii = manifold_radii(ref)
    for row_batch_size, col_batch_size in [(1, 1), (7, 5), (16, 64), (100, 3)]:
        assert precision_recall(ref, samples, row_batch_size=row_batch_size, col_batch_size=col_batch_size) == full
        np.testing.assert_allclose(manifold_radii(ref, 3, row_batch_size, col_batch_size), radii, rtol=1e-5)


# --- .npz batches ---------------------------------------------------------------------------------------------------


def test_npz_reader_streams_images_and_reads_statistics(tmp_path, ref_images):
    statistics = {
        "mu": np.arange(2048, dtype=np.float64),
        "sigma": np.eye(2048),
        "mu_s": np.ones(2023),
        "sigma_s": np.eye(2023) * 2,
    }
    path = _save_batch(tmp_path / "ref.npz", ref_images, **statistics)
    info = inspect_image_batch(path)
    assert (info.num_images, info.height, info.width, info.has_statistics) == (NUM_IMAGES, 32, 32, True)
    batches = list(iterate_image_batches(path, 3))
    assert [len(batch) for batch in batches] == [3, 3, 2]
    np.testing.assert_array_equal(np.concatenate(batches), ref_images)
    assert batches[0].flags.writeable
    pool_stats, spatial_stats = read_precomputed_statistics(path)
    np.testing.assert_array_equal(pool_stats.mu, statistics["mu"])
    np.testing.assert_array_equal(spatial_stats.sigma, statistics["sigma_s"])
    plain = _save_batch(tmp_path / "plain.npz", ref_images)
    assert not inspect_image_batch(plain).has_statistics and read_precomputed_statistics(plain) is None
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, ref_images)
    np.testing.assert_array_equal(np.concatenate(list(iterate_image_batches(compressed, 3))), ref_images)


@pytest.mark.parametrize(
    "arrays,message",
    [
        (
            {"arr_0": np.zeros((5, 3, 8, 8), np.uint8)},
            r"uint8 images of shape \(N, H, W, 3\) \(or grey \(N, H, W, 1\)\), got uint8 of shape \(5, 3, 8, 8\) \(NCHW",
        ),
        ({"arr_0": np.zeros((5, 8, 8, 3), np.float32)}, "got float32 of shape"),
        ({"arr_0": np.zeros((3, 8, 8, 3), np.uint8)}, "expected at least 4 non-empty images"),
        ({"images": np.zeros((5, 8, 8, 3), np.uint8)}, r"expected an 'arr_0' image array .* found arrays \['images'\]"),
        ({"arr_0": np.zeros((5, 8, 8, 3), np.uint8), "mu": np.zeros(2048)}, r"missing \['sigma', 'mu_s', 'sigma_s'\]"),
        (
            {
                "arr_0": np.zeros((5, 8, 8, 3), np.uint8),
                **{"mu": np.zeros(64), "sigma": np.eye(64), "mu_s": np.zeros(2023), "sigma_s": np.eye(2023)},
            },
            r"expected mu .* shape \(2048,\), got float64 of shape \(64,\)",
        ),
    ],
)
def test_npz_reader_rejects_bad_batches(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        inspect_image_batch(path)


def test_npz_reader_rejects_missing_and_non_npz_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected an .npz image batch at .*, no such file"):
        inspect_image_batch(tmp_path / "missing.npz")
    not_zip = tmp_path / "images.npy"
    np.save(not_zip, np.zeros((5, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="expected an .npz file"):
        inspect_image_batch(not_zip)


# --- weights ----------------------------------------------------------------------------------------------------


def test_weights_load_from_pth_safetensors_and_env(tmp_path, monkeypatch, model):
    state_dict = {key: value.clone() for key, value in model.state_dict().items()}
    pth, safetensors = tmp_path / "inception.pth", tmp_path / "inception.safetensors"
    torch.save(state_dict, pth)
    save_file(_without_counters(state_dict), str(safetensors))
    for path in (pth, safetensors):
        loaded = load_fid_inception(path).state_dict()
        assert all(torch.equal(loaded[key], value) for key, value in state_dict.items())
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(safetensors))
    assert resolve_inception_weights() == safetensors
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FileNotFoundError, match=rf"nowhere.pth' \(\${INCEPTION_WEIGHTS_ENV}\), no such file"):
        resolve_inception_weights()
    del state_dict["Mixed_7c.branch_pool.conv.weight"]
    state_dict["AuxLogits.fc.weight"] = torch.zeros(1)
    torch.save(state_dict, pth)
    expected = r"missing keys \['Mixed_7c.branch_pool.conv.weight'\], unexpected keys \['AuxLogits.fc.weight'\]"
    with pytest.raises(ValueError, match=expected):
        load_fid_inception(pth)


def test_inception_weights_that_would_run_code_are_refused_in_one_line(tmp_path):
    """A .pth whose pickle calls anything but tensors and plain containers is refused by safe_loading, naming the
    file and the global it would call, before any of it runs (an unpickling load would build the object)."""
    pth = tmp_path / "inception.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1), "where": Path("elsewhere")}, pth)
    expected = (rf"^expected FID Inception weights in {re.escape(repr(str(pth)))} \(tensors and plain values; nothing in "
                r"it is run\), got a pickle that calls pathlib\.\w*Path, which is code, not data, and is refused$")
    with pytest.raises(ValueError, match=expected):
        load_fid_inception(pth)


def test_missing_weights_offline_error_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(InceptionWeightsUnavailableError) as error:
        resolve_inception_weights()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("FID Inception weights unavailable")
    assert "--inception_weights" in message and INCEPTION_WEIGHTS_ENV in message


# --- scripts/evaluate.py ----------------------------------------------------------------------------------------------


def test_cli_end_to_end_with_precomputed_reference_statistics(
    tmp_path, capsys, model, ref_images, shifted_images, ref_features, shifted_features
):
    weights = tmp_path / "random_inception.safetensors"
    save_file(_without_counters(model.state_dict()), str(weights))
    # The reference carries statistics equal to the samples' own: FID and sFID come out ~0 only if they are used
    # (its images are the shifted ones), while precision/recall use the reference images' features.
    pool_stats, spatial_stats = compute_statistics(ref_features[0]), compute_statistics(ref_features[1])
    ref = _save_batch(
        tmp_path / "ref.npz", shifted_images,
        mu=pool_stats.mu, sigma=pool_stats.sigma, mu_s=spatial_stats.mu, sigma_s=spatial_stats.sigma,
    )  # fmt: skip
    samples = _save_batch(tmp_path / "samples.npz", ref_images)
    out_json = tmp_path / "results.json"
    argv = [str(ref), str(samples), "--batch_size", "4", "--device", "cpu", "--json", str(out_json)]
    argv += ["--inception_weights", str(weights)]
    assert _load_evaluate_script().main(argv) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:5] == [
        "computing reference batch activations...",
        "computing/reading reference batch statistics...",
        "computing sample batch activations...",
        "computing/reading sample batch statistics...",
        "Computing evaluations...",
    ]
    names = ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    assert [line.split(": ")[0] for line in lines[5:]] == names
    printed = {name: float(line.split(": ")[1]) for name, line in zip(names, lines[5:])}
    report = json.loads(out_json.read_text())
    assert report["num_ref_images"] == report["num_sample_images"] == NUM_IMAGES
    assert [report[key] for key in ("inception_score", "fid", "sfid", "precision", "recall")] == list(printed.values())
    assert abs(report["fid"]) < 1e-6 and abs(report["sfid"]) < 1e-6
    assert report["inception_score"] >= 1.0
    assert (report["precision"], report["recall"]) == precision_recall(shifted_features[0], ref_features[0])


def test_cli_rejects_bad_input_before_any_work(tmp_path, capsys, ref_images):
    evaluate = _load_evaluate_script()
    good = _save_batch(tmp_path / "good.npz", ref_images)
    nchw = _save_batch(tmp_path / "nchw.npz", ref_images.transpose(0, 3, 1, 2).copy())
    missing_weights = str(tmp_path / "no_weights.pth")
    json_in_missing_dir = str(tmp_path / "no_dir" / "out.json")
    statistics = {"mu": np.zeros(2048), "sigma": np.eye(2048), "mu_s": np.zeros(2023), "sigma_s": np.eye(2023)}
    nan_mu = _save_batch(tmp_path / "nan_mu.npz", ref_images, **{**statistics, "mu": np.full(2048, np.nan)})
    inf_sigma_s = np.eye(2023)
    inf_sigma_s[3, 3] = np.inf
    inf_sigma = _save_batch(tmp_path / "inf_sigma_s.npz", ref_images, **{**statistics, "sigma_s": inf_sigma_s})
    skewed_sigma = np.eye(2048)
    skewed_sigma[0, 5] = 0.5
    skewed = _save_batch(tmp_path / "skewed.npz", ref_images, **{**statistics, "sigma": skewed_sigma})
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    locked = _save_batch(read_only / "locked.npz", ref_images)
    read_only.chmod(0o555)
    image_folder = tmp_path / "folder"
    image_folder.mkdir()
    folder_npz = tmp_path / "folder.npz"
    folder_npz.mkdir()
    short = tmp_path / "short.npz"  # arr_0's header promises 8 images, the member holds 7
    with zipfile.ZipFile(short, "w") as archive:
        buffer = io.BytesIO()
        np.save(buffer, ref_images)
        archive.writestr("arr_0.npy", buffer.getvalue()[: -32 * 32 * 3])
    cases = [
        *(  # root writes into a read-only folder anyway
            [([str(locked), str(good), "--cache"], "expected --cache: the batch in an existing writable directory")]
            if os.geteuid() != 0 else []
        ),
        ([str(tmp_path / "missing.npz"), str(good)], "expected an .npz image batch or a folder of images at"),
        ([str(good), str(short)], "to hold 24576 bytes for its shape (8, 32, 32, 3), got 21504 (a truncated array)"),
        # A folder where the reference batch would go: refused before the pass, not after it (issue 23).
        (["--write_reference", str(folder_npz), "--overwrite", "--source", str(good)], "expected --write_reference to name a file, got the folder"),
        ([str(good), str(nchw)], "(NCHW? the originals store NHWC)"),
        ([str(good), str(good), "--batch_size", "0"], "expected --batch_size >= 1, got 0"),
        ([str(good), str(good), "--json", json_in_missing_dir], "expected --json in an existing directory"),
        ([str(good), str(good), "--json", str(image_folder)], "expected --json to name a file, got the folder"),
        ([str(good), str(good)], "no_weights.pth' (the given path), no such file"),
        # Non-finite precomputed statistics: refused from the file, before the network is built.
        ([str(nan_mu), str(good)], "expected finite values in mu of"),
        ([str(nan_mu), str(good)], "got 2048 NaN or infinite"),
        ([str(good), str(inf_sigma)], "expected finite values in sigma_s of"),
        ([str(skewed), str(good)], "to be a covariance (symmetric), got entries differing from their transposes by up to 0.5"),
        ([str(good)], "expected two batches (REF_BATCH SAMPLE_BATCH), got 1"),
        ([str(good), str(good), "--image_size", "32"], "expected --image_size only with --write_reference"),
        (["--write_reference", str(tmp_path / "ref_out.npz")], "expected --source with --write_reference"),
        (["--write_reference", str(good), "--source", str(good)], "exists (pass --overwrite)"),
        (["--write_reference", str(tmp_path / "r.npz"), "--source", str(image_folder)], "expected --image_size >= 1"),
        (["--write_reference", str(tmp_path / "r.npz"), "--source", str(good), "--image_size", "8"], "expected no --image_size"),
        (["--write_reference", str(tmp_path / "r.txt"), "--source", str(good)], "expected --write_reference to name an .npz"),
        ([str(good), "--write_reference", str(tmp_path / "r.npz"), "--source", str(good)], "expected no batches with"),
    ]
    for argv, message in cases:
        # A weights path that does not exist comes last in the checks: the batch errors win over it.
        assert evaluate.main([*argv, "--inception_weights", missing_weights]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    read_only.chmod(0o755)
    # Nothing was written: no cache, no reference batch, no temporary file.
    assert sorted(path.name for path in tmp_path.rglob("*")) == sorted(
        ["folder", "folder.npz", "good.npz", "inf_sigma_s.npz", "locked.npz", "nan_mu.npz", "nchw.npz", "read_only", "short.npz",
         "skewed.npz"]
    )

