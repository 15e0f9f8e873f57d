"""Video reconstruction metrics of the paper's section 4.3 (following MinD-Video).

- Structure: :func:`ssim_scores`, SSIM of every decoded frame against the real frame
  (``skimage.metrics.structural_similarity``, ``data_range=255``, ``channel_axis=-1``), averaged
  over the frames of each sample.
- Pixels: :func:`psnr_scores`, PSNR per frame averaged over the frames of each sample.
- Semantics: N-way top-K classification accuracy, frame-based (:func:`frame_n_way_scores`, an
  ImageNet classifier on every frame, averaged over frames) and video-based
  (:func:`video_n_way_scores`, a Kinetics-400 VideoMAE on the whole clip); CLIP similarity
  (:func:`clip_similarity_scores`, decoded against real frame embeddings) and CLIP-pcc
  (:func:`clip_pcc`, consecutive decoded frames against each other).

N-way top-K (:func:`n_way_top_k`) follows MinD-Video's ``n_way_top_k_acc`` / ``img_classify_metric``
(``eval_metrics.py`` of the MinD-Video code):

1. the ground-truth classes are the classifier's top ``ground_truth_top`` (3) classes on the
   real frame (or video);
2. a trial draws ``n_way - 1`` distinct classes uniformly at random, without replacement, from
   the classes that are not ground truth;
3. for each ground-truth class, the decoded frame's probability of it is ranked against its
   probabilities of the drawn classes; the trial is correct when any ground-truth class ranks
   within the top ``top_k`` of those ``n_way`` (the same draw serves every ground-truth class);
4. the accuracy of a frame is the fraction of ``trials`` (100) correct trials.

Ties count against the ground truth (a drawn class as probable as the ground-truth class ranks
above it, as a stable ascending sort does), which matters only for exactly equal probabilities.

The draws are seeded and vectorised: only whether a drawn class outranks the best ground-truth
class matters, so a draw is simulated step by step as MinD-Video's sampling without replacement
(step ``j`` picks position ``floor(u * L)`` of the ``L`` classes left, ordered by decreasing
decoded probability; ``u`` uniform) while counting the picks that outrank. One uniform number
per (row, trial, step), taken row by row from ``numpy.random.default_rng(seed)``, so the result
does not depend on the chunk size and a brute-force loop drawing the same numbers agrees exactly.

:func:`summarize` reports the mean and the standard deviation over samples (``ddof=0``, numpy's
default, as MinD-Video's ``np.std``).
"""

from __future__ import annotations

import numpy as np

from glfa.errors import DataError

# (row, trial, step) uniforms drawn per chunk of rows, to bound memory (8 bytes each)
_CHUNK_DRAWS = 1 << 22
#: PSNR (dB) recorded for a frame equal to its truth, whose PSNR is infinite
PSNR_CAP = 100.0


def _check_videos(decoded, truth) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as uint8 ``[N, f, h, w, 3]`` of the same shape; DataError otherwise."""
    decoded = np.asarray(decoded)
    truth = np.asarray(truth)
    for name, x in (("decoded", decoded), ("truth", truth)):
        if x.ndim != 5 or x.shape[-1] != 3:
            raise DataError(f"expected uint8 videos [N, f, h, w, 3], got shape {x.shape}", field=name)
        if x.dtype != np.uint8:
            raise DataError(f"expected uint8 videos, got dtype {x.dtype}", field=name)
    if decoded.shape != truth.shape:
        raise DataError(f"decoded videos {decoded.shape} and ground truth {truth.shape} differ in shape; "
                        "resample the ground truth to the decoded frame count and size", field="truth")
    if len(decoded) == 0:
        raise DataError("no video to score", field="decoded")
    return decoded, truth


def ssim_scores(decoded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-sample SSIM: the mean over frames of skimage's SSIM (data_range 255, colour on the last axis).

    Parameters
    ----------
    decoded, truth : uint8 array ``[N, f, h, w, 3]``
        Decoded videos and their ground truth, the same shape (frames at least 7 x 7 pixels).

    Returns
    -------
    float64 array ``[N]``
    """
    from skimage.metrics import structural_similarity

    decoded, truth = _check_videos(decoded, truth)
    if min(decoded.shape[2:4]) < 7:
        raise DataError(f"frames of {decoded.shape[2]} x {decoded.shape[3]} pixels are smaller than SSIM's "
                        "7 x 7 window", field="decoded")
    out = np.empty(len(decoded))
    for i, (video, real) in enumerate(zip(decoded, truth)):
        out[i] = np.mean([structural_similarity(a, b, data_range=255, channel_axis=-1) for a, b in zip(video, real)])
    return out


