"""Video metrics: SSIM against skimage, N-way top-K against a brute-force MinD-Video loop and known answers."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from glfa.backbones import load_frame_classifier, load_video_classifier, tiny_frame_classifier, tiny_video_classifier
from glfa.errors import DataError
from glfa.metrics import frame_n_way_scores, n_way_top_k, ssim_scores, summarize, video_n_way_scores
from glfa.metrics.video import n_way_top_k_pairings
from glfa.metrics import video as video_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_n_way(pred, truth, *, n_way, top_k, trials, ground_truth_top, seed):
    """MinD-Video's n_way_top_k_acc written as loops: draw actual classes, rank each ground-truth class.

    Draws use one uniform per (row, trial, step) from default_rng(seed), in one call: step j picks
    position floor(u * L) of the classes left, listed by decreasing decoded probability.
    """
    rows, classes = pred.shape
    u = np.random.default_rng(seed).random((rows, trials, n_way - 1))
    out = []
    for r in range(rows):
        gt = list(np.argsort(-truth[r], kind="stable")[:ground_truth_top])
        pool = [c for c in np.argsort(-pred[r], kind="stable") if c not in gt]
        correct = 0
        for t in range(trials):
            left = list(pool)
            picked = []
            for j in range(n_way - 1):
                picked.append(left.pop(min(int(u[r, t, j] * len(left)), len(left) - 1)))
            for g in gt:
                candidates = np.array([pred[r, g]] + [pred[r, c] for c in picked])
                if 0 in np.argsort(candidates, kind="stable")[-top_k:]:
                    correct += 1
                    break
        out.append(correct / trials)
    return np.array(out)


def random_probs(rng, shape):
    logits = rng.normal(size=shape) * 2
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# (19, 3, 2): 20 classes less 2 ground-truth ones leave 18, all drawn in every trial
@pytest.mark.parametrize("n_way,top_k,ground_truth_top", [(2, 1, 3), (5, 2, 3), (10, 1, 1), (12, 3, 2), (19, 3, 2)])
def test_n_way_matches_brute_force(n_way, top_k, ground_truth_top, monkeypatch):
    rng = np.random.default_rng(1)
    truth = random_probs(rng, (12, 20))
    # decoded probabilities: a little of the truth's, mostly noise, so accuracies spread over [0, 1]
    pred = 0.1 * truth + 0.9 * random_probs(rng, (12, 20))
    options = dict(n_way=n_way, top_k=top_k, trials=30, ground_truth_top=ground_truth_top, seed=7)
    expected = brute_force_n_way(pred, truth, **options)
    np.testing.assert_array_equal(n_way_top_k(pred, truth, **options), expected)
    monkeypatch.setattr(video_metrics, "_CHUNK_DRAWS", 1)  # one row per chunk: the same random stream
    np.testing.assert_array_equal(n_way_top_k(pred, truth, **options), expected)
    assert 0 < expected.mean() < 1


def test_n_way_pairings_are_n_way_of_each_pairing():
    """Every pairing scored on the decoded rows' own draws: as n_way_top_k against the paired truths."""
    rng = np.random.default_rng(6)
    truth = random_probs(rng, (5, 3, 40))  # 5 samples of 3 frames
    pred = 0.2 * truth + 0.8 * random_probs(rng, (5, 3, 40))
    pairings = [np.arange(5), np.array([1, 2, 3, 4, 0]), np.array([4, 4, 0, 1, 2])]
    for options in (dict(n_way=2, ground_truth_top=3), dict(n_way=10, top_k=2, ground_truth_top=1)):
        got = n_way_top_k_pairings(pred, truth, pairings, trials=30, seed=2, **options)
        assert got.shape == (3, 5, 3)
        for k, pairing in enumerate(pairings):
            np.testing.assert_array_equal(got[k], n_way_top_k(pred, truth[pairing], trials=30, seed=2, **options))
    with pytest.raises(DataError, match="samples"):
        n_way_top_k_pairings(pred[0, 0], truth[0, 0], [np.arange(1)], n_way=2)


def test_n_way_known_answers():
    rng = np.random.default_rng(2)
    truth = random_probs(rng, (200, 50))
    # the decoded frame classified exactly as the real one: its top class always wins
    assert np.all(n_way_top_k(truth, truth, n_way=50 - 3 + 1, trials=20) == 1.0)
    # independent decoded probabilities: chance is about 1/n for top-1 with one ground-truth class
    for n_way in (2, 5):
        acc = n_way_top_k(random_probs(rng, (200, 50)), truth, n_way=n_way, trials=100, ground_truth_top=1)
        assert abs(acc.mean() - 1 / n_way) < 0.03
    # with three ground-truth classes any of them may win: 1 - P(each of 3 loses) in the 2-way case is
    # not 3/4 (the draw is shared), but it is well above 1/2
    acc = n_way_top_k(random_probs(rng, (200, 50)), truth, n_way=2, trials=100, ground_truth_top=3)
    assert 0.6 < acc.mean() < 0.85
    # n_way = every class and one ground-truth class: plain top-K classification, no randomness left
    pred = random_probs(rng, (200, 50))
    top_real = truth.argmax(1)
    for k in (1, 3):
        in_top_k = (np.argsort(-pred, axis=1)[:, :k] == top_real[:, None]).any(1)
        got = n_way_top_k(pred, truth, n_way=50, top_k=k, trials=5, ground_truth_top=1, seed=3)
        np.testing.assert_array_equal(got, in_top_k.astype(float))


