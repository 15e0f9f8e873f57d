"""``glfa evaluate`` with the mismatched baseline against the matched-only evaluation, same process.

Builds a run shaped like the demo's (4 methods x 48 test clips of 12 stimuli, 6 frames of
64 x 64, the demo's evaluation settings: EfficientNet-Lite0 frame classifier, stand-in CLIP,
2- and 50-way, 100 trials) and times

- the reference: the evaluation as it was before the mismatched baseline: load the frame
  classifier, then per generations folder frame N-way (each array classified once) and SSIM of
  the matched pairs only;
- glfa's :func:`glfa.evaluation.evaluate_run`: the same plus PSNR, strict N-way, CLIP similarity,
  CLIP-pcc, each against 8 mismatched partners per clip, with 10,000-permutation p-values.

Retrieval and the GLFA alignment are left out of both (the run holds no encoder). Prints a
Markdown table and a JSON line.

    python benchmarks/bench_evaluate.py [--clips 48] [--methods 4] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch


def demo_like_run(run: Path, *, clips: int, methods: int, frames: int = 6, size: int = 64, per_stimulus: int = 4):
    """Generations folders of ``methods`` methods decoding ``clips`` windows; returns the demo's evaluation config."""
    from glfa.config import validate_config
    from glfa.runs import RunLayout

    config = validate_config({"device": "cpu", "model": {"preset": "tiny"},
                              "evaluation": {"n_ways": [2, 50], "trials": 100}})
    rng = np.random.default_rng(0)

    def videos() -> np.ndarray:  # smooth random colour fields, upsampled 8 x
        coarse = rng.uniform(0, 255, size=(clips, frames, size // 8, size // 8, 3))
        return np.repeat(np.repeat(coarse, 8, axis=2), 8, axis=3).round().astype(np.uint8)

    truth = videos()
    for m in range(methods):
        method = f"method{m}"
        model_dir = RunLayout(run).model_dir(method)
        model_dir.mkdir(parents=True)
        (model_dir / "model.json").write_text(json.dumps({
            "kind": "cotrain", "method": method, "store": "/data/study", "train_subjects": ["01", "02"],
            "held_out": ["03"], "config": config.to_dict()}))
        folder = RunLayout(run).generations(method, "03", "test")
        folder.mkdir(parents=True)
        np.savez(folder / "videos.npz", decoded=videos(), truth=truth)
        items = [{"index": i, "window": i, "stimulus_id": f"stim{i // per_stimulus}", "onset": 0.0}
                 for i in range(clips)]
        (folder / "index.json").write_text(json.dumps({
            "method": method, "subject": "03", "split": "test", "model_dir": str(model_dir), "store": "/data/study",
            "count": clips, "items": items}))
    return config


def matched_only(run: Path, config) -> float:
    """The reference evaluation (matched pairs only), as glfa evaluated before the baseline; seconds."""
    from glfa.backbones import load_frame_classifier
    from glfa.evaluation import ContentCache, find_generations
    from glfa.metrics.video import frame_n_way_scores, ssim_scores

    start = time.perf_counter()
    ev = config.evaluation
    classifier = load_frame_classifier(ev.frame_classifier, "cpu")
    cache = ContentCache(classifier.probabilities)
    cached = SimpleNamespace(probabilities=lambda frames, **kwargs: cache(frames))  # as the old CachedClassifier
    for folder in find_generations(run):
        decoded, truth = folder.videos()
        for n in ev.n_ways:
            frame_n_way_scores(cached, decoded, truth, n_way=n, top_k=ev.top_k, trials=ev.trials,
                               ground_truth_top=ev.ground_truth_top, seed=ev.seed)
        ssim_scores(decoded, truth)
    return time.perf_counter() - start


def with_baseline(run: Path, config) -> float:
    """glfa's evaluate_run (everything, mismatched baseline included); seconds."""
    from glfa.evaluation import evaluate_run

    start = time.perf_counter()
    evaluate_run(run, config=config, progress=False)
    return time.perf_counter() - start


def main() -> None:
    """Build the run, then time the two evaluations alternately (reference first); the best of each counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--methods", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {"reference": [], "glfa": []}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        config = demo_like_run(run, clips=args.clips, methods=args.methods)
        for _ in range(args.repeats):  # alternating, so that a change of load hits both
            times["reference"].append(matched_only(run, config))
            times["glfa"].append(with_baseline(run, config))
    best = {k: min(v) for k, v in times.items()}
    print(f"glfa evaluate on a demo-shaped run: {args.methods} methods x {args.clips} clips of 6 x 64 x 64, cpu, "
          f"{args.threads} thread(s), load {load:.1f} -> {os.getloadavg()[0]:.1f}, best of {args.repeats}\n")
    print("| evaluation | wall s (each run) | best |")
    print("| --- | --- | ---: |")
    print(f"| reference: matched only | {' / '.join(f'{t:.1f}' for t in times['reference'])} | "
          f"{best['reference']:.1f} |")
    print(f"| glfa: + mismatched baseline, PSNR, strict N-way, CLIP, CLIP-pcc | "
          f"{' / '.join(f'{t:.1f}' for t in times['glfa'])} | {best['glfa']:.1f} |")
    print(f"| ratio (best against best) | | {best['glfa'] / best['reference']:.2f} x |")
    print(json.dumps({"bench": "evaluate", "clips": args.clips, "methods": args.methods, "threads": args.threads,
                      "reference_s": [round(t, 2) for t in times["reference"]],
                      "glfa_s": [round(t, 2) for t in times["glfa"]],
                      "ratio": round(best["glfa"] / best["reference"], 3)}))


if __name__ == "__main__":
    main()
