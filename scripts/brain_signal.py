"""How much of each method's decoded clips the brain explains: matched against mismatched ground truth.

    python scripts/brain_signal.py RUN [--subject 03] [--methods glfa glfa+blurry ...] [--permutations 10000]

For every ``RUN/generations/<method>/<subject>-test/videos.npz`` it scores each decoded clip
against its own ground truth (matched) and against the ground truth of every other test clip
(mismatched), for frame-based 2-way top-1 accuracy (MinD-Video's top-3 rule, EfficientNet-Lite0,
:func:`glfa.metrics.video.n_way_top_k`) and SSIM (:func:`glfa.metrics.video.ssim_scores`). The
brain signal is matched minus mismatched; its p-value is a permutation test of the pairing (the
mean score of a random re-pairing of decoded clips and ground truths reaching the matched mean).
Every frame is classified once; every pairing is scored from the cached probabilities.

It also reports brain-to-video retrieval from the stage-1 encoder (``RUN/contrastive/encoder``):
the rank of each test window's frames (the stand-in CLIP's image embeddings, averaged over the
window) among all test windows, by cosine with the encoder's CLIP-space embedding of the fMRI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from glfa.backbones import load_clip, load_frame_classifier
from glfa.metrics.video import n_way_top_k, ssim_scores
from glfa.runs import CONTRASTIVE, RunLayout


def pairwise_two_way(pred: np.ndarray, real: np.ndarray, trials: int, seed: int) -> np.ndarray:
    """Frame 2-way top-1 of decoded clip i against the truth of clip j, ``[N, N]`` (mean over frames)."""
    n, f, c = pred.shape
    a = np.broadcast_to(pred[:, None], (n, n, f, c))
    b = np.broadcast_to(real[None], (n, n, f, c))
    return n_way_top_k(a, b, n_way=2, top_k=1, trials=trials, ground_truth_top=3, seed=seed).mean(axis=2)


def pairwise_ssim(decoded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """SSIM of decoded clip i against the truth of clip j, ``[N, N]``."""
    n = len(decoded)
    return np.stack([ssim_scores(np.repeat(decoded[i:i + 1], n, axis=0), truth) for i in range(n)])


def signal(scores: np.ndarray, permutations: int, seed: int = 0) -> dict[str, float]:
    """Matched (diagonal), mismatched (off-diagonal) means, their difference and the permutation p-value."""
    n = len(scores)
    matched = float(np.mean(np.diag(scores)))
    mismatched = float((scores.sum() - np.trace(scores)) / (n * (n - 1)))
    rng = np.random.default_rng(seed)
    null = np.array([scores[np.arange(n), rng.permutation(n)].mean() for _ in range(permutations)])
    p = (1 + int(np.sum(null >= matched))) / (1 + permutations)
    return {"matched": matched, "mismatched": mismatched, "signal": matched - mismatched, "p": p}


def retrieval(run: Path, folder: Path, subject: str, truth: np.ndarray, dim: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy of finding each window's frames from its fMRI among the test windows (of ``folder``)."""
    from glfa.data.store import StudyStore
    from glfa.models.encoder import FmriEncoder

    index = json.loads((folder / "index.json").read_text())
    store = StudyStore.open(index["store"])
    windows = {w.index: w for w in store.windows("test")}
    fmri = torch.from_numpy(np.stack([store.fmri(subject, windows[it["window"]]) for it in index["items"]]))
    encoder = FmriEncoder.from_pretrained(RunLayout(run).stage1_encoder).eval()
    with torch.no_grad():
        brain = torch.nn.functional.normalize(encoder(fmri.float(), heads=("clip",))["clip"].float(), dim=-1)
    clip = load_clip(None, dim=dim, device="cpu")
    n, f = truth.shape[:2]
    frames = clip.embed_images(truth.reshape(n * f, *truth.shape[2:])).float().reshape(n, f, -1).mean(1)
    similarity = brain @ torch.nn.functional.normalize(frames, dim=-1).T  # [N, N]
    rank = (similarity > similarity.diagonal()[:, None]).sum(1)  # windows scored above the true one
    return {"top1": float((rank < 1).float().mean()), "top5": float((rank < 5).float().mean()), "chance": 1 / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--subject", default="03")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every generations folder")
    parser.add_argument("--permutations", type=int, default=10000)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args()
    run = RunLayout(args.run)
    folders = [folder / "videos.npz" for method, folder in run.generations_folders()
               if folder == run.generations(method, args.subject, "test") and method in (args.methods or [method])]
    classifier = load_frame_classifier(None, device="cpu")
    results, real, truth = {}, None, None
    for path in folders:
        with np.load(path) as npz:
            decoded, truth = npz["decoded"], npz["truth"]
        n, f = decoded.shape[:2]
        if real is None:  # the ground truth is the same for every method: classify it once
            real = classifier.probabilities(truth.reshape(n * f, *truth.shape[2:])).reshape(n, f, -1)
        pred = classifier.probabilities(decoded.reshape(n * f, *decoded.shape[2:])).reshape(n, f, -1)
        method = path.parent.parent.name
        results[method] = {"clips": n,
                           "frame_2way": signal(pairwise_two_way(pred, real, args.trials, 0), args.permutations),
                           "ssim": signal(pairwise_ssim(decoded, truth), args.permutations),
                           "pixel_std_across_clips": float(decoded.astype(np.float64).std(axis=0).mean())}
        line = "  ".join(f"{k} {v['matched']:.3f}/{v['mismatched']:.3f} ({v['signal']:+.3f}, p={v['p']:.4f})"
                         for k, v in results[method].items() if isinstance(v, dict))
        print(f"{method:>16}: {line}", flush=True)
    if truth is not None and run.stage1_encoder.is_dir():
        config = json.loads(run.stage_config(CONTRASTIVE).read_text())
        results["retrieval"] = retrieval(args.run, folders[-1].parent, args.subject, truth, config["model"]["heads"]["clip_dim"])
        print("retrieval (stage-1 encoder):", json.dumps(results["retrieval"]))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
