"""Study store -> Dataset throughput, and the store's size for the real datasets.

Builds fixture stores with :class:`~glfa.data.store.StoreWriter` (3 subjects, 256 x 256 fMRI
frames that are z-scored noise on the paper's visual-cortex vertices projected through the real
FlatMapProjector, so 0 outside the mask as in a real store; uint8 video), one per fMRI chunk
filter (none, lzf, gzip level 1). For each it measures

- the stored bytes per fMRI frame and per video frame (HDF5 storage size / frames);
- samples/s of :class:`~glfa.data.datasets.StimulusWindowDataset` (5 fMRI frames x 3 subjects
  per sample) through a DataLoader with ``--workers`` workers, with and without video
  (reads come from the OS page cache once the store has been read: a warm, in-memory store);

then extrapolates the size of a Wen 2017 and a Fudan WebVid store from the measured bytes per
frame. Prints Markdown tables.

It also measures what the per-chunk Fletcher-32 checksums cost on read: the unfiltered store is
copied without them (same chunks), and both copies are read in the same process, alternately,
``--repeats`` times: a whole sequential read of every fMRI and video frame (MB/s) and samples/s
of the Dataset in one process (no loader, the reading cost alone) and through a DataLoader with
``--workers`` workers (as training reads). ``--checksum-only`` runs just this part.

    python benchmarks/bench_store.py [--subjects 3] [--stimuli 12] [--trs 40] [--size 256]
        [--samples 600] [--workers 2] [--batch-size 8] [--video-frames 12] [--dir DIR]
        [--checksum-only] [--repeats 5]

Targets: >= 200 samples/s with 2 workers for windows of 5 frames x 3 subjects at 256 x 256
(issue 2); the checksums cost at most 10% of read throughput (issue 13).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

TR = 0.8
FMRI_FRAMES = 5  # n: 4 s at TR 0.8


def build_fixture(path: Path, *, subjects: int, stimuli: int, trs: int, size: int, video_frames: int,
                  compression: str | None, seed: int = 0) -> float:
    """Write a fixture store; returns the seconds it took."""
    from glfa.data.store import StoreWriter
    from glfa.data.windows import Window
    from glfa.surface.flatmap import FlatMapProjector

    rng = np.random.default_rng(seed)
    projector = FlatMapProjector(rois="paper", height=size, width=size)
    fps = video_frames / 4.0  # m frames per 4 s window
    frames_per_stim = int(round(trs * TR * fps))
    t0 = time.perf_counter()
    with StoreWriter(path, image_size=size, video_size=(size, size), compression=compression) as w:
        w.set_mask(projector.mask)
        w.set_projector(projector.to_arrays())
        windows = []
        yy, xx = np.mgrid[0:size, 0:size]
        for s in range(stimuli):
            # smooth moving gradients: a stand-in for natural video (stored raw, so its content does not matter)
            phase = rng.uniform(0, 2 * np.pi, 3)
            video = np.stack([
                (127 + 120 * np.sin(xx[..., None] / 17.0 + yy[..., None] / 23.0 + f / 5.0 + phase)).astype(np.uint8)
                for f in range(frames_per_stim)])  # [F, H, W, 3]
            w.add_stimulus(f"clip{s:04d}", "train", video, [f"caption {s}"] * frames_per_stim, trs * TR)
            onset = 0.0
            while int(round(onset / TR)) + FMRI_FRAMES <= trs and int(round(onset * fps)) + video_frames <= \
                    frames_per_stim:
                windows.append(Window(f"clip{s:04d}", "train", onset, int(round(onset / TR)),
                                      int(round(onset * fps)), len(windows)))
                onset += 4.0
        for i in range(subjects):
            for s in range(stimuli):
                x = rng.standard_normal((trs, projector.n_vertices)).astype(np.float32)  # z-scored vertices
                w.add_response(f"sub{i + 1}", f"clip{s:04d}", projector.to_image(x))
        w.finish(windows, {"tr": TR, "fps": fps, "fmri_frames": FMRI_FRAMES, "video_frames": video_frames,
                           "config": {}})
    return time.perf_counter() - t0


def bytes_per_frame(path: Path) -> tuple[float, float, float]:
    """(fMRI bytes per frame, video bytes per frame, fraction of mask pixels) of a store."""
    import h5py

    with h5py.File(path / "study.h5", "r") as f:
        fmri_bytes = fmri_frames = 0
        for name in f["fmri"]:
            ds = f[f"fmri/{name}/frames"]
            fmri_bytes += ds.id.get_storage_size()
            fmri_frames += ds.shape[0]
        video = f["video/frames"]
        mask = f["mask"][()]
        return fmri_bytes / fmri_frames, video.id.get_storage_size() / video.shape[0], float(mask.mean())


def throughput(path: Path, *, samples: int, workers: int, batch_size: int, with_video: bool,
               item_dtype: str = "float32") -> float:
    """Samples/s of StimulusWindowDataset through a DataLoader (after one warm-up pass over the store)."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    from glfa.data.datasets import StimulusWindowDataset, collate_windows

    ds = StimulusWindowDataset(path, None, "train", with_video=with_video, dtype=getattr(torch, item_dtype))
    for i in range(len(ds)):  # warm the page cache, as a store read every epoch is
        ds[i]
    if workers == 0:  # one process, no DataLoader: the cost of reading and converting a sample
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        for i in range(samples):
            ds[i % len(ds)]
        return samples / (time.perf_counter() - t0)
    sampler = RandomSampler(ds, replacement=True, num_samples=samples, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_windows, persistent_workers=False)
    it = iter(loader)
    first = next(it)  # worker start-up is not part of the steady rate
    count = 0
    t0 = time.perf_counter()
    for batch in it:
        count += batch["fmri"].shape[0]
    elapsed = time.perf_counter() - t0
    assert first["fmri"].shape[1:3] == (len(ds.subjects), FMRI_FRAMES)
    return count / elapsed


