"""Held-out-subject alignment on the default synthetic study: GLFA against identity, smoothing and fmralign.

Simulates the default synthetic study (``glfa.data.synthetic.simulate_study``, default config),
prepares a store, then for every held-out subject h (the others are the training subjects):

- identity: the raw responses;
- GLFA: ``GLFAAligner`` fitted on the training subjects' TRAIN responses (config ``model.glfa``
  and ``align``), applied to every subject's TEST responses; h is never seen;
- Gaussian smoothing inside the mask (normalised convolution) of matched width:
  sigma = kernel_size / 6, so +-3 sigma spans GLFA's k x k kernel; also the sigma that
  maximises the training subjects' mean fSC on their TRAIN responses (a grid, no h data);
- fmralign 0.0.6 Procrustes and ridge (RidgeCV), piecewise over GLFA's parcels (the s x s
  squares of the flat image, restricted to the mask's pixels): "pairwise" maps every subject
  onto the first training subject, "template" maps every subject onto the group template of the
  training subjects. These methods learn one map PER SUBJECT, so they fit h's own TRAIN
  responses (paired with the target's): they use data of h that GLFA never sees.

Metrics on the TEST split over the mask's pixels: inter-subject decoding of the clip's category
(Bazeille et al. 2021: a ridge classifier trained on the other subjects' aligned responses,
applied to h's; ``glfa.metrics.decoding``), with its mismatched baseline; fSC of the held-out
subject with each other subject (mean of the pairs), ISC of the held-out subject, and the means
of fSC over all pairs and of ISC over all subjects; averaged over the held-out subjects. The
table ranks the methods by decoding accuracy: fSC and ISC reward blur, decoding does not. Fit time: seconds to fit
every map of one task (mean over tasks). Timings are wall-clock on this machine.

Usage::

    python benchmarks/bench_alignment.py [--work DIR] [--json OUT.json]
    # a quicker proxy: 4 x 4 block-averaged images (64 x 64), parcel and kernel scaled to match
    python benchmarks/bench_alignment.py --downsample 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from glfa.align import GLFAAligner, masked_smooth, responses_from_store, timepoint_stimuli, tune_smoothing
from glfa.config import load_config
from glfa.metrics import fsc, isc
from glfa.metrics.decoding import inter_subject_decoding, read_stimulus_labels

def held_out_metrics(responses: dict[str, np.ndarray], held: str, mask: np.ndarray) -> dict[str, float]:
    """fSC of ``held`` with the others (mean), ISC of ``held``, and the all-pairs / all-subjects means."""
    others = [s for s in responses if s != held]
    pairs = {frozenset((a, b)): fsc(responses[a], responses[b], mask) for a, b in itertools.combinations(responses, 2)}
    iscs = isc(responses, mask)
    return {
        "fsc_held": float(np.mean([pairs[frozenset((held, o))] for o in others])),
        "isc_held": float(iscs[held]),
        "fsc_all": float(np.mean(list(pairs.values()))),
        "isc_all": float(np.mean(list(iscs.values()))),
    }


def parcel_labels(mask: np.ndarray, parcel_size: int) -> np.ndarray:
    """GLFA's parcel (s x s square, row-major) of every mask pixel: [V] int."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    return (rows // parcel_size) * (w // parcel_size) + cols // parcel_size


def _ridge_method():
    """fmralign's RidgeAlignment, whose transform keeps [T, 1] for one-voxel parcels (0.0.6 returns [T] there)."""
    from fmralign.methods import RidgeAlignment

    class Ridge2d(RidgeAlignment):
        def transform(self, X):
            return self.R.predict(X).reshape(X.shape[0], -1)

    return Ridge2d()


