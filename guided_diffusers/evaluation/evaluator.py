"""The originals' evaluator end to end: two ``.npz`` batches -> Inception features -> IS, FID, sFID, P/R."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .batches import inspect_image_batch, iterate_image_batches, read_precomputed_statistics
from .inception import FIDInceptionV3
from .metrics import FIDStatistics, compute_statistics, inception_score, precision_recall

# The original evaluator's batch sizes: images per Inception forward, pool vectors per softmax.
DEFAULT_BATCH_SIZE = 64
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
) -> tuple[np.ndarray, np.ndarray]:
    """Pool and spatial Inception features of uint8 NHWC image batches.

    Args:
        model: the feature network (on ``device``).
        batches: uint8 ``(B, H, W, 3)`` arrays with values in [0, 255].
        device: where the images go.
        num_batches: the number of batches, for the progress bar.
        progress: show a progress bar.

    Returns:
        float32 ``(N, 2048)`` pool features and ``(N, 2023)`` spatial features.
    """
    pool_features, spatial_features = [], []
    for batch in tqdm(batches, total=num_batches, disable=not progress):
        images = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2)
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


def _batch_statistics(
    path: str | os.PathLike, activations: tuple[np.ndarray, np.ndarray]
) -> tuple[FIDStatistics, FIDStatistics]:
    # As the original: a batch's own mu/sigma (and mu_s/sigma_s) when it carries them, else fitted to its features.
    precomputed = read_precomputed_statistics(path)
    if precomputed is not None:
        return precomputed
    return compute_statistics(activations[0]), compute_statistics(activations[1])


def evaluate_image_batches(
    ref_batch: str | os.PathLike,
    sample_batch: str | os.PathLike,
    model: FIDInceptionV3,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    progress: bool = True,
) -> SampleQualityResults:
    """Evaluate a sample batch against a reference batch as the original evaluator does.

    Both files are checked (headers only) before any work. The reference's activations are always computed
    (precision and recall need them); its FID statistics are its precomputed ones when it carries them.

    Args:
        ref_batch: the reference ``.npz`` (``arr_0`` uint8 NHWC, optionally ``mu``/``sigma``/``mu_s``/``sigma_s``).
        sample_batch: the sample ``.npz`` (same format).
        model: the FID Inception (see ``load_fid_inception``), on ``device``.
        batch_size: images per Inception forward (does not change the results).
        device: where features and distances are computed.
        log: receives the original evaluator's progress messages; None for silence.
        progress: show progress bars.

    Returns:
        the :class:`SampleQualityResults`.
    """
    if batch_size < 1:
        raise ValueError(f"expected batch_size >= 1, got {batch_size}")
    ref_info = inspect_image_batch(ref_batch)
    sample_info = inspect_image_batch(sample_batch)
    say = log if log is not None else (lambda message: None)

    def activations_of(info) -> tuple[np.ndarray, np.ndarray]:
        num_batches = -(-info.num_images // batch_size)
        batches = iterate_image_batches(info.path, batch_size)
        return compute_activations(model, batches, device, num_batches=num_batches, progress=progress)

    say("computing reference batch activations...")
    ref_activations = activations_of(ref_info)
    say("computing/reading reference batch statistics...")
    ref_stats, ref_stats_spatial = _batch_statistics(ref_info.path, ref_activations)
    say("computing sample batch activations...")
    sample_activations = activations_of(sample_info)
    say("computing/reading sample batch statistics...")
    sample_stats, sample_stats_spatial = _batch_statistics(sample_info.path, sample_activations)

    say("Computing evaluations...")
    precision, recall = precision_recall(ref_activations[0], sample_activations[0], device=device)
    return SampleQualityResults(
        inception_score=inception_score(compute_class_logits(model, sample_activations[0], device)),
        fid=sample_stats.frechet_distance(ref_stats),
        sfid=sample_stats_spatial.frechet_distance(ref_stats_spatial),
        precision=precision,
        recall=recall,
    )
