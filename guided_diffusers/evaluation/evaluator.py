"""The originals' evaluator end to end: two batches (``.npz`` or image folders) -> Inception features -> IS, FID, sFID,
P/R; and reference batches in the originals' format from an image folder, a dataset or an ``.npz``.

Features are extracted by any number of processes (``accelerate launch``): each takes a contiguous run of the
Inception batches, the features are gathered, and the main process computes the metrics. The network pass runs
in full float32: TF32 convolutions and matrix products (PyTorch's default for cuDNN convolutions on Ampere and
later GPUs) are switched off for it and restored afterwards, unless ``allow_tf32`` asks for them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import inspect_image_batch, iterate_image_batches, read_precomputed_statistics, write_reference_batch
from .feature_cache import (
    BatchFeatures,
    StaleCacheError,
    cache_key,
    cache_path,
    load_cached_features,
    save_cached_features,
    weights_fingerprint,
)
from .inception import POOL_FEATURES_DIM, SPATIAL_FEATURES_DIM, FIDInceptionV3
from .metrics import FIDStatistics, RunningMoments, inception_score, precision_recall
from .settings import DEFAULT_BATCH_SIZE

# The original evaluator's pool vectors per softmax (DEFAULT_BATCH_SIZE: its images per Inception forward).
CLASS_LOGITS_BATCH_SIZE = 512


@dataclass
class SampleQualityResults:
    """The original evaluator's five numbers for a sample batch against a reference batch.

    Attributes:
        inception_score: Inception Score of the samples.
        fid: FID between samples and reference (pool features).
        sfid: sFID (the spatial ``mixed_6/conv`` features).
        precision: fraction of samples on the reference manifold.
        recall: fraction of reference images on the sample manifold.
    """

    inception_score: float
    fid: float
    sfid: float
    precision: float
    recall: float

    def report_lines(self) -> list[str]:
        """The lines the original evaluator prints, in its order and wording."""
        return [
            f"Inception Score: {self.inception_score}",
            f"FID: {self.fid}",
            f"sFID: {self.sfid}",
            f"Precision: {self.precision}",
            f"Recall: {self.recall}",
        ]

    def to_dict(self) -> dict[str, float]:
        """The results as a JSON-ready dict."""
        return asdict(self)


@torch.inference_mode()
def compute_activations(
    model: FIDInceptionV3,
    batches: Iterable[np.ndarray],
    device: str | torch.device = "cpu",
    num_batches: int | None = None,
    progress: bool = False,
    description: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool and spatial Inception features of uint8 NHWC image batches.

    Args:
        model: the feature network (on ``device``).
        batches: uint8 ``(B, H, W, 3)`` arrays with values in [0, 255]; grey ``(B, H, W, 1)`` is read as RGB (its
            channel repeated, as PIL converts grey to RGB).
        device: where the images go.
        num_batches: the number of batches, for the progress bar.
        progress: show a progress bar.
        description: the progress bar's label.

    Returns:
        float32 ``(N, 2048)`` pool features and ``(N, 2023)`` spatial features (``(0, D)`` for no batches).
    """
    pool_features = [np.zeros((0, POOL_FEATURES_DIM), np.float32)]
    spatial_features = [np.zeros((0, SPATIAL_FEATURES_DIM), np.float32)]
    for batch in tqdm(batches, total=num_batches, disable=not progress, desc=description, unit="batch"):
        images = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        features = model(images)
        pool_features.append(features.pool_features.float().cpu().numpy())
        spatial_features.append(features.spatial_features.float().cpu().numpy())
    return np.concatenate(pool_features), np.concatenate(spatial_features)


@torch.inference_mode()
def compute_class_logits(
    model: FIDInceptionV3, pool_features: np.ndarray, device: str | torch.device = "cpu"
) -> np.ndarray:
    """The Inception Score's logits (``pool_3`` times the classifier matrix) for ``(N, 2048)`` pool features."""
    logits = [
        model.class_logits(torch.from_numpy(pool_features[start : start + CLASS_LOGITS_BATCH_SIZE]).to(device)).cpu()
        for start in range(0, len(pool_features), CLASS_LOGITS_BATCH_SIZE)
    ]
    return torch.cat(logits).numpy()


