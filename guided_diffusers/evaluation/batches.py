"""The originals' ``.npz`` batches (images as ``arr_0``, uint8 NHWC, optionally FID statistics): reading, atomic writing.

Images are RGB ``(N, H, W, 3)`` as the originals write them, or grey ``(N, H, W, 1)`` as ``guided-diffusers-sample``
writes a grey model's samples (the evaluator reads grey as RGB, its channel repeated).

A reference batch of the originals (e.g. ``VIRTUAL_imagenet256_labeled.npz``) holds ``arr_0`` and may hold
``mu``/``sigma`` (pool features) and ``mu_s``/``sigma_s`` (spatial features); a sample batch is what the
originals' sampling scripts save (``np.savez(path, arr_0)``, sometimes with labels as ``arr_1``). Images are read
in batches straight from the zip member, so a 50k-image batch never sits in memory whole.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..publishing import write_atomically
from .inception import POOL_FEATURES_DIM, SPATIAL_FEATURES_DIM
from .metrics import MANIFOLD_NUM_NEIGHBOURS, FIDStatistics

IMAGES_KEY = "arr_0"
# Precomputed statistics keys and the shapes the evaluator's features give them.
STATISTICS_SHAPES = {
    "mu": (POOL_FEATURES_DIM,),
    "sigma": (POOL_FEATURES_DIM, POOL_FEATURES_DIM),
    "mu_s": (SPATIAL_FEATURES_DIM,),
    "sigma_s": (SPATIAL_FEATURES_DIM, SPATIAL_FEATURES_DIM),
}


@dataclass(frozen=True)
class ImageBatchInfo:
    """What an ``.npz`` batch holds, read from its array headers only.

    Attributes:
        path: the file.
        num_images: N of ``arr_0``.
        height: H of ``arr_0``.
        width: W of ``arr_0``.
        has_statistics: whether it carries precomputed ``mu``/``sigma``/``mu_s``/``sigma_s``.
    """

    path: Path
    num_images: int
    height: int
    width: int
    has_statistics: bool


def _read_npy_header(member: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` of an .npy stream positioned at its start; None for unknown versions."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    return None


def _array_header(archive: zipfile.ZipFile, path: Path, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An array's ``(shape, fortran_order, dtype)``, refused in one line when the member holds fewer bytes than its
    header promises (a short array would end the work halfway with a traceback)."""
    with archive.open(f"{name}.npy") as member:
        header = _read_npy_header(member)
        data_offset = member.tell()
    if header is None:  # a newer .npy version: np.load understands it, at the cost of reading the array
        with np.load(path) as arrays:
            array = arrays[name]
        return (array.shape, bool(np.isfortran(array)), array.dtype)
    shape, _, dtype = header
    expected = int(np.prod(shape)) * dtype.itemsize
    held = archive.getinfo(f"{name}.npy").file_size - data_offset
    if not dtype.hasobject and held < expected:
        raise ValueError(f"expected {name} in {str(path)!r} to hold {expected} bytes for its shape {tuple(shape)}, got {held} (a truncated array)")
    return header


