"""Preprocessing against independent numpy/scipy computations."""

import numpy as np
import pytest
import scipy.signal
import scipy.stats

from glfa.data import preprocess as pp
from glfa.errors import DataError


def _series(t=120, v=7, seed=0):
    rng = np.random.default_rng(seed)
    time = np.arange(t, dtype=np.float64)
    trend = 50.0 + 0.3 * time[:, None] - 2e-3 * time[:, None] ** 2 + 1e-5 * time[:, None] ** 3
    return trend * rng.uniform(0.5, 2.0, v) + rng.normal(size=(t, v))


def test_detrend_linear_matches_scipy():
    x = _series()
    np.testing.assert_allclose(pp.detrend(x, 1), scipy.signal.detrend(x, axis=0, type="linear"), atol=1e-9)


def test_detrend_order_zero_removes_the_mean():
    x = _series()
    np.testing.assert_allclose(pp.detrend(x, 0), x - x.mean(axis=0), atol=1e-9)


@pytest.mark.parametrize("order", [2, 4])
def test_detrend_matches_polyfit_residuals(order):
    x = _series(t=240)
    t = np.arange(len(x), dtype=np.float64)
    expected = np.empty_like(x)
    for j in range(x.shape[1]):
        coef = np.polynomial.polynomial.Polynomial.fit(t, x[:, j], order)
        expected[:, j] = x[:, j] - coef(t)
    np.testing.assert_allclose(pp.detrend(x, order), expected, atol=1e-7)


def test_detrend_removes_a_planted_polynomial_exactly():
    t = np.linspace(0, 1, 200)
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(200, 3))
    signal = scipy.signal.detrend(signal, axis=0, type="constant")
    poly = np.stack([1 + 2 * t - 3 * t**2 + 4 * t**3 - 5 * t**4] * 3, axis=1) * 100
    out = pp.detrend(signal + poly, 4)
    # what remains is the signal minus its own degree-4 part: orthogonal to every polynomial up to degree 4
    basis = np.vander(t, 5)
    assert np.abs(basis.T @ out).max() < 1e-8
    assert np.corrcoef(out[:, 0], signal[:, 0])[0, 1] > 0.95


def test_detrend_keeps_float32_and_zeroes_constant_columns():
    x = _series().astype(np.float32)
    x[:, 2] = 1234.5
    out = pp.detrend(x, 3)
    assert out.dtype == np.float32
    assert np.all(out[:, 2] == 0)


def test_zscore_matches_scipy_and_counts_constant_vertices():
    x = _series()
    x[:, 1] = 7.0
    x[:, 4] = 0.0
    z, n_constant = pp.zscore(x)
    assert n_constant == 2
    assert np.all(z[:, [1, 4]] == 0)
    keep = [0, 2, 3, 5, 6]
    np.testing.assert_allclose(z[:, keep], scipy.stats.zscore(x[:, keep], axis=0, ddof=0), atol=1e-10)
    np.testing.assert_allclose(z[:, keep].mean(axis=0), 0, atol=1e-10)
    np.testing.assert_allclose(z[:, keep].std(axis=0), 1, atol=1e-10)


def test_zscore_after_detrend_counts_a_constant_float32_vertex():
    x = _series().astype(np.float32)
    x[:, 0] = 987.25
    z, n_constant = pp.zscore(pp.detrend(x, 4))
    assert n_constant == 1 and np.all(z[:, 0] == 0)


def test_drop_initial():
    x = np.arange(10.0)[:, None]
    np.testing.assert_array_equal(pp.drop_initial(x, 3), x[3:])
    with pytest.raises(ValueError):
        pp.drop_initial(x, 10)


@pytest.mark.parametrize(
    "seconds, tr, expected",
    [(4.0, 0.8, 5), (6.0, 2.0, 3), (5.0, 2.0, 3), (4.9, 2.0, 2), (0.0, 2.0, 0), (2.4 + 4.0, 0.8, 8), (0.39, 0.8, 0),
     (0.4, 0.8, 1)],
)
def test_lag_to_trs(seconds, tr, expected):
    assert pp.lag_to_trs(seconds, tr) == expected


def test_average_repeats():
    rng = np.random.default_rng(2)
    reps = [rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3)]
    out = pp.average_repeats(reps)
    np.testing.assert_allclose(out, (reps[0] + reps[1] + reps[2]) / 3, rtol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError):
        pp.average_repeats([reps[0], reps[1][:4]])
    with pytest.raises(ValueError):
        pp.average_repeats([])


def test_check_finite_names_file_tr_and_vertex():
    x = np.zeros((6, 5))
    assert pp.check_finite(x, "run.nii") is x
    x[3, 2] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(DataError, match=r"run\.nii.*TR 3, vertex 2.*2 of 6 TRs") as info:
        pp.check_finite(x, "run.nii")
    assert info.value.path == "run.nii"
