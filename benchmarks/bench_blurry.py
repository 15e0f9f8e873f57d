"""The blurry decoder's three kinds, ridge, conv and retrieval, on a finished run: how close each comes to a new
subject's latents.

Issue 11 asks for a ridge and a small convolutional low-level decoder; the demo uses the third,
retrieval. This script fits all three (``blurry.kind: ridge``, ``conv`` and ``retrieval``, every
other setting from the run's ``RUN/blurry/model`` config) on the run's store and encoder into ``--out``, then predicts the VAE latents of the
held-out subject's test windows and reports, for each and for the training latents' mean: the
MSE against the true latents (the store's test-latents cache, built on first use), R^2 against
the mean (1 - MSE / MSE of the mean), the SSIM of the VAE-decoded clips against the stored
frames (mean over clips) and the fit's wall time, with the 1-minute load average.

    python benchmarks/bench_blurry.py RUN [--store STORE] [--out DIR] [--subject S] [--device cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    """Fit every kind, score them, print the table."""
    from glfa.backbones import load_video_generator
    from glfa.baselines.blurry import fit_blurry, load_blurry_decoder
    from glfa.config import validate_config
    from glfa.data.features import vae_latents
    from glfa.data.store import StudyStore
    from glfa.metrics.video import ssim_scores
    from glfa.runs import BLURRY, RunLayout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run with RUN/blurry/model (e.g. the demo's)")
    parser.add_argument("--store", default=None, help="the study store (default: the run's; its cache gains the "
                        "test windows' latents)")
    parser.add_argument("--out", type=Path, default=None, help="where the fits go (default: a temporary folder)")
    parser.add_argument("--subject", default=None, help="the scored subject (default: the run's first held-out one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    info = json.loads((RunLayout(args.run).model_dir(BLURRY) / "model.json").read_text())
    store = StudyStore.open(args.store or info["store"])
    subject = args.subject or info["held_out"][0]
    generator = load_video_generator(info["generator"], device=args.device, with_text_encoder=False)
    windows = store.windows("test")
    truth = vae_latents(store, generator, split="test").stack([w.index for w in windows]).float()  # [N, c, m, h, w]
    mean = vae_latents(store, generator, split="train").latents.float().mean(0)
    fmri = torch.stack([torch.from_numpy(store.fmri(subject, w)) for w in windows])
    frames = np.stack([store.frames(w) for w in windows])  # [N, m, h, w, 3]

    def scores(latents: torch.Tensor) -> dict[str, float]:
        clips = generator.decode_latents(latents.to(generator.device)).numpy()
        return {"mse": float(((latents.cpu() - truth) ** 2).mean()), "ssim": float(ssim_scores(clips, frames).mean())}

    out = args.out or Path(tempfile.mkdtemp(prefix="bench-blurry-"))
    rows = {"training mean": {**scores(mean.expand_as(truth)), "fit_s": 0.0}}
    for kind in ("ridge", "conv", "retrieval"):
        data = {**info["config"], "device": args.device}
        data["blurry"] = {**data["blurry"], "kind": kind}
        start = time.perf_counter()
        model = fit_blurry(validate_config(data), store, out / kind, encoder_dir=info["encoder_source"],
                           progress=False)
        fit_s = time.perf_counter() - start
        rows[kind] = {**scores(load_blurry_decoder(model, args.device).latents(fmri).cpu()), "fit_s": fit_s}
    base = rows["training mean"]["mse"]
    print(f"Subject {subject}, {len(windows)} test windows, load {os.getloadavg()[0]:.1f}\n")
    print("| decoder | latent MSE | R^2 vs mean | SSIM | fit s |\n|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        r["r2"] = 1 - r["mse"] / base
        print(f"| {name} | {r['mse']:.4f} | {r['r2']:+.3f} | {r['ssim']:.3f} | {r['fit_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"subject": subject, "windows": len(windows), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
