"""Evaluation as the originals define it: sample quality (IS, FID, sFID, precision and recall) and likelihood (the
whole variational bound in bits/dim, [`calc_bpd_loop`]).

The FID Inception-v3 (TensorFlow's 2015-12-05 graph) is implemented in PyTorch in :mod:`.inception`; its weights
come from a local file, ``$GUIDED_DIFFUSERS_INCEPTION_WEIGHTS``, or the Hub (``INCEPTION_HUB_REPO_ID``).
``scripts/evaluate.py`` is the command line.
"""

from .bpd import calc_bpd_loop
from .batches import (
    ImageBatchInfo,
    inspect_image_batch,
    iterate_image_batches,
    read_precomputed_statistics,
    write_reference_batch,
)
from .evaluator import (
    DecodedImages,
    NpzImages,
    SampleQualityResults,
    compute_activations,
    compute_class_logits,
    evaluate_image_batches,
    extract_features,
    extract_statistics,
    float32_precision,
    make_reference_batch,
)
from .feature_cache import BatchFeatures, StaleCacheError, cache_path, load_cached_features
from .inception import (
    INCEPTION_HUB_FILENAME,
    INCEPTION_HUB_REPO_ID,
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_URL,
    FIDInceptionFeatures,
    FIDInceptionV3,
    InceptionWeightsUnavailableError,
    load_fid_inception,
    random_fid_inception,
    resize_bilinear_like_tensorflow1,
    resolve_inception_weights,
)
from .metrics import (
    FIDStatistics,
    RunningMoments,
    compute_statistics,
    frechet_distance,
    inception_score,
    float16_squared_distances,
    manifold_radii,
    pairwise_squared_distances,
    precision_recall,
)

__all__ = [
    "calc_bpd_loop",
    "INCEPTION_HUB_FILENAME",
    "INCEPTION_HUB_REPO_ID",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_URL",
    "FIDInceptionFeatures",
    "FIDInceptionV3",
    "BatchFeatures",
    "DecodedImages",
    "FIDStatistics",
    "ImageBatchInfo",
    "RunningMoments",
    "NpzImages",
    "InceptionWeightsUnavailableError",
    "SampleQualityResults",
    "StaleCacheError",
    "compute_activations",
    "compute_class_logits",
    "compute_statistics",
    "cache_path",
    "evaluate_image_batches",
    "extract_features",
    "extract_statistics",
    "float16_squared_distances",
    "float32_precision",
    "frechet_distance",
    "inception_score",
    "inspect_image_batch",
    "iterate_image_batches",
    "load_cached_features",
    "load_fid_inception",
    "make_reference_batch",
    "manifold_radii",
    "pairwise_squared_distances",
    "precision_recall",
    "random_fid_inception",
    "read_precomputed_statistics",
    "resize_bilinear_like_tensorflow1",
    "resolve_inception_weights",
    "write_reference_batch",
]
