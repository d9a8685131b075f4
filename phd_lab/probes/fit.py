"""Pure probe functions: arrays in, a ``ProbeRecord`` out (no files written, no globals changed).

``probe_layer`` is the one entry point: load a layer's arrays (memory-mapped, no pickle),
optionally subsample and standardise, fit the chosen solver and evaluate. All three solvers
minimise the same objective, multinomial cross-entropy averaged over the n training samples
plus ||W||²/(2·C·n) (intercept not penalised), which is scikit-learn's scaling of C.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from phd_lab.errors import DataError
from phd_lab.probes.settings import ProbeSettings

if TYPE_CHECKING:  # torch is imported only by the lbfgs-torch solver
    import torch


@dataclass(frozen=True, eq=False)
class ProbeRecord:
    """The result of one layer's probe; the model itself is discarded (thesis §6.2.5).

    ``confusion`` is the eval set's confusion matrix, rows normalised (true class), as the float64 array that is
    written as the layer's ``.npy``: a 1000-class matrix as nested lists took 32 MB per record and seconds to
    copy. None once the probe job has written the run's files and let it go (``without_confusion``).
    """

    index: int
    layer: str
    solver: str
    train_acc: float
    eval_acc: float
    n_iter: int
    converged: bool
    seconds: float  # wall time of loading, fitting and evaluating this layer when it was computed
    n_train: int
    n_eval: int
    n_features: int
    classes: list[int] = field(default_factory=list)
    confusion: np.ndarray | None = field(default_factory=lambda: np.zeros((0, 0)))

    def __post_init__(self) -> None:
        if self.confusion is not None:  # a read-only float64 view: records that share a matrix cannot change it
            matrix = np.asarray(self.confusion, dtype=np.float64).view()
            matrix.flags.writeable = False
            object.__setattr__(self, "confusion", matrix)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProbeRecord):
            return NotImplemented
        mine, theirs = self.confusion, other.confusion
        same = (mine is None and theirs is None) or (
            mine is not None and theirs is not None and np.array_equal(mine, theirs))
        return same and self.to_json() == other.to_json()

    def to_json(self) -> dict[str, Any]:
        """Every field but the confusion matrix (the cache stores that as a ``.npy`` file), as an explicit dict:
        ``dataclasses.asdict`` deep-copied the matrix's nested lists too, seconds per 1000-class layer. An
        accuracy of no samples (NaN) is null, so that the cache's entry is strict JSON."""
        return {item.name: None if item.name in _SHARES and math.isnan(getattr(self, item.name))
                else getattr(self, item.name) for item in fields(self) if item.name != "confusion"}

    @classmethod
    def from_json(cls, data: dict[str, Any], confusion: np.ndarray) -> "ProbeRecord":
        """The record ``to_json`` wrote; a ``TypeError`` or ``ValueError`` naming the first field that is missing,
        unknown or of another type (a damaged or hand-edited cache entry), which the cache takes for a miss."""
        if not isinstance(data, dict):
            raise TypeError(f"the record is a JSON {type(data).__name__}, not an object")
        expected = [item.name for item in fields(cls) if item.name != "confusion"]
        missing, unknown = [n for n in expected if n not in data], sorted(set(data) - set(expected))
        if missing or unknown:
            raise TypeError(f"the record lacks {missing}" if missing else f"the record has unknown fields {unknown}")
        for name in expected:
            fits, meant = _FIELD_CHECKS[name]
            if not fits(data[name]):
                raise ValueError(f"its {name} is {json.dumps(data[name])[:80]}, not {meant}")
        return cls(**{**data, **{name: float("nan") for name in _SHARES if data[name] is None}}, confusion=confusion)

    def confusion_matrix(self) -> np.ndarray:
        if self.confusion is None:
            raise ValueError(f"the confusion matrix of layer {self.layer!r} was let go once its files were written")
        return self.confusion

    def without_confusion(self) -> "ProbeRecord":
        """This record without its matrix, for a job that keeps its records after writing their files."""
        return replace(self, confusion=None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_COUNT = (lambda v: _is_integer(v) and v >= 0, "an integer >= 0")
_SHARE = (lambda v: v is None or _is_number(v) and (v != v or 0.0 <= v <= 1.0),  # NaN (null): no eval samples
          "a number from 0 to 1")
_SHARES = ("train_acc", "eval_acc")
_TEXT = (lambda v: isinstance(v, str), "a string")
# what each field of a stored record must be (ProbeRecord.from_json), and how its error says so
_FIELD_CHECKS = {"index": _COUNT, "layer": _TEXT, "solver": _TEXT, "train_acc": _SHARE, "eval_acc": _SHARE,
                 "n_iter": _COUNT, "converged": (lambda v: isinstance(v, bool), "true or false"),
                 "seconds": (lambda v: _is_number(v) and 0.0 <= v < float("inf"), "a number of seconds >= 0"),
                 "n_train": _COUNT, "n_eval": _COUNT, "n_features": _COUNT,
                 "classes": (lambda v: isinstance(v, list) and all(map(_is_integer, v)),
                             "a list of integer class labels")}


@dataclass(frozen=True)
class FitResult:
    """Predictions of a fitted probe on both splits, and how the solver ended."""

    train_pred: np.ndarray
    eval_pred: np.ndarray
    n_iter: int
    converged: bool


def load_array(path: Path | str) -> np.ndarray:
    """A memory-mapped, read-only view of a ``.npy`` file; never unpickles."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


class LatentsError(DataError):
    """Latents no probe can be fitted on as asked; ``split`` (train or eval) tells the caller which file to name."""

    def __init__(self, message: str, split: str = "train") -> None:
        super().__init__(message)
        self.split = split


class NonFiniteLatents(LatentsError):
    """A layer's latents hold NaN or inf (the run diverged): no probe can be fitted on them. ``beyond_float32``:
    found in lbfgs-torch's float32 copy of float64 latents, where finite values beyond float32 overflow too."""

    def __init__(self, message: str, split: str = "train", beyond_float32: bool = False) -> None:
        super().__init__(message, split)
        self.beyond_float32 = beyond_float32


class LatentsTooLarge(LatentsError):
    """A layer's latents are finite but too large for the fit asked for (saga on raw features)."""


class StandardisedBeyondRange(LatentsError):
    """Latents standardised with the training statistics hold values beyond their dtype (float32: about 3.4e38):
    an eval value that many training standard deviations out, which a fit would take as inf."""

    def __init__(self, message: str, split: str = "eval") -> None:
        super().__init__(message, split)


def beyond_range(split: str, layer: str, dtype: str, limit: float, sample: int, feature: int, mean: float,
                 std: float | None) -> StandardisedBeyondRange:
    """The error for a standardised value of ``split`` beyond ``dtype`` (named as numpy names it; ``limit``: its
    largest finite value): the first such sample and feature, and that feature's training statistics, which tell a
    (nearly) constant training feature from a wrong file. ``std`` None: the feature was constant in training, so it
    was centred only (scale 1 in its own units), which a standard deviation of 1 misstated."""
    where = (f"whose train values are all {mean:.3g} (a constant feature, centred but not scaled): it lies more "
             f"than {limit:.2g} from that value" if std is None else
             f"whose train values have mean {mean:.3g} and standard deviation {std:.3g}: it lies more than "
             f"{limit:.2g} standard deviations outside the training distribution")
    return StandardisedBeyondRange(
        f"standardised with the statistics of the train latents, the {split} latents of layer {layer!r} hold values "
        f"beyond {dtype}'s range (about ±{limit:.2g}), first sample {sample}'s feature {feature}, {where}, and a "
        f"probe would take it as infinite", split)


def nonfinite_count(x: np.ndarray, rows: int = 1024) -> int:
    """NaN and inf values in ``x``, counted block by block (a memory-mapped file is read once, with no
    full-size temporary)."""
    if not np.issubdtype(x.dtype, np.floating):
        return 0
    return sum(int(block.size - np.count_nonzero(np.isfinite(block)))
               for block in (x[start:start + rows] for start in range(0, len(x), rows)))


def nonfinite_count_tensor(x: torch.Tensor, rows: int = 4096) -> int:
    """``nonfinite_count`` of a tensor, on its device: lbfgs-torch checks its uploaded copy on the GPU
    instead of reading the files once more on the host. A CPU tensor is counted by numpy through a view of its
    memory: torch's ``isfinite`` on the CPU took 11x numpy's time (35 ms of a 8,000 x 1,024 float32 layer whose
    lbfgs-torch fit on one CPU thread takes 0.5 s, benchmarks/RESULTS.md session 49)."""
    import torch
    if x.numel() == 0:
        return 0
    if x.device.type == "cpu" and x.dtype != torch.bfloat16:  # numpy has no bfloat16
        return nonfinite_count(x.detach().numpy())
    return int(sum(torch.count_nonzero(~torch.isfinite(block)) for block in x.split(rows)))


def check_finite(x_train: Any, x_eval: Any, layer: str, count: Callable[[Any], int] = nonfinite_count) -> None:
    """Raise ``NonFiniteLatents`` naming the split, so the caller can name the file (arrays, or tensors
    with ``count=nonfinite_count_tensor``)."""
    for split, x in (("train", x_train), ("eval", x_eval)):
        bad = count(x)
        if bad:
            raise NonFiniteLatents(f"the {split} latents of layer {layer!r} hold {bad} NaN or infinite value(s) "
                                   f"of {int(np.prod(x.shape))}", split)


def stratified_subsample(y: np.ndarray, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of ``n`` samples with the class proportions of ``y``; None keeps all. scikit-learn's
    stratified split draws them, as it always did; it needs every class in the part left out too, so where fewer
    samples than classes are left out (1,430 of 1,437 Digits samples) each class keeps its share rounded by
    largest remainders (``_kept_per_class``), drawn from a generator seeded by ``seed``."""
    if n is None or n >= len(y):
        return None
    classes, inverse = np.unique(y, return_inverse=True)
    if len(y) - n < len(classes):
        generator = np.random.default_rng(seed)
        kept = _kept_per_class(np.bincount(inverse), n)
        chosen = [generator.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(kept)]
        return np.sort(np.concatenate(chosen))
    from sklearn.model_selection import train_test_split
    indices, _ = train_test_split(np.arange(len(y)), train_size=n, stratify=y, random_state=seed)
    return np.sort(indices)


def _kept_per_class(counts: np.ndarray, n: int) -> np.ndarray:
    """How many of each class's ``counts`` samples ``n`` < their total keeps: its exact share's integer part, and
    one more for the classes with the largest fractional parts (the first class on ties) until ``n`` are kept.
    A share below the class's count stays at most that count."""
    shares = counts * n / counts.sum()
    kept = np.floor(shares).astype(np.int64)
    extra = np.argsort(-(shares - kept), kind="stable")[:n - int(kept.sum())]
    kept[extra] += 1
    return np.minimum(kept, counts)


def as_float(x: np.ndarray, copy: bool) -> np.ndarray:
    """``x`` as C-ordered float32/float64 (float16 latents are widened to float32): an in-memory copy with
    ``copy`` (standardising works in place), else ``x`` itself where it already is one, e.g. a memory-mapped
    layer, whose pages the fit then reads as reclaimable file cache instead of a private copy of the layer."""
    dtype = np.float32 if x.dtype in (np.float16, np.float32) else np.float64
    return np.array(x, dtype=dtype, order="C", copy=True) if copy else np.asarray(x, dtype=dtype, order="C")


def standardize(x_train: np.ndarray, x_eval: np.ndarray, rows: int = 64,
                layer: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Scale features to zero mean and unit variance with training statistics, in place.

    ``StandardScaler``'s definition (population variance; near-constant features keep scale 1 by
    its rule, ``constant_features``) with float64 arithmetic, stored back into the caller's
    float32/float64 copies (``as_float`` makes them). The work goes through one float64 buffer of ``rows``
    samples that stays in the CPU cache: one pass for the statistics (``_moments``), one for the scaling.
    ``StandardScaler`` itself makes whole-array float64 temporaries: 1.9 s of a 20,000 × 4,096
    layer whose lbfgs fit takes 8–13 s; this takes 0.25 s.

    Finite float64 latents beyond about 1e154 overflow the sums of squares (and near float64's largest,
    the sums): such features are scaled by a power of two (``_power_of_two_factors``), which is exact, and
    their statistics taken again. The standardised values are then those of the unscaled computation, to the
    last bit, unless a feature's values span more than float64's range of exponents (its smallest then
    round to subnormals); the common case makes no extra pass.

    An eval value so far outside the training distribution that its standardised value is beyond the copy's
    dtype raises ``StandardisedBeyondRange`` (numpy's overflow flag, checked after each operation anyway, so
    finite results cost nothing extra): stored, it became inf, and scikit-learn failed with "Input X contains
    infinity".
    """
    buffer = np.empty((rows, x_train.shape[1]))  # also holds eval blocks: not limited by the training rows
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows as a non-finite statistic
        mean, m2 = _moments(x_train, buffer, None)
    overflowed = ~(np.isfinite(mean) & np.isfinite(m2))
    factor = None
    if overflowed.any():
        factor = _power_of_two_factors(x_train, buffer, overflowed)
        mean, m2 = _moments(x_train, buffer, factor)
    count = x_train.shape[0]
    var = m2 / count
    scale = np.sqrt(var)
    constant = constant_features(var, mean, count)
    scale[constant] = 1.0 if factor is None else factor[constant]  # 1 in the latents' own units
    mean = _exact_constant_means(x_train, mean, factor, constant, rows)
    inverse = 1.0 / scale
    for split, x in (("train", x_train), ("eval", x_eval)):
        for start in range(0, x.shape[0], rows):
            target = x[start:start + rows]
            block = _load(buffer, target, factor)
            try:
                with np.errstate(over="raise"):  # the operation completes, then raises
                    block -= mean
                    block *= inverse
                    np.copyto(target, block, casting="same_kind")
            except FloatingPointError:
                sample, feature = np.argwhere(~(np.abs(block) <= np.finfo(x.dtype).max))[0]
                unit = 1.0 if factor is None else factor[feature]
                raise beyond_range(split, layer, x.dtype.name, float(np.finfo(x.dtype).max), start + int(sample),
                                   int(feature), mean[feature] / unit,
                                   None if constant[feature] else scale[feature] / unit) from None
    return x_train, x_eval


def _load(buffer: np.ndarray, source: np.ndarray, factor: np.ndarray | None) -> np.ndarray:
    """``source`` rows in float64 in the front of ``buffer``, times the features' ``factor`` where given."""
    block = buffer[:source.shape[0]]
    if factor is None:
        np.copyto(block, source)
    else:
        np.multiply(source, factor, out=block)
    return block


def _moments(x: np.ndarray, buffer: np.ndarray, factor: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and centred sum of squares of ``x`` (times ``factor``), block by block: each
    block's mean and sum of squares, merged exactly as in Chan et al.'s parallel variance."""
    rows, features = buffer.shape
    mean, m2, seen = np.zeros(features), np.zeros(features), 0
    for start in range(0, x.shape[0], rows):
        block = _load(buffer, x[start:start + rows], factor)
        block_mean = block.mean(axis=0)
        block -= block_mean
        size, total = block.shape[0], seen + block.shape[0]
        delta = block_mean - mean
        mean += delta * (size / total)
        m2 += np.einsum("ij,ij->j", block, block) + delta * delta * (seen * size / total)
        seen = total
    return mean, m2


def _exact_constant_means(x: np.ndarray, mean: np.ndarray, factor: np.ndarray | None, constant: np.ndarray,
                          rows: int) -> np.ndarray:
    """``mean`` with the value itself (times ``factor``) for each feature whose training values are all the same:
    the float64 mean of many copies of 7e307 (or 0.1) is a few ulps off, and the feature, which keeps scale 1 in
    its own units, standardised to that error (about ±1e292 there) instead of 0, a huge constant input to the fit.
    Only features taken as constant whose mean is not already their first value are read (none in the common case:
    a dead unit's mean of 0 is exact, and so is a float32 feature's mean), one block of ``rows`` at a time."""
    if x.shape[0] == 0:
        return mean
    first = x[0].astype(np.float64) * (1.0 if factor is None else factor)  # a power of two: exact
    suspects = np.flatnonzero(constant & (mean != first))
    if suspects.size == 0:
        return mean
    same = np.ones(suspects.size, dtype=bool)
    for start in range(0, x.shape[0], rows):
        same &= (x[start:start + rows, suspects] == x[0, suspects]).all(axis=0)
    exact = mean.copy()
    exact[suspects[same]] = first[suspects[same]]
    return exact


def _power_of_two_factors(x: np.ndarray, buffer: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Per feature, 1, or for the ``chosen`` ones the power of two that brings their largest |value| into
    [0.5, 1) (beyond 2**1022, [1, 4)): multiplying by it is exact in binary floating point, and no sum of squares
    overflows after it. The factor is a normal number, at least 2**-1022: 2**-1024 is a subnormal whose inverse, the
    scale of a constant feature of 1.5 * 2**1023, overflowed (the feature standardised to NaN)."""
    rows = buffer.shape[0]
    peak = np.zeros(buffer.shape[1])
    for start in range(0, x.shape[0], rows):
        block = _load(buffer, x[start:start + rows], None)
        np.maximum(peak, np.abs(block, out=block).max(axis=0), out=peak)
    _, exponent = np.frexp(peak)
    # only for the chosen: 2**1070 of a feature of subnormal values overflowed, with a RuntimeWarning
    return np.ldexp(1.0, -np.where(chosen, np.minimum(exponent, -np.finfo(np.float64).minexp), 0))


def constant_features(var: Any, mean: Any, count: int) -> Any:
    """Features indistinguishable from constants: scikit-learn's ``StandardScaler`` rule (the
    error bound of the two-pass variance in float64), for numpy arrays and torch tensors alike."""
    eps = np.finfo(np.float64).eps
    return var <= count * eps * var + (count * mean * eps) ** 2


def check_saga_step(x_train: np.ndarray, layer: str) -> None:
    """Raise ``LatentsTooLarge`` where scikit-learn's saga could not fit the raw latents ``x_train``.

    Its step size is 1 / (the largest squared row norm + ...), which it computes in the latents' own dtype:
    where that overflows (float32 values beyond about 1.8e19 / √features, float64 beyond 1.3e154 / √features), the
    step is 0 and saga returned an untrained probe, every sample predicted as one class, reported as converged
    after one epoch; near float64's largest it failed with its "Floating-point under-/overflow". This is its own
    computation (``row_norms``), one pass over the training latents, small beside saga's epochs over them.
    """
    from sklearn.utils.extmath import row_norms
    if len(x_train) == 0 or np.isfinite(row_norms(x_train, squared=True).max()):
        return
    limit = np.finfo(x_train.dtype).max
    raise LatentsTooLarge(
        f"the train latents of layer {layer!r} are too large for saga on raw features: the squared length of "
        f"their longest sample overflows {x_train.dtype} (beyond {limit:.3g}), so scikit-learn's saga would take "
        f"steps of size 0 and return an untrained probe (or fail with a floating-point overflow)", "train")


def sklearn_estimator(settings: ProbeSettings) -> Any:
    """The scikit-learn LogisticRegression the ``saga``/``lbfgs`` solvers fit (L2 penalty, multinomial)."""
    from sklearn.linear_model import LogisticRegression
    s = settings.resolved()
    return LogisticRegression(C=s.C, solver=s.solver, max_iter=s.max_iter, tol=s.tol, random_state=s.seed)


def fit_sklearn(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, settings: ProbeSettings,
                layer: str = "") -> FitResult:
    """Fit scikit-learn's saga or lbfgs; convergence = no ConvergenceWarning."""
    from sklearn.exceptions import ConvergenceWarning
    estimator = sklearn_estimator(settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        estimator.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    n_iter = int(np.max(estimator.n_iter_))
    s = settings.resolved()
    if s.solver == "lbfgs" and not s.standardize and not converged and n_iter == 0 and not np.any(estimator.coef_):
        raise lbfgs_took_no_step(x_train, layer)
    return FitResult(estimator.predict(x_train), estimator.predict(x_eval), n_iter, converged)


def lbfgs_took_no_step(x_train: np.ndarray, layer: str, rows: int = 1024) -> LatentsTooLarge:
    """The error for an lbfgs fit on raw latents that ended, not converged, where it started (every weight 0):
    its first line search failed, as scikit-learn's does on raw latents from about 1e28 on (where exactly depends
    on the data). Such a probe predicts one class for every sample, and was reported as a result (0 iterations,
    converged False) with no cause named. The largest |value| takes one pass over the latents, on this path only.
    """
    peak = max((float(np.abs(x_train[start:start + rows]).max()) for start in range(0, len(x_train), rows)),
               default=0.0)
    return LatentsTooLarge(
        f"scikit-learn's lbfgs took no step on the raw train latents of layer {layer!r} (their largest |value| is "
        f"{peak:.3g}): its first line search failed, which it does on raw latents this large, so the probe would "
        f"be untrained (every weight 0, one class predicted for every sample)", "train")


def standardize_tensors(x_train: torch.Tensor, x_eval: torch.Tensor, rows: int | None = None,
                        layer: str = "") -> None:
    """``standardize`` for torch tensors on any device, in place (for ``lbfgs-torch`` on a GPU).

    Statistics are accumulated in float64 over blocks of ``rows`` samples (default: about 32 MB of
    float64 per block, so no float64 copy of the data); near-constant features keep scale 1
    (``constant_features``), as in ``StandardScaler``. Standardising on the GPU spares the CPU
    pass over the latents. A standardised value beyond the tensors' dtype raises ``StandardisedBeyondRange``,
    as in ``standardize`` (a count of the eval tensor on the device, small beside the fit): it was inf, and
    predicted with silently.
    """
    import torch
    count = x_train.shape[0]
    rows = rows or max(1, (32 << 20) // (8 * max(1, x_train[0].numel())))
    # block by block: sum(dtype=float64) of the whole tensor converts all of it first (a float64 copy of the layer)
    mean = sum(block.sum(dim=0, dtype=torch.float64) for block in x_train.split(rows)) / count
    m2 = torch.zeros_like(mean)
    for block in x_train.split(rows):
        m2 += (block.to(torch.float64) - mean).square_().sum(dim=0)
    var = m2 / count
    std = var.sqrt()
    constant = constant_features(var, mean, count)
    std[constant] = 1.0
    for split, x in (("train", x_train), ("eval", x_eval)):
        for block in x.split(rows):
            block.copy_(((block.to(torch.float64) - mean) / std).to(x.dtype))
        # the raw latents were checked finite, so these overflowed here; standardised train values are at most
        # √n standard deviations out (constant features: 1 in their own units), so only the eval ones can
        if split == "eval" and nonfinite_count_tensor(x, rows):
            sample, feature = (int(i) for i in torch.nonzero(~torch.isfinite(x))[0])
            # torch's finfo: numpy's knows no bfloat16
            raise beyond_range(split, layer, str(x.dtype).removeprefix("torch."), float(torch.finfo(x.dtype).max),
                               sample, feature, float(mean[feature]),
                               None if constant[feature] else float(std[feature]))


def to_device_float32(x: np.ndarray, device: Any, block_bytes: int = 1 << 25) -> torch.Tensor:
    """A float32 copy of a (memory-mapped) array on ``device``, filled block by block.

    No whole-array host copy is made first: the latents go from the page cache to the device in
    blocks of about ``block_bytes``. A float16 or float64 block travels as it is and the device
    converts it: a copy that also converts between devices was converted on the host first, which
    made a float16 layer's upload to an H200 2.6x slower than now (benchmarks/probe_upload.py).
    """
    import torch
    device = torch.device(device)
    out = torch.empty(x.shape, dtype=torch.float32, device=device)
    rows = max(1, block_bytes // max(1, x.itemsize * int(np.prod(x.shape[1:]))))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")  # only read
        for start in range(0, x.shape[0], rows):
            block = np.ascontiguousarray(x[start:start + rows])
            if not block.dtype.isnative:  # a big-endian file (">f4"): torch takes native byte order only
                block = block.astype(block.dtype.newbyteorder("="))
            source = torch.from_numpy(block)
            if device.type != "cpu" and source.dtype != torch.float32:
                source = source.to(device)  # as it is; converted by the copy below, on the device
            out[start:start + rows].copy_(source)
    return out


def fit_torch_lbfgs(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, settings: ProbeSettings,
                    layer: str = "") -> FitResult:
    """Full-batch ``torch.optim.LBFGS`` on the same objective as scikit-learn (float32, any device).

    The raw (memory-mapped) arrays go to the device in blocks as float32 (``to_device_float32``), and
    the device standardises its own copy when asked. Starts from zeros like
    scikit-learn; stops when the largest gradient entry is ≤ tol, the loss or the step stops changing, or
    after ``max_iter`` iterations or ``2 · max_iter`` loss evaluations. ``converged`` is scikit-learn lbfgs'
    test, taken at the weights it ends on: the largest |gradient entry| ≤ tol (``largest_gradient``).
    """
    import torch
    with torch.inference_mode(False):  # a caller's ``torch.inference_mode()`` block: autograd refuses its tensors
        return _fit_torch_lbfgs(x_train, y_train, x_eval, settings, layer)


def _fit_torch_lbfgs(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, settings: ProbeSettings,
                     layer: str) -> FitResult:
    """``fit_torch_lbfgs`` outside inference mode."""
    import torch
    import torch.nn.functional as F

    s = settings.resolved()
    device = torch.device(s.device)
    classes = np.unique(y_train)
    x, xe = to_device_float32(x_train, device), to_device_float32(x_eval, device)
    try:
        check_finite(x, xe, layer, count=nonfinite_count_tensor)  # after the conversion: float64 beyond float32 too
    except NonFiniteLatents as error:
        if (x_train if error.split == "train" else x_eval).dtype.itemsize <= 4:
            raise
        raise NonFiniteLatents(f"{error} in lbfgs-torch's float32 copy of them: NaN or infinite values in the "
                               f"file, or finite float64 values beyond float32's range (about ±3.4e38)", error.split,
                               beyond_float32=True) from None
    if s.standardize:
        standardize_tensors(x, xe, layer=layer)
    y = torch.from_numpy(np.searchsorted(classes, y_train).astype(np.int64)).to(device)
    n, d = x.shape
    weight = torch.zeros(len(classes), d, dtype=torch.float32, device=device, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float32, device=device, requires_grad=True)
    # Two classes: scikit-learn fits one binomial vector w with ||w||²/2. The two softmax rows settle at
    # ±w/2, where their penalty is ||w||²/4, so it is doubled to minimise the same objective.
    strength = (2.0 if len(classes) == 2 else 1.0) / (s.C * n)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=s.max_iter, max_eval=2 * s.max_iter,
                                  tolerance_grad=s.tol, tolerance_change=1e-9, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.addmm(bias, x, weight.T), y) + 0.5 * strength * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise lbfgs_torch_overflowed(x, s, strength, layer)
    n_iter = int(optimizer.state[weight].get("n_iter", 0))
    # Not "stopped before its budget": its float32 stalls (a loss or step change below tolerance_change, absolute)
    # ended a fit on raw latents of 1e8 after 2 iterations, largest gradient 2.3e7, reported as converged.
    converged = largest_gradient(closure, (weight, bias)) <= s.tol
    with torch.no_grad():
        train_pred = torch.addmm(bias, x, weight.T).argmax(dim=1).cpu().numpy()
        eval_pred = torch.addmm(bias, xe, weight.T).argmax(dim=1).cpu().numpy()
    return FitResult(classes[train_pred], classes[eval_pred], n_iter, converged)


def largest_gradient(closure: Callable[[], Any], params: tuple[torch.Tensor, ...]) -> float:
    """The largest |entry| of the objective's gradient at ``params`` as they are now: scikit-learn's lbfgs
    (scipy's L-BFGS-B) converges when this is ≤ its tol (``gtol``, no bounds). One more evaluation, as the
    gradients left by the line search may be those of a point it tried and did not take."""
    import torch
    with torch.enable_grad():
        closure()
    return max(float(p.grad.abs().max()) if p.grad is not None and p.numel() else 0.0 for p in params)


def lbfgs_torch_overflowed(x: torch.Tensor, settings: ProbeSettings, strength: float, layer: str) -> DataError:
    """The error for lbfgs-torch weights that became NaN or infinite: its float32 line search overflowed, on raw
    latents too large (``LatentsTooLarge``) or under a penalty too strong (a tiny C). Such a probe predicts one class
    for every sample; one of C = 1e-25 (allowed down to 1e-30) was blamed on raw latents of 5 ("this large"), or,
    standardised, was reported as a result (converged False) with no cause named."""
    peak = max((float(block.abs().max()) for block in x.split(4096)), default=0.0)
    if not settings.standardize and peak * peak >= strength:
        return LatentsTooLarge(
            f"lbfgs-torch's weights became NaN or infinite on the raw train latents of layer {layer!r} (their "
            f"largest |value| is {peak:.3g}): its float32 line search overflows on raw latents this large (from "
            f"about 1e10 on, depending on the data), so the probe would be untrained (one class predicted for "
            f"every sample)", "train")
    raw = "" if settings.standardize else f" on raw latents of largest |value| {peak:.3g}"
    # the loss adds strength/2 · ||W||²: 1/(2·C·n) per squared weight, 1/(C·n) for two classes (one weight vector)
    penalty = "||w||²/(C·n)" if round(strength * settings.C * x.shape[0]) == 2 else "||W||²/(2·C·n)"
    return DataError(
        f"lbfgs-torch's weights became NaN or infinite on layer {layer!r}: its penalty {penalty}, with C = "
        f"{settings.C:.3g} and n = {x.shape[0]} training samples, weighs {strength / 2:.3g} per squared weight, which "
        f"overflowed its float32 line search{raw} (standardised latents: from about 1e20 on), so the probe would be "
        f"untrained (one class predicted for every sample). Use a larger C (--C, or probe_C in the config), or probe "
        f"with lbfgs, which computes in float64.")


def fit_arrays(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, settings: ProbeSettings,
               layer: str = "") -> FitResult:
    """Standardise if asked (in place: pass arrays you own), then fit the chosen solver.

    ``lbfgs-torch`` standardises its own copy on its device (``standardize_tensors``); its arrays
    are only read.
    """
    s = settings.resolved()
    if s.solver == "lbfgs-torch":
        return fit_torch_lbfgs(x_train, y_train, x_eval, s, layer)
    if s.standardize:
        x_train, x_eval = standardize(x_train, x_eval, layer=layer)
    elif s.solver == "saga":
        check_saga_step(x_train, layer)
    return fit_sklearn(x_train, y_train, x_eval, s, layer)


def probe_arrays(index: int, layer: str, x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray,
                 y_eval: np.ndarray, settings: ProbeSettings) -> ProbeRecord:
    """Subsample, fit and evaluate one layer's probe on in-memory (or memory-mapped) arrays."""
    from sklearn.metrics import confusion_matrix
    start = time.perf_counter()
    s = settings.resolved()
    y_train = np.asarray(y_train)
    y_eval = np.asarray(y_eval)
    chosen = stratified_subsample(y_train, s.train_samples, s.seed)
    if chosen is not None:
        x_train, y_train = x_train[chosen], y_train[chosen]
    if s.solver != "lbfgs-torch":  # lbfgs-torch copies the arrays to its device itself
        # a subsample is a copy already; the caller's arrays are copied only for the in-place standardisation
        x_train = as_float(x_train, copy=s.standardize and chosen is None)
        x_eval = as_float(x_eval, copy=s.standardize)
        check_finite(x_train, x_eval, layer)  # lbfgs-torch checks its copies on its device
    result = fit_arrays(x_train, y_train, x_eval, s, layer)
    classes = np.union1d(y_train, y_eval)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from the eval set give empty rows
        confusion = np.nan_to_num(confusion_matrix(y_eval, result.eval_pred, labels=classes, normalize="true"))
    return ProbeRecord(
        index=int(index), layer=layer, solver=s.solver,
        train_acc=float(np.mean(result.train_pred == y_train)), eval_acc=float(np.mean(result.eval_pred == y_eval)),
        n_iter=result.n_iter, converged=bool(result.converged), seconds=time.perf_counter() - start,
        n_train=int(len(y_train)), n_eval=int(len(y_eval)), n_features=int(x_train.shape[1]),
        classes=[int(c) for c in classes], confusion=confusion)


def probe_layer(index: int, layer: str, train: Path | str, eval: Path | str, train_labels: Path | str,
                eval_labels: Path | str, settings: ProbeSettings) -> ProbeRecord:
    """Load one layer's latents and labels from ``.npy`` files and probe them."""
    start = time.perf_counter()
    try:
        record = probe_arrays(index, layer, load_array(train), load_array(train_labels), load_array(eval),
                              load_array(eval_labels), settings)
    except NonFiniteLatents as error:
        path = train if error.split == "train" else eval
        if error.beyond_float32:
            raise NonFiniteLatents(f"Latents file {str(path)!r}: {error}. If the file's values are finite, probe "
                                   f"it with lbfgs, which standardises float64 latents of any finite size; if not, "
                                   f"the run diverged: retrain it (e.g. with a lower learning rate) before probing.",
                                   error.split, beyond_float32=True) from None
        raise NonFiniteLatents(f"Latents file {str(path)!r}: {error}. The run diverged (its "
                               f"training loss is NaN or inf) or its activations overflowed float16; a probe cannot "
                               f"be fitted on them. Retrain it (e.g. with a lower learning rate) before probing, or, "
                               f"for latents extracted as float16, extract them as float32 (the extract step's "
                               f"'dtype').",
                               error.split) from None
    except StandardisedBeyondRange as error:
        raise StandardisedBeyondRange(
            f"Latents file {str(train if error.split == 'train' else eval)!r}: {error}. Check that the train and "
            f"eval latents come from the same run and extraction; a feature (nearly) constant in training that "
            f"varies in the eval set does this too. Probing on raw features (--no-standardize, or "
            f"probe_standardize: false in the config) avoids the overflow.", error.split) from None
    except LatentsTooLarge as error:
        other = ", or probe with lbfgs, which standardises by default" if settings.solver == "saga" else ""
        raise LatentsTooLarge(f"Latents file {str(train)!r}: {error}. Standardise them (--standardize, or "
                              f"probe_standardize: true in the config){other}; values this large may also mean "
                              f"that the run diverged.", error.split) from None
    return replace(record, seconds=time.perf_counter() - start)
