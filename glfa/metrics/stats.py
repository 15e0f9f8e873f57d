"""Statistical comparison of methods: the two-sample t-tests of supplementary Table 2.

The supplementary reports "standard deviation and statistical significance (two-sample t-test)"
between each method and a reference method (fMRI-PTE-V against LEA, GLFA against fMRI-PTE-V),
coloured p < 0.001, p < 0.05 and p > 0.05. It names the test and nothing else, so
:func:`two_sample_ttest` defaults to the classical two-sample (independent, pooled-variance
Student) t-test, ``scipy.stats.ttest_ind(a, b)`` with its defaults, on the per-sample scores
(one accuracy or SSIM per decoded test window) of the two methods. The methods are scored on
the same test windows, so a paired test would be the sharper choice; ``paired=True`` gives it
(``scipy.stats.ttest_rel``), and ``equal_var=False`` gives Welch's test.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from glfa.errors import DataError

#: The significance bands of supplementary Table 2, strictest first.
SIGNIFICANCE_LEVELS = (0.001, 0.05)


def _scores(x, field: str) -> np.ndarray:
    """Finite float64 scores ``[n]`` (n >= 2)."""
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size < 2:
        raise DataError(f"a t-test needs at least 2 scores, got {a.size}", field=field)
    if not np.all(np.isfinite(a)):
        raise DataError("contains NaN or infinite values", field=field)
    return a


def two_sample_ttest(a, b, *, equal_var: bool = True, paired: bool = False) -> dict[str, float | int | str]:
    """t-test of the mean of scores ``a`` against that of ``b`` (two-sided).

    Parameters
    ----------
    a, b : array of per-sample scores
        E.g. one method's and the reference method's accuracy on each test window.
    equal_var : bool
        Pooled variance (Student's test, the default, as supplementary Table 2) or not (Welch's).
    paired : bool
        Paired test on ``a - b`` (``a`` and ``b`` must score the same samples in the same order).

    Returns
    -------
    dict
        ``{"t", "p", "df", "mean_a", "mean_b", "n_a", "n_b", "test"}``; ``t > 0`` when ``a``'s mean
        is higher; ``test`` is ``"student"``, ``"welch"`` or ``"paired"``.
    """
    from scipy import stats

    a = _scores(a, "a")
    b = _scores(b, "b")
    if paired:
        if a.size != b.size:
            raise DataError(f"a paired t-test needs the same samples: {a.size} and {b.size} scores", field="b")
        result = stats.ttest_rel(a, b)
        test = "paired"
    else:
        result = stats.ttest_ind(a, b, equal_var=equal_var)
        test = "student" if equal_var else "welch"
    return {"t": float(result.statistic), "p": float(result.pvalue), "df": float(result.df),
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "n_a": int(a.size), "n_b": int(b.size),
            "test": test}


def compare_methods(scores: Mapping[str, np.ndarray], method: str, *, equal_var: bool = True,
                    paired: bool = False) -> dict[str, dict[str, float | int | str]]:
    """t-tests of one method against every other: ``{other: two_sample_ttest(scores[method], scores[other])}``.

    Parameters
    ----------
    scores : mapping method -> per-sample scores
    method : the method compared (``a`` of every test; ``t > 0`` where it scores higher).
    equal_var, paired : as :func:`two_sample_ttest`.
    """
    if method not in scores:
        raise DataError(f"no scores for method {method!r}; have {sorted(scores)}", field="method")
    others = [m for m in scores if m != method]
    if not others:
        raise DataError(f"nothing to compare {method!r} with: it is the only method", field="scores")
    return {other: two_sample_ttest(scores[method], scores[other], equal_var=equal_var, paired=paired)
            for other in others}


def significance(p: float) -> str:
    """The band of supplementary Table 2: ``"p<0.001"``, ``"p<0.05"`` or ``"p>0.05"``."""
    for level in SIGNIFICANCE_LEVELS:
        if p < level:
            return f"p<{level:g}"
    return f"p>{SIGNIFICANCE_LEVELS[-1]:g}"