class _Constant:
    """A dataset of same-size items made in memory: the DataLoader's own ceiling on this machine."""

    def __init__(self, subjects: int, size: int, video_frames: int, with_video: bool):
        self.shape = (subjects, FMRI_FRAMES, size, size)
        self.video = (video_frames, size, size, 3) if with_video else None

    def __len__(self) -> int:
        return 10**6

    def __getitem__(self, i: int) -> dict:
        import torch

        item = {"fmri": torch.ones(self.shape)}
        if self.video:
            item["frames"] = torch.ones(self.video, dtype=torch.uint8)
        return item


def loader_ceiling(*, subjects: int, size: int, video_frames: int, samples: int, workers: int, batch_size: int,
                   with_video: bool) -> float:
    """Samples/s of a DataLoader over in-memory items of the same size (no store)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(_Constant(subjects, size, video_frames, with_video), batch_size=batch_size,
                        num_workers=workers)
    it = iter(loader)
    next(it)
    count = 0
    t0 = time.perf_counter()
    for batch in it:
        count += batch["fmri"].shape[0]
        if count >= samples:
            break
    return count / (time.perf_counter() - t0)


def without_checksums(src: Path, dst: Path) -> None:
    """Copy the store ``src`` to ``dst`` with every dataset's Fletcher-32 filter removed (same chunks)."""
    import h5py

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("study.h5"))
    with h5py.File(src / "study.h5", "r") as fin, h5py.File(dst / "study.h5", "w") as fout:
        def copy(name, obj):
            if isinstance(obj, h5py.Dataset):
                fout.create_dataset(name, data=obj[()], chunks=obj.chunks, maxshape=obj.maxshape,
                                    compression=obj.compression, compression_opts=obj.compression_opts,
                                    fletcher32=False)
        fin.visititems(copy)


def sequential_read(path: Path) -> float:
    """MB/s of reading every fMRI and video frame of a store in blocks of 64 rows (warm page cache)."""
    from glfa.data.store import StudyStore

    store = StudyStore.open(path)
    names = [f"fmri/s{i}/frames" for i in range(len(store.subjects))] + ["video/frames"]
    t0 = time.perf_counter()
    total = 0
    for name in names:
        ds = store._dataset(name)  # noqa: SLF001 - the checked dataset every reader goes through
        for a in range(0, len(ds), 64):
            total += ds[a:a + 64].nbytes
    elapsed = time.perf_counter() - t0
    store.close()
    return total / elapsed / 1e6


