"""Stage-1 step with cached frozen CLIP embeddings against one that runs CLIP every step (tiny CLIP, CPU).

Both variants are the same :class:`~glfa.training.contrastive.ContrastiveStage` on the same batch
with the same random draws (frame, view, subjects): the cached one reads the embeddings from the
store's cache (``glfa.data.features.clip_features``); the other reads the chosen frames and
captions, makes their views (crop, caption augmentation) and embeds them with the frozen tiny
CLIP inside the step, as training would without the cache. A step is forward + backward +
AdamW update of the tiny fMRI encoder. The two losses are checked to agree (float16 cache).
Prints a Markdown table and a JSON line.

    python benchmarks/bench_contrastive.py [--clip tiny|standin] [--steps 30] [--batch 12] [--views 4]
        [--fmri-size 16] [--fmri-frames 2] [--video-size 32] [--threads 1]

``--clip tiny`` is :func:`glfa.backbones.tiny_clip` (width 32, 2 layers, 32 x 32 input);
``--clip standin`` is the demo's stand-in (EfficientNet-Lite0 at 224 x 224 + MiniLM). The ratio
is (encoder step + CLIP forward) / encoder step, so it grows with CLIP's cost and falls with the
fMRI encoder's (image size, frames, batch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixtures import write_decoding_store  # noqa: E402

from glfa.backbones import load_clip, tiny_clip  # noqa: E402
from glfa.config import validate_config  # noqa: E402
from glfa.data.features import _frame_table, caption_view, frame_view  # noqa: E402
from glfa.data.store import StudyStore  # noqa: E402
from glfa.optim import adamw  # noqa: E402
from glfa.training.contrastive import ContrastiveStage  # noqa: E402


class UncachedStage(ContrastiveStage):
    """Stage 1 computing the frozen CLIP embeddings of the batch's frames and captions in every step."""

    def __init__(self, *args, clip, **kwargs):
        super().__init__(*args, clip=clip, **kwargs)
        self.clip = clip
        self.frame_table, self.captions = _frame_table(self.store)

    def targets(self, rows, image_view, text_view, device):
        """Read the frames and captions of ``rows``, make the views, embed them with CLIP now."""
        section = self.config.contrastive
        rows, image_view, text_view = rows.tolist(), image_view.tolist(), text_view.tolist()
        frames = torch.stack([frame_view(self.frame_table[r], r, v, crop_scale=section.crop_scale, seed=section.seed)
                              for r, v in zip(rows, image_view)])  # [b, h, w, 3]
        texts = [caption_view(self.captions[r], r, v, swap_prob=section.word_swap_prob,
                              synonym_prob=section.synonym_prob, seed=section.seed) for r, v in zip(rows, text_view)]
        return self.clip.embed_images(frames).to(device), self.clip.embed_texts(texts).to(device)


def time_steps(stage: ContrastiveStage, batch: dict, steps: int) -> tuple[list[float], float]:
    """Seconds of each of ``steps`` training steps on ``batch`` (same random draws each), and the first loss."""
    torch.manual_seed(0)
    models = stage.build_models()
    for model in models.values():
        model.train()
    params = [p for m in models.values() for p in m.parameters()]
    optimizer = adamw(params, lr=stage.settings.learning_rate, weight_decay=0.0)
    times, first = [], None
    for _ in range(steps + 1):  # the first is a warm-up
        torch.manual_seed(1)
        t0 = time.perf_counter()
        out = stage.step(models, batch)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        first = float(out.loss.detach()) if first is None else first
    return times[1:], first


def main() -> None:
    """Build a tiny store and CLIP, time both step variants, print the table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=12, help="stimuli per batch")
    parser.add_argument("--views", type=int, default=4, help="contrastive.augment_views")
    parser.add_argument("--clip", default="tiny", choices=["tiny", "standin"])
    parser.add_argument("--fmri-size", type=int, default=16, help="side of the flat cortical images")
    parser.add_argument("--fmri-frames", type=int, default=2, help="n: fMRI frames per window")
    parser.add_argument("--video-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = StudyStore.open(write_decoding_store(root / "store", train_stimuli=6, frames=8,
                                                     image_size=args.fmri_size, fmri_frames=args.fmri_frames,
                                                     video_size=args.video_size))
        clip = load_clip(tiny_clip(root / "clip", dim=32, image_size=32) if args.clip == "tiny" else None,
                         device="cpu", dim=32)
        config = validate_config({
            "model": {"preset": "tiny"}, "device": "cpu",
            "contrastive": {"stimuli_per_batch": args.batch, "subjects_per_batch": 2, "augment_views": args.views,
                            "num_workers": 0},
        })
        t0 = time.perf_counter()
        cached = ContrastiveStage(config, store, run_dir=root / "run", clip=clip, progress=False)
        build = time.perf_counter() - t0
        uncached = UncachedStage(config, store, run_dir=root / "run", clip=clip, progress=False)
        items = [cached.dataset()[i] for i in range(args.batch)]
        batch = cached.collate(items)
        fast, loss_fast = time_steps(cached, batch, args.steps)
        slow, loss_slow = time_steps(uncached, batch, args.steps)
        assert np.isclose(loss_fast, loss_slow, atol=5e-3), (loss_fast, loss_slow)
        frames = store.num_video_frames
    t_fast, t_slow = statistics.median(fast), statistics.median(slow)
    ratio = t_slow / t_fast
    print(f"stage-1 step, tiny encoder on {args.fmri_frames} x {args.fmri_size} x {args.fmri_size} fMRI, {args.clip} "
          f"CLIP on {args.video_size} x {args.video_size} frames, batch {args.batch} stimuli x 2 subjects, "
          f"{args.views} views, cpu, {torch.get_num_threads()} thread(s), median of {args.steps}\n")
    print("| variant | step (ms) |")
    print("| --- | ---: |")
    print(f"| cached embeddings | {1e3 * t_fast:.2f} |")
    print(f"| CLIP every step | {1e3 * t_slow:.2f} |")
    print(f"| ratio | {ratio:.1f}x |")
    print(f"| cache build, {frames} frames x {args.views} views (s) | {build:.2f} |")
    print(json.dumps({"bench": "contrastive_step", "clip": args.clip, "fmri_size": args.fmri_size,
                      "fmri_frames": args.fmri_frames, "video_size": args.video_size, "cached_ms": round(1e3 * t_fast, 3),
                      "uncached_ms": round(1e3 * t_slow, 3), "ratio": round(ratio, 2), "batch": args.batch,
                      "views": args.views, "threads": torch.get_num_threads(), "steps": args.steps,
                      "cache_build_s": round(build, 3), "loss_cached": loss_fast, "loss_uncached": loss_slow}))


if __name__ == "__main__":
    main()
