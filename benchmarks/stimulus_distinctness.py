"""How well the frame classifier of the N-way metrics tells the synthetic study's photographs apart.

    python benchmarks/stimulus_distinctness.py [--clips 5] [--frame-size 64]

The frame N-way metrics take the classifier's top-3 classes on the real frame as the ground truth
and ask whether the decoded frame ranks one of them above random classes. A decoded frame of the
right photograph scores near 1 against its own ground truth; against another photograph's ground
truth it scores what that photograph's classes get from any frame. The difference, the **gap**,
is the most brain signal a perfect decoder could show on that photograph (the demo's
``benchmarks/generator_ceiling.py`` measures the same after the generator's VAE).

For every photograph of :data:`glfa.data.synthetic.stimuli.CATEGORIES` this renders ``--clips``
random clips (crop and camera motion, as the study draws them), classifies six frames of each
with the offline EfficientNet-Lite0 and scores every clip's frames against every other clip's
ground truth with the frame 2-way rule (:func:`glfa.metrics.video.n_way_top_k_pairings`). It prints
each photograph's gap, then the order in which greedily dropping the photograph whose removal
most raises the mean gap of the rest leaves them (the catalogue's order), with the mean gap of
the first 4, 8 and 12.
"""

from __future__ import annotations

import argparse

import numpy as np

from glfa.backbones import load_frame_classifier
from glfa.data.synthetic.stimuli import CATEGORIES, make_clips, render_clip
from glfa.metrics.video import n_way_top_k_pairings

FRAMES = 6


def pair_scores(probabilities: np.ndarray) -> np.ndarray:
    """``[n, n]``: frame 2-way of clip i's frames against clip j's frames' ground truth (frame by frame, mean)."""
    n = len(probabilities)
    pred = probabilities.reshape(n * FRAMES, -1)
    out = np.zeros((n, n))
    for j in range(n):
        truth = np.repeat(probabilities[j][None], n, axis=0).reshape(n * FRAMES, -1)
        out[:, j] = n_way_top_k_pairings(pred, truth, [np.arange(n * FRAMES)], n_way=2, top_k=1,
                                         trials=100)[0].reshape(n, FRAMES).mean(axis=1)
    return out


def mean_gap(between: np.ndarray, chosen: list[int]) -> float:
    """Mean over ``chosen`` photographs of (same photograph) - (mean over the other chosen photographs)."""
    sub = between[np.ix_(chosen, chosen)]
    return float(np.mean([sub[i, i] - np.delete(sub[i], i).mean() for i in range(len(chosen))]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=5, help="random clips per photograph")
    parser.add_argument("--frame-size", type=int, default=64)
    args = parser.parse_args()

    clips = make_clips(len(CATEGORIES), args.clips - 1, 1, np.random.default_rng(0))
    frames = np.stack([render_clip(c, 4 * FRAMES, args.frame_size)[::4] for c in clips])  # [K, 6, s, s, 3]
    classifier = load_frame_classifier(None, "cpu")
    probabilities = classifier.probabilities(frames.reshape(-1, *frames.shape[2:])).reshape(len(clips), FRAMES, -1)
    scores = pair_scores(probabilities)
    category = np.array([c.category for c in clips])
    k = len(CATEGORIES)
    between = np.zeros((k, k))  # [a, b]: clips of a against the ground truth of other clips of b
    for a in range(k):
        for b in range(k):
            pairs = [(i, j) for i in np.flatnonzero(category == a) for j in np.flatnonzero(category == b) if i != j]
            between[a, b] = np.mean([scores[i, j] for i, j in pairs])
    print("photograph      same   others  gap")
    for a, c in enumerate(CATEGORIES):
        others = np.delete(between[a], a).mean()
        print(f"{c.name:14s} {between[a, a]:.3f}  {others:.3f}   {between[a, a] - others:.3f}")
    left, dropped = list(range(k)), []
    while len(left) > 2:
        worst = max(left, key=lambda x: mean_gap(between, [s for s in left if s != x]))
        left.remove(worst)
        dropped.append(worst)
    order = left + dropped[::-1]
    print("order:", ", ".join(CATEGORIES[i].name for i in order))
    for n in (4, 8, 12):
        print(f"mean gap of the first {n}: {mean_gap(between, order[:n]):.3f} in this order, "
              f"{mean_gap(between, list(range(n))):.3f} in the catalogue's")


if __name__ == "__main__":
    main()
