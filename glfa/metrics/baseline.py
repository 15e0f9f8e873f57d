"""The mismatched baseline: how much of a decoded clip's score comes from the brain activity it was decoded from.

A metric that scores a decoded clip against its own ground truth (matched) rewards a good prior
as much as decoding: a generator that draws a photo-like frame whatever the fMRI scores well on
N-way accuracy against any truth. The same metric against the ground truth of *other* test
clips (mismatched) measures that prior; the difference is the brain signal.

- :func:`mismatched_partners`: for every clip, ``count`` other clips of the same task, drawn
  without replacement (seeded) among the clips of a *different* stimulus (windows cut from the
  same stimulus clip share content, so they are neither matched nor mismatched).
- :func:`brain_signal`: matched, mismatched (the mean over a clip's partners), their difference
  and a one-sided paired permutation p-value of the difference.

The permutation test: if the decoded clip did not depend on its fMRI, its score against its own
truth would be exchangeable with its scores against its partners' truths. Each permutation
picks, independently for every clip, one of its ``count + 1`` scores to play the matched one
(uniformly) and computes the mean difference as above; the p-value is
``(1 + #{permuted >= observed}) / (1 + permutations)`` with ``default_rng(seed)``. With one
partner this is the classic paired sign-flip test.
"""

from __future__ import annotations

import numpy as np

from glfa.errors import DataError


def mismatched_partners(groups, count: int, seed: int = 0) -> np.ndarray:
    """``count`` mismatched partners of every clip: int ``[N, K]`` indices into the clips.

    Parameters
    ----------
    groups : sequence of hashable, length N
        The stimulus of each clip; a clip's partners are clips of other stimuli, all different.
    count : int
        Partners per clip; fewer (K = the smallest number of clips of another stimulus any clip
        has) when the task has too few clips.
    seed : int
        Seed of ``numpy.random.default_rng``; clip ``i`` draws after clips ``0..i-1``.
    """
    groups = np.asarray(list(groups))
    if count < 1:
        raise DataError(f"expected at least 1 mismatched partner per clip, got {count}", field="count")
    others = groups[None, :] != groups[:, None]  # [N, N]
    available = others.sum(1)
    if len(groups) == 0 or available.min() == 0:
        raise DataError(f"a mismatched baseline needs clips of at least two stimuli; got {len(set(groups.tolist()))} "
                        f"stimulus/stimuli in {len(groups)} clips", field="groups")
    k = int(min(count, available.min()))
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(np.flatnonzero(row), size=k, replace=False) for row in others])


def brain_signal(matched, mismatched, *, permutations: int = 10_000, seed: int = 0) -> dict[str, float | int]:
    """Matched against mismatched scores: means, their difference and a paired permutation p-value.

    Parameters
    ----------
    matched : array ``[N]``
        Each decoded clip scored against its own truth.
    mismatched : array ``[N, K]``
        Each decoded clip scored against the truths of its K partners.
    permutations : int
        Random relabellings of the permutation test.
    seed : int
        Seed of ``numpy.random.default_rng`` for the relabellings.

    Returns
    -------
    dict
        ``{"matched", "mismatched", "difference", "p", "permutations", "partners", "seed"}``:
        means over clips, the difference matched - mismatched (the brain signal) and the
        one-sided p-value that it is this large without any dependence on the fMRI.
    """
    a = np.asarray(matched, dtype=np.float64)
    b = np.asarray(mismatched, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 2 or len(b) != len(a) or b.shape[1] < 1 or len(a) == 0:
        raise DataError(f"expected matched scores [N] and mismatched scores [N, K >= 1], got {a.shape} and {b.shape}",
                        field="mismatched")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise DataError("contains NaN or infinite values", field="matched" if not np.all(np.isfinite(a)) else
                        "mismatched")
    if permutations < 1:
        raise DataError(f"expected at least 1 permutation, got {permutations}", field="permutations")
    k = b.shape[1]
    scores = np.concatenate([a[:, None], b], axis=1)  # [N, K+1]; column 0 is the matched score
    totals = scores.sum(1)  # [N]

    def difference(chosen: np.ndarray) -> np.ndarray:  # [P, N]: the column playing "matched" -> [P]
        picked = scores[np.arange(len(a))[None, :], chosen]  # [P, N]
        return (picked - (totals - picked) / k).mean(-1)

    observed = float(difference(np.zeros((1, len(a)), dtype=np.int64))[0])
    rng = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, permutations, 4096):  # bounded memory: [chunk, N] choices at a time
        chosen = rng.integers(0, k + 1, size=(min(4096, permutations - start), len(a)))
        # a small tolerance: a relabelling equal to the observed one up to rounding counts as reaching it
        exceed += int((difference(chosen) >= observed - 1e-12).sum())
    return {"matched": float(a.mean()), "mismatched": float(b.mean()), "difference": observed,
            "p": (1 + exceed) / (1 + permutations), "permutations": int(permutations), "partners": k,
            "seed": int(seed)}


def retrieval_hits(similarity, targets, top: int) -> np.ndarray:
    """Whether each target is among the ``top`` most similar candidates of its row: float ``[N, ...]`` of 0/1.

    ``similarity`` ``[N, M]`` (row i: query i against M candidates), ``targets`` int ``[N, ...]``
    candidate indices. Ties count against the target (a candidate as similar ranks ahead of it).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    targets = np.asarray(targets)
    if sim.ndim != 2 or len(targets) != len(sim) or not 1 <= top <= sim.shape[1]:
        raise DataError(f"expected similarities [N, M], targets [N, ...] and 1 <= top <= M; got {sim.shape}, "
                        f"{targets.shape} and top={top}", field="similarity")
    flat = targets.reshape(len(sim), -1)  # [N, T]
    target_sim = np.take_along_axis(sim, flat, axis=1)  # [N, T]
    ahead = (sim[:, None, :] >= target_sim[:, :, None]).sum(-1) - 1  # [N, T]; the target itself excluded
    return (ahead < top).astype(np.float64).reshape(targets.shape)
