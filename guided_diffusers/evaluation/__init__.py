"""Evaluation as the originals define it: sample quality (IS, FID, sFID, precision and recall) and likelihood (the
whole variational bound in bits/dim, [`calc_bpd_loop`]).

The FID Inception-v3 (TensorFlow's 2015-12-05 graph) is implemented in PyTorch in :mod:`.inception`; its weights
come from a local file, ``$GUIDED_DIFFUSERS_INCEPTION_WEIGHTS``, or the Hub (``INCEPTION_HUB_REPO_ID``).
``scripts/evaluate.py`` is the command line.

The names below are imported on first use, so that ``guided-diffusers-evaluate --help`` builds its parser (with
:mod:`.settings`, plain data) without importing torch.
"""

__all__ = [
    "BatchFeatures",
    "DecodedImages",
    "FIDInceptionFeatures",
    "FIDInceptionV3",
    "FIDStatistics",
    "INCEPTION_HUB_FILENAME",
    "INCEPTION_HUB_REPO_ID",
    "INCEPTION_WEIGHTS_ENV",
    "INCEPTION_WEIGHTS_URL",
    "ImageBatchInfo",
    "InceptionWeightsUnavailableError",
    "NpzImages",
    "RunningMoments",
    "SampleQualityResults",
    "StaleCacheError",
    "cache_path",
    "calc_bpd_loop",
    "compute_activations",
    "compute_class_logits",
    "compute_statistics",
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


def __getattr__(name: str):
    """The public names, all imported on first use of one."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
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
        FIDInceptionFeatures,
        FIDInceptionV3,
        INCEPTION_HUB_FILENAME,
        INCEPTION_HUB_REPO_ID,
        INCEPTION_WEIGHTS_ENV,
        INCEPTION_WEIGHTS_URL,
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
        float16_squared_distances,
        frechet_distance,
        inception_score,
        manifold_radii,
        pairwise_squared_distances,
        precision_recall,
    )

    globals().update({key: value for key, value in locals().items() if key in __all__})
    return globals()[name]
