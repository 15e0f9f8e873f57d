"""fSC and ISC (paper section 4.3) against an independent loop-and-np.corrcoef computation."""

from __future__ import annotations

import numpy as np
import pytest

from glfa.errors import DataError
from glfa.metrics import fsc, fsc_matrix, isc


def _fsc_loops(a, b, mask):
    """Reference fSC: explicit loop over time points with np.corrcoef, skipping constant patterns."""
    values = []
    for t in range(a.shape[0]):
        x, y = a[t][mask], b[t][mask]
        if np.all(x == x[0]) or np.all(y == y[0]):
            continue
        values.append(np.corrcoef(x, y)[0, 1])
    return float(np.mean(values))


def _isc_loops(responses, mask):
    """Reference ISC: explicit loop over voxels, correlating with the SUM of the other subjects."""
    responses = {s: np.asarray(x, dtype=np.float64) for s, x in responses.items()}
    out = {}
    for s, x in responses.items():
        others = sum(y for o, y in responses.items() if o != s)
        values = []
        for r, c in zip(*np.nonzero(mask)):
            u, w = x[:, r, c], others[:, r, c]
            if np.all(u == u[0]) or np.all(w == w[0]):
                continue
            values.append(np.corrcoef(u, w)[0, 1])
        out[s] = float(np.mean(values))
    return out


@pytest.fixture
def study():
    """Three subjects sharing a signal, with a mask and some constant voxels/frames planted."""
    rng = np.random.default_rng(0)
    shared = rng.normal(size=(40, 9, 11))
    responses = {s: (shared + rng.normal(scale=1.0 + i, size=shared.shape)).astype(np.float32)
                 for i, s in enumerate(["1", "2", "3"])}
    mask = rng.random((9, 11)) > 0.3
    responses["2"][5] = 3.0  # a constant frame: skipped by fSC
    responses["1"][:, 2, 3] = -1.0  # a constant voxel: skipped by ISC for subject 1
    mask[2, 3] = True
    return responses, mask


def test_fsc_matches_loops(study):
    responses, mask = study
    for a, b in [("1", "2"), ("1", "3"), ("2", "3")]:
        assert fsc(responses[a], responses[b], mask) == pytest.approx(
            _fsc_loops(responses[a], responses[b], mask), abs=1e-10
        )


def test_fsc_without_mask_uses_all_voxels(study):
    responses, _ = study
    full = np.ones(responses["1"].shape[1:], dtype=bool)
    assert fsc(responses["1"], responses["3"]) == pytest.approx(
        _fsc_loops(responses["1"], responses["3"], full), abs=1e-10
    )


def test_isc_matches_loops(study):
    responses, mask = study
    got = isc(responses, mask)
    want = _isc_loops(responses, mask)
    assert list(got) == ["1", "2", "3"]
    for s in want:
        assert got[s] == pytest.approx(want[s], abs=1e-10)


def test_fsc_matrix_matches_pairs(study):
    responses, mask = study
    m = fsc_matrix(responses, mask)
    names = list(responses)
    assert m.shape == (3, 3)
    np.testing.assert_allclose(m, m.T)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            assert m[i, j] == pytest.approx(fsc(responses[a], responses[b], mask), abs=1e-12)
    np.testing.assert_allclose(np.diag(m), 1.0)


def test_known_cases():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 30))
    assert fsc(x, x) == pytest.approx(1.0)
    assert fsc(x, -x) == pytest.approx(-1.0)
    assert fsc(x, 2.5 * x + 7.0) == pytest.approx(1.0)  # invariant to gain and offset
    got = isc({"a": x, "b": x, "c": x})
    assert all(v == pytest.approx(1.0) for v in got.values())
    got = isc({"a": x, "b": -x})
    assert got == {"a": pytest.approx(-1.0), "b": pytest.approx(-1.0)}
    # independent noise: near zero
    y = rng.normal(size=(2000, 50))
    z = rng.normal(size=(2000, 50))
    assert abs(fsc(y, z)) < 0.05
    assert all(abs(v) < 0.05 for v in isc({"a": y, "b": z}).values())


def test_undefined_everywhere_is_nan():
    x = np.ones((5, 4))
    assert np.isnan(fsc(x, x))
    assert all(np.isnan(v) for v in isc({"a": x, "b": x}).values())


def test_isc_uses_sum_not_mean_but_same_value():
    # corr is scale invariant: the sum and the mean of the others give the same ISC
    rng = np.random.default_rng(2)
    r = {s: rng.normal(size=(30, 12)) for s in "abcd"}
    got = isc(r)
    for s in r:
        mean_others = np.mean([r[o] for o in r if o != s], axis=0)
        ref = np.mean([np.corrcoef(r[s][:, v], mean_others[:, v])[0, 1] for v in range(12)])
        assert got[s] == pytest.approx(ref, abs=1e-10)


def test_bad_input():
    x = np.zeros((4, 3, 3))
    with pytest.raises(DataError, match="differ in shape"):
        fsc(x, np.zeros((5, 3, 3)))
    with pytest.raises(DataError, match="mask"):
        fsc(x, x, mask=np.ones((2, 2), bool))
    bad = x.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        fsc(bad, x)
    with pytest.raises(DataError, match="at least 2 subjects"):
        isc({"a": x})
    with pytest.raises(DataError, match="differs"):
        isc({"a": x, "b": np.zeros((4, 3, 2))})
