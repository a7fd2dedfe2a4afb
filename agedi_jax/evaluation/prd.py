"""Precision–recall for distributions (PRD) of Sajjadi et al. 2018 (paper Sec. II G).

Given a reference distribution P (training data) and a model distribution Q (samples),
both as histograms over the same ``k`` bins, the PRD curve is the set of pairs

    precision(λ) = Σ_i min(λ p_ref,i, p_eval,i),     recall(λ) = precision(λ) / λ,

for slopes λ = tan θ on an equiangular grid θ ∈ [ε, π/2 − ε]. Precision measures how much of
Q lies where P has mass (fidelity); recall how much of P is covered by Q (diversity).

For structures, histograms come from k-means on the union of feature vectors (SOAP, see
:mod:`agedi_jax.evaluation.descriptors`), averaged over several clusterings
(:func:`compute_prd_from_embedding`, the published defaults: 20 clusters, 10 runs,
1001 angles). Everything here is host numpy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "compute_prd",
    "cluster_histograms",
    "compute_prd_from_embedding",
    "prd_auc",
    "f_beta",
    "max_f_beta_pair",
]


def _check_prd_arguments(num_angles: int, epsilon: float) -> None:
    if not (0.0 < epsilon < 0.1):
        raise ValueError(f"epsilon must be in (0, 0.1), got {epsilon!r}")
    if not (isinstance(num_angles, (int, np.integer)) and 3 <= num_angles <= 1_000_000):
        raise ValueError(f"num_angles must be an integer in [3, 1e6], got {num_angles!r}")


def _check_histogram(name: str, dist: np.ndarray) -> None:
    if dist.ndim != 1 or dist.size == 0:
        raise ValueError(f"{name} must be a non-empty 1D histogram, got shape {dist.shape}")
    if not np.all(np.isfinite(dist)):
        raise ValueError(f"{name} contains non-finite values")
    if np.any(dist < 0):
        raise ValueError(f"{name} has negative entries (min {dist.min():.3g}); it must be a histogram")
    total = float(dist.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1 (a normalised histogram), sums to {total:.6g}")


def compute_prd(
    eval_dist: Any,
    ref_dist: Any,
    num_angles: int = 1001,
    epsilon: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve of two histograms over the same bins (Sajjadi et al. 2018, Eq. of Thm. 2).

    Args:
      eval_dist: ``[k]`` normalised histogram of the evaluated set (samples, Q).
      ref_dist: ``[k]`` normalised histogram of the reference set (training data, P).
      num_angles: number of angles θ, equally spaced in ``[epsilon, π/2 − epsilon]``
        (3 ≤ num_angles ≤ 1e6).
      epsilon: the angle grid stays ``epsilon`` away from 0 and π/2 (0 < epsilon < 0.1).

    Returns:
      ``(precision, recall)``, each ``[num_angles]`` in [0, 1], ordered by increasing θ
      (so recall is non-increasing and precision non-decreasing along the arrays).

    Raises:
      ValueError: bad ``num_angles`` / ``epsilon``, histograms that are not 1D, differ in
      length, have negative entries or do not sum to 1, or a result above 1.001 (numerical
      trouble, as in the original implementation).
    """
    _check_prd_arguments(num_angles, epsilon)
    eval_dist = np.asarray(eval_dist, dtype=np.float64)
    ref_dist = np.asarray(ref_dist, dtype=np.float64)
    _check_histogram("eval_dist", eval_dist)
    _check_histogram("ref_dist", ref_dist)
    if eval_dist.shape != ref_dist.shape:
        raise ValueError(
            f"eval_dist and ref_dist must have the same number of bins, got {eval_dist.shape} "
            f"and {ref_dist.shape}"
        )

    slopes = np.tan(np.linspace(epsilon, np.pi / 2 - epsilon, num=int(num_angles)))
    precision = np.minimum(slopes[:, None] * ref_dist[None, :], eval_dist[None, :]).sum(axis=1)
    recall = precision / slopes
    worst = max(precision.max(), recall.max())
    if worst > 1.001:
        raise ValueError(f"PRD value {worst:.6g} > 1.001: numerical problem in the histograms")
    return np.clip(precision, 0.0, 1.0), np.clip(recall, 0.0, 1.0)


