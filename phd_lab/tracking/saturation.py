"""Layer statistics from a covariance matrix: intrinsic dimension, saturation, trace, log-det.

Definitions (thesis §6.1.4 and §8.1): with the eigenvalues λ₁ ≥ … ≥ λ_d of the population
covariance, the intrinsic dimension k is the smallest number of largest eigenvalues whose
sum is ≥ delta × Σλ, and the saturation is k / d. A layer without any variance has k = 0. Eigenvalues
at the rounding level of the decomposition (≤ λ₁ · d · ε) count as 0, so at delta = 1 k is the numerical rank.

Covariances up to ``ONE_THREAD_MAX_DIM`` wide are decomposed on one BLAS thread. Two reasons: on
such sizes more threads gain nothing, and OpenBLAS' idle workers keep spinning for a while after the
call, so torch's own OpenMP threads, spinning too, had to share the cores with them (an epoch's
saturations took 0.17 s instead of 0.02 s for VGG11 at ¼ width on 2 threads; benchmarks/RESULTS.md,
issue 3). And up to that size the eigenvalues do not depend on the core count: OpenBLAS' threaded
reduction changes their last bits from 256 features on.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

ONE_THREAD_MAX_DIM = 1024  # eigvalsh took 0.10 s on one thread and on two at 1,024; 0.88 and 0.54 s at 2,048


def check_delta(delta: float) -> float:
    """delta as a float in (0, 1]; any real number type (also NumPy's) is accepted."""
    if isinstance(delta, (bool, np.bool_)) or not isinstance(delta, numbers.Real) or not 0.0 < float(delta) <= 1.0:
        raise ValueError(f"delta must be a number in (0, 1]; got {delta!r}")
    return float(delta)


def sorted_eigenvalues(cov: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric covariance, largest first, negatives from rounding set to 0."""
    values = _eigvalsh(np.asarray(cov, dtype=np.float64))[::-1]
    return np.clip(values, 0.0, None)


def _eigvalsh(matrix: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues; on one BLAS thread up to ``ONE_THREAD_MAX_DIM`` (see the module's docstring)."""
    if matrix.ndim != 2 or matrix.shape[0] > ONE_THREAD_MAX_DIM:
        return np.linalg.eigvalsh(matrix)
    with _blas_threads().limit(limits=1, user_api="blas"):
        return np.linalg.eigvalsh(matrix)


@functools.cache
def _blas_threads() -> "ThreadpoolController":
    """The thread pools of the BLAS libraries loaded so far (numpy's among them), inspected once:
    switching a known pool takes 0.1 ms, finding the pools again 1.3 ms."""
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()


def rounding_level(eigenvalues: np.ndarray) -> float:
    """λ₁ · d · ε: eigenvalues at or below it are not resolved by the decomposition (numpy's ``matrix_rank``
    tolerance) and count as 0, for k and for log det alike."""
    return float(np.max(eigenvalues)) * eigenvalues.size * float(np.finfo(np.float64).eps)


def intrinsic_dimension(eigenvalues: np.ndarray, delta: float) -> int:
    """Smallest k with λ₁ + … + λ_k ≥ delta · Σλ, λ₁ ≥ λ₂ ≥ …: the eigenvalues are sorted largest first here, so
    those of ``np.linalg.eigvalsh`` (ascending) may be passed as they come.

    Eigenvalues at or below the rounding level of the decomposition, λ₁ · d · ε (numpy's ``matrix_rank``
    tolerance), count as 0: a symmetric eigensolver resolves eigenvalues only to about ε · λ₁, so smaller ones are
    rounding noise, not variance. Counted, they made k at delta = 1 depend on that noise (a layer of rank 2 with
    64 features: k = 3 to 10 by seed, not 2); below delta = 1 they weigh less than the tolerance itself."""
    delta = check_delta(delta)
    values = np.asarray(eigenvalues, dtype=np.float64)
    if not np.isfinite(values).all():  # NaN fails every comparison below: k was 0, a dead layer's k
        raise ValueError(f"eigenvalues must be finite to have an intrinsic dimension; got {values[:8]!r}"
                         f"{' ...' if values.size > 8 else ''}")
    if values.size == 0:
        return 0
    values = np.sort(values, axis=None)[::-1]  # ascending ones counted the smallest first: k too large
    values = np.where(values > rounding_level(values), values, 0.0)
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
    # inf/NaN activations (a diverged run, float16 overflow): nothing to decompose; and a finite covariance near
    # float64's limit can still give eigvalsh an inf eigenvalue, which has no intrinsic dimension either
    eigenvalues = sorted_eigenvalues(cov) if np.isfinite(cov).all() else None
    if eigenvalues is None or not np.isfinite(eigenvalues).all():
        return {**empty_statistics(dim), "trace": float(np.trace(cov)), "n": int(n)}
    k = intrinsic_dimension(eigenvalues, delta)
    # log det from the eigenvalues already at hand (a second factorisation cost a quarter of eigh's time
    # on a 4,096-wide layer); singular (an eigenvalue at the rounding level, which only its rounding kept above
    # 0 or not: a finite log det of noise otherwise) is -inf
    if dim == 0:
        log_det = 0.0  # the empty product
    else:
        singular = eigenvalues[-1] <= rounding_level(eigenvalues)
        log_det = -math.inf if singular else float(np.sum(np.log(eigenvalues)))
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
