"""The evaluator's feature cache: a batch's Inception features and FID statistics in an ``.npz`` beside the batch.

``samples.npz`` gets ``samples.inception-features.npz`` holding ``pool_features`` (N, 2048), ``spatial_features``
(N, 2023), ``mu``/``sigma``/``mu_s``/``sigma_s``, and ``key``: a JSON text naming what the features were computed
from (the SHA-256 of the batch file's bytes, a fingerprint of the network's weights, whether TF32 was allowed, the
format version). A cache whose key differs from the batch's key now is stale and is recomputed; nothing in it is
unpickled (``allow_pickle=False``), and it is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..publishing import write_atomically
from .metrics import FIDStatistics, compute_statistics

CACHE_SUFFIX = ".inception-features.npz"
# Bumped whenever what the cached features mean changes.
CACHE_FORMAT_VERSION = 1
_HASH_CHUNK_BYTES = 16 << 20


@dataclass(eq=False)
class BatchFeatures:
    """A batch's Inception features and their FID statistics.

    Attributes:
        pool_features: float32 ``(N, 2048)``.
        spatial_features: float32 ``(N, 2023)``.
        pool_statistics: statistics of ``pool_features``.
        spatial_statistics: statistics of ``spatial_features``.
    """

    pool_features: np.ndarray
    spatial_features: np.ndarray
    pool_statistics: FIDStatistics
    spatial_statistics: FIDStatistics

    @classmethod
    def from_features(cls, pool_features: np.ndarray, spatial_features: np.ndarray) -> BatchFeatures:
        """Fit the statistics to the features."""
        return cls(
            pool_features, spatial_features, compute_statistics(pool_features), compute_statistics(spatial_features)
        )


def cache_path(batch_path: str | os.PathLike) -> Path:
    """Where the cache of ``batch_path`` lives: ``NAME.inception-features.npz`` beside ``NAME.npz``."""
    batch_path = Path(batch_path)
    return batch_path.with_name(batch_path.stem + CACHE_SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over a network's state dict (names, dtypes, shapes, values), so other weights mean another key."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(batch_path: str | os.PathLike, model_fingerprint: str, allow_tf32: bool) -> str:
    """The key a cache of ``batch_path`` must carry to be served: JSON of what its features depend on."""
    return json.dumps(
        {
            "format": CACHE_FORMAT_VERSION,
            "batch_sha256": file_sha256(batch_path),
            "inception_weights_sha256": model_fingerprint,
            "allow_tf32": bool(allow_tf32),
        },
        sort_keys=True,
    )


def load_cached_features(batch_path: str | os.PathLike, key: str) -> BatchFeatures | None:
    """The cached features of ``batch_path`` if its cache exists and carries ``key``; else None (absent or stale).

    Raises:
        ValueError: the cache file exists with the right key but is damaged (one line; delete it to recompute).
    """
    path = cache_path(batch_path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "key" not in arrays.files or str(arrays["key"]) != key:
                return None
            pool, spatial = arrays["pool_features"], arrays["spatial_features"]
            stored = [arrays[name] for name in ("mu", "sigma", "mu_s", "sigma_s")]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"expected a feature cache at {str(path)!r}, could not read it ({error}); delete it") from error
    if pool.ndim != 2 or spatial.ndim != 2 or len(pool) != len(spatial):
        raise ValueError(f"expected matching (N, D) features in {str(path)!r}, got {pool.shape} and {spatial.shape}")
    if len(pool) <= pool.shape[1]:
        # Few vectors: the statistics keep their low-rank factor, cheap to refit.
        return BatchFeatures.from_features(pool, spatial)
    mu, sigma, mu_s, sigma_s = stored
    return BatchFeatures(pool, spatial, FIDStatistics(mu, sigma), FIDStatistics(mu_s, sigma_s))


def save_cached_features(batch_path: str | os.PathLike, key: str, features: BatchFeatures) -> Path:
    """Write the cache of ``batch_path`` (atomically), replacing a stale one."""
    path = cache_path(batch_path)
    arrays = {
        "key": np.array(key),
        "pool_features": features.pool_features,
        "spatial_features": features.spatial_features,
        "mu": features.pool_statistics.mu,
        "sigma": features.pool_statistics.sigma,
        "mu_s": features.spatial_statistics.mu,
        "sigma_s": features.spatial_statistics.sigma,
    }
    write_atomically(path, lambda file: np.savez(file, **arrays), ".npz")
    return path
