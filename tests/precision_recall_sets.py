"""The feature sets precision and recall are checked on against the original evaluator run in TensorFlow.

Pure numpy, so that ``benchmarks/precision_recall_tensorflow.py`` (run in an environment with TensorFlow) and the
tests build the same vectors from the same seeds. Each set's float32 bytes are hashed into the fixture, so a
generator that drifts (another numpy) fails loudly instead of comparing against figures of other vectors.
"""

from __future__ import annotations

import hashlib

import numpy as np

ORIGINAL_BATCH_SIZE = 10000


def lattice(seed: int, n: int, dim: int = 8) -> np.ndarray:
    """Points near an integer lattice: exact distances differ by ~1e-3, float16 rounds many of them to one value."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 4, size=(n, dim)) + rng.normal(0, 2e-3, size=(n, dim))).astype(np.float32)


def pool_like(seed: int, n: int, scale: float = 1.0) -> np.ndarray:
    """Non-negative 2048-d vectors around 50 shared centres, squared norms ~2500."""
    centres = np.random.default_rng(0).gamma(2.0, 0.2, size=(50, 2048))
    rng = np.random.default_rng(seed)
    return (scale * centres[rng.integers(0, 50, n)] * rng.lognormal(0, 0.9, size=(n, 2048))).astype(np.float32)


def pool_like_partly_large(seed: int, n: int, large: slice) -> np.ndarray:
    """:func:`pool_like` with the vectors of ``large`` x6: their squared norms exceed float16's range."""
    features = pool_like(seed, n)
    features[large] *= 6
    return features


def odd_widths(seed: int) -> dict[str, np.ndarray]:
    """Vectors whose float16 squared norms take every path of TensorFlow's CPU sum: widths below one packet of 8,
    with a tail after whole packets, and above the 1600 values where a row is summed as two halves, whose split
    depends on the row's offset in the flat tensor (2023, the sFID width, is odd)."""
    rng = np.random.default_rng(seed)
    return {
        f"{width}d": (rng.gamma(1.5, 0.6, size=(19, width)) * rng.lognormal(0, 0.5, size=(19, 1))).astype(np.float32)
        for width in (5, 37, 1601, 2023, 2048)
    }


def pool3_like(
    seed: int,
    n: int,
    *,
    scale: float,
    num_classes: int,
    truncation: float = 1.0,
    noise_shape: float = 3.0,
    class_bias: float = 0.0,
    latent_dims: int = 16,
) -> np.ndarray:
    """Stand-ins for Inception ``pool_3`` features of a reference set (the defaults) or of a model's samples.

    ``pool_3`` is an 8x8 average of ReLU outputs: 2048 non-negative values per image, rarely exactly 0,
    right-skewed, with a per-dimension mean profile that all images share, class-dependent modulation and smooth
    variation within a class. Here a vector is ``scale * profile * modulation[label] * exp(loadings @ z) * noise``:
    a shared gamma profile (mean 0.4), a gamma modulation per class, a log-linear map of a ``latent_dims``-d
    normal ``z`` (the data manifold) and gamma noise per value. A model's samples (the other arguments) have the
    reference's classes with each class's modulation moved by a log-normal factor, truncated latents and less
    noise: precision above recall, as published models have. Values are rounded to multiples of 2**-16 (below
    float16's spacing above 0.03), so that a last-bit difference in another machine's ``exp`` or ``log`` does not
    change the float32 vectors.

    Args:
        seed: the per-image randomness (labels, latents and noise).
        n: number of vectors.
        scale: multiplies everything (squared norms grow as ``scale**2``).
        num_classes: classes in the mixture (ImageNet: 1000); it also seeds the shared parts.
        truncation: standard deviation of the latents.
        noise_shape: gamma shape of the noise (mean 1; larger is less noise).
        class_bias: log-normal sigma of the model's move of each class's modulation (0: none).
        latent_dims: dimension of the within-class manifold.
    """
    shared = np.random.default_rng(1000 + num_classes)
    profile = shared.gamma(1.0, 0.4, size=2048)
    modulation = shared.gamma(2.0, 0.5, size=(num_classes, 2048))
    loadings = shared.normal(0, 0.5 / np.sqrt(latent_dims), size=(latent_dims, 2048))
    if class_bias:
        modulation = modulation * np.random.default_rng(2000 + num_classes).lognormal(0, class_bias, modulation.shape)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    latents = rng.normal(0, truncation, size=(n, latent_dims))
    noise = rng.gamma(noise_shape, 1 / noise_shape, size=(n, 2048))
    # Latent by latent (element-wise, no BLAS), so every machine sums in one order.
    log_manifold = np.zeros((n, 2048))
    for k in range(latent_dims):
        log_manifold += latents[:, k : k + 1] * loadings[k]
    features = scale * profile * modulation[labels] * np.exp(log_manifold) * noise
    return (np.round(features * 2.0**16) / 2.0**16).astype(np.float32)


def imagenet_like(seed: int, n: int, model: bool) -> np.ndarray:
    """:func:`pool3_like` with ImageNet's 1000 classes, squared norms ~1200-4400 (median ~1900)."""
    distortion = dict(truncation=0.9, noise_shape=3.3, class_bias=0.2) if model else {}
    return pool3_like(seed, n, scale=1.0, num_classes=1000, **distortion)


def lsun_like(seed: int, n: int, model: bool) -> np.ndarray:
    """:func:`pool3_like` of one class (a scene dataset like LSUN bedrooms), squared norms ~2900-9400."""
    distortion = dict(truncation=0.95, noise_shape=3.1, class_bias=0.1) if model else {}
    return pool3_like(seed, n, scale=1.4, num_classes=1, **distortion)


# name: (reference, samples, row_batch_size, col_batch_size). The first three are the sets the tests have used (in
# the third, the blocks touching the large vectors fall back to float32, the others stay float16); the *_like sets are
# the realistic stand-ins (see pool3_like), in blocks of the original's size.
_FULL = ORIGINAL_BATCH_SIZE
SETS = {
    "lattice_300v200": (lambda: lattice(3, 300), lambda: lattice(4, 200), _FULL, _FULL),
    "pool_like_1000v1000": (lambda: pool_like(1, 1000), lambda: pool_like(2, 1000), _FULL, _FULL),
    "pool_like_partly_large_150v120_blocks_32x24": (
        lambda: pool_like_partly_large(5, 150, slice(64, 96)),
        lambda: pool_like_partly_large(6, 120, slice(48, 72)),
        32,
        24,
    ),
    "imagenet_like_2000v2000": (
        lambda: imagenet_like(11, 2000, False),
        lambda: imagenet_like(12, 2000, True),
        _FULL,
        _FULL,
    ),
    "lsun_like_2000v2000": (lambda: lsun_like(11, 2000, False), lambda: lsun_like(12, 2000, True), _FULL, _FULL),
}
# The realistic stand-ins at the size of the originals' reference batches (full 10000 x 10000 blocks); slow tests.
LARGE_SETS = {
    "imagenet_like_10000v10000": (
        lambda: imagenet_like(21, 10000, False),
        lambda: imagenet_like(22, 10000, True),
        _FULL,
        _FULL,
    ),
    "lsun_like_10000v10000": (lambda: lsun_like(21, 10000, False), lambda: lsun_like(22, 10000, True), _FULL, _FULL),
}


def features_digest(features: np.ndarray) -> str:
    """SHA-256 of the float32 bytes (C order) of a feature set."""
    return hashlib.sha256(np.ascontiguousarray(features, dtype=np.float32).tobytes()).hexdigest()
