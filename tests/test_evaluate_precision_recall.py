"""Precision and recall against the original evaluator's algorithm, written here independently in numpy from its
definition (guided-diffusion ``evaluations/evaluator.py``: ``ManifoldEstimator`` over ``DistanceBlock``): features
rounded to float16, ``max(|u|^2 - 2 u.v + |v|^2, 0)`` with every result rounded to float16 (norms and products
accumulated in float32, as TensorFlow's GPU kernels do), a block recomputed in float32 when any of its float16
distances is not finite, radii the 4th smallest of a row (the vector itself first), ``<=`` against them."""

import numpy as np
import pytest

from guided_diffusers.evaluation import manifold_radii, precision_recall
from guided_diffusers.evaluation.metrics import float16_squared_distances

ORIGINAL_BATCH_SIZE = 10000


def _original_distance_block(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u16, v16 = u.astype(np.float16), v.astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        norms_u = (u16 * u16).sum(axis=1, dtype=np.float32).astype(np.float16)
        norms_v = (v16 * v16).sum(axis=1, dtype=np.float32).astype(np.float16)
        products = (u16.astype(np.float32) @ v16.astype(np.float32).T).astype(np.float16)
        block = np.maximum((norms_u[:, None] - np.float16(2) * products) + norms_v[None, :], np.float16(0))
    if np.isfinite(block).all():
        return block.astype(np.float32)
    u32, v32 = u.astype(np.float32), v.astype(np.float32)
    exact = (u32 * u32).sum(axis=1)[:, None] - 2 * (u32 @ v32.T) + (v32 * v32).sum(axis=1)[None, :]
    return np.maximum(exact, np.float32(0))


def _original_radii(features, k, row_batch, col_batch):
    radii = np.zeros(len(features), np.float32)
    for start in range(0, len(features), row_batch):
        rows = features[start : start + row_batch]
        blocks = [_original_distance_block(rows, features[c : c + col_batch]) for c in range(0, len(features), col_batch)]
        radii[start : start + row_batch] = np.partition(np.concatenate(blocks, axis=1), k, axis=1)[:, k]
    return radii


def _original_precision_recall(ref, samples, k=3, row_batch=ORIGINAL_BATCH_SIZE, col_batch=ORIGINAL_BATCH_SIZE):
    ref_radii, sample_radii = _original_radii(ref, k, row_batch, col_batch), _original_radii(samples, k, row_batch, col_batch)
    ref_in, samples_in = np.zeros(len(ref), bool), np.zeros(len(samples), bool)
    for r in range(0, len(ref), row_batch):
        for s in range(0, len(samples), col_batch):
            block = _original_distance_block(ref[r : r + row_batch], samples[s : s + col_batch])
            ref_in[r : r + row_batch] |= (block <= sample_radii[None, s : s + col_batch]).any(axis=1)
            samples_in[s : s + col_batch] |= (block <= ref_radii[r : r + row_batch, None]).any(axis=0)
    return float(samples_in.mean()), float(ref_in.mean())


def _lattice(seed, n, dim=8):
    # Points near an integer lattice: exact distances differ by ~1e-3, float16 rounds many of them to one value.
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 4, size=(n, dim)) + rng.normal(0, 2e-3, size=(n, dim))).astype(np.float32)


def _pool_like(seed, n, scale=1.0):
    # Non-negative 2048-d vectors around 50 shared centres, squared norms ~2500 like Inception pool_3 features.
    centres = np.random.default_rng(0).gamma(2.0, 0.2, size=(50, 2048))
    rng = np.random.default_rng(seed)
    return (scale * centres[rng.integers(0, 50, n)] * rng.lognormal(0, 0.9, size=(n, 2048))).astype(np.float32)


def test_float16_distances_equal_the_originals_block_and_fall_back_on_overflow():
    import torch

    rows, columns = _pool_like(1, 40), _pool_like(2, 30)
    ours = float16_squared_distances(torch.from_numpy(rows), torch.from_numpy(columns)).numpy()
    np.testing.assert_array_equal(ours, _original_distance_block(rows, columns))
    assert ours.dtype == np.float32 and np.array_equal(ours.astype(np.float16).astype(np.float32), ours)
    # x 6: squared norms above 65504 -> the whole block in float32 (values no longer float16-representable).
    big = float16_squared_distances(torch.from_numpy(6 * rows), torch.from_numpy(6 * columns)).numpy()
    np.testing.assert_allclose(big, _original_distance_block(6 * rows, 6 * columns), rtol=1e-5)
    assert big.max() > np.finfo(np.float16).max and np.isfinite(big).all()


def test_precision_recall_matches_the_original_where_exact_distances_do_not():
    ref, samples = _lattice(3, 300), _lattice(4, 200)
    original = _original_precision_recall(ref, samples)
    ours = precision_recall(ref, samples)
    assert abs(ours[0] - original[0]) <= 1e-3 and abs(ours[1] - original[1]) <= 1e-3, (ours, original)
    # The exact modes do not count the float16 ties in: they differ here, by whole points.
    for precision in ("float32", "float64"):
        exact = precision_recall(ref, samples, distance_precision=precision)
        assert max(abs(exact[0] - original[0]), abs(exact[1] - original[1])) > 0.01, (precision, exact, original)
    np.testing.assert_array_equal(manifold_radii(ref), _original_radii(ref, 3, ORIGINAL_BATCH_SIZE, ORIGINAL_BATCH_SIZE))


def test_precision_recall_matches_the_original_on_pool_like_features():
    ref, samples = _pool_like(1, 1000), _pool_like(2, 1000)
    original = _original_precision_recall(ref, samples)
    ours = precision_recall(ref, samples)
    assert abs(ours[0] - original[0]) <= 1e-3 and abs(ours[1] - original[1]) <= 1e-3, (ours, original)
    assert 0.2 < original[0] < 0.8 and 0.2 < original[1] < 0.8
    exact = precision_recall(ref, samples, distance_precision="float32")
    # Fewer ties counted in: not higher, and lower in sum, as the issue measured on real features.
    assert exact[0] <= original[0] and exact[1] <= original[1] and sum(exact) < sum(original)


def test_precision_recall_follows_the_originals_blocks_when_only_some_overflow():
    # A third of the vectors are large: blocks touching them fall back to float32, the others stay float16.
    ref, samples = _pool_like(5, 150), _pool_like(6, 120)
    ref[::3] *= 6
    samples[1::3] *= 6
    original = _original_precision_recall(ref, samples, row_batch=32, col_batch=24)
    ours = precision_recall(ref, samples, row_batch_size=32, col_batch_size=24)
    assert abs(ours[0] - original[0]) <= 1e-3 and abs(ours[1] - original[1]) <= 1e-3, (ours, original)
    # float32 blocks agree to float32 rounding (summation order), float16 blocks exactly.
    ours_radii, original_radii = manifold_radii(ref, row_batch_size=32, col_batch_size=24), _original_radii(ref, 3, 32, 24)
    np.testing.assert_allclose(ours_radii, original_radii, rtol=1e-5)
    assert np.array_equal(ours_radii[ours_radii <= 2048], original_radii[original_radii <= 2048])


def test_precision_recall_refuses_unknown_precision_and_non_finite_features():
    ref = _lattice(3, 10)
    with pytest.raises(ValueError, match=r"expected distance_precision in \('float16', 'float32', 'float64'\), got 'half'"):
        precision_recall(ref, ref, distance_precision="half")
    bad = ref.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="expected finite feature vectors"):
        precision_recall(ref, bad)
