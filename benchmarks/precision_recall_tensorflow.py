"""Precision and recall as the original evaluator computes them in TensorFlow, on the sets of
``tests/precision_recall_sets.py``: the expected figures of ``tests/test_evaluate_precision_recall.py``.

Needs TensorFlow (not a dependency of this project), e.g. in a throwaway environment:

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy
    /tmp/tfvenv/bin/python benchmarks/precision_recall_tensorflow.py            # the default suite's sets
    /tmp/tfvenv/bin/python benchmarks/precision_recall_tensorflow.py --large    # and the 10000 x 10000 ones

It builds guided-diffusion's ``evaluations/evaluator.py`` precision/recall graph (``ManifoldEstimator`` over
``DistanceBlock``) as that file does, in a ``tf.compat.v1`` session: the features cast to float16,
``max(|u|^2 - 2 u.v + |v|^2, 0)`` in float16 (the whole block again in float32 when any of its values is not
finite), radii the 4th smallest value of each row of distances (the vector itself first), and ``<=`` against the
radii inside the graph. It writes each set's figures, its vectors' digests and its radii's digests to
``tests/fixtures/precision_recall_tensorflow.json``, merged with the sets already there, and the digests of the
float16 squared norms (``reduce_sum(square(.), 1)``) of vectors of several widths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from precision_recall_sets import LARGE_SETS, SETS, features_digest, odd_widths  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "precision_recall_tensorflow.json"
NUM_NEIGHBOURS = 3
NORMS_SEED = 7


class OriginalDistanceGraph:
    """The original's distance block and its in-graph ``<=`` against radii, in one TF1 session."""

    def __init__(self, tf):
        graph = tf.Graph()
        with graph.as_default():
            self.rows = tf.compat.v1.placeholder(tf.float32, shape=[None, None])
            self.columns = tf.compat.v1.placeholder(tf.float32, shape=[None, None])
            self.row_norms = tf.reduce_sum(tf.square(tf.cast(self.rows, tf.float16)), 1)
            half = self._squared_distances(tf, tf.cast(self.rows, tf.float16), tf.cast(self.columns, tf.float16))
            self.block = tf.cond(
                tf.reduce_all(tf.math.is_finite(half)),
                lambda: tf.cast(half, tf.float32),
                lambda: self._squared_distances(tf, self.rows, self.columns),
            )
            self.row_radii = tf.compat.v1.placeholder(tf.float32, shape=[None, None])
            self.column_radii = tf.compat.v1.placeholder(tf.float32, shape=[None, None])
            distances = tf.cast(self.block, tf.float32)[..., None]
            self.rows_in = tf.math.reduce_any(distances <= self.column_radii, axis=1)
            self.columns_in = tf.math.reduce_any(distances <= self.row_radii[:, None], axis=0)
        self.session = tf.compat.v1.Session(graph=graph)

    @staticmethod
    def _squared_distances(tf, u, v):
        norms_u = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
        norms_v = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
        return tf.maximum(norms_u - 2 * tf.matmul(u, v, False, True) + norms_v, 0.0)

    def float16_squared_norms(self, rows):
        return self.session.run(self.row_norms, {self.rows: rows})

    def distances(self, rows, columns):
        return self.session.run(self.block, {self.rows: rows, self.columns: columns})

    def inside(self, rows, row_radii, columns, column_radii):
        return self.session.run(
            [self.rows_in, self.columns_in],
            {self.rows: rows, self.columns: columns, self.row_radii: row_radii, self.column_radii: column_radii},
        )


def radii(graph, features, row_batch, col_batch):
    """``ManifoldEstimator.manifold_radii`` with k = 3: ``(N, 1)`` float32."""
    out = np.zeros([len(features), 1], np.float32)
    for start in range(0, len(features), row_batch):
        rows = features[start : start + row_batch]
        row_distances = np.concatenate(
            [graph.distances(rows, features[c : c + col_batch]) for c in range(0, len(features), col_batch)], axis=1
        )
        out[start : start + len(rows), 0] = np.partition(row_distances, NUM_NEIGHBOURS, axis=1)[:, NUM_NEIGHBOURS]
    return out


def precision_recall(graph, ref, samples, row_batch, col_batch):
    """``compute_prec_recall``: radii of both sets, then ``evaluate_pr``'s blocks."""
    ref_radii, sample_radii = radii(graph, ref, row_batch, col_batch), radii(graph, samples, row_batch, col_batch)
    ref_in = np.zeros([len(ref), 1], bool)
    samples_in = np.zeros([len(samples), 1], bool)
    for r in range(0, len(ref), row_batch):
        for s in range(0, len(samples), col_batch):
            rows, columns = slice(r, r + row_batch), slice(s, s + col_batch)
            rows_in, columns_in = graph.inside(ref[rows], ref_radii[rows], samples[columns], sample_radii[columns])
            ref_in[r : r + row_batch] |= rows_in
            samples_in[s : s + col_batch] |= columns_in
    return float(samples_in.mean()), float(ref_in.mean()), ref_radii[:, 0], sample_radii[:, 0]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", action="store_true", help="also the 10000 x 10000 sets (minutes each)")
    parser.add_argument("--only", nargs="*", help="only these set names")
    parser.add_argument("--dump", type=Path, help="also save each set's radii (.npz) in this folder, for study")
    args = parser.parse_args()

    import tensorflow as tf

    graph = OriginalDistanceGraph(tf)
    results = json.loads(FIXTURE.read_text())["sets"] if FIXTURE.exists() else {}
    norms = {}
    for name, vectors in odd_widths(NORMS_SEED).items():
        tensorflow_norms = graph.float16_squared_norms(vectors)
        norms[name] = {"vectors_sha256": features_digest(vectors), "norms_sha256": _digest(tensorflow_norms)}
    sets = {**SETS, **(LARGE_SETS if args.large else {})}
    for name, (make_ref, make_samples, row_batch, col_batch) in sets.items():
        if args.only and name not in args.only:
            continue
        ref, samples = make_ref(), make_samples()
        precision, recall, ref_radii, sample_radii = precision_recall(graph, ref, samples, row_batch, col_batch)
        results[name] = {
            "precision": precision,
            "recall": recall,
            "reference_sha256": features_digest(ref),
            "samples_sha256": features_digest(samples),
            "reference_radii_sha256": _digest(ref_radii),
            "samples_radii_sha256": _digest(sample_radii),
        }
        print(f"{name}: precision {precision:.4f} recall {recall:.4f}", flush=True)
        if args.dump:
            args.dump.mkdir(parents=True, exist_ok=True)
            np.savez(args.dump / f"{name}.npz", ref_radii=ref_radii, sample_radii=sample_radii)
    fixture = {
        "note": "written by benchmarks/precision_recall_tensorflow.py (needs TensorFlow); do not edit by hand",
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "machine": f"{_cpu()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "float16_squared_norms_seed": NORMS_SEED,
        "float16_squared_norms": norms,
        "sets": dict(sorted(results.items())),
    }
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    temporary = FIXTURE.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(fixture, indent=1) + "\n")
    temporary.replace(FIXTURE)


if __name__ == "__main__":
    main()