def inspect_image_batch(
    path: str | os.PathLike, min_images: int = MANIFOLD_NUM_NEIGHBOURS + 1
) -> ImageBatchInfo:
    """Check an ``.npz`` batch without reading its images: ``arr_0`` uint8 ``(N, H, W, 3)`` (or grey ``(N, H, W, 1)``)
    holding all its bytes, statistics complete and finite.

    Args:
        path: the ``.npz`` file.
        min_images: the fewest images accepted (precision/recall need more than k=3 per set).

    Returns:
        the batch's :class:`ImageBatchInfo`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an .npz, no ``arr_0``, a wrong dtype or layout, too few images, or incomplete or misshapen
            precomputed statistics (one line saying what was expected and what came).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expected an .npz image batch at {str(path)!r}, no such file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise ValueError(
            f"expected an .npz file (a zip of .npy arrays) at {str(path)!r}, could not open it: {error}"
        ) from error
    with archive:
        arrays = sorted(name[: -len(".npy")] for name in archive.namelist() if name.endswith(".npy"))
        if IMAGES_KEY not in arrays:
            raise ValueError(f"expected an {IMAGES_KEY!r} image array in {str(path)!r}, found arrays {arrays}")
        shape, _, dtype = _array_header(archive, path, IMAGES_KEY)
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
            hint = " (NCHW? the originals store NHWC)" if len(shape) == 4 and shape[1] in (1, 3) and shape[-1] not in (1, 3) else ""
            raise ValueError(
                f"expected {IMAGES_KEY} in {str(path)!r} as uint8 images of shape (N, H, W, 3) (or grey (N, H, W, 1)), "
                f"got {dtype} of shape {tuple(shape)}{hint}"
            )
        if shape[0] < min_images or shape[1] < 1 or shape[2] < 1:
            raise ValueError(
                f"expected at least {min_images} non-empty images in {str(path)!r}, "
                f"got {IMAGES_KEY} of shape {tuple(shape)}"
            )
        present = [name for name in STATISTICS_SHAPES if name in arrays]
        if present:
            missing = [name for name in STATISTICS_SHAPES if name not in arrays]
            if missing:
                raise ValueError(
                    f"expected precomputed statistics {list(STATISTICS_SHAPES)} in {str(path)!r}, missing {missing}"
                )
            for name, expected_shape in STATISTICS_SHAPES.items():
                stat_shape, _, stat_dtype = _array_header(archive, path, name)
                if tuple(stat_shape) != expected_shape or stat_dtype.kind != "f":
                    raise ValueError(
                        f"expected {name} in {str(path)!r} as floats of shape {expected_shape}, "
                        f"got {stat_dtype} of shape {tuple(stat_shape)}"
                    )
            # The statistics are small (tens of MB): read them now, so a NaN is refused before any network pass.
            with np.load(path, allow_pickle=False) as stored:
                for name in STATISTICS_SHAPES:
                    values = stored[name]
                    if not np.isfinite(values).all():
                        raise ValueError(
                            f"expected finite values in {name} of {str(path)!r}, "
                            f"got {int(np.size(values) - np.isfinite(values).sum())} NaN or infinite"
                        )
                    if values.ndim == 2:
                        asymmetry = float(np.abs(values - values.T).max())
                        if asymmetry > 1e-6 * max(float(np.abs(values).max()), 1e-30):
                            raise ValueError(
                                f"expected {name} of {str(path)!r} to be a covariance (symmetric), "
                                f"got entries differing from their transposes by up to {asymmetry:.3g}"
                            )
    return ImageBatchInfo(path, int(shape[0]), int(shape[1]), int(shape[2]), bool(present))


def iterate_image_batches(
    path: str | os.PathLike, batch_size: int, start: int = 0, stop: int | None = None
) -> Iterator[np.ndarray]:
    """Yield ``arr_0[start:stop]`` in consecutive uint8 ``(B, H, W, 3)`` batches, streamed from the zip member.

    Args:
        path: an ``.npz`` batch (checked first with :func:`inspect_image_batch`).
        batch_size: images per batch (the last batch may be smaller).
        start: the first image (one process's shard starts here; the images before it are skipped, not decoded).
        stop: one past the last image (default: the end).

    Yields:
        writable uint8 arrays, in file order.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    path = Path(path)
    with zipfile.ZipFile(path) as archive, archive.open(f"{IMAGES_KEY}.npy") as member:
        header = _read_npy_header(member)
        if header is None or header[1] or header[2].hasobject:
            # Fortran order, object arrays or a newer format: read the whole array instead of streaming bytes.
            with np.load(path) as arrays:
                images = arrays[IMAGES_KEY]
            stop = images.shape[0] if stop is None else min(stop, images.shape[0])
            for first in range(start, stop, batch_size):
                yield np.ascontiguousarray(images[first : min(first + batch_size, stop)])
            return
        shape, _, dtype = header
        image_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        stop = shape[0] if stop is None else min(stop, shape[0])
        if start > 0:
            member.seek(start * image_bytes, os.SEEK_CUR)
        for start in range(start, stop, batch_size):
            count = min(batch_size, stop - start)
            data = member.read(count * image_bytes)
            if len(data) != count * image_bytes:
                raise ValueError(
                    f"expected {count * image_bytes} bytes of images {start}..{start + count} in {str(path)!r}, "
                    f"got {len(data)} (truncated file)"
                )
            yield np.frombuffer(bytearray(data), dtype=dtype).reshape(count, *shape[1:])


def read_precomputed_statistics(path: str | os.PathLike) -> tuple[FIDStatistics, FIDStatistics] | None:
    """The batch's precomputed ``(pool, spatial)`` statistics (``mu``/``sigma``, ``mu_s``/``sigma_s``), or None.

    Args:
        path: an ``.npz`` batch (checked first with :func:`inspect_image_batch`).

    Returns:
        ``(FIDStatistics(mu, sigma), FIDStatistics(mu_s, sigma_s))`` when the file has them, else None.
    """
    with np.load(path, allow_pickle=False) as arrays:
        if "mu" not in arrays.files:
            return None
        return FIDStatistics(arrays["mu"], arrays["sigma"]), FIDStatistics(arrays["mu_s"], arrays["sigma_s"])


def write_reference_batch(path: str | os.PathLike, images: np.ndarray, pool: FIDStatistics, spatial: FIDStatistics) -> Path:
    """Write a reference batch in the originals' format: ``arr_0`` (the images for precision and recall) and the
    FID statistics ``mu``/``sigma`` (pool) and ``mu_s``/``sigma_s`` (spatial), written atomically.

    Args:
        path: the ``.npz`` to write.
        images: uint8 ``(N, H, W, 3)``.
        pool: statistics of the pool features (of the whole source, which may hold more images than ``images``).
        spatial: statistics of the spatial features.

    Returns:
        the path written.
    """
    path = Path(path)
    arrays = {
        IMAGES_KEY: images,
        "mu": pool.mu,
        "sigma": pool.sigma,
        "mu_s": spatial.mu,
        "sigma_s": spatial.sigma,
    }
    write_atomically(path, lambda file: np.savez(file, **arrays), ".npz")
    return path
