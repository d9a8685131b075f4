"""Layer statistics from a covariance matrix: intrinsic dimension, saturation, trace, log-det.

Definitions (thesis §6.1.4 and §8.1): with the eigenvalues λ₁ ≥ … ≥ λ_d of the population
covariance, the intrinsic dimension k is the smallest number of largest eigenvalues whose
sum is ≥ delta × Σλ, and the saturation is k / d. A layer without any variance has k = 0.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def check_delta(delta: float) -> float:
    """delta as a float in (0, 1]; any real number type (also NumPy's) is accepted."""
    if isinstance(delta, (bool, np.bool_)) or not isinstance(delta, numbers.Real) or not 0.0 < float(delta) <= 1.0:
        raise ValueError(f"delta must be a number in (0, 1]; got {delta!r}")
    return float(delta)


def sorted_eigenvalues(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric covariance, largest first, negatives from rounding set to 0."""
    values = np.linalg.eigvalsh(np.asarray(cov, dtype=np.float64))[::-1]
    return np.clip(values, 0.0, None)


def intrinsic_dimension(eigenvalues: np.ndarray, delta: float) -> int:
    """Smallest k with λ₁ + … + λ_k ≥ delta · Σλ (eigenvalues sorted largest first)."""
    delta = check_delta(delta)
    values = np.asarray(eigenvalues, dtype=np.float64)
    if values.size == 0:
        return 0
    cumulative = np.cumsum(values)
    total = cumulative[-1]
    if not total > 0.0:
        return 0
    index = int(np.searchsorted(cumulative, delta * total, side="left"))
    return min(index + 1, values.size)


def layer_statistics(cov: np.ndarray, delta: float, n: int) -> dict[str, float]:
    """Every per-layer number the tracker reports, from one covariance matrix."""
    cov = np.asarray(cov, dtype=np.float64)
    dim = cov.shape[0]
    if not np.isfinite(cov).all():  # inf/NaN activations (a diverged run, float16 overflow): nothing to decompose
        return {**empty_statistics(dim), "trace": float(np.trace(cov)), "n": int(n)}
    eigenvalues = sorted_eigenvalues(cov)
    k = intrinsic_dimension(eigenvalues, delta)
    # log det from the eigenvalues already at hand (a second factorisation cost a quarter of eigh's time
    # on a 4,096-wide layer); singular (an eigenvalue rounded to ≤ 0) is -inf, as slogdet's sign says
    if dim == 0:
        log_det = 0.0  # the empty product
    else:
        log_det = float(np.sum(np.log(eigenvalues))) if eigenvalues[-1] > 0.0 else -math.inf
    return {
        "saturation": k / dim if dim else math.nan,
        "intrinsic_dimension": k,
        "feature_dimension": dim,
        "trace": float(np.trace(cov)),
        "log_det": log_det,
        "n": int(n),
    }


def empty_statistics(dim: int) -> dict[str, float]:
    """Row of a layer that saw no data during the pass."""
    return {"saturation": math.nan, "intrinsic_dimension": math.nan, "feature_dimension": dim,
            "trace": math.nan, "log_det": math.nan, "n": 0}