def checksum_cost(path: Path, *, samples: int, repeats: int, workers: int, batch_size: int,
                  item_dtype: str) -> dict[str, tuple[float, float]]:
    """{measure: (median with checksums, median without)}: the store at ``path`` against its unchecked copy."""
    plain = path.with_name(path.name + "-no-checksums")
    without_checksums(path, plain)
    measures = {
        "sequential read, MB/s": sequential_read,
        "samples/s fMRI only, 1 process": lambda p: throughput(p, samples=samples, workers=0, batch_size=1,
                                                               with_video=False),
        "samples/s fMRI + video, 1 process": lambda p: throughput(p, samples=samples, workers=0, batch_size=1,
                                                                  with_video=True),
        f"samples/s fMRI only, {workers} workers": lambda p: throughput(
            p, samples=samples, workers=workers, batch_size=batch_size, with_video=False, item_dtype=item_dtype),
    }
    out = {}
    try:
        for name, measure in measures.items():
            runs = {True: [], False: []}
            for _ in range(repeats):  # alternate, so a change of machine load hits both alike
                runs[True].append(measure(path))
                runs[False].append(measure(plain))
            out[name] = (float(np.median(runs[True])), float(np.median(runs[False])))
    finally:
        shutil.rmtree(plain, ignore_errors=True)
    return out


def extrapolate(fmri_bpf: float, size: int) -> list[tuple[str, int, int, int, float, float]]:
    """(dataset, fMRI frames, video frames, video bytes per frame, fMRI GB, video GB) for the real datasets."""
    # Wen 2017: 3 subjects; 18 training + 5 test segments of 240 TRs, repeats averaged -> one response each
    # (at most 240 TRs; the lag trims a few); video 8 min per segment at 8 fps, 256 x 256.
    wen_fmri = 3 * (18 + 5) * 240
    wen_video = (18 + 5) * 480 * 8
    wen_vbpf = 256 * 256 * 3
    # Fudan WebVid: 5 subjects x (1000 train + 200 test) clips, each response 10 TRs (two 5-TR windows);
    # video 8 s at 3 fps, 320 x 576 (configs/fudan-webvid.yaml).
    fudan_fmri = 5 * (1000 + 200) * 10
    fudan_video = (1000 + 200) * 8 * 3
    fudan_vbpf = 320 * 576 * 3
    scale = fmri_bpf * (256 * 256) / (size * size)
    return [
        ("Wen 2017", wen_fmri, wen_video, wen_vbpf, wen_fmri * scale / 1e9, wen_video * wen_vbpf / 1e9),
        ("Fudan WebVid", fudan_fmri, fudan_video, fudan_vbpf, fudan_fmri * scale / 1e9,
         fudan_video * fudan_vbpf / 1e9),
    ]


