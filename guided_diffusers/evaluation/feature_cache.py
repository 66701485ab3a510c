"""The evaluator's feature cache: a batch's Inception features and FID statistics in an ``.npz`` beside the batch.

``samples.npz`` gets ``samples.inception-features.npz`` holding ``pool_features`` (N, 2048), ``spatial_features``
(N, 2023), ``mu``/``sigma``/``mu_s``/``sigma_s``, and ``key``: a JSON text naming what the features were computed
from (the SHA-256 of the batch file's bytes, a fingerprint of the network's weights, whether TF32 was allowed, the
format version). A cache whose key differs from the batch's key now is stale, and one that cannot be read or whose
arrays do not fit the batch (too few rows, another width, NaN, a missing statistic) is damaged: either is a cache miss
(:class:`StaleCacheError`, one line naming the file), recomputed and replaced, never served. Nothing in it is
unpickled (``allow_pickle=False``), and it is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..publishing import write_atomically
from .inception import POOL_FEATURES_DIM, SPATIAL_FEATURES_DIM
from .metrics import FIDStatistics, compute_statistics

CACHE_SUFFIX = ".inception-features.npz"
# Bumped whenever what the cached features mean changes.
CACHE_FORMAT_VERSION = 1
_HASH_CHUNK_BYTES = 16 << 20
_FEATURE_DIMS = {"pool_features": POOL_FEATURES_DIM, "spatial_features": SPATIAL_FEATURES_DIM}
_STATISTICS_DIMS = {"mu": POOL_FEATURES_DIM, "sigma": POOL_FEATURES_DIM, "mu_s": SPATIAL_FEATURES_DIM, "sigma_s": SPATIAL_FEATURES_DIM}


class StaleCacheError(ValueError):
    """A feature cache that must not be served: stale (another key) or damaged; the one-line message names the file
    and why. The evaluator recomputes the features and replaces the cache."""


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


def load_cached_features(batch_path: str | os.PathLike, key: str, num_images: int) -> BatchFeatures | None:
    """The cached features of ``batch_path`` if its cache exists, carries ``key`` and fits the batch; None when absent.

    Args:
        batch_path: the ``.npz`` batch.
        key: the key the batch has now ([`cache_key`]).
        num_images: the batch's number of images: the cache must hold exactly one feature row per image.

    Raises:
        StaleCacheError: the cache exists but must not be served: another key (stale), or damaged (unreadable, a
            missing array, another shape, non-finite values); one line naming the file and why.
    """
    path = cache_path(batch_path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if "key" not in stored.files:
                raise StaleCacheError(f"{path} is damaged (no key)")
            if str(stored["key"]) != key:
                raise StaleCacheError(f"{path} is stale (another file, other weights or TF32 setting)")
            missing = [name for name in (*_FEATURE_DIMS, *_STATISTICS_DIMS) if name not in stored.files]
            if missing:
                raise StaleCacheError(f"{path} is damaged (no {', '.join(missing)})")
            arrays = {name: stored[name] for name in (*_FEATURE_DIMS, *_STATISTICS_DIMS)}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        if isinstance(error, StaleCacheError):
            raise
        reason = " ".join(str(error).split()) or "no message"
        raise StaleCacheError(f"{path} is damaged (unreadable: {type(error).__name__}: {reason})") from None
    for name, dim in _FEATURE_DIMS.items():
        if arrays[name].shape != (num_images, dim):
            raise StaleCacheError(f"{path} is damaged ({name} of shape {arrays[name].shape} for the batch's {num_images} images of {dim} features)")
    for name, dim in _STATISTICS_DIMS.items():
        shape = (dim,) if name.startswith("mu") else (dim, dim)
        if arrays[name].shape != shape:
            raise StaleCacheError(f"{path} is damaged ({name} of shape {arrays[name].shape}, expected {shape})")
    for name, array in arrays.items():
        if array.dtype.kind != "f" or not np.isfinite(array).all():
            raise StaleCacheError(f"{path} is damaged ({name} is not finite floats)")
    pool, spatial = arrays["pool_features"], arrays["spatial_features"]
    if len(pool) <= pool.shape[1]:
        # Few vectors: the statistics keep their low-rank factor, cheap to refit.
        return BatchFeatures.from_features(pool, spatial)
    return BatchFeatures(pool, spatial, FIDStatistics(arrays["mu"], arrays["sigma"]), FIDStatistics(arrays["mu_s"], arrays["sigma_s"]))


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