def ssim_pairings(decoded: np.ndarray, truth: np.ndarray, pairings: list[np.ndarray]) -> np.ndarray:
    """SSIM of each decoded clip against other truths: row k scores clip i against ``truth[pairings[k][i]]``.

    The numbers of :func:`ssim_scores` for each pairing (skimage's SSIM: 7 x 7 uniform window,
    sample covariance, K1 0.01, K2 0.03, data range 255, each colour channel, then the mean over
    channels and frames) up to rounding, computed a clip at a time on all its frames and channels
    at once, the decoded clip's local means and variances shared by its pairings: the mismatched
    baseline scores every clip against several truths.

    Returns
    -------
    float64 array ``[len(pairings), N]``
    """
    from scipy.ndimage import uniform_filter

    decoded, truth = _check_videos(decoded, truth)
    if min(decoded.shape[2:4]) < 7:
        raise DataError(f"frames of {decoded.shape[2]} x {decoded.shape[3]} pixels are smaller than SSIM's "
                        "7 x 7 window", field="decoded")
    size, pad, cov = (1, 7, 7, 1), 3, 49 / 48  # [f, h, w, c]: the window over h and w; cov: sample covariance
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = np.empty((len(pairings), len(decoded)))
    for i, video in enumerate(decoded):
        x = video.astype(np.float64)  # [f, h, w, 3]
        ux = uniform_filter(x, size)
        vx = cov * (uniform_filter(x * x, size) - ux * ux)
        for k, index in enumerate(pairings):
            y = truth[index[i]].astype(np.float64)
            uy = uniform_filter(y, size)
            vy = cov * (uniform_filter(y * y, size) - uy * uy)
            vxy = cov * (uniform_filter(x * y, size) - ux * uy)
            ssim = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
            out[k, i] = ssim[:, pad:-pad, pad:-pad].mean(axis=(1, 2)).mean()  # [f, c] -> channels, frames
    return out