def _as_matrix(name: str, data: Any):
    import scipy.sparse

    if scipy.sparse.issparse(data):
        data = scipy.sparse.csr_matrix(data, dtype=np.float64)
    else:
        data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must be a [n_points, n_features] matrix with n_points > 0, got shape {data.shape}")
    values = data.data if scipy.sparse.issparse(data) else data
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains non-finite values")
    return data


def _stack(eval_data: Any, ref_data: Any):
    """Validated union ``[n_eval + n_ref, D]``: dense, or for sparse input CSR without the
    all-zero columns (densified when over 10 % filled and small enough)."""
    import scipy.sparse

    eval_data = _as_matrix("eval_data", eval_data)
    ref_data = _as_matrix("ref_data", ref_data)
    if eval_data.shape[1] != ref_data.shape[1]:
        raise ValueError(
            f"eval_data and ref_data must have the same number of features, got "
            f"{eval_data.shape[1]} and {ref_data.shape[1]}"
        )
    if not (scipy.sparse.issparse(eval_data) or scipy.sparse.issparse(ref_data)):
        return np.vstack([eval_data, ref_data]), eval_data.shape[0]
    union = scipy.sparse.vstack([scipy.sparse.csr_matrix(eval_data), scipy.sparse.csr_matrix(ref_data)]).tocsr()
    # columns that are zero in every point do not change k-means distances: drop them
    # (SOAP over many species is mostly such columns)
    union = union[:, np.unique(union.indices)]
    if union.nnz > 0.1 * union.shape[0] * union.shape[1] and union.shape[0] * union.shape[1] <= 50_000_000:
        return union.toarray(), eval_data.shape[0]  # dense k-means is ~10x faster when dense enough
    return union, eval_data.shape[0]


def _kmeans_histograms(union: Any, n_eval: int, num_clusters: int, seed: int, n_threads: int | None):
    from sklearn.cluster import MiniBatchKMeans
    from threadpoolctl import threadpool_limits

    if not (isinstance(num_clusters, (int, np.integer)) and 1 <= num_clusters <= union.shape[0]):
        raise ValueError(
            f"num_clusters must be an integer in [1, number of points = {union.shape[0]}], got {num_clusters!r}"
        )
    kmeans = MiniBatchKMeans(n_clusters=int(num_clusters), n_init=10, random_state=int(seed))
    with threadpool_limits(limits=n_threads):
        labels = kmeans.fit(union).labels_
    eval_hist = np.bincount(labels[:n_eval], minlength=num_clusters) / n_eval
    ref_hist = np.bincount(labels[n_eval:], minlength=num_clusters) / (union.shape[0] - n_eval)
    return eval_hist.astype(np.float64), ref_hist.astype(np.float64)