def fmralign_maps(method: str, target: str, train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                  train_subjects: list[str], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every subject's TEST data [T, V] mapped by fmralign ``method`` onto ``target`` ("pairwise" or "template")."""
    from fmralign import GroupAlignment, PairwiseAlignment

    if method == "ridge":
        method = _ridge_method()
    out = {}
    if target == "pairwise":
        ref = train_subjects[0]
        for s in test:
            if s == ref:
                out[s] = test[s]
                continue
            model = PairwiseAlignment(method=method, labels=labels).fit(train[s], train[ref])
            out[s] = model.transform(test[s])
        return out
    group = GroupAlignment(method=method, labels=labels).fit({s: train[s] for s in train_subjects}, y="template")
    out.update(group.transform({s: test[s] for s in train_subjects}))
    for s in test:
        if s not in train_subjects:
            out[s] = PairwiseAlignment(method=method, labels=labels).fit(train[s], group.template).transform(test[s])
    return out


def to_images(flat: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """[T, V] over the mask's pixels -> images [T, H, W]."""
    out = {}
    for s, x in flat.items():
        img = np.zeros((x.shape[0], *mask.shape), np.float32)
        img[:, mask] = x
        out[s] = img
    return out


def downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Block-average images [T, H, W] by ``factor`` in both directions."""
    t, h, w = x.shape
    return x.reshape(t, h // factor, factor, w // factor, factor).mean(axis=(2, 4), dtype=np.float32)


def prepare_store(work: Path, config) -> Path:
    """Simulate the default synthetic study and prepare its store under ``work`` (reused when present)."""
    from glfa.data.prepare import prepare_study
    from glfa.data.synthetic import simulate_study

    study, store = work / "study", work / "store"
    if not (study / "study.json").exists():
        simulate_study(study, config, overwrite=True)
    if not (store / "manifest.json").exists():
        prepare_study(study, store, config, layout="generic", overwrite=True, progress=False)
    return store


def run(work: Path, factor: int = 1, steps: int | None = None) -> dict:
    """Every method on every held-out subject; returns the per-task and mean results.

    ``factor`` > 1 block-averages the images (a quicker proxy), dividing the parcel size by
    ``factor`` and the kernel size to the nearest odd size >= 3; ``steps`` overrides align.steps.
    """
    from glfa.data.store import StudyStore

    config = load_config()
    store = StudyStore.open(prepare_store(work, config))
    subjects, mask = store.subjects, store.mask
    train_all = responses_from_store(store, subjects, "train")
    test_all = responses_from_store(store, subjects, "test")
    if factor > 1:
        train_all = {s: downsample(x, factor) for s, x in train_all.items()}
        test_all = {s: downsample(x, factor) for s, x in test_all.items()}
        mask = downsample(mask[None].astype(np.float32), factor)[0] >= 0.5
        train_all = {s: x * mask for s, x in train_all.items()}
        test_all = {s: x * mask for s, x in test_all.items()}
        kernel = max(3, 2 * round((config.model.glfa.kernel_size / factor - 1) / 2) + 1)
        config.model.glfa.parcel_size //= factor
        config.model.glfa.kernel_size = kernel
    if steps is not None:
        config.align.steps = steps
    layer = config.model.glfa
    labels = parcel_labels(mask, layer.parcel_size)
    flat_train = {s: x[:, mask] for s, x in train_all.items()}
    flat_test = {s: x[:, mask] for s, x in test_all.items()}
    matched_sigma = layer.kernel_size / 6
    results: dict[str, list[dict]] = {}

    stimuli = timepoint_stimuli(store, subjects, "test")
    categories, _ = read_stimulus_labels(work / "study" / "truth" / "clips.json")
    classes = np.array([categories[st] for st in stimuli])

    def record(name: str, held: str, aligned: dict[str, np.ndarray], seconds: float, uses_held: bool) -> None:
        row = held_out_metrics(aligned, held, mask)
        decoding = inter_subject_decoding({s: x for s, x in aligned.items() if s != held}, aligned[held], classes,
                                          stimuli, mask)
        row.update(held_out=held, fit_seconds=seconds, uses_held_out_data=uses_held,
                   decoding=decoding["accuracy"], decoding_mismatched=decoding["mismatched"])
        results.setdefault(name, []).append(row)
        print(f"  {name:<34} fSC(h) {row['fsc_held']:.3f}  ISC(h) {row['isc_held']:.3f}  decoding "
              f"{row['decoding']:.3f} (mismatched {row['decoding_mismatched']:.3f})  fit {seconds:7.1f} s", flush=True)

    for held in subjects:
        train_subjects = [s for s in subjects if s != held]
        print(f"held out {held}; fitting on {train_subjects}", flush=True)
        record("identity", held, test_all, 0.0, False)

        aligner = GLFAAligner.from_config(config, mask=mask)
        aligner.fit({s: train_all[s] for s in train_subjects})
        record(f"GLFA (k={layer.kernel_size}, s={layer.parcel_size})", held, aligner.transform(test_all),
               aligner.fit_seconds_, False)
        del aligner

        record(f"Gaussian smoothing, sigma={matched_sigma:.2f} (matched)", held,
               {s: masked_smooth(x, mask, matched_sigma) for s, x in test_all.items()}, 0.0, False)
        start = time.perf_counter()
        best = tune_smoothing({s: train_all[s] for s in train_subjects}, mask)
        record(f"Gaussian smoothing, sigma tuned on train ({best})", held,
               {s: masked_smooth(x, mask, best) for s, x in test_all.items()}, time.perf_counter() - start, False)

        for method, target in itertools.product(("procrustes", "ridge"), ("pairwise", "template")):
            start = time.perf_counter()
            mapped = fmralign_maps(method, target, flat_train, flat_test, train_subjects, labels)
            mapped = {s: mapped[s] for s in subjects}
            record(f"fmralign {method}, {target}", held, to_images(mapped, mask), time.perf_counter() - start, True)

    summary = {}
    for name, rows in results.items():
        summary[name] = {k: float(np.mean([r[k] for r in rows]))
                         for k in ("fsc_held", "isc_held", "fsc_all", "isc_all", "decoding", "decoding_mismatched",
                                   "fit_seconds")}
        summary[name]["uses_held_out_data"] = rows[0]["uses_held_out_data"]
    return {"subjects": subjects, "image_size": int(mask.shape[0]), "mask_pixels": int(mask.sum()),
            "train_timepoints": int(train_all[subjects[0]].shape[0]),
            "test_timepoints": int(test_all[subjects[0]].shape[0]),
            "config": {"glfa": layer.model_dump(), "align": config.align.model_dump()},
            "per_task": results, "mean": summary}


def markdown(result: dict) -> str:
    """The mean-over-held-out-subjects table."""
    lines = ["| method | uses h's data | decoding h (mismatched) | fSC(h, others) | ISC(h) | fSC all pairs | ISC all "
             "| fit (s) |", "|---|---|---|---|---|---|---|---|"]
    ranked = sorted(result["mean"].items(), key=lambda item: -item[1]["decoding"])  # ranked by decoding
    for name, r in ranked:
        lines.append(f"| {name} | {'yes' if r['uses_held_out_data'] else 'no'} | {r['decoding']:.3f} "
                     f"({r['decoding_mismatched']:.3f}) | {r['fsc_held']:.3f} | {r['isc_held']:.3f} | "
                     f"{r['fsc_all']:.3f} | {r['isc_all']:.3f} | {r['fit_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark and print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="bench-alignment", help="folder for the study and store (reused)")
    parser.add_argument("--json", default=None, help="write the full results here")
    parser.add_argument("--downsample", type=int, default=1, help="block-average the images by this factor (proxy)")
    parser.add_argument("--steps", type=int, default=None, help="override align.steps of the default config")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = run(work, args.downsample, args.steps)
    print()
    print(f"{len(result['subjects'])} subjects, {result['image_size']} x {result['image_size']} images, "
          f"{result['mask_pixels']} mask pixels, {result['train_timepoints']} train / "
          f"{result['test_timepoints']} test time points; means over held-out subjects h")
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