def main() -> None:
    """Run the benchmark and print Markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--stimuli", type=int, default=12)
    ap.add_argument("--trs", type=int, default=40, help="fMRI frames per stimulus response")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--video-frames", type=int, default=12, help="m: video frames per sample")
    ap.add_argument("--dir", default=None, help="where to build the fixtures (default: a temp folder)")
    ap.add_argument("--item-dtype", choices=["float32", "float16"], default="float32",
                    help="dtype of the fMRI tensors the Dataset yields (float16: half the bytes between processes)")
    ap.add_argument("--checksum-only", action="store_true", help="only measure the cost of the checksums")
    ap.add_argument("--repeats", type=int, default=5, help="alternating runs per checksum measure (median)")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="glfa-bench-store-", dir=args.dir))
    try:
        path = root / "store-checksums"
        build_fixture(path, subjects=args.subjects, stimuli=args.stimuli, trs=args.trs, size=args.size,
                      video_frames=args.video_frames, compression=None)
        cost = checksum_cost(path, samples=args.samples, repeats=args.repeats, workers=args.workers,
                             batch_size=args.batch_size, item_dtype=args.item_dtype)
        shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"Fletcher-32 on every chunk: the store (no compression) against a copy without the filter, same "
          f"chunks, read alternately {args.repeats} times in this process (median; warm page cache; "
          f"{args.item_dtype} items through the DataLoader):\n")
    print("| measure | with checksums | without | with / without |")
    print("|---|---:|---:|---:|")
    for name, (with_, without) in cost.items():
        print(f"| {name} | {with_:.0f} | {without:.0f} | {with_ / without:.3f} |")
    if args.checksum_only:
        return
    print()

    root = Path(tempfile.mkdtemp(prefix="glfa-bench-store-", dir=args.dir))
    rows = []
    try:
        for compression in (None, "lzf", "gzip"):
            path = root / f"store-{compression or 'none'}"
            write_s = build_fixture(path, subjects=args.subjects, stimuli=args.stimuli, trs=args.trs,
                                    size=args.size, video_frames=args.video_frames, compression=compression)
            fmri_bpf, video_bpf, mask_frac = bytes_per_frame(path)
            rates = {(v, w): throughput(path, samples=args.samples, workers=w, batch_size=args.batch_size,
                                        with_video=v, item_dtype=args.item_dtype)
                     for v in (False, True) for w in (0, args.workers)}
            rows.append((compression or "none", write_s, fmri_bpf, video_bpf, mask_frac, rates))
            shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n_fmri = args.subjects * args.stimuli * args.trs
    print(f"Fixture: {args.subjects} subjects x {args.stimuli} stimuli x {args.trs} TRs = {n_fmri} fMRI frames "
          f"at {args.size} x {args.size} float16 (mask {rows[0][4]:.1%} of the pixels); "
          f"samples of {FMRI_FRAMES} fMRI frames x {args.subjects} subjects + {args.video_frames} video frames "
          f"at {args.size} x {args.size}, yielded as {args.item_dtype}; DataLoader workers {args.workers}, "
          f"batch {args.batch_size}, "
          f"{args.samples} random samples (warm page cache); '1 process' reads samples in a loop, one thread.\n")
    w = args.workers
    print(f"| fMRI chunk filter | write s | fMRI KB/frame | video KB/frame | samples/s fMRI only, {w} workers "
          f"| samples/s fMRI + video, {w} workers | samples/s fMRI only, 1 process, no loader "
          "| samples/s fMRI + video, 1 process, no loader |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, write_s, fbpf, vbpf, _, r in rows:
        print(f"| {name} | {write_s:.1f} | {fbpf / 1024:.1f} | {vbpf / 1024:.1f} | {r[False, w]:.0f} "
              f"| {r[True, w]:.0f} | {r[False, 0]:.0f} | {r[True, 0]:.0f} |")
    ceiling = {v: loader_ceiling(subjects=args.subjects, size=args.size, video_frames=args.video_frames,
                                 samples=args.samples, workers=w, batch_size=args.batch_size, with_video=v)
               for v in (False, True)}
    print(f"| no store: in-memory items of the same size (the DataLoader's ceiling here) | | | "
          f"| {ceiling[False]:.0f} | {ceiling[True]:.0f} | | |")
    print("\nStore size extrapolated from the measured bytes per frame (video stored raw uint8):\n")
    print("| dataset | fMRI frames | video frames | fMRI GB (none / lzf / gzip-1) | video GB | total GB (lzf) |")
    print("|---|---:|---:|---:|---:|---:|")
    per = {row[0]: extrapolate(row[2], args.size) for row in rows}
    for i, (dataset, nf, nv, _, _, video_gb) in enumerate(per["none"]):
        gbs = " / ".join(f"{per[c][i][4]:.2f}" for c in ("none", "lzf", "gzip"))
        print(f"| {dataset} | {nf:,} | {nv:,} | {gbs} | {video_gb:.1f} | {per['lzf'][i][4] + video_gb:.1f} |")


if __name__ == "__main__":
    main()
