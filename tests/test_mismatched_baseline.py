"""The mismatched baseline and the field's other metrics against independent computations."""

import itertools

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from glfa.errors import DataError
from glfa.metrics.baseline import brain_signal, mismatched_partners, retrieval_hits
from glfa.metrics.video import PSNR_CAP, clip_pcc, clip_similarity_scores, psnr_scores


def test_partners_are_distinct_clips_of_other_stimuli_and_seeded():
    groups = ["a", "a", "b", "b", "c", "c", "d"]
    partners = mismatched_partners(groups, 3, seed=4)
    assert partners.shape == (7, 3)
    for i, row in enumerate(partners):
        assert len(set(row)) == 3 and all(groups[j] != groups[i] for j in row)
    np.testing.assert_array_equal(partners, mismatched_partners(groups, 3, seed=4))
    assert not np.array_equal(partners, mismatched_partners(groups, 3, seed=5))
    # "a" has 5 clips of other stimuli: no more partners than that
    assert mismatched_partners(groups, 50).shape == (7, 5)
    with pytest.raises(DataError, match="at least two"):
        mismatched_partners(["a", "a", "a"], 2)
    with pytest.raises(DataError, match="at least 1"):
        mismatched_partners(groups, 0)


def exhaustive_p(matched, mismatched):
    """Every relabelling: each clip's matched score swapped with each of its mismatched ones or kept."""
    scores = np.column_stack([matched, mismatched])  # [n, k+1]
    n, k = len(matched), mismatched.shape[1]

    def diff(choice):
        return np.mean([scores[i, c] - (scores[i].sum() - scores[i, c]) / k for i, c in enumerate(choice)])

    observed = diff([0] * n)
    values = [diff(choice) for choice in itertools.product(range(k + 1), repeat=n)]
    return observed, np.mean([v >= observed - 1e-12 for v in values])


@pytest.mark.parametrize("partners,shift", [(2, 0.15), (2, 0.0), (1, 0.1)])
def test_permutation_p_against_exhaustive_enumeration(partners, shift):
    rng = np.random.default_rng(partners)
    mismatched = rng.uniform(0.3, 0.7, size=(6, partners))
    matched = rng.uniform(0.3, 0.7, size=6) + shift
    observed, exact = exhaustive_p(matched, mismatched)
    got = brain_signal(matched, mismatched, permutations=20_000, seed=1)
    assert got["difference"] == pytest.approx(observed) == pytest.approx(matched.mean() - mismatched.mean())
    assert got["matched"] == pytest.approx(matched.mean()) and got["mismatched"] == pytest.approx(mismatched.mean())
    assert got["partners"] == partners and got["permutations"] == 20_000 and got["seed"] == 1
    # a Monte-Carlo estimate of the exact p: within 4 standard errors
    assert abs(got["p"] - exact) < 4 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-3
    if partners == 1:  # one partner: the classic paired sign-flip test on matched - mismatched
        d = matched - mismatched[:, 0]
        flips = [np.mean(np.array(s) * d) >= d.mean() - 1e-12 for s in itertools.product((1, -1), repeat=6)]
        assert exact == pytest.approx(np.mean(flips))
    assert got == brain_signal(matched, mismatched, permutations=20_000, seed=1)


def test_planted_signal_and_its_absence():
    rng = np.random.default_rng(0)
    mismatched = rng.uniform(0.4, 0.6, size=(48, 8))
    decoding = brain_signal(mismatched.mean(1) + 0.1 + rng.normal(0, 0.02, 48), mismatched)
    assert decoding["difference"] == pytest.approx(0.1, abs=0.01) and decoding["p"] == pytest.approx(1 / 10_001)
    prior = brain_signal(rng.uniform(0.4, 0.6, size=48), mismatched)  # matched drawn as any mismatched score
    assert abs(prior["difference"]) < 0.05 and prior["p"] > 0.05
    with pytest.raises(DataError, match=r"\[N, K >= 1\]"):
        brain_signal(np.ones(3), np.ones((4, 2)))
    with pytest.raises(DataError, match="NaN"):
        brain_signal(np.array([np.nan, 1.0]), np.ones((2, 2)))


def test_psnr_against_skimage():
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 256, size=(3, 4, 16, 12, 3), dtype=np.uint8)
    decoded = np.clip(truth.astype(int) + rng.integers(-30, 30, truth.shape), 0, 255).astype(np.uint8)
    decoded[2] = rng.integers(0, 256, size=decoded[2].shape, dtype=np.uint8)
    expected = [np.mean([peak_signal_noise_ratio(t, d, data_range=255) for d, t in zip(dv, tv)])
                for dv, tv in zip(decoded, truth)]
    np.testing.assert_allclose(psnr_scores(decoded, truth), expected, rtol=1e-12)
    decoded[0, 1] = truth[0, 1]  # one frame exact: capped, the others as skimage
    expected_0 = np.mean([PSNR_CAP] + [peak_signal_noise_ratio(truth[0, f], decoded[0, f], data_range=255)
                                       for f in (0, 2, 3)])
    assert psnr_scores(decoded, truth)[0] == pytest.approx(expected_0)
    with pytest.raises(DataError, match="uint8"):
        psnr_scores(decoded.astype(float), truth)


def test_clip_similarity_and_pcc_against_loops():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3, 5, 8)), rng.normal(size=(3, 5, 8))

    def cos(a, b):
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)

    np.testing.assert_allclose(clip_similarity_scores(x, y),
                               [np.mean([cos(x[i, f], y[i, f]) for f in range(5)]) for i in range(3)])
    np.testing.assert_allclose(clip_pcc(x), [np.mean([cos(x[i, f], x[i, f + 1]) for f in range(4)]) for i in range(3)])
    np.testing.assert_allclose(clip_pcc(np.repeat(x[:, :1], 5, axis=1)), 1.0)  # a still clip
    with pytest.raises(DataError, match="at least 2 frames"):
        clip_pcc(x[:, :1])
    with pytest.raises(DataError, match="differ in shape"):
        clip_similarity_scores(x, y[:, :4])


def test_retrieval_hits_against_ranks():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(7, 7))
    sim[2, 4] = sim[2, 2]  # a tie counts against the target
    targets = np.column_stack([np.arange(7), rng.integers(0, 7, size=7)])
    for top in (1, 2, 5):
        got = retrieval_hits(sim, targets, top)
        for i in range(7):
            for t in range(2):
                j = targets[i, t]
                ahead = sum(sim[i, c] >= sim[i, j] for c in range(7) if c != j)
                assert got[i, t] == float(ahead < top)
    assert retrieval_hits(sim, np.arange(7), 1)[2] == 0.0
    np.testing.assert_array_equal(retrieval_hits(np.eye(4), np.arange(4), 1), 1.0)
    with pytest.raises(DataError, match="top"):
        retrieval_hits(sim, np.arange(7), 8)