def test_n_way_seeds_shapes_and_errors():
    rng = np.random.default_rng(3)
    truth = random_probs(rng, (4, 6, 30))
    pred = random_probs(rng, (4, 6, 30))
    a = n_way_top_k(pred, truth, n_way=5, seed=1)
    assert a.shape == (4, 6)
    np.testing.assert_array_equal(a, n_way_top_k(pred, truth, n_way=5, seed=1))
    assert not np.array_equal(a, n_way_top_k(pred, truth, n_way=5, seed=2))
    np.testing.assert_array_equal(a.ravel(), n_way_top_k(pred.reshape(24, 30), truth.reshape(24, 30), n_way=5, seed=1))
    with pytest.raises(DataError, match="n_way must be in 2..28"):
        n_way_top_k(pred, truth, n_way=1)
    with pytest.raises(DataError, match="n_way"):
        n_way_top_k(pred, truth, n_way=29)  # 30 classes less 3 ground-truth ones leave 27 to draw from
    with pytest.raises(DataError, match="n_way"):
        n_way_top_k(pred, truth, n_way=31, ground_truth_top=1)
    with pytest.raises(DataError, match="same shape"):
        n_way_top_k(pred[:, :, :20], truth, n_way=2)
    with pytest.raises(DataError, match="top_k"):
        n_way_top_k(pred, truth, n_way=2, top_k=2)
    with pytest.raises(DataError, match="ground_truth_top"):
        n_way_top_k(pred, truth, n_way=2, ground_truth_top=30)
    with pytest.raises(DataError, match="NaN"):
        n_way_top_k(np.full_like(pred, np.nan), truth, n_way=2)


def videos(rng, n=3, f=4, size=16):
    return rng.integers(0, 256, size=(n, f, size, size, 3), dtype=np.uint8)


def test_ssim_against_skimage():
    rng = np.random.default_rng(4)
    truth = videos(rng)
    decoded = np.clip(truth.astype(int) + rng.integers(-40, 40, truth.shape), 0, 255).astype(np.uint8)
    decoded[1] = videos(rng, n=1)[0]
    got = ssim_scores(decoded, truth)
    expected = [np.mean([structural_similarity(a, b, data_range=255, channel_axis=-1) for a, b in zip(d, t)])
                for d, t in zip(decoded, truth)]
    np.testing.assert_allclose(got, expected, rtol=0, atol=0)
    assert got.dtype == np.float64 and got[0] > got[1]
    np.testing.assert_allclose(ssim_scores(truth, truth), 1.0)
    with pytest.raises(DataError, match=r"\(3, 4, 16, 16, 3\) and ground truth \(3, 2, 16, 16, 3\)"):
        ssim_scores(decoded, truth[:, :2])
    with pytest.raises(DataError, match="uint8"):
        ssim_scores(decoded.astype(np.float32), truth)
    with pytest.raises(DataError, match="7 x 7"):
        ssim_scores(decoded[:, :, :5, :5], truth[:, :, :5, :5])


def test_ssim_pairings_against_skimage_per_pairing():
    rng = np.random.default_rng(14)
    truth = videos(rng)
    decoded = np.clip(truth.astype(int) + rng.integers(-60, 60, truth.shape), 0, 255).astype(np.uint8)
    pairings = [np.array([1, 2, 0]), np.array([2, 0, 1]), np.arange(3)]
    got = video_metrics.ssim_pairings(decoded, truth, pairings)
    assert got.shape == (3, 3)
    for k, index in enumerate(pairings):  # skimage, clip by clip and frame by frame, on each pairing's truths
        expected = [np.mean([structural_similarity(a, b, data_range=255, channel_axis=-1) for a, b in zip(d, t)])
                    for d, t in zip(decoded, truth[index])]
        np.testing.assert_allclose(got[k], expected, rtol=1e-12)
    with pytest.raises(DataError, match="7 x 7"):
        video_metrics.ssim_pairings(decoded[:, :, :5, :5], truth[:, :, :5, :5], pairings)


def test_classifier_scores(tmp_path):
    rng = np.random.default_rng(5)
    truth = videos(rng, n=3, f=4, size=32)
    decoded = videos(rng, n=3, f=4, size=32)
    frames = load_frame_classifier(tiny_frame_classifier(tmp_path / "frame"), device="cpu")
    options = dict(n_way=50, top_k=1, trials=20, ground_truth_top=3, seed=0)
    got = frame_n_way_scores(frames, decoded, truth, batch_size=5, **options)
    pred = frames.probabilities(decoded.reshape(12, 32, 32, 3))
    real = frames.probabilities(truth.reshape(12, 32, 32, 3))
    np.testing.assert_allclose(got, n_way_top_k(pred, real, **options).reshape(3, 4).mean(1))
    np.testing.assert_array_equal(frame_n_way_scores(frames, truth, truth, **options), 1.0)

    clips = load_video_classifier(tiny_video_classifier(tmp_path / "video", num_frames=4), device="cpu")
    got = video_n_way_scores(clips, decoded, truth, batch_size=2, **options)
    np.testing.assert_allclose(got, n_way_top_k(clips.probabilities(decoded), clips.probabilities(truth), **options))
    assert got.shape == (3,)
    np.testing.assert_array_equal(video_n_way_scores(clips, truth, truth, **options), 1.0)
    with pytest.raises(DataError, match="differ in shape"):
        video_n_way_scores(clips, decoded[:2], truth, **options)


def test_summarize():
    s = summarize([0.5, 0.7, 0.9, 0.3])
    assert s == {"mean": pytest.approx(0.6), "std": pytest.approx(np.std([0.5, 0.7, 0.9, 0.3])), "n": 4}
    with pytest.raises(DataError):
        summarize([])
