"""The evaluator's settings that its command line lists in ``--help``: plain data, importable without torch."""

# The original evaluator's images per Inception forward.
DEFAULT_BATCH_SIZE = 64
# How precision/recall distances are computed: the original's float16 (default), or exactly in float32 / float64.
DISTANCE_PRECISIONS = ("float16", "float32", "float64")
