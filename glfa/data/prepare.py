"""``glfa prepare``: a raw study (through its reader) -> a windowed study store.

For every stimulus the video is decoded once, resampled to ``data.windows.fps`` and
``(video_height, video_width)`` and stored as uint8 with one caption per frame. For every
subject and run (each loaded once): :func:`~glfa.data.preprocess.check_finite`, drop the
first ``drop_initial_trs`` TRs, keep at most ``max_trs``, detrend, z-score per vertex; then
each presentation's response is cut from TR ``round((onset + lag) / tr) - drop``, long enough
for every window of the clip, repeats of a stimulus are averaged (on the vertices, before the
projection, which is linear) and the result is projected to ``[T, H, W]`` flat images.

The clip duration is the stored video's (frames / fps), or the shortest presentation when a
clip was shown for more than one stored frame less. Windows whose fMRI would run past the end
of a run (the last seconds of a continuous run, when the lag pushes the response beyond the
scan) are left out, counted in the manifest and reported in a warning; a window longer than
any stored response is a config error naming ``data.windows.fmri_seconds``.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from glfa.config import GlfaConfig
from glfa.data import preprocess as pp
from glfa.data.sources.base import Run, Stimulus, StudySource
from glfa.data.store import StoreWriter
from glfa.data.windows import Window, make_windows, response_length
from glfa.errors import DataError

__all__ = ["PrepareWarning", "prepare_study", "build_store", "file_sha256"]


class PrepareWarning(UserWarning):
    """Something ``prepare`` counted and worked around (constant vertices, dropped windows, skipped runs)."""


def file_sha256(path: str | Path, chunk: int = 2**20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def prepare_study(
    source_dir: str | Path,
    store_dir: str | Path,
    config: GlfaConfig,
    *,
    layout: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Read the study at ``source_dir`` with the reader of ``layout`` (default ``config.data.layout``)
    and write a study store at ``store_dir``; returns the store's path."""
    from glfa.data.sources import get_source

    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise DataError("study folder not found", path=source_dir)
    source = get_source(layout or config.data.layout, source_dir, config)
    return build_store(source, store_dir, config, overwrite=overwrite, progress=progress)


def _run_path(run: Run) -> str:
    """The file that names a run in error messages."""
    return str(run.files[0]) if run.files else f"subject {run.subject} run {run.run_id}"


