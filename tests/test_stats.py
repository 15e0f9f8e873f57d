"""t-tests between methods: against scipy and the textbook formulas."""

import math

import numpy as np
import pytest
from scipy import special, stats

from glfa.errors import DataError
from glfa.metrics.stats import compare_methods, significance, two_sample_ttest


def t_p_value(t, df):
    """Two-sided p of Student's t distribution, from the regularised incomplete beta function."""
    return float(special.betainc(df / 2, 0.5, df / (df + t * t)))


def test_student_ttest_by_hand():
    rng = np.random.default_rng(0)
    a = rng.normal(0.8, 0.1, 40)
    b = rng.normal(0.75, 0.12, 30)
    got = two_sample_ttest(a, b)
    na, nb = len(a), len(b)
    pooled = ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    t = (a.mean() - b.mean()) / math.sqrt(pooled * (1 / na + 1 / nb))
    assert got["t"] == pytest.approx(t, rel=1e-12)
    assert got["df"] == na + nb - 2
    assert got["p"] == pytest.approx(t_p_value(t, na + nb - 2), rel=1e-9)
    assert got["p"] == pytest.approx(stats.ttest_ind(a, b).pvalue, rel=1e-12)
    assert (got["mean_a"], got["mean_b"]) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    assert (got["n_a"], got["n_b"], got["test"]) == (40, 30, "student")


def test_welch_and_paired_by_hand():
    rng = np.random.default_rng(1)
    a = rng.normal(0.2, 0.05, 25)
    b = a - 0.01 + rng.normal(0, 0.01, 25)
    va, vb = a.var(ddof=1) / 25, b.var(ddof=1) / 25
    welch = two_sample_ttest(a, b, equal_var=False)
    df = (va + vb) ** 2 / (va**2 / 24 + vb**2 / 24)
    assert welch["t"] == pytest.approx((a.mean() - b.mean()) / math.sqrt(va + vb), rel=1e-12)
    assert welch["df"] == pytest.approx(df, rel=1e-12) and welch["test"] == "welch"
    assert welch["p"] == pytest.approx(t_p_value(welch["t"], df), rel=1e-9)
    paired = two_sample_ttest(a, b, paired=True)
    d = a - b
    t = d.mean() / (d.std(ddof=1) / 5)
    assert paired["t"] == pytest.approx(t, rel=1e-12) and paired["df"] == 24
    assert paired["p"] == pytest.approx(t_p_value(t, 24), rel=1e-9)
    # the same samples scored by two methods: pairing removes the sample-to-sample spread
    assert paired["p"] < 1e-3 < welch["p"]
    with pytest.raises(DataError, match="same samples"):
        two_sample_ttest(a, b[:-1], paired=True)


def test_compare_methods_and_significance():
    rng = np.random.default_rng(2)
    scores = {"glfa": rng.normal(0.85, 0.05, 50), "pte-v": rng.normal(0.83, 0.05, 50),
              "lea": rng.normal(0.70, 0.05, 50)}
    table = compare_methods(scores, "glfa")
    assert list(table) == ["pte-v", "lea"]
    assert table["lea"] == two_sample_ttest(scores["glfa"], scores["lea"])
    assert table["lea"]["t"] > 0 and significance(table["lea"]["p"]) == "p<0.001"
    assert [significance(p) for p in (0.0005, 0.001, 0.01, 0.05, 0.3)] == \
        ["p<0.001", "p<0.05", "p<0.05", "p>0.05", "p>0.05"]
    with pytest.raises(DataError, match="no scores for method 'within'"):
        compare_methods(scores, "within")
    with pytest.raises(DataError, match="only method"):
        compare_methods({"glfa": scores["glfa"]}, "glfa")
    with pytest.raises(DataError, match="at least 2"):
        two_sample_ttest([0.5], scores["lea"])
    with pytest.raises(DataError, match="NaN"):
        two_sample_ttest([0.5, np.nan], scores["lea"])