def cluster_histograms(
    eval_data: Any,
    ref_data: Any,
    num_clusters: int = 20,
    seed: int = 0,
    n_threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster the union of two point sets with k-means and histogram each set over the clusters.

    Uses scikit-learn's ``MiniBatchKMeans(n_clusters=num_clusters, n_init=10)`` (as the
    published code) with ``random_state=seed``. Dense arrays or scipy sparse matrices.
    ``n_threads`` caps the BLAS/OpenMP threads (threadpoolctl); the default 1 is the fastest
    for the few thousand points of a structure data set (multi-threaded k-means on small
    inputs is ~10x slower on a loaded machine); None leaves the libraries' defaults.

    Returns:
      ``(eval_hist, ref_hist)``, each ``[num_clusters]`` summing to 1.
    """
    union, n_eval = _stack(eval_data, ref_data)
    return _kmeans_histograms(union, n_eval, num_clusters, seed, n_threads)


def compute_prd_from_embedding(
    eval_data: Any, ref_data: Any, num_clusters: int = 20, num_angles: int = 1001, num_runs: int = 10,
    enforce_balance: bool = True, seed: int = 0, n_threads: int | None = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """PRD curve of two sets of feature vectors, averaged over ``num_runs`` k-means clusterings.

    Each run clusters the union into ``num_clusters`` bins (:func:`cluster_histograms`
    with seed ``seed + run``) and computes :func:`compute_prd`; precision and recall are
    averaged pointwise over runs (as in Sajjadi et al.'s reference implementation).

    Args:
      eval_data: ``[n_eval, D]`` features of the evaluated set (samples); dense or sparse.
      ref_data: ``[n_ref, D]`` features of the reference set (training data).
      num_clusters, num_angles, num_runs: the published defaults are 20, 1001, 10.
      enforce_balance: if True (the original's default), require ``n_eval == n_ref`` and
        raise ValueError otherwise. Histograms are normalised, so unequal sizes are allowed
        with ``enforce_balance=False`` (e.g. a 50 % subsample baseline); the larger set then
        weighs more in placing the cluster centres.
      seed: base seed of the k-means runs (deterministic).
      n_threads: thread cap of the k-means (see :func:`cluster_histograms`).

    Returns:
      ``(precision, recall)``, each ``[num_angles]`` in [0, 1].
    """
    if not (isinstance(num_runs, (int, np.integer)) and num_runs >= 1):
        raise ValueError(f"num_runs must be a positive integer, got {num_runs!r}")
    _check_prd_arguments(num_angles, 1e-10)
    union, n_eval = _stack(eval_data, ref_data)
    n_ref = union.shape[0] - n_eval
    if enforce_balance and n_eval != n_ref:
        raise ValueError(
            f"enforce_balance=True needs equally many eval and ref points, got {n_eval} "
            f"and {n_ref}; subsample one set or pass enforce_balance=False"
        )
    precisions, recalls = [], []
    for run in range(int(num_runs)):
        eval_hist, ref_hist = _kmeans_histograms(union, n_eval, num_clusters, seed + run, n_threads)
        p, r = compute_prd(eval_hist, ref_hist, num_angles=num_angles)
        precisions.append(p)
        recalls.append(r)
    return np.mean(precisions, axis=0), np.mean(recalls, axis=0)


def _check_pr(precision: Any, recall: Any) -> tuple[np.ndarray, np.ndarray]:
    precision = np.asarray(precision, dtype=np.float64)
    recall = np.asarray(recall, dtype=np.float64)
    if precision.ndim != 1 or precision.shape != recall.shape:
        raise ValueError(
            f"precision and recall must be 1D arrays of equal length, got {precision.shape} and {recall.shape}"
        )
    for name, v in (("precision", precision), ("recall", recall)):
        if not np.all((v >= 0) & (v <= 1)):
            raise ValueError(f"all values in {name} must be in [0, 1]")
    return precision, recall


def prd_auc(precision: Any, recall: Any) -> float:
    """Area under a PRD curve with recall on the x axis (the number that labels the paper's
    Fig. 4c / 6c curves).

    The points are taken in the order given, which must be the θ order of
    :func:`compute_prd` (recall non-increasing; the reversed order is accepted too), and
    integrated with the trapezoidal rule, ``Σ ½ (P_i + P_{i+1}) |R_i − R_{i+1}|`` — i.e.
    ``∫ precision d(recall)`` from the smallest to the largest recall on the curve, without
    added end points. This is ``sklearn.metrics.auc(recall, precision)`` wherever sklearn
    accepts the input (it rejects recall that is monotone only up to rounding, which
    clipping at 1 produces). Identical distributions give ``1 − epsilon`` when the grid
    holds θ = π/4 (odd ``num_angles``, as the default 1001), else ``1 − O(1/num_angles)``;
    disjoint supports give 0.

    Returns:
      the area, a float in [0, 1].

    Raises:
      ValueError: recall not monotone (beyond 1e-9), values outside [0, 1], bad shapes.
    """
    precision, recall = _check_pr(precision, recall)
    if recall.size > 1 and recall[0] < recall[-1]:
        precision, recall = precision[::-1], recall[::-1]
    if np.any(np.diff(recall) > 1e-9):
        raise ValueError("recall must be monotone along the curve (pass the θ-ordered output of compute_prd)")
    return float(np.sum(0.5 * (precision[1:] + precision[:-1]) * -np.diff(recall)))


def f_beta(precision: Any, recall: Any, beta: float = 8.0, epsilon: float = 1e-10) -> np.ndarray:
    """Pointwise F_β score ``(1 + β²) P R / (β² P + R + epsilon)`` (Sajjadi et al. Eq. 5).

    β > 1 weighs recall more than precision."""
    precision, recall = _check_pr(precision, recall)
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta!r}")
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall + epsilon)


def max_f_beta_pair(precision: Any, recall: Any, beta: float = 8.0) -> tuple[float, float]:
    """The two summaries of a PRD curve from Sajjadi et al.: ``(F_β, F_1/β)`` maxima.

    ``F_8`` (first) is a recall-like summary, ``F_1/8`` (second) a precision-like one."""
    return float(np.max(f_beta(precision, recall, beta))), float(np.max(f_beta(precision, recall, 1.0 / beta)))