def _same_tr(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


class _Plan:
    """What ``build_store`` will read: subjects, their runs, the TR, the kind, the stimuli shown."""

    def __init__(self, source: StudySource, config: GlfaConfig):
        data = config.data
        found = source.subjects()
        if not found:
            raise DataError("no subject found", path=source.root)
        if data.subjects is not None:
            missing = [s for s in data.subjects if s not in found]
            if missing:
                raise config.error("data.subjects", f"subject(s) {missing} not found; the study has {found}")
            found = [s for s in found if s in data.subjects]
        self.subjects = found
        self.stimuli: dict[str, Stimulus] = source.stimuli()
        self.runs: dict[str, list[Run]] = {}
        tr_ref, tr_from = data.tr, "data.tr of the config"
        kinds = set()
        for subject in self.subjects:
            runs = source.runs(subject)
            if not runs:
                raise DataError(f"subject {subject!r} has no run", path=source.root)
            for run in runs:
                if tr_ref is None:
                    tr_ref, tr_from = run.tr, f"{_run_path(run)} (subject {subject!r})"
                elif not _same_tr(run.tr, tr_ref):
                    raise DataError(
                        f"TR {run.tr:g} s differs from the TR {tr_ref:g} s of {tr_from}; "
                        "every run of every subject must share one TR", path=_run_path(run), field="tr")
                kinds.add(run.kind)
                for p in run.presentations:
                    if p.stimulus_id not in self.stimuli:
                        raise DataError(f"presents stimulus {p.stimulus_id!r}, which the study's stimuli lack",
                                        path=_run_path(run))
            self.runs[subject] = runs
        if len(kinds) != 1:
            raise DataError(f"runs mix surface and image data ({sorted(kinds)}); expected one kind",
                            path=source.root)
        self.kind = kinds.pop()
        self.tr = float(tr_ref)
        shown = {p.stimulus_id for runs in self.runs.values() for r in runs for p in r.presentations}
        self.shown = [s for s in self.stimuli if s in shown]
        durations: dict[str, float] = {}
        for runs in self.runs.values():
            for r in runs:
                for p in r.presentations:
                    if p.duration > 0:
                        durations[p.stimulus_id] = min(durations.get(p.stimulus_id, np.inf), p.duration)
        self.shown_for = durations


class _Geometry:
    """Maps preprocessed ``[T, V]`` series to ``[T, H, W]`` images: a FlatMapProjector or an image source."""

    def __init__(self, source: StudySource, kind: str, config: GlfaConfig):
        size = config.data.image_size
        self.size = size
        self.source = source
        self.projector = None
        if kind == "surface":
            from glfa.surface.flatmap import FlatMapProjector

            self.projector = FlatMapProjector(rois=config.data.rois, height=size, width=size,
                                              geometry=config.data.geometry)
            self.mask = np.asarray(self.projector.mask, dtype=bool)
            self.native = None
            self.name = self.projector.geometry
        else:
            self.name = source.image_geometry
            self.native = np.asarray(source.native_mask(), dtype=bool)
            self.mask = np.asarray(source.image_mask(size), dtype=bool)
            if self.mask.shape != (size, size):
                raise DataError(f"image_mask({size}) has shape {self.mask.shape}, expected ({size}, {size})",
                                path=source.root)

    def series(self, data: np.ndarray, path: str) -> np.ndarray:
        """A run's loaded data -> ``[T, V]`` float series over the vertices (or native cortex pixels)."""
        data = np.asarray(data)
        if self.projector is not None:
            if data.ndim != 2 or data.shape[1] != self.projector.n_vertices:
                raise DataError(
                    f"surface data of shape {data.shape}, expected [T, {self.projector.n_vertices}] "
                    f"(the vertices of the '{self.projector_rois}' visual ROIs); every surface run must "
                    "share the projector's vertex set", path=path)
            return data
        if data.ndim != 3 or data.shape[1:] != self.native.shape:
            raise DataError(f"image data of shape {data.shape}, expected [T, {self.native.shape[0]}, "
                            f"{self.native.shape[1]}] like the source's native mask", path=path)
        cortex = data[:, self.native]  # [T, P]
        bad = ~np.isfinite(cortex)
        if bad.any():  # named by the file's own coordinates: the TR and the (row, column) of the image
            tr, p = (int(i) for i in np.argwhere(bad)[0])
            row, col = (int(i) for i in np.argwhere(self.native)[p])
            raise DataError(f"non-finite value {cortex[tr, p]} at TR {tr} (counting from 0), cortex pixel "
                            f"(row {row}, column {col}) ({int(bad.any(axis=1).sum())} of {len(cortex)} TRs hold NaN "
                            "or Inf); expected finite fMRI values", path=path)
        return cortex

    @property
    def projector_rois(self) -> str:
        return getattr(self.projector, "rois", "configured")

    def to_images(self, x: np.ndarray) -> np.ndarray:
        """``[T, V]`` -> ``[T, H, W]`` float32, 0 outside the mask."""
        if self.projector is not None:
            return np.asarray(self.projector.to_image(x.astype(np.float32)), dtype=np.float32)
        full = np.zeros((x.shape[0], *self.native.shape), dtype=np.float32)  # [T, H0, W0]
        full[:, self.native] = x
        img = np.asarray(self.source.to_image_grid(full, self.size), dtype=np.float32)
        return img * self.mask


def _preprocess_run(x: np.ndarray, config: GlfaConfig, path: str) -> tuple[np.ndarray, int]:
    """check_finite, drop, max_trs, detrend, z-score -> (``[T_kept, V]`` float32, constant vertices)."""
    p = config.data.preprocess
    pp.check_finite(x, path)
    if p.drop_initial_trs >= len(x):
        raise DataError(f"run has {len(x)} TRs, not more than data.preprocess.drop_initial_trs = "
                        f"{p.drop_initial_trs}", path=path)
    x = pp.drop_initial(x, p.drop_initial_trs)
    if p.max_trs is not None:
        x = x[:p.max_trs]
    x = np.asarray(x, dtype=np.float64)
    if p.detrend_order is not None:
        if len(x) <= p.detrend_order:
            raise DataError(f"run keeps {len(x)} TRs, too few for a degree-{p.detrend_order} detrend", path=path)
        x = pp.detrend(x, p.detrend_order)
    n_constant = 0
    if p.zscore:
        x, n_constant = pp.zscore(x)
    return x.astype(np.float32), n_constant


def _check_fmri(plan: _Plan, geometry: _Geometry, bar) -> None:
    """Load every run once and refuse non-finite or misshapen fMRI, before the long video decoding.

    Decoding the movies of a study takes many minutes (about 15 for the Wen release); a damaged
    run is found first. The runs are loaded again later, one at a time, to be preprocessed.
    """
    for subject in plan.subjects:
        for run in plan.runs[subject]:
            bar.set_postfix_str(f"check {subject} {run.run_id}")
            path = _run_path(run)
            pp.check_finite(geometry.series(run.load(), path), path)


def _read_videos(plan: _Plan, config: GlfaConfig, writer: StoreWriter, checksums: dict[str, str],
                 root: Path, bar, counts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Decode, resample and store every shown stimulus once; returns {id: {frames, duration}}."""
    from glfa.data.video import read_video

    win = config.data.windows
    uncaptioned = counts["uncaptioned_stimuli"]
    out = {}
    for sid in plan.shown:
        stim = plan.stimuli[sid]
        bar.set_postfix_str(f"video {sid}")
        # resampled while decoding: a long movie is never held in memory at its source rate
        frames, _ = read_video(stim.video, fps=win.fps, height=win.video_height, width=win.video_width)  # [F, h, w, 3]
        captions = list(stim.captions)
        if not captions:  # the dataset has no captions (yet): stored empty, counted, reported
            uncaptioned.append(sid)
            captions = [""]
        if len(captions) == 1:
            captions = captions * len(frames)
        if len(captions) != len(frames):
            raise DataError(f"stimulus {sid!r} has {len(stim.captions)} captions; expected 1 or one per stored "
                            f"frame ({len(frames)} at {win.fps:g} fps)", path=stim.video, field="captions")
        empty = [i for i, c in enumerate(captions) if not str(c).strip()]
        if empty and sid not in uncaptioned:
            raise DataError(f"stimulus {sid!r} has a missing (empty) caption at frame {empty[0]}",
                            path=stim.video, field="captions")
        if stim.split not in ("train", "test"):
            raise DataError(f"stimulus {sid!r} has split {stim.split!r}; expected train or test", path=stim.video)
        duration = len(frames) / win.fps
        shown = plan.shown_for.get(sid, np.inf)
        if shown < duration - 1.0 / win.fps:  # shown for clearly less than the clip (not a rounding of it)
            duration = shown
        writer.add_stimulus(sid, stim.split, frames, captions, duration)
        checksums[_relative(stim.video, root)] = file_sha256(stim.video)
        out[sid] = {"frames": len(frames), "duration": duration}
        bar.update(1)
    return out


def _cut(x: np.ndarray, p, needed: int, tr: float, config: GlfaConfig, path: str):
    """The response segment ``[L, V]`` of one presentation ``p`` inside the preprocessed run ``x``."""
    pre = config.data.preprocess
    drop = pre.drop_initial_trs
    covered = (drop + len(x)) * tr  # seconds of the run that remain after the drop and the max_trs crop
    end = p.onset + p.duration
    if end > covered + 0.5 * tr:
        kept = f" after dropping {drop} TRs and keeping at most {pre.max_trs}" if pre.max_trs else ""
        raise DataError(
            f"run shorter than its events: it covers {covered:g} s ({len(x)} TRs of {tr:g} s{kept}, "
            f"from {drop * tr:g} s), but stimulus {p.stimulus_id!r} is shown until {end:g} s", path=path)
    start = pp.lag_to_trs(p.onset + pre.hrf_lag_seconds, tr) - drop
    if start < 0:
        raise DataError(f"the response to stimulus {p.stimulus_id!r} (onset {p.onset:g} s, lag "
                        f"{pre.hrf_lag_seconds:g} s) starts at TR {start + drop}, inside the {drop} dropped TRs",
                        path=path)
    length = min(needed, len(x) - start)
    if length <= 0:
        raise DataError(
            f"run shorter than its events: the response to stimulus {p.stimulus_id!r} starts at TR "
            f"{start + drop} (onset {p.onset:g} s + lag {pre.hrf_lag_seconds:g} s) but the run keeps "
            f"{len(x)} TRs after the drop", path=path)
    return x[start:start + length]


def build_store(source: StudySource, store_dir: str | Path, config: GlfaConfig, *, overwrite: bool = False,
                progress: bool = True) -> Path:
    """Write the study store of an opened reader (``prepare_study`` without the layout lookup)."""
    data = config.data
    win = data.windows
    plan = _Plan(source, config)
    tr = plan.tr
    geometry = _Geometry(source, plan.kind, config)
    checksums: dict[str, str] = {}
    counts: dict[str, Any] = {"constant_vertices": {}, "skipped_runs": [], "repeats_ignored": 0,
                              "windows_dropped_at_run_end": 0, "stimuli_without_windows": [],
                              "uncaptioned_stimuli": []}
    n_runs = sum(len(r) for r in plan.runs.values())
    with StoreWriter(store_dir, image_size=data.image_size, video_size=(win.video_height, win.video_width),
                     fmri_dtype=data.fmri_dtype, compression=None if data.store_compression == "none" else data.store_compression,
                     overwrite=overwrite) as writer, \
            tqdm(total=len(plan.shown) + n_runs, desc="glfa prepare", unit="item", disable=not progress) as bar:
        writer.set_mask(geometry.mask)
        if geometry.projector is not None:
            writer.set_projector(geometry.projector.to_arrays())
        if not config.data.skip_bad_runs:  # (a bad run is skipped later instead)
            _check_fmri(plan, geometry, bar)
        videos = _read_videos(plan, config, writer, checksums, source.root, bar, counts)
        if counts["uncaptioned_stimuli"]:
            warnings.warn(f"{len(counts['uncaptioned_stimuli'])} stimulus clip(s) have no captions (the "
                          f"{source.layout} dataset ships none): run `glfa caption` before training stage 1",
                          PrepareWarning, stacklevel=2)
        needed = {sid: response_length(v["duration"], tr=tr, windows=win) for sid, v in videos.items()}
        lengths: dict[str, dict[str, int]] = defaultdict(dict)
        for subject in plan.subjects:
            counts["constant_vertices"][subject] = _prepare_subject(
                subject, plan, geometry, config, writer, needed, lengths, counts, checksums, source.root, bar)
        windows = _make_all_windows(plan, videos, lengths, config, counts)
        counts["skipped_by_reader"] = [str(s) for s in getattr(source, "skipped", [])]
        if counts["skipped_by_reader"]:
            warnings.warn(f"the {source.layout} reader skipped {len(counts['skipped_by_reader'])} input(s) "
                          "(data.skip_bad_runs); see counts.skipped_by_reader in the manifest",
                          PrepareWarning, stacklevel=2)
        manifest = {
            "layout": source.layout,
            "source": str(Path(source.root).absolute()),
            "source_checksums": dict(sorted(checksums.items())),
            "config": config.to_dict(),
            "kind": plan.kind,
            "geometry": geometry.name,
            "tr": tr,
            "fps": float(win.fps),
            "fmri_frames": win.fmri_frames(tr),
            "video_frames": win.video_frames,
            "counts": counts,
        }
        return writer.finish(windows, manifest)


def _prepare_subject(subject: str, plan: _Plan, geometry: _Geometry, config: GlfaConfig, writer: StoreWriter,
                     needed: dict[str, int], lengths: dict[str, dict[str, int]], counts: dict[str, Any],
                     checksums: dict[str, str], root: Path, bar) -> int:
    """Preprocess, cut, average and store every response of one subject; returns its constant-vertex count."""
    pre = config.data.preprocess
    runs = plan.runs[subject]
    repeats = Counter(p.stimulus_id for r in runs for p in r.presentations)
    pending: dict[str, list[np.ndarray]] = defaultdict(list)
    stored: set[str] = set()
    total_constant = 0

    def store(sid: str, segments: list[np.ndarray]) -> None:
        n = min(len(s) for s in segments)
        mean = pp.average_repeats([s[:n] for s in segments])  # [L, V]
        writer.add_response(subject, sid, geometry.to_images(mean))
        lengths[subject][sid] = n
        stored.add(sid)

    for run in runs:
        path = _run_path(run)
        bar.set_postfix_str(f"{subject} {run.run_id}")
        try:
            x = geometry.series(run.load(), path)  # [T, V]
            x, n_constant = _preprocess_run(x, config, path)
            segments = [(p.stimulus_id, _cut(x, p, needed[p.stimulus_id], plan.tr, config, path))
                        for p in run.presentations]
        except DataError as exc:
            if not config.data.skip_bad_runs:
                raise
            counts["skipped_runs"].append({"subject": subject, "run": run.run_id, "error": str(exc)})
            warnings.warn(f"skipped run {run.run_id} of subject {subject!r}: {exc}", PrepareWarning, stacklevel=2)
            bar.update(1)
            continue
        if n_constant:
            total_constant += n_constant
            warnings.warn(f"{path}: {n_constant} constant vertices set to 0 after z-scoring "
                          f"(subject {subject!r}, run {run.run_id})", PrepareWarning, stacklevel=2)
        for sid, seg in segments:
            if sid in stored:
                counts["repeats_ignored"] += 1
                continue
            if not pre.average_repeats:
                store(sid, [seg])
                continue
            pending[sid].append(seg)
            if len(pending[sid]) == repeats[sid]:
                store(sid, pending.pop(sid))
        for f in run.files:
            checksums[_relative(f, root)] = file_sha256(f)
        bar.update(1)
    for sid, segs in pending.items():  # repeats whose other runs were skipped
        store(sid, segs)
    if counts["repeats_ignored"] and not pre.average_repeats:
        warnings.warn(f"subject {subject!r}: data.preprocess.average_repeats is false, so only the first "
                      f"presentation of each repeated stimulus is kept ({counts['repeats_ignored']} ignored so far)",
                      PrepareWarning, stacklevel=2)
    return total_constant


def _make_all_windows(plan: _Plan, videos: dict[str, dict[str, Any]], lengths: dict[str, dict[str, int]],
                      config: GlfaConfig, counts: dict[str, Any]) -> list[Window]:
    """Windows of every stimulus that fit its video and every subject's stored response."""
    win = config.data.windows
    n = win.fmri_frames(plan.tr)
    out: list[Window] = []
    dropped = 0
    longest_response = None
    for sid, v in videos.items():
        have = [lengths[s][sid] for s in plan.subjects if sid in lengths[s]]
        if not have:
            continue
        resp = min(have)
        longest_response = resp if longest_response is None else max(longest_response, resp)
        split = plan.stimuli[sid].split
        full = make_windows(sid, split, v["duration"], tr=plan.tr, windows=win, n_video_frames=v["frames"])
        kept = make_windows(sid, split, v["duration"], tr=plan.tr, windows=win, n_video_frames=v["frames"],
                            response_frames=resp, first_index=len(out))
        dropped += len(full) - len(kept)
        if not kept:
            counts["stimuli_without_windows"].append(sid)
        out.extend(kept)
    counts["windows_dropped_at_run_end"] = dropped
    if not out:
        if longest_response is not None and longest_response < n:
            raise config.error(
                "data.windows.fmri_seconds",
                f"{win.fmri_seconds:g} s = {n} TRs is longer than every stored response (at most "
                f"{longest_response} TRs after the lag); expected a window that fits in a run")
        raise config.error("data.windows.video_seconds",
                           f"{win.video_seconds:g} s is longer than every stimulus clip; no window fits")
    if dropped:
        warnings.warn(f"{dropped} window(s) left out because their fMRI (onset + lag + "
                      f"{win.fmri_seconds:g} s) runs past the end of a run", PrepareWarning, stacklevel=2)
    if counts["stimuli_without_windows"]:
        warnings.warn(f"{len(counts['stimuli_without_windows'])} stimulus clip(s) got no window: "
                      f"{counts['stimuli_without_windows'][:5]}", PrepareWarning, stacklevel=2)
    return out
