"""How much brain signal a run's generator lets any decoder show: ceilings on one subject's test windows.

    python benchmarks/generator_ceiling.py RUN --subject 03 --labels STUDY/truth/clips.json --out DIR

A decoded clip's matched-minus-mismatched signal is bounded by what the generator makes of a
perfect condition. This writes three stand-in methods into ``DIR/generations`` (never into RUN)
and scores them with ``glfa evaluate``'s own scoring, each against its mismatched baseline:

- ``truth-vae``: each window's real frames after a round trip through the generator's VAE (a
  perfect latent decoder);
- ``label-vae``: the real frames of a *training* window with the same label (for the synthetic
  study, another clip of the same photograph), through the VAE (a perfect label decoder with a
  perfect generator);
- ``caption``: the generator's samples for each window's true caption, with the run's generation
  settings and the empty prompt as the negative (what the text-to-video model follows at best).

The windows, truth, seeds and settings are those of ``RUN/generations/<method>/<subject>-test``
(``--method``, default ``glfa``). The tables land in ``DIR/evaluation/video.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from glfa.backbones import load_video_generator
from glfa.data.store import StudyStore
from glfa.evaluation import evaluate_run, write_video_tables
from glfa.generate import truth_clip
from glfa.io import write_json_atomic
from glfa.metrics.decoding import read_stimulus_labels
from glfa.pipeline import FmriToVideoPipeline, read_model_info
from glfa.runs import GENERATIONS_INDEX, RunLayout


def write_folder(out: Path, name: str, reference: Path, decoded: np.ndarray, truth: np.ndarray, index: dict) -> None:
    """A generations folder of ``name`` in ``out`` holding ``decoded`` beside the reference's truth and index."""
    folder = RunLayout(out).generations(name, index["subject"], index["split"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    np.savez(folder / "videos.npz", decoded=decoded, truth=truth)
    shutil.copy(reference / "generation.json", folder / "generation.json")
    write_json_atomic(folder / GENERATIONS_INDEX, {**index, "method": name})


def label_frames(store: StudyStore, windows: list, labels: dict[str, str], gen: dict) -> np.ndarray:
    """For window k, the frames of a training window of the same label (the ``5k``-th of them, cyclically)."""
    train = store.windows("train")
    out = []
    for k, window in enumerate(windows):
        same = [w for w in train if labels.get(w.stimulus_id) == labels[window.stimulus_id]]
        if not same:
            sys.exit(f"no training window has the label {labels[window.stimulus_id]!r} of {window.stimulus_id}")
        frames = store.frames(same[(5 * k) % len(same)])
        out.append(truth_clip(frames, gen["num_frames"], gen["height"], gen["width"]))
    return np.stack(out)


@torch.no_grad()
def caption_videos(generator, captions: list[str], seeds: list[int], gen: dict) -> np.ndarray:
    """The generator's samples for ``captions`` (DPM-Solver, the run's settings, the empty prompt as negative)."""
    distinct = sorted(set(captions))
    states = generator.encode_text(distinct)  # [k, 77, C]
    rows = torch.tensor([distinct.index(c) for c in captions], dtype=torch.float32)
    pipe = FmriToVideoPipeline(condition=lambda x: states[x[:, 0, 0, 0].long()], generator=generator,
                               negative_tokens=generator.encode_text([""])[0])
    return pipe(rows.view(-1, 1, 1, 1), num_inference_steps=gen["num_inference_steps"],
                guidance_scale=gen["guidance_scale"], num_frames=gen["num_frames"], height=gen["height"],
                width=gen["width"], seed=seeds, batch_size=16).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--labels", required=True, type=Path, help="{stimulus: label} JSON or a synthetic study's "
                        "truth/clips.json")
    parser.add_argument("--method", default="glfa", help="the generations folder whose windows are used")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    reference = RunLayout(args.run).generations(args.method, args.subject, "test")
    index = json.loads((reference / GENERATIONS_INDEX).read_text())
    gen = index["generation"]
    truth = np.load(reference / "videos.npz")["truth"]
    store = StudyStore.open(index["store"])
    by_index = {w.index: w for w in store.windows()}
    windows = [by_index[int(item["window"])] for item in index["items"]]
    generator = load_video_generator(read_model_info(index["model_dir"])["generator"])
    labels, _ = read_stimulus_labels(args.labels)

    for name, frames in (("truth-vae", truth), ("label-vae", label_frames(store, windows, labels, gen))):
        with torch.no_grad():
            round_trip = generator.decode_latents(generator.encode_videos(frames)).numpy()
        write_folder(args.out, name, reference, round_trip, truth, index)
    captions = [store.captions(w)[store.video_frames // 2] for w in windows]
    seeds = [int(gen["seed"]) + int(item["window"]) for item in index["items"]]
    write_folder(args.out, "caption", reference, caption_videos(generator, captions, seeds, gen), truth, index)

    evaluation = evaluate_run(args.out, progress=False)
    paths = write_video_tables(evaluation, RunLayout(args.out).evaluation)
    print(Path(paths["markdown"]).read_text())


if __name__ == "__main__":
    main()