def psnr_scores(decoded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-sample PSNR (dB, peak 255): the mean over frames of each frame's PSNR.

    A frame's PSNR is ``10 log10(255^2 / MSE)`` over its pixels and channels, as skimage's
    ``peak_signal_noise_ratio(data_range=255)``; a frame equal to its truth (MSE 0, infinite
    PSNR) counts as :data:`PSNR_CAP` dB, so that means and differences stay finite.

    Parameters
    ----------
    decoded, truth : uint8 array ``[N, f, h, w, 3]``

    Returns
    -------
    float64 array ``[N]``
    """
    decoded, truth = _check_videos(decoded, truth)
    diff = decoded.astype(np.float64) - truth  # [N, f, h, w, 3]
    mse = (diff * diff).reshape(*diff.shape[:2], -1).mean(-1)  # [N, f]
    with np.errstate(divide="ignore"):
        psnr = 10 * np.log10(255.0**2 / mse)
    return np.minimum(psnr, PSNR_CAP).mean(axis=1)


def clip_similarity_scores(decoded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-sample CLIP similarity: the mean over frames of the cosine between decoded and true frame embeddings.

    Parameters
    ----------
    decoded, truth : array ``[N, f, D]``
        CLIP image embeddings of the decoded frames and of the true frames.

    Returns
    -------
    float64 array ``[N]``
    """
    x, y = _unit(decoded, "decoded"), _unit(truth, "truth")
    if x.shape != y.shape:
        raise DataError(f"decoded embeddings {x.shape} and true embeddings {y.shape} differ in shape "
                        "[clips, frames, dim]", field="truth")
    return (x * y).sum(-1).mean(axis=1)


def clip_pcc(decoded: np.ndarray) -> np.ndarray:
    """CLIP-pcc of every video: the mean cosine between the CLIP embeddings of consecutive frames.

    ``decoded`` ``[N, f, D]`` (f >= 2) -> float64 ``[N]``. It measures temporal consistency,
    not decoding: it has no ground truth, hence no mismatched baseline.
    """
    x = _unit(decoded, "decoded")
    if x.shape[1] < 2:
        raise DataError(f"CLIP-pcc needs at least 2 frames per clip, got {x.shape[1]}", field="decoded")
    return (x[:, :-1] * x[:, 1:]).sum(-1).mean(axis=1)


def _unit(x, name: str) -> np.ndarray:
    """Embeddings ``[n, f, D]`` as float64 unit vectors; DataError when not finite or not 3-D."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or not np.all(np.isfinite(x)):
        raise DataError(f"expected finite embeddings [clips, frames, dim], got shape {x.shape}", field=name)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_probs(pred_probs, truth_probs, *, n_way: int, top_k: int, trials: int,
                 ground_truth_top: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the N-way inputs; both probabilities as float64 ``[rows, C]``."""
    pred = np.asarray(pred_probs, dtype=np.float64)
    truth = np.asarray(truth_probs, dtype=np.float64)
    if pred.ndim < 1 or pred.shape != truth.shape:
        raise DataError(f"decoded probabilities {pred.shape} and ground-truth probabilities {truth.shape} must "
                        "have the same shape [..., classes]", field="truth_probs")
    for name, x in (("pred_probs", pred), ("truth_probs", truth)):
        if not np.all(np.isfinite(x)):
            raise DataError("contains NaN or infinite values", field=name)
    classes = pred.shape[-1]
    if not 1 <= ground_truth_top < classes:
        raise DataError(f"ground_truth_top must be in 1..{classes - 1} for {classes} classes, got {ground_truth_top}",
                        field="ground_truth_top")
    pool = classes - ground_truth_top
    if not 2 <= n_way <= pool + 1:
        raise DataError(f"n_way must be in 2..{pool + 1}: {classes} classes less the {ground_truth_top} "
                        f"ground-truth ones leave {pool} to draw n_way - 1 from; got {n_way}", field="n_way")
    if not 1 <= top_k < n_way:
        raise DataError(f"top_k must be in 1..{n_way - 1} for {n_way}-way, got {top_k}", field="top_k")
    if trials < 1:
        raise DataError(f"trials must be positive, got {trials}", field="trials")
    return pred.reshape(-1, classes), truth.reshape(-1, classes)


def n_way_top_k(pred_probs: np.ndarray, truth_probs: np.ndarray, *, n_way: int, top_k: int = 1,
                trials: int = 100, ground_truth_top: int = 3, seed: int = 0) -> np.ndarray:
    """N-way top-K accuracy of every row (MinD-Video's protocol; see the module docstring).

    Parameters
    ----------
    pred_probs : array ``[..., C]``
        The classifier's class probabilities on the decoded frames (or videos).
    truth_probs : array ``[..., C]``
        Its probabilities on the real frames, the same shape: their top ``ground_truth_top``
        classes are the ground truth.
    n_way : int
        Candidates per trial: the ground-truth class and ``n_way - 1`` drawn ones
        (``2 <= n_way <= C - ground_truth_top + 1``).
    top_k : int
        A trial is correct when a ground-truth class ranks within the top ``top_k`` (< n_way).
    trials : int
        Random draws per row.
    ground_truth_top : int
        How many of the real frame's top classes count as ground truth.
    seed : int
        Seed of ``numpy.random.default_rng``; the same seed gives the same draws.

    Returns
    -------
    float64 array ``[...]``
        The fraction of correct trials of every row (``[N]`` for ``[N, C]`` input).
    """
    pred, truth = _check_probs(pred_probs, truth_probs, n_way=n_way, top_k=top_k, trials=trials,
                               ground_truth_top=ground_truth_top)  # [rows, C] each, rows in order
    return n_way_top_k_pairings(pred, truth, [np.arange(len(pred))], n_way=n_way, top_k=top_k, trials=trials,
                                ground_truth_top=ground_truth_top, seed=seed)[0].reshape(np.shape(pred_probs)[:-1])


def n_way_top_k_pairings(pred_probs: np.ndarray, truth_probs: np.ndarray, pairings: list[np.ndarray], *,
                         n_way: int, top_k: int = 1, trials: int = 100, ground_truth_top: int = 3,
                         seed: int = 0) -> np.ndarray:
    """N-way top-K accuracy of every decoded row against the truth each pairing gives it.

    Parameters
    ----------
    pred_probs, truth_probs : arrays ``[N, ..., C]`` of the same shape
        Probabilities on N decoded and N true samples (``...``: e.g. their frames).
    pairings : list of int arrays ``[N]``
        Decoded sample ``i`` is scored against true sample ``pairing[i]`` (``[i, t]`` against
        ``[pairing[i], t]``).
    n_way, top_k, trials, ground_truth_top, seed
        As :func:`n_way_top_k`.

    Returns
    -------
    float64 array ``[len(pairings), N, ...]``
        Each pairing is scored on the same random trials of each decoded row (the draws depend on
        the row, not on the truth), so pairing ``arange(N)`` gives exactly :func:`n_way_top_k`.
        The ground-truth classes of each true row are found once for every pairing.
    """
    if np.ndim(pred_probs) < 2:
        raise DataError(f"expected probabilities [samples, ..., classes], got shape {np.shape(pred_probs)}",
                        field="pred_probs")
    pred, truth = _check_probs(pred_probs, truth_probs, n_way=n_way, top_k=top_k, trials=trials,
                               ground_truth_top=ground_truth_top)  # [(N r), C] each
    shape = np.shape(pred_probs)[:-1]
    rows, classes = pred.shape
    gt = np.argsort(-truth, axis=1, kind="stable")[:, :ground_truth_top]  # [(N r), g]
    gt = gt.reshape(shape[0], -1, ground_truth_top)  # [N, r, g]
    outranking = []  # per pairing [(N r)]: drawable classes the decoded row ranks at or above its best truth class
    for pairing in pairings:
        paired = gt[pairing].reshape(rows, ground_truth_top)  # [(N r), g]
        gt_pred = np.take_along_axis(pred, paired, axis=1)  # [r, g]
        best = gt_pred.max(axis=1, keepdims=True)  # [r, 1]
        outranking.append((pred >= best).sum(axis=1) - (gt_pred >= best).sum(axis=1))
    pool = classes - ground_truth_top
    draws = n_way - 1
    rng = np.random.default_rng(seed)
    step = max(1, _CHUNK_DRAWS // (trials * draws))
    out = np.empty((len(pairings), rows))
    for start in range(0, rows, step):
        u = rng.random((min(step, rows - start), trials, draws))  # [r, t, n-1]
        for k, counts in enumerate(outranking):
            left = np.broadcast_to(counts[start:start + len(u), None], u.shape[:2]).copy()  # [r, t]
            above = np.zeros(u.shape[:2], dtype=np.int64)  # [r, t] drawn classes outranking the ground truth
            for j in range(draws):
                size = pool - j
                picked = np.minimum((u[:, :, j] * size).astype(np.int64), size - 1)
                hit = picked < left
                left -= hit
                above += hit
            out[k, start:start + len(u)] = (above < top_k).mean(axis=1)
    return out.reshape(len(pairings), *shape)


def frame_n_way_scores(classifier, decoded: np.ndarray, truth: np.ndarray, *, n_way: int, top_k: int = 1,
                       trials: int = 100, ground_truth_top: int = 3, seed: int = 0,
                       batch_size: int = 64) -> np.ndarray:
    """Frame-based N-way top-K: the accuracy of every frame with an ImageNet classifier, averaged per sample.

    Parameters
    ----------
    classifier : :class:`glfa.backbones.FrameClassifier`
        ``probabilities(frames [n, h, w, 3], batch_size) -> [n, classes]``.
    decoded, truth : uint8 array ``[N, f, h, w, 3]``
        Decoded videos and their ground truth, the same shape.
    n_way, top_k, trials, ground_truth_top, seed
        As :func:`n_way_top_k`.
    batch_size : int
        Frames per classifier call.

    Returns
    -------
    float64 array ``[N]``
    """
    decoded, truth = _check_videos(decoded, truth)
    n, f = decoded.shape[:2]
    pred = classifier.probabilities(decoded.reshape(n * f, *decoded.shape[2:]), batch_size=batch_size)
    real = classifier.probabilities(truth.reshape(n * f, *truth.shape[2:]), batch_size=batch_size)
    per_frame = n_way_top_k(pred.reshape(n, f, -1), real.reshape(n, f, -1), n_way=n_way, top_k=top_k,
                            trials=trials, ground_truth_top=ground_truth_top, seed=seed)  # [N, f]
    return per_frame.mean(axis=1)


def video_n_way_scores(classifier, decoded: np.ndarray, truth: np.ndarray, *, n_way: int, top_k: int = 1,
                       trials: int = 100, ground_truth_top: int = 3, seed: int = 0,
                       batch_size: int = 8) -> np.ndarray:
    """Video-based N-way top-K: one class-probability vector per clip, from a video classifier.

    ``classifier`` is a :class:`glfa.backbones.VideoClassifier` (VideoMAE, Kinetics-400):
    ``probabilities(videos [b, f, h, w, 3], batch_size) -> [b, classes]``; ``batch_size`` videos
    go in per call. The other arguments and the float64 ``[N]`` result are as
    :func:`frame_n_way_scores`.
    """
    decoded, truth = _check_videos(decoded, truth)
    pred = classifier.probabilities(decoded, batch_size=batch_size)
    real = classifier.probabilities(truth, batch_size=batch_size)
    return n_way_top_k(pred, real, n_way=n_way, top_k=top_k, trials=trials, ground_truth_top=ground_truth_top,
                       seed=seed)


def summarize(scores) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of per-sample scores; the standard deviation over samples with ddof=0."""
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise DataError("no score to summarise", field="scores")
    return {"mean": float(x.mean()), "std": float(x.std()), "n": int(x.size)}
