"""Per-run preprocessing of fMRI time series: pure functions on ``[T, V]`` float arrays.

``T`` is time (TRs) and ``V`` the vertices (or the cortex pixels of an image source).
``glfa prepare`` applies, per run and in this order: :func:`check_finite`,
:func:`drop_initial`, a ``max_trs`` crop, :func:`detrend`, :func:`zscore`; then it cuts each
presentation's response at the TR given by :func:`lag_to_trs` and averages the repeats of a
stimulus with :func:`average_repeats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from glfa.errors import DataError

__all__ = ["check_finite", "drop_initial", "detrend", "zscore", "lag_to_trs", "average_repeats"]


def _as_2d(x: np.ndarray, name: str = "x") -> np.ndarray:
    """``x`` as a floating ``[T, V]`` array (a ``[T]`` series becomes ``[T, 1]``)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a [T, V] array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def check_finite(x: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Return ``x`` unchanged if every value is finite; else DataError naming ``path``, the first bad TR and vertex."""
    x = np.asarray(x)
    bad = ~np.isfinite(x)
    if bad.any():
        flat = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
        bad_flat = bad.reshape(flat.shape)
        tr, vertex = (int(i) for i in np.argwhere(bad_flat)[0])
        n_bad_trs = int(bad_flat.any(axis=1).sum())
        raise DataError(
            f"non-finite value {flat[tr, vertex]} at TR {tr}, vertex {vertex} "
            f"({n_bad_trs} of {flat.shape[0]} TRs hold NaN or Inf); expected finite fMRI values",
            path=path,
        )
    return x


def drop_initial(x: np.ndarray, n: int) -> np.ndarray:
    """Drop the first ``n`` TRs (``x[n:]``); ``n`` must be smaller than ``T``."""
    if n < 0:
        raise ValueError(f"cannot drop a negative number of TRs ({n})")
    if n >= len(x):
        raise ValueError(f"cannot drop {n} TRs from a run of {len(x)} TRs")
    return x[n:]


def _legendre_basis(n_times: int, order: int) -> np.ndarray:
    """Legendre polynomials ``P_0 .. P_order`` sampled at ``n_times`` points of [-1, 1], ``[T, order + 1]``."""
    t = np.linspace(-1.0, 1.0, n_times) if n_times > 1 else np.zeros(1)
    return np.polynomial.legendre.legvander(t, order)


def detrend(x: np.ndarray, order: int) -> np.ndarray:
    """Remove the least-squares polynomial of degree ``order`` in time from every column of ``x`` ``[T, V]``.

    The fit uses Legendre polynomials on [-1, 1] (well conditioned for any order and length),
    so ``order=0`` removes the mean and ``order=1`` equals ``scipy.signal.detrend(x, axis=0)``.
    Exactly constant columns become exactly 0 (no float residue), so :func:`zscore` counts them.
    The result has the dtype of ``x`` (float64 math inside).
    """
    if order < 0:
        raise ValueError(f"detrend order must be >= 0, got {order}")
    x = _as_2d(x)
    n = x.shape[0]
    if n <= order:
        raise ValueError(f"cannot fit a degree-{order} trend to {n} time points")
    basis = _legendre_basis(n, order)  # [T, k]
    q, _ = np.linalg.qr(basis)  # [T, k], orthonormal columns spanning the same polynomials
    xd = x.astype(np.float64)
    out = xd - q @ (q.T @ xd)
    out[:, np.ptp(xd, axis=0) == 0] = 0.0
    return out.astype(x.dtype, copy=False)


def zscore(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Z-score every column of ``x`` ``[T, V]`` over time (ddof=0) -> (z, n_constant).

    Columns with zero variance (up to float rounding of their mean: std <= 1e-10 |mean|)
    become 0 and are counted in ``n_constant``; callers warn with that count.
    """
    x = _as_2d(x)
    xd = x.astype(np.float64)
    mean = xd.mean(axis=0)
    centred = xd - mean
    std = np.sqrt((centred**2).mean(axis=0))
    constant = (std == 0) | (std <= 1e-10 * np.abs(mean))
    safe = np.where(constant, 1.0, std)
    z = centred / safe
    z[:, constant] = 0.0
    return z.astype(x.dtype, copy=False), int(constant.sum())


def lag_to_trs(seconds: float, tr: float) -> int:
    """Seconds -> whole TRs: the nearest TR, halves rounded up (``floor(seconds / tr + 0.5)``).

    Used for the haemodynamic lag and for event onsets: the response to a stimulus shown at
    ``onset`` is read from TR ``lag_to_trs(onset + lag, tr) - drop_initial_trs``. A tiny
    tolerance absorbs float error (``(2.4 + 4.0) / 0.8`` is 8, not 7.999...).
    """
    if not tr > 0:
        raise ValueError(f"tr must be positive, got {tr}")
    return int(math.floor(seconds / tr + 0.5 + 1e-9))


def average_repeats(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Mean of repeated presentations: same-shape arrays (e.g. ``[T, V]``) -> their element-wise mean."""
    if len(arrays) == 0:
        raise ValueError("average_repeats needs at least one array")
    shape = np.shape(arrays[0])
    for i, a in enumerate(arrays):
        if np.shape(a) != shape:
            raise ValueError(f"repeat {i} has shape {np.shape(a)}, expected {shape} like repeat 0")
    dtype = np.result_type(*(np.asarray(a).dtype for a in arrays), np.float32)
    total = np.zeros(shape, dtype=np.float64)
    for a in arrays:
        total += a
    return (total / len(arrays)).astype(dtype, copy=False)
