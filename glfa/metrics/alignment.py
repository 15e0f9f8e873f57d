"""Cross-subject alignment metrics of the paper's section 4.3: fSC and ISC.

For temporally aligned responses of k subjects, flattened to ``f^s`` of shape ``[T, N_v]``
over the (masked) voxels:

- fMRI spatial correlation ``r(s_i, s_j) = 1/T sum_t corr(f^{s_i}_{t,:}, f^{s_j}_{t,:})``
  (Pearson correlation across voxels, averaged over time points);
- inter-subject correlation ``ISC_{s_i} = 1/N_v sum_v corr(f^{s_i}_{:,v}, sum_{j != i} f^{s_j}_{:,v})``
  (Pearson correlation across time, averaged over voxels).

Undefined correlations are skipped, never counted as zero: a time point at which either
subject's pattern is constant over the voxels is left out of fSC's mean, and a voxel whose
time series (the subject's, or the sum of the others') is constant is left out of ISC's mean.
A result with nothing left to average is ``nan``. Non-finite input raises
:class:`~glfa.errors.DataError`. All computations are in float64.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from glfa.errors import DataError

# voxels (fSC) or time points (ISC) processed per chunk, to bound float64 temporaries
_CHUNK_ELEMENTS = 1 << 22


def _flatten(x: np.ndarray, mask: np.ndarray | None, field: str) -> np.ndarray:
    """``[T, ...]`` -> ``[T, N_v]`` float64 over the mask's voxels (all voxels when mask is None)."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise DataError(f"expected an array [T, ...] with at least 2 dimensions, got shape {x.shape}", field=field)
    if mask is None:
        flat = x.reshape(x.shape[0], -1)
    else:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape[1:]:
            raise DataError(f"mask of shape {mask.shape} does not match the samples' shape {x.shape[1:]}", field=field)
        flat = x[:, mask]  # [t, v]
    flat = flat.astype(np.float64, copy=False)
    if not np.all(np.isfinite(flat)):
        raise DataError("contains NaN or infinite values", field=field)
    return flat


def _rowwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with the same row of ``b``; nan where a row is constant."""
    # [r, n] -> [r]
    constant = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    da = a - a.mean(axis=1, keepdims=True)
    db = b - b.mean(axis=1, keepdims=True)
    num = np.einsum("rn,rn->r", da, db)
    den = np.sqrt(np.einsum("rn,rn->r", da, da) * np.einsum("rn,rn->r", db, db))
    out = np.full(a.shape[0], np.nan)
    ok = ~constant & (den > 0)
    out[ok] = np.clip(num[ok] / den[ok], -1.0, 1.0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite values; nan when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _frame_corrs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-time-point spatial correlations of two ``[T, N_v]`` arrays (nan where undefined)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, a.shape[1]))
    return np.concatenate([_rowwise_corr(a[i : i + step], b[i : i + step]) for i in range(0, a.shape[0], step)])


def _voxel_corrs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-voxel temporal correlations of two ``[T, N_v]`` arrays (nan where undefined)."""
    step = max(1, _CHUNK_ELEMENTS // max(1, a.shape[0]))
    return np.concatenate(
        [_rowwise_corr(a[:, i : i + step].T, b[:, i : i + step].T) for i in range(0, a.shape[1], step)]
    )


def fsc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """fMRI spatial correlation r(a, b): mean over time points of the Pearson correlation across voxels.

    Parameters
    ----------
    a, b : array ``[T, ...]``
        Two subjects' responses to the same T time points (images ``[T, H, W]``, surface
        data ``[T, V]``, ...), the same shape.
    mask : bool array of shape ``a.shape[1:]``, optional
        The voxels to use (for flat images: the cortex mask); all voxels when omitted.

    Returns
    -------
    float
        The mean correlation over time points where both patterns vary across voxels;
        ``nan`` when there is no such time point.
    """
    return _nanmean(fsc_per_timepoint(a, b, mask))


def fsc_per_timepoint(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The terms of :func:`fsc`: the spatial correlation at every time point, float64 ``[T]`` (nan where undefined).

    Paired tests between two alignments of the same time points compare these.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise DataError(f"the two responses differ in shape: {a.shape} and {b.shape}", field="b")
    return _frame_corrs(_flatten(a, mask, "a"), _flatten(b, mask, "b"))


def _check_responses(responses: Mapping[str, np.ndarray], mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """Flatten every subject's response to ``[T, N_v]`` float64, checking shapes agree."""
    if not isinstance(responses, Mapping):
        raise DataError(f"expected a mapping subject -> array [T, ...], got {type(responses).__name__}", field="responses")
    if len(responses) < 2:
        raise DataError(f"need at least 2 subjects, got {len(responses)}", field="responses")
    shapes = {s: np.shape(x) for s, x in responses.items()}
    first = next(iter(shapes.values()))
    for s, shape in shapes.items():
        if shape != first:
            raise DataError(f"shape {shape} differs from the first subject's {first}", field=f"responses[{s!r}]")
    return {s: _flatten(x, mask, f"responses[{s!r}]") for s, x in responses.items()}


def isc(responses: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, float]:
    """Inter-subject correlation of every subject: ISC_s = mean over voxels of corr(f^s_v, sum_{j!=s} f^j_v).

    Parameters
    ----------
    responses : mapping subject -> array ``[T, ...]``
        At least two subjects' responses to the same T time points, all the same shape.
    mask : bool array of shape ``[...]``, optional
        The voxels to use; all voxels when omitted.

    Returns
    -------
    dict subject -> float
        ISC of each subject, in the mapping's order; voxels where either series is
        constant over time are skipped (``nan`` if every voxel is).
    """
    flat = _check_responses(responses, mask)
    total = np.sum(list(flat.values()), axis=0)  # [t, v]
    return {s: _nanmean(_voxel_corrs(f, total - f)) for s, f in flat.items()}


def fsc_matrix(responses: Mapping[str, np.ndarray], mask: np.ndarray | None = None) -> np.ndarray:
    """fSC between every pair of subjects, as a symmetric ``[S, S]`` array in the mapping's order.

    The diagonal is each subject's fSC with itself (1, or nan if every pattern is constant).
    """
    flat = _check_responses(responses, mask)
    names = list(flat)
    out = np.empty((len(names), len(names)))
    for i, si in enumerate(names):
        for j in range(i, len(names)):
            out[i, j] = out[j, i] = _nanmean(_frame_corrs(flat[si], flat[names[j]]))
    return out
