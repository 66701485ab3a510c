"""The originals' sample-quality metrics on Inception features: FID, sFID, Inception Score, precision and recall.

Definitions follow guided-diffusion's ``evaluations/evaluator.py``:

- FID / sFID: the Fréchet distance between Gaussians fitted to the pool (2048-d) or spatial (2023-d) features,
  ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrtm(sigma1 sigma2)``, with ``sigma`` from ``np.cov``.
- Inception Score: ``exp(E_x KL(p(y|x) || p(y)))`` over consecutive splits of 5000 samples, averaged over splits.
- Precision / recall (Kynkäänniemi et al. 2019): each feature vector gets a ball whose squared radius is the squared
  distance to its 3rd nearest neighbour in its own set (itself excluded); precision is the fraction of samples
  inside (``<=``) some reference ball, recall the fraction of references inside some sample ball. Distances are
  computed in blocks of 10000 x 10000 vectors. By default they are computed as the original's ``DistanceBlock``
  does in TensorFlow (``distance_precision="float16"``): features rounded to float16, ``|u|^2 - 2 u.v + |v|^2``
  with float16 results, the squared norms summed in float16 in the order of TensorFlow's CPU kernels (bit for
  bit), the matrix product accumulated in float32, and the whole block recomputed in float32 when any float16
  distance is not finite. The float16 rounding makes many distances exactly equal to a radius, and ``<=`` counts
  them in: this is what the original's precision and recall are. ``"float32"`` and ``"float64"`` compute the same
  formula in that dtype (no ties from rounding; precision and recall come out lower by up to about half a point,
  see the README).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .settings import DISTANCE_PRECISIONS

# The original evaluator's defaults.
INCEPTION_SCORE_SPLIT_SIZE = 5000
MANIFOLD_NUM_NEIGHBOURS = 3
MANIFOLD_BATCH_SIZE = 10000


@dataclass(eq=False)  # arrays have no single truth value to compare by
class FIDStatistics:
    """Mean and covariance of a set of feature vectors (a Gaussian fit, as FID uses it).

    Attributes:
        mu: ``(D,)`` mean.
        sigma: ``(D, D)`` covariance.
        factor: optional ``(N, D)`` matrix ``F`` with ``sigma = F^T F`` (the centred activations over
            ``sqrt(N - 1)``), kept by :func:`compute_statistics` when N <= D: the Fréchet distance then solves an
            N x N eigenproblem instead of two D x D ones, with the same value.
    """

    mu: np.ndarray
    sigma: np.ndarray
    factor: np.ndarray | None = None

    def frechet_distance(self, other: FIDStatistics, eps: float = 1e-6) -> float:
        """The Fréchet distance to ``other``; see :func:`frechet_distance`."""
        return frechet_distance(
            self.mu, self.sigma, other.mu, other.sigma, eps=eps, sigma1_factor=self.factor, sigma2_factor=other.factor
        )


def compute_statistics(activations: np.ndarray) -> FIDStatistics:
    """Fit mean and covariance (``np.cov``: unbiased, float64) to ``(N, D)`` activations.

    Args:
        activations: ``(N, D)`` with N >= 2.

    Returns:
        the :class:`FIDStatistics` (with its low-rank ``factor`` when N <= D).
    """
    activations = np.asarray(activations, dtype=np.float64)
    if activations.ndim != 2 or activations.shape[0] < 2:
        raise ValueError(f"expected activations of shape (N >= 2, D), got {activations.shape}")
    num_vectors, dim = activations.shape
    mu = activations.mean(axis=0)
    factor = (activations - mu) / np.sqrt(num_vectors - 1) if num_vectors <= dim else None
    return FIDStatistics(mu, np.cov(activations, rowvar=False), factor)


@dataclass(eq=False)
class RunningMoments:
    """Count, mean and scatter (``sum (x - mean)(x - mean)^T``) of feature vectors seen in parts, in float64.

    Parts merge with Chan et al.'s pairwise update, so a set too large to hold (a reference dataset of millions of
    images, spread over processes) gets the statistics :func:`compute_statistics` would fit to it whole, up to
    rounding. Build one with :meth:`of`, combine with :meth:`merge`.

    Attributes:
        count: vectors seen.
        mean: ``(D,)`` their mean.
        scatter: ``(D, D)`` their centred sum of outer products.
    """

    count: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def of(cls, activations: np.ndarray) -> RunningMoments:
        """The moments of ``(N, D)`` activations (N may be 0)."""
        activations = np.asarray(activations, dtype=np.float64)
        if activations.ndim != 2:
            raise ValueError(f"expected activations of shape (N, D), got {activations.shape}")
        if len(activations) == 0:
            dim = activations.shape[1]
            return cls(0, np.zeros(dim), np.zeros((dim, dim)))
        mean = activations.mean(axis=0)
        centred = activations - mean
        return cls(len(activations), mean, centred.T @ centred)

    def merge(self, other: RunningMoments) -> RunningMoments:
        """The moments of both parts together."""
        count = self.count + other.count
        if other.count == 0 or self.count == 0:
            return other if self.count == 0 else self
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / count)
        return RunningMoments(count, mean, scatter)

    def statistics(self) -> FIDStatistics:
        """Mean and unbiased covariance, as ``np.cov``."""
        if self.count < 2:
            raise ValueError(f"expected statistics of at least 2 vectors, got {self.count}")
        return FIDStatistics(self.mean, self.scatter / (self.count - 1))


def _sum_sqrt_eigenvalues(symmetric: np.ndarray) -> float:
    eigenvalues = np.linalg.eigvalsh((symmetric + symmetric.T) / 2)
    # A singular product (fewer samples than dimensions) has eigenvalues that are zero up to rounding, with either
    # sign; below the usual numerical-rank tolerance they are zero, rather than adding sqrt(rounding) each.
    tolerance = np.abs(eigenvalues).max(initial=0.0) * eigenvalues.shape[0] * np.finfo(np.float64).eps
    return float(np.sqrt(eigenvalues[eigenvalues > tolerance]).sum())


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    # tr sqrtm(s1 s2) is the sum of the square roots of s1 s2's eigenvalues, which are those of the symmetric
    # positive semi-definite s1^1/2 s2 s1^1/2: symmetric eigendecompositions instead of a general sqrtm, finite
    # and real also for singular covariances, where sqrtm needs an eps on the diagonal.
    eigenvalues1, eigenvectors1 = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (eigenvectors1 * np.sqrt(np.clip(eigenvalues1, 0.0, None))) @ eigenvectors1.T
    return _sum_sqrt_eigenvalues(sqrt_sigma1 @ sigma2 @ sqrt_sigma1)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    *,
    sigma1_factor: np.ndarray | None = None,
    sigma2_factor: np.ndarray | None = None,
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``, the FID formula, in float64.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrtm(sigma1 sigma2)``. The trace of the matrix square root
    is the sum of the square roots of the eigenvalues of ``sigma1 sigma2``, computed from the symmetric form
    ``sigma1^1/2 sigma2 sigma1^1/2`` (same eigenvalues), which is finite and real for any positive semi-definite
    pair. Given a factor ``F`` (``N x D``, ``sigma = F^T F``) of either covariance, the same eigenvalues come from
    the ``N x N`` matrix ``F sigma_other F^T`` instead. As in the original, ``eps`` is added to both diagonals
    (with a warning) only if the result is not finite.

    Args:
        mu1, mu2: ``(D,)`` means.
        sigma1, sigma2: ``(D, D)`` covariances.
        eps: the diagonal offset of the fallback.
        sigma1_factor, sigma2_factor: optional ``(N, D)`` factors of ``sigma1``/``sigma2`` (see
            :func:`compute_statistics`).

    Returns:
        the distance (>= 0 up to rounding).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"expected two mean vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
    dim = mu1.shape[0]
    if sigma1.shape != sigma2.shape or sigma1.shape != (dim, dim):
        raise ValueError(f"expected two ({dim}, {dim}) covariances, got shapes {sigma1.shape} and {sigma2.shape}")
    for name, value in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"expected finite statistics, got non-finite values in {name}")
    # The smaller factor gives the smaller eigenproblem; the other covariance is used whole.
    factors = [
        (np.asarray(factor, dtype=np.float64), other_sigma)
        for factor, other_sigma in ((sigma1_factor, sigma2), (sigma2_factor, sigma1))
        if factor is not None
    ]
    for factor, _ in factors:
        if factor.ndim != 2 or factor.shape[1] != dim:
            raise ValueError(f"expected a covariance factor of shape (N, {dim}), got {factor.shape}")
    # Covariances are symmetric; averaging with the transpose removes storage asymmetry (eigh reads one triangle).
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    diff = mu1 - mu2
    try:
        if factors:
            factor, other_sigma = min(factors, key=lambda pair: pair[0].shape[0])
            trace_covmean = _sum_sqrt_eigenvalues(factor @ other_sigma @ factor.T)
        else:
            trace_covmean = _trace_sqrt_product(sigma1, sigma2)
    except np.linalg.LinAlgError:
        trace_covmean = float("nan")
    if not np.isfinite(trace_covmean):
        warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of cov estimates")
        offset = np.eye(dim) * eps
        trace_covmean = _trace_sqrt_product(sigma1 + offset, sigma2 + offset)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_covmean)


def inception_score(class_logits: np.ndarray, split_size: int = INCEPTION_SCORE_SPLIT_SIZE) -> float:
    """Inception Score of ``(N, C)`` classifier logits: ``exp(mean_x KL(p(y|x) || p(y)))`` per split, averaged.

    Splits are consecutive runs of ``split_size`` samples (the last may be shorter), as in the original. The
    class probabilities are ``softmax(logits)`` in float64, with ``log_softmax`` for their logs, and a class of
    probability 0 contributes 0 to the KL (the original's ``p * log(p)`` would give NaN there).

    Args:
        class_logits: ``(N, C)`` logits (the evaluator's: ``pool_3`` times the classifier matrix, no bias).
        split_size: samples per split (5000 in the original).

    Returns:
        the score (1 for constant predictions, up to C).
    """
    logits = torch.as_tensor(np.asarray(class_logits), dtype=torch.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"expected class logits of shape (N >= 1, C), got {tuple(logits.shape)}")
    if split_size < 1:
        raise ValueError(f"expected split_size >= 1, got {split_size}")
    scores = []
    for start in range(0, logits.shape[0], split_size):
        log_probs = torch.log_softmax(logits[start : start + split_size], dim=1)
        probs = log_probs.exp()
        log_marginal = torch.log(probs.mean(dim=0, keepdim=True))
        # p log(p / p_marginal) is 0 where p is 0 (0 * -inf would be NaN where a class has no mass in the split).
        kl_terms = torch.where(probs > 0, probs * (log_probs - log_marginal), torch.zeros_like(probs))
        kl = kl_terms.sum(dim=1).mean()
        scores.append(float(torch.exp(kl)))
    return float(np.mean(scores))


def pairwise_squared_distances(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``|u|^2 - 2 u.v + |v|^2`` between two sets of vectors, clamped at 0.

    Args:
        rows: ``(R, D)``.
        columns: ``(C, D)``.

    Returns:
        ``(R, C)``, in the inputs' dtype.
    """
    row_norms = rows.square().sum(dim=1, keepdim=True)
    column_norms = columns.square().sum(dim=1)[None, :]
    return (row_norms - 2 * rows @ columns.T + column_norms).clamp_min(0.0)


# TensorFlow's CPU kernels are Eigen's, built for AVX in TensorFlow's x86 wheels: a float16 sum adds packets of 8
# lanes (each addition computed in float32 and rounded to float16) and sums a row of more than 8 * 200 values as two
# halves, apart (a tree).
_EIGEN_HALF_PACKET = 8
_EIGEN_HALF_LEAF = 200


def _round_to_half(values: torch.Tensor) -> torch.Tensor:
    # Sums are held in float32 tensors whose values are float16 numbers: an Eigen float16 addition is a float32
    # addition rounded to float16.
    return values.half().float()


def _eigen_half_leaf_sum(values: torch.Tensor) -> torch.Tensor:
    """Eigen's vectorised float16 sum of each row of ``(R, n)`` values, ``n <= 8 * 200``: ``(R,)``."""
    lanes = _EIGEN_HALF_PACKET
    num_rows, count = values.shape
    packet = values.new_zeros(num_rows, lanes)
    start = 0
    if count >= 4 * lanes:
        # Four packet accumulators take turns over runs of four packets, then fold into the first, in order.
        unrolled = count // (4 * lanes) * (4 * lanes)
        runs = values[:, :unrolled].reshape(num_rows, -1, 4, lanes)
        accumulators = values.new_zeros(num_rows, 4, lanes)
        for run in range(runs.shape[1]):
            accumulators = _round_to_half(accumulators + runs[:, run])
        packet = accumulators[:, 0]
        for accumulator in range(1, 4):
            packet = _round_to_half(packet + accumulators[:, accumulator])
        start = unrolled
    whole_packets = count // lanes * lanes
    for column in range(start, whole_packets, lanes):
        packet = _round_to_half(packet + values[:, column : column + lanes])
    rest = values.new_zeros(num_rows)
    for column in range(whole_packets, count):
        rest = _round_to_half(rest + values[:, column])
    # The packet's lanes are summed in float32 (its halves, then pairs, then the two), rounded once to float16.
    quads = packet[:, :4] + packet[:, 4:]
    pairs = quads[:, :2] + quads[:, 2:]
    return _round_to_half(rest + _round_to_half(pairs[:, 0] + pairs[:, 1]))


def _eigen_half_sum(values: torch.Tensor, first: int) -> torch.Tensor:
    """Eigen's float16 tree sum of each row of ``values``, whose first column is at flat index ``first``."""
    num_rows, count = values.shape
    lanes, leaf = _EIGEN_HALF_PACKET, _EIGEN_HALF_PACKET * _EIGEN_HALF_LEAF
    if count <= leaf:
        return _eigen_half_leaf_sum(values)
    # The split point is the packet boundary (in flat indices) at or after the middle.
    split = lanes * -(-(first + -(-count // 2)) // lanes)
    left = min(split - first, count)
    if 2 * left == count and left <= leaf:
        # Two leaves of one length (2048-d features: 1024 and 1024), summed side by side.
        halves = _eigen_half_leaf_sum(torch.cat([values[:, :left], values[:, left:]]))
        return _round_to_half(halves[:num_rows] + halves[num_rows:])
    total = _eigen_half_sum(values[:, :left], first)
    if left < count:
        total = _round_to_half(total + _eigen_half_sum(values[:, left:], split))
    return total


def float16_squared_norms(vectors: torch.Tensor) -> torch.Tensor:
    """``reduce_sum(square(v), 1)`` of float16 vectors as TensorFlow computes it on a CPU, bit for bit.

    The squares are rounded to float16 and summed in float16 in Eigen's order: each row in packets of 8 lanes with
    four packet accumulators, every addition rounded to float16, the lanes summed in float32 at the end, and a row
    of more than 1600 values summed as two halves (split at a packet boundary of the flat index) added last. For
    2048-d features that is two sums of 1024 values; a float32 sum rounded once differs from it in 40-50% of the
    norms of pool_3-like features, by one or two float16 steps.

    Args:
        vectors: ``(R, D)`` float16.

    Returns:
        ``(R,)`` float16.
    """
    squares = _round_to_half(vectors.float() * vectors.float())
    num_rows, dim = squares.shape
    if dim % _EIGEN_HALF_PACKET == 0:
        return _eigen_half_sum(squares, 0).half()
    norms = torch.empty(num_rows, dtype=torch.float16, device=vectors.device)
    # Row r starts at flat index r * dim: rows with the same offset within a packet split alike.
    offsets = torch.arange(num_rows, device=vectors.device) * dim % _EIGEN_HALF_PACKET
    for offset in offsets.unique().tolist():
        rows = offsets == offset
        norms[rows] = _eigen_half_sum(squares[rows], offset).half()
    return norms


def float16_squared_distances(
    rows: torch.Tensor,
    columns: torch.Tensor,
    row_norms: torch.Tensor | None = None,
    column_norms: torch.Tensor | None = None,
) -> torch.Tensor:
    """The original evaluator's distance block: squared distances in float16, float32 if float16 overflows.

    The features are rounded to float16, then ``max(|u|^2 - 2 u.v + |v|^2, 0)`` is evaluated as TensorFlow does on
    a CPU: the squared norms by :func:`float16_squared_norms` (bit for bit), the matrix product accumulated in
    float32 and rounded to float16 (TensorFlow's CPU kernel converts float16 operands to float32 for it; the
    products of two float16 numbers are exact in float32, only the summation order can differ), the subtraction
    and the addition each rounded to float16, in that order. When any distance of the block is not finite (a norm
    or product above float16's 65504), the whole block is :func:`pairwise_squared_distances` in float32 instead.

    Args:
        rows: float32 ``(R, D)``.
        columns: float32 ``(C, D)``.
        row_norms, column_norms: the :func:`float16_squared_norms` of ``rows`` / ``columns`` in float16, each as
            its own tensor, when already known (a set's blocks share them); computed here when ``None``.

    Returns:
        float32 ``(R, C)`` (holding float16 values unless the block fell back to float32).
    """
    rows16, columns16 = rows.half(), columns.half()
    row_norms = float16_squared_norms(rows16) if row_norms is None else row_norms
    column_norms = float16_squared_norms(columns16) if column_norms is None else column_norms
    # Eager element-wise ops on half tensors round each result to float16 (computed in float32: correctly rounded).
    products = (rows16.float() @ columns16.float().T).half()
    distances = (row_norms[:, None] - 2 * products) + column_norms[None, :]
    distances = distances.clamp_min(0.0)
    if not torch.isfinite(distances).all():
        return pairwise_squared_distances(rows.float(), columns.float())
    return distances.float()


def _block_norms(features: torch.Tensor, batch_size: int, distance_precision: str) -> list[torch.Tensor | None]:
    """The float16 squared norms of each block of ``batch_size`` vectors, as TensorFlow computes them for the
    block's own tensor (``None`` per block outside the ``"float16"`` mode)."""
    starts = range(0, features.shape[0], batch_size)
    if distance_precision != "float16":
        return [None for _ in starts]
    features16 = features.half()
    return [float16_squared_norms(features16[start : start + batch_size]) for start in starts]


def _block_distances(
    rows: torch.Tensor,
    columns: torch.Tensor,
    distance_precision: str,
    row_norms: torch.Tensor | None,
    column_norms: torch.Tensor | None,
) -> torch.Tensor:
    if distance_precision == "float16":
        return float16_squared_distances(rows, columns, row_norms, column_norms)
    return pairwise_squared_distances(rows, columns)


def _check_distance_precision(distance_precision: str) -> torch.dtype:
    """The dtype features and radii are held in for ``distance_precision``."""
    if distance_precision not in DISTANCE_PRECISIONS:
        raise ValueError(f"expected distance_precision in {DISTANCE_PRECISIONS}, got {distance_precision!r}")
    return torch.float64 if distance_precision == "float64" else torch.float32


def _as_features(features: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    features = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if features.ndim != 2:
        raise ValueError(f"expected feature vectors of shape (N, D), got {tuple(features.shape)}")
    if not torch.isfinite(features).all():
        raise ValueError("expected finite feature vectors, got NaN or infinite values")
    return features.to(device=device, dtype=dtype)


def _check_batch_sizes(row_batch_size: int, col_batch_size: int) -> None:
    if row_batch_size < 1 or col_batch_size < 1:
        raise ValueError(f"expected batch sizes >= 1, got row {row_batch_size}, column {col_batch_size}")


def manifold_radii(
    features: np.ndarray | torch.Tensor,
    num_neighbours: int = MANIFOLD_NUM_NEIGHBOURS,
    row_batch_size: int = MANIFOLD_BATCH_SIZE,
    col_batch_size: int = MANIFOLD_BATCH_SIZE,
    device: str | torch.device = "cpu",
    distance_precision: str = "float16",
) -> np.ndarray:
    """Squared radius of each vector's k-NN ball: squared distance to its k-th nearest neighbour in the same set.

    Each vector's distance to itself (0 up to rounding) is the 0th smallest of its row, so the k-th smallest is the
    k-th neighbour other than itself, as in the original's ``ManifoldEstimator.manifold_radii``.

    Args:
        features: ``(N, D)`` with N > ``num_neighbours``.
        num_neighbours: k (3 in the original).
        row_batch_size: vectors whose distances are computed at once (memory: ``row_batch_size * N`` floats).
        col_batch_size: columns per distance block (with ``"float16"``, the unit of the float32 fallback).
        device: where the distances are computed.
        distance_precision: ``"float16"`` (the original's), ``"float32"`` or ``"float64"``; see the module doc.

    Returns:
        ``(N,)`` squared radii, float64 for ``"float64"``, else float32.
    """
    _check_batch_sizes(row_batch_size, col_batch_size)
    dtype = _check_distance_precision(distance_precision)
    device = torch.device(device)
    features = _as_features(features, device, dtype)
    num_vectors = features.shape[0]
    if num_vectors <= num_neighbours:
        raise ValueError(
            f"expected more than {num_neighbours} feature vectors for k={num_neighbours}, got {num_vectors}"
        )
    row_norms = _block_norms(features, row_batch_size, distance_precision)
    # One set in both roles: with one block size its row blocks are its column blocks.
    same_blocks = col_batch_size == row_batch_size
    column_norms = row_norms if same_blocks else _block_norms(features, col_batch_size, distance_precision)
    radii = torch.empty(num_vectors, dtype=dtype)
    for row_block, row_start in enumerate(range(0, num_vectors, row_batch_size)):
        rows = features[row_start : row_start + row_batch_size]
        distances = torch.cat(
            [
                _block_distances(
                    rows,
                    features[col_start : col_start + col_batch_size],
                    distance_precision,
                    row_norms[row_block],
                    column_norms[col_block],
                )
                for col_block, col_start in enumerate(range(0, num_vectors, col_batch_size))
            ],
            dim=1,
        )
        # kthvalue is 1-based: the (k + 1)-th smallest, counting the vector itself.
        radii[row_start : row_start + rows.shape[0]] = distances.kthvalue(num_neighbours + 1, dim=1).values.cpu()
    return radii.numpy()


def precision_recall(
    ref_features: np.ndarray | torch.Tensor,
    sample_features: np.ndarray | torch.Tensor,
    num_neighbours: int = MANIFOLD_NUM_NEIGHBOURS,
    row_batch_size: int = MANIFOLD_BATCH_SIZE,
    col_batch_size: int = MANIFOLD_BATCH_SIZE,
    device: str | torch.device = "cpu",
    distance_precision: str = "float16",
) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds), as the original evaluator's ``compute_prec_recall``.

    Precision: the fraction of samples within (``<=``) some reference vector's k-NN ball. Recall: the fraction of
    reference vectors within some sample's k-NN ball. Squared distances are compared with squared radii, block by
    block (reference rows x sample columns), each block's distances computed as ``distance_precision`` says.

    Args:
        ref_features: ``(N_ref, D)`` reference pool features.
        sample_features: ``(N_sample, D)`` sample pool features.
        num_neighbours: k (3 in the original).
        row_batch_size: reference vectors per distance block.
        col_batch_size: sample vectors per distance block.
        device: where the distances are computed.
        distance_precision: ``"float16"`` (default: the original's float16 distances with its float32 fallback,
            which reproduces its figures), ``"float32"`` or ``"float64"`` (exact in that dtype).

    Returns:
        ``(precision, recall)``.
    """
    _check_batch_sizes(row_batch_size, col_batch_size)
    dtype = _check_distance_precision(distance_precision)
    device = torch.device(device)
    ref = _as_features(ref_features, device, dtype)
    samples = _as_features(sample_features, device, dtype)
    if ref.shape[1] != samples.shape[1]:
        raise ValueError(
            f"expected features of one dimension, got {ref.shape[1]} (reference) and {samples.shape[1]} (samples)"
        )
    ref_radii, sample_radii = (
        torch.from_numpy(
            manifold_radii(features, num_neighbours, row_batch_size, col_batch_size, device, distance_precision)
        ).to(device)
        for features in (ref, samples)
    )
    ref_norms = _block_norms(ref, row_batch_size, distance_precision)
    sample_norms = _block_norms(samples, col_batch_size, distance_precision)
    ref_in_sample_manifold = torch.zeros(ref.shape[0], dtype=torch.bool, device=device)
    sample_in_ref_manifold = torch.zeros(samples.shape[0], dtype=torch.bool, device=device)
    for ref_block, ref_start in enumerate(range(0, ref.shape[0], row_batch_size)):
        ref_stop = ref_start + row_batch_size
        for sample_block, sample_start in enumerate(range(0, samples.shape[0], col_batch_size)):
            sample_stop = sample_start + col_batch_size
            distances = _block_distances(
                ref[ref_start:ref_stop],
                samples[sample_start:sample_stop],
                distance_precision,
                ref_norms[ref_block],
                sample_norms[sample_block],
            )
            in_sample_balls = distances <= sample_radii[None, sample_start:sample_stop]
            in_ref_balls = distances <= ref_radii[ref_start:ref_stop, None]
            ref_in_sample_manifold[ref_start:ref_stop] |= in_sample_balls.any(dim=1)
            sample_in_ref_manifold[sample_start:sample_stop] |= in_ref_balls.any(dim=0)
    precision = sample_in_ref_manifold.to(torch.float64).mean().item()
    recall = ref_in_sample_manifold.to(torch.float64).mean().item()
    return precision, recall