@contextlib.contextmanager
def float32_precision(allow_tf32: bool = False) -> Iterator[None]:
    """Within the block, cuDNN convolutions and cuBLAS matrix products use full float32 (or TF32 if ``allow_tf32``);
    the previous settings come back afterwards.

    PyTorch lets cuDNN convolutions run in TF32 (10-bit mantissa inputs) on Ampere and later GPUs by default, which
    moves Inception features by ~1e-3 relative and FID by a different amount on each GPU generation; the originals'
    TensorFlow 1 evaluator ran float32. Without CUDA the settings change nothing.
    """
    precision = "tf32" if allow_tf32 else "ieee"
    if hasattr(torch.backends.cudnn, "conv") and hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        # PyTorch >= 2.9 refuses to mix its legacy allow_tf32 flags with these; use the new ones only.
        settings = [
            (torch.backends.cudnn.conv, "fp32_precision", precision),
            (torch.backends.cuda.matmul, "fp32_precision", precision),
        ]
    else:
        settings = [
            (torch.backends.cudnn, "allow_tf32", allow_tf32),
            (torch.backends.cuda.matmul, "allow_tf32", allow_tf32),
        ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


class ImageSource(Protocol):
    """Images to extract features from, read in runs: an ``.npz`` batch or decoded image files."""

    num_images: int

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 ``(B, H, W, 3)`` batches of the images ``start..stop - 1``."""
        ...

    def take(self, indices: np.ndarray) -> np.ndarray:
        """uint8 ``(len(indices), H, W, 3)``: the images at the sorted ``indices``."""
        ...


@dataclass(frozen=True)
class NpzImages:
    """The ``arr_0`` images of an ``.npz`` batch (checked with :func:`inspect_image_batch`)."""

    path: Path
    num_images: int

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        return iterate_image_batches(self.path, batch_size, start, stop)

    def take(self, indices: np.ndarray) -> np.ndarray:
        # One streaming pass (a compressed member cannot seek cheaply), keeping the chosen rows of each batch.
        kept, start = [], 0
        for batch in iterate_image_batches(self.path, DEFAULT_BATCH_SIZE):
            chosen = indices[(indices >= start) & (indices < start + len(batch))] - start
            kept.append(batch[chosen])
            start += len(batch)
        return np.concatenate(kept)


class DecodedImages:
    """Images of a folder or dataset (:class:`~guided_diffusers.evaluation.image_data.EvaluationImages`), as uint8."""

    def __init__(self, images: Any) -> None:
        self.images = images
        self.num_images = len(images)

    def batches(self, start: int, stop: int, batch_size: int) -> Iterator[np.ndarray]:
        for first in range(start, stop, batch_size):
            yield self.images.load_uint8(range(first, min(first + batch_size, stop)))

    def take(self, indices: np.ndarray) -> np.ndarray:
        # In chunks: the loader's float32 copy of 10000 large images at once would not fit in memory.
        chunks = [indices[first : first + DEFAULT_BATCH_SIZE] for first in range(0, len(indices), DEFAULT_BATCH_SIZE)]
        return np.concatenate([self.images.load_uint8(chunk) for chunk in chunks])


def shard_bounds(num_images: int, batch_size: int, process_index: int, num_processes: int) -> tuple[int, int]:
    """The images ``(start, stop)`` of one process: a contiguous run of whole Inception batches.

    The global batches are those of a single process (``[b * batch_size, (b + 1) * batch_size)``), dealt out in
    order, so every image is computed in the same batch as by one process.
    """
    num_batches = -(-num_images // batch_size)
    first = process_index * num_batches // num_processes
    last = (process_index + 1) * num_batches // num_processes
    return min(first * batch_size, num_images), min(last * batch_size, num_images)


def _gather_rows(rows: np.ndarray, counts: list[int], state: Any) -> np.ndarray:
    """Every process's ``rows`` (``counts[p]`` of them on process p), concatenated in process order, on every process."""
    from accelerate.utils import gather

    padded = np.zeros((max(counts), rows.shape[1]), dtype=np.float32)
    padded[: len(rows)] = rows
    gathered = gather(torch.from_numpy(padded).to(state.device)).cpu().numpy()
    stride = max(counts)
    return np.concatenate([gathered[p * stride : p * stride + count] for p, count in enumerate(counts)])


def extract_features(
    model: FIDInceptionV3,
    source: ImageSource,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    state: Any = None,
    progress: bool = False,
    description: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pool and spatial features of every image of ``source``, shared among ``state``'s processes.

    Args:
        model: the feature network (on ``device``).
        source: the images.
        batch_size: images per Inception forward.
        device: where the images go.
        state: an ``accelerate.PartialState`` (or ``Accelerator``) of several processes, each of which extracts one
            run of batches (:func:`shard_bounds`); the features are then gathered. None: this process does all.
        progress: show a progress bar (on the main process).
        description: the progress bar's label.

    Returns:
        float32 ``(N, 2048)`` and ``(N, 2023)`` features in image order, on every process.
    """
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    bounds = [shard_bounds(source.num_images, batch_size, p, world) for p in range(world)]
    start, stop = bounds[rank]
    pool, spatial = compute_activations(
        model,
        source.batches(start, stop, batch_size),
        device,
        num_batches=-(-(stop - start) // batch_size),
        progress=progress and rank == 0,
        description=description if world == 1 else f"{description or 'features'} (process 0 of {world})",
    )
    if world == 1:
        return pool, spatial
    counts = [high - low for low, high in bounds]
    both = _gather_rows(np.concatenate([pool, spatial], axis=1), counts, state)
    return np.ascontiguousarray(both[:, : pool.shape[1]]), np.ascontiguousarray(both[:, pool.shape[1] :])


def _gather_moments(moments: RunningMoments, state: Any) -> RunningMoments:
    """Every process's moments, merged in process order."""
    from accelerate.utils import gather

    dim = moments.mean.shape[0]
    packed = np.concatenate([[moments.count], moments.mean, moments.scatter.ravel()])
    gathered = gather(torch.from_numpy(packed).to(state.device)).cpu().numpy().reshape(state.num_processes, -1)
    merged = RunningMoments.of(np.zeros((0, dim)))
    for row in gathered:
        merged = merged.merge(RunningMoments(int(row[0]), row[1 : 1 + dim], row[1 + dim :].reshape(dim, dim)))
    return merged


def extract_statistics(
    model: FIDInceptionV3,
    source: ImageSource,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    state: Any = None,
    progress: bool = False,
    description: str | None = None,
) -> tuple[FIDStatistics, FIDStatistics] | None:
    """FID statistics of the pool and spatial features of every image of ``source``, without holding the features.

    Each process folds its run of batches (:func:`shard_bounds`) into float64 :class:`RunningMoments`; the moments
    (two D x D matrices per process, not N feature vectors) are gathered and merged. Memory does not grow with the
    number of images, so a whole training set can be the source.

    Args:
        model, source, batch_size, device, state, progress, description: as :func:`extract_features`.

    Returns:
        ``(pool, spatial)`` statistics on the main process, None on the others.
    """
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    start, stop = shard_bounds(source.num_images, batch_size, rank, world)
    if world > 1:
        description = f"{description or 'statistics'} (process 0 of {world})"
    pool = RunningMoments.of(np.zeros((0, POOL_FEATURES_DIM)))
    spatial = RunningMoments.of(np.zeros((0, SPATIAL_FEATURES_DIM)))
    batches = source.batches(start, stop, batch_size)
    total = -(-(stop - start) // batch_size)
    for batch in tqdm(batches, total=total, disable=not (progress and rank == 0), desc=description, unit="batch"):
        pool_features, spatial_features = compute_activations(model, [batch], device)
        pool = pool.merge(RunningMoments.of(pool_features))
        spatial = spatial.merge(RunningMoments.of(spatial_features))
    if world > 1:
        pool, spatial = _gather_moments(pool, state), _gather_moments(spatial, state)
    if rank != 0:
        return None
    return pool.statistics(), spatial.statistics()


def _broadcast_flag(flag: bool, state: Any) -> bool:
    """The main process's ``flag``, on every process."""
    if state is None or state.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=state.device), from_process=0).item())


def _batch_statistics(source: ImageSource, features: BatchFeatures) -> tuple[FIDStatistics, FIDStatistics]:
    # As the original: a batch's own mu/sigma (and mu_s/sigma_s) when it carries them, else fitted to its features.
    precomputed = read_precomputed_statistics(source.path) if isinstance(source, NpzImages) else None
    if precomputed is not None:
        return precomputed
    return features.pool_statistics, features.spatial_statistics


def image_source(batch: str | os.PathLike | ImageSource) -> ImageSource:
    """An evaluation batch as an :class:`ImageSource`: a path is an ``.npz`` batch, checked with
    :func:`inspect_image_batch`; a source (:class:`NpzImages`, :class:`DecodedImages` of an image folder) as it is."""
    if isinstance(batch, (str, os.PathLike)):
        info = inspect_image_batch(batch)
        return NpzImages(info.path, info.num_images)
    return batch


def evaluate_image_batches(
    ref_batch: str | os.PathLike | ImageSource,
    sample_batch: str | os.PathLike | ImageSource,
    model: FIDInceptionV3,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    progress: bool = True,
    *,
    state: Any = None,
    cache: bool = False,
    distance_precision: str = "float16",
    allow_tf32: bool = False,
) -> SampleQualityResults | None:
    """Evaluate a sample batch against a reference batch as the original evaluator does.

    Both batches are checked (headers and precomputed statistics) before any work. The reference's activations are
    always computed (precision and recall need them); its FID statistics are its precomputed ones when it carries
    them.

    Args:
        ref_batch: the reference: an ``.npz`` path (``arr_0`` uint8 NHWC, optionally ``mu``/``sigma``/``mu_s``/
            ``sigma_s``) or an :class:`ImageSource` (:class:`DecodedImages` of an image folder, resized and
            centre-cropped as for a reference batch).
        sample_batch: the samples (the same kinds).
        model: the FID Inception (see ``load_fid_inception``), on ``device``.
        batch_size: images per Inception forward (does not change the results).
        device: where features and distances are computed.
        log: receives the original evaluator's progress messages (main process); None for silence.
        progress: show progress bars.
        state: an ``accelerate.PartialState`` to share the feature extraction among its processes (see
            :func:`extract_features`); the metrics are computed on the main process.
        cache: read each batch's features from its cache beside it (``NAME.inception-features.npz``) when that
            cache matches the file, the weights and ``allow_tf32`` and fits the batch, and write it otherwise (a
            stale or damaged cache is said in one line and replaced); ``.npz`` batches only. See
            :mod:`.feature_cache`.
        distance_precision: precision/recall distances: ``"float16"`` (the original's), ``"float32"``, ``"float64"``.
        allow_tf32: let the network pass use TF32 on GPUs that have it (faster; the figures move).

    Returns:
        the :class:`SampleQualityResults` on the main process, None on the others.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    ref_source, sample_source = image_source(ref_batch), image_source(sample_batch)
    if cache:
        for source in (ref_source, sample_source):
            if not isinstance(source, NpzImages):
                raise ValueError("expected .npz batches with --cache (features are cached beside an .npz file), got an image folder")
    is_main = state is None or state.is_main_process
    say = log if log is not None and is_main else (lambda message: None)

    with float32_precision(allow_tf32):
        fingerprint = weights_fingerprint(model) if cache else None

        def features_of(source: ImageSource, name: str) -> BatchFeatures | None:
            key = cached = None
            if cache and is_main:
                key = cache_key(source.path, fingerprint, allow_tf32)
                try:
                    cached = load_cached_features(source.path, key, source.num_images)
                except StaleCacheError as miss:
                    say(f"{miss}: replacing it")
            if _broadcast_flag(cached is not None, state):
                say(f"reading {name} batch activations from {cache_path(source.path)}...")
                return cached
            say(f"computing {name} batch activations...")
            pool, spatial = extract_features(
                model, source, batch_size, device, state=state, progress=progress, description=f"{name} batch"
            )
            if not is_main:
                return None
            features = BatchFeatures.from_features(pool, spatial)
            if cache:
                save_cached_features(source.path, key, features)
            return features

        ref_features = features_of(ref_source, "reference")
        say("computing/reading reference batch statistics...")
        sample_features = features_of(sample_source, "sample")
        if not is_main:
            return None
        ref_stats, ref_stats_spatial = _batch_statistics(ref_source, ref_features)
        say("computing/reading sample batch statistics...")
        sample_stats, sample_stats_spatial = _batch_statistics(sample_source, sample_features)

        say("Computing evaluations...")
        precision, recall = precision_recall(
            ref_features.pool_features, sample_features.pool_features, device=device, distance_precision=distance_precision
        )
        is_score = inception_score(compute_class_logits(model, sample_features.pool_features, device))
    return SampleQualityResults(
        inception_score=is_score,
        fid=sample_stats.frechet_distance(ref_stats),
        sfid=sample_stats_spatial.frechet_distance(ref_stats_spatial),
        precision=precision,
        recall=recall,
    )


def make_reference_batch(
    source: ImageSource,
    output: str | os.PathLike,
    model: FIDInceptionV3,
    num_images: int = 10000,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    *,
    state: Any = None,
    progress: bool = True,
    allow_tf32: bool = False,
) -> Path | None:
    """Write a reference batch in the originals' format: statistics over all of ``source``, ``num_images`` images.

    As the originals' reference batches: ``mu``/``sigma``/``mu_s``/``sigma_s`` are fitted to the features of every
    image of the source (:func:`extract_statistics`: memory does not grow with the source), ``arr_0`` holds a
    random subset of ``num_images`` of them (seeded; in source order) for precision and recall, or all of them when
    the source has fewer.

    Args:
        source: the images (:class:`NpzImages`, :class:`DecodedImages`).
        output: the ``.npz`` to write (atomically).
        model: the FID Inception, on ``device``.
        num_images: images kept in ``arr_0`` (10000 in the originals').
        seed: seed of the subset's choice.
        batch_size: images per Inception forward.
        device: where the network runs.
        state: processes to share the extraction among (see :func:`extract_features`); the main one writes.
        progress: show a progress bar.
        allow_tf32: let the network pass use TF32.

    Returns:
        the path written (main process), else None.
    """
    if num_images < 1:
        raise ValueError(f"expected num_images >= 1, got {num_images}")
    with float32_precision(allow_tf32):
        statistics = extract_statistics(
            model, source, batch_size, device, state=state, progress=progress, description="reference images"
        )
    if statistics is None:
        return None
    chosen = np.arange(source.num_images)
    if source.num_images > num_images:
        chosen = np.sort(np.random.default_rng(seed).choice(source.num_images, size=num_images, replace=False))
    return write_reference_batch(output, source.take(chosen), *statistics)
