"""Reader of the Fudan fMRI-Video release (WebVid and FCVID parts; ``data.fudan_part``).

Layout (as the reference code of Li et al. 2024 reads it)::

    ROOT/vc_roi.npz                      label image, array "images" [1, H0, W0]:
                                         1 visual cortex, -1 other cortex, 0 background
    ROOT/processed-fmri/sub-000{s}/hdf5/sub-000{s}_task-video_run-{r}_space-fsLR_den-91k_bold.dtseries.h5
                                         dataset "images" [T, H0, W0] (flat cortical images)
    ROOT/stimuli/condition/run{c}.txt    one video id (an integer) per line, in presentation order
    ROOT/stimuli/{id}.mp4                the clips
    ROOT/stimuli/vid2name.npy            captions: a pickled dict {id: caption}
    ROOT/stimuli/captions.json           alternative without pickle: {"id": "caption", ...}
    ROOT/stimuli/captions.tsv            alternative: tab-separated, header "video_id<TAB>caption"

Any ``*_run-{r}_*.dtseries.h5`` name is accepted. Subjects are ``"1"``..``"5"`` (the number of
``sub-000{s}``, without the zeros); stimulus ids are the video ids.

Captions: ``captions.json`` is read first, then ``captions.tsv``; ``vid2name.npy`` (a pickle,
which can run code when loaded) is read only when ``data.allow_pickle`` is true, with a
warning in the log saying that it is being read; otherwise it is a
:class:`~glfa.errors.DataError` naming the file and the setting. Convert it once with
``python -c "import numpy, json; d = numpy.load('vid2name.npy', allow_pickle=True).item();
json.dump({str(k): v for k, v in d.items()}, open('captions.json', 'w'))"`` to avoid pickle.

Runs and condition files. There are C condition files ``run1.txt``..``runC.txt`` (7 for the
WebVid part: 1 and 4 hold the 200 test clips, each in both files, 2, 3, 5, 6, 7 the 1000
training clips). A subject has R runs numbered 1..R, R a multiple of C, k = R / C: fMRI run
r shows the ``k``-th part number ``(r - 1) % k`` of condition file ``(r - 1) // k + 1`` (its
lines cut into k equal parts). Subject 1 of the release has R = 7 long runs (k = 1, 200
clips each) and subjects 2 to 5 have R = 28 runs of 50 clips (k = 4): run 5 = lines 1-50 of
``run2.txt``, run 8 = lines 151-200 of ``run2.txt``, run 13 = lines 1-50 of ``run4.txt``, the
reference code's mapping. A clip listed more than once over the condition files is a test
clip (shown twice in WebVid, three times in FCVID); clips listed once are training clips.

Timing (``PARTS``, seconds from the first acquired TR of the run, the convention of
:class:`~glfa.data.sources.base.Presentation`). The first ``lead_in_trs`` = 3 TRs (2.4 s)
precede the first clip; then clips follow every ``clip + blank`` seconds, so clip ``j`` of a
run has onset ``(3 + 13 j) x 0.8 s`` in the WebVid part (8 s clip + 2.4 s blank = 13 TRs)
and ``2.4 + 10 j`` s in the FCVID part (10 s clips, no blank). ``configs/fudan-*.yaml`` then
drop the 3 lead-in TRs (``drop_initial_trs: 3``) and shift by 4 s (``hrf_lag_seconds: 4.0``,
5 TRs): the response to WebVid clip ``j`` starts at TR ``13 j + 5`` after the drop, TR
``13 j + 8`` of the file, exactly the reference code's ``images[3 + 5:][13 j]``. The files
hold no TR: it is ``data.tr`` or 0.8 s.

Images. ``load()`` returns the run's native images ``[T, H0, W0]`` (float32).
``native_mask()`` is the cortex (label 1 or -1), whose pixels ``prepare`` z-scores.
``to_image_grid`` reproduces the reference code: crop to the visual cortex's bounding box
(x from min-1 to max+1, y from min-10 to max+10, inclusive, clipped to the image), resize to
``size x size`` (OpenCV's resize: bilinear with half-pixel centres, the mask nearest) and
zero outside the resized visual-cortex mask (``image_mask``): the last steps of the fmri-pte
geometry (:mod:`glfa.surface.fmripte`), which makes these images from surface data.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from glfa.data.sources.base import Presentation, Run, Stimulus
from glfa.data.sources.common import Reader, check_fits, natural_key
from glfa.errors import DataError
from glfa.surface.fmripte import crop_box, resize_weights

__all__ = ["FudanSource", "FudanPart", "PARTS", "read_condition", "crop_box"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FudanPart:
    """Timing of one part of the release (seconds, TRs)."""

    clip_seconds: float  # each clip's duration
    blank_seconds: float  # blank screen after each clip
    lead_in_trs: int  # TRs acquired before the first clip of a run
    tr: float  # repetition time when data.tr is not set

    @property
    def trial_seconds(self) -> float:
        """Seconds from one clip's onset to the next."""
        return self.clip_seconds + self.blank_seconds


#: The per-part constants. WebVid: 8 s + 2.4 s = 13 TRs per trial; FCVID: 10 s clips back to back
#: (50 per 500 s run). The 3-TR lead-in of the FCVID part is assumed to be that of the WebVid part.
PARTS: dict[str, FudanPart] = {
    "webvid": FudanPart(clip_seconds=8.0, blank_seconds=2.4, lead_in_trs=3, tr=0.8),
    "fcvid": FudanPart(clip_seconds=10.0, blank_seconds=0.0, lead_in_trs=3, tr=0.8),
}

_RUN = re.compile(r"_run-(?P<r>\d+)_.*\.dtseries\.h5$")
_SUBJECT = re.compile(r"^sub-(?P<s>\d+)$")
_CONDITION = re.compile(r"^run(?P<c>\d+)\.txt$")


def read_condition(path: Path) -> list[str]:
    """Video ids of one condition file (one integer per line); DataError naming the file and line if malformed."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the condition file ({exc.__class__.__name__}: {exc})", path=path) from None
    while lines and not lines[-1].strip():
        lines.pop()
    ids = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text.isdigit():
            raise DataError(f"line {number}: expected one integer video id per line, got {line!r}", path=path)
        ids.append(str(int(text)))
    if not ids:
        raise DataError("the condition file lists no video", path=path)
    return ids


def _resize(x: np.ndarray, size: int, mode: str) -> np.ndarray:
    """``[T, h, w]`` -> ``[T, size, size]`` float32 by OpenCV's resize (``"linear"`` or ``"nearest"``)."""
    _, h, w = x.shape
    ry = resize_weights(h, size, mode).toarray().astype(np.float32)  # [size, h]
    rx = resize_weights(w, size, mode).toarray().astype(np.float32)  # [size, w]
    return ry @ np.asarray(x, dtype=np.float32) @ rx.T


class FudanSource(Reader):
    """Reader of the Fudan fMRI-Video release (module docstring)."""

    layout = "fudan"
    image_geometry = "fmri-pte"  # the release's images are the published models' (cortex-cropped pycortex rasters)

    #: Frames resized at once by ``to_image_grid`` (bounds memory on long runs).
    chunk_frames = 256

    def __init__(self, root, config=None):
        super().__init__(root, config)
        self.part = PARTS[self.config.data.fudan_part]
        self._labels: np.ndarray | None = None
        self._captions_path: Path | None = None
        self._conditions: list[list[str]] | None = None
        self._stimuli: dict[str, Stimulus] | None = None
        self._runs: dict[str, list[Run]] = {}

    # ------------------------------------------------------------------ subjects and runs

    def _subject_dirs(self) -> dict[str, Path]:
        base = self.root / "processed-fmri"
        if not base.is_dir():
            raise DataError("no processed-fmri/ folder (Fudan layout: processed-fmri/sub-000{s}/hdf5/)", path=base)
        dirs = {}
        for d in base.iterdir():
            m = _SUBJECT.match(d.name)
            if m and (d / "hdf5").is_dir():
                dirs[str(int(m["s"]))] = d / "hdf5"
        return dirs

    def subjects(self) -> list[str]:
        """Subject ids ``"1"``.. (``processed-fmri/sub-000{s}/hdf5`` folders), filtered by ``data.subjects``."""
        return self._select_subjects(self._subject_dirs(), "processed-fmri/sub-000{s}/hdf5/ folders")

    def _conditions_list(self) -> list[list[str]]:
        """Video ids of ``stimuli/condition/run1.txt``..``runC.txt``."""
        if self._conditions is None:
            folder = self.root / "stimuli" / "condition"
            if not folder.is_dir():
                raise DataError("no stimuli/condition/ folder (expected run{c}.txt files)", path=folder)
            files = {int(m["c"]): p for p in folder.iterdir() if (m := _CONDITION.match(p.name))}
            if not files or sorted(files) != list(range(1, len(files) + 1)):
                raise DataError(f"expected condition files run1.txt..runC.txt numbered from 1, found "
                                f"{sorted(p.name for p in files.values())}", path=folder)
            self._conditions = [read_condition(files[c]) for c in sorted(files)]
        return self._conditions

    def _run_paths(self, subject: str) -> dict[int, Path]:
        folder = self._subject_dirs()[subject]
        paths: dict[int, Path] = {}
        for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            m = _RUN.search(p.name)
            if m:
                r = int(m["r"])
                if r in paths:
                    raise DataError(f"two files for run {r}: {paths[r].name} and {p.name}", path=folder)
                paths[r] = p
        return paths

    def _run_lines(self, subject: str) -> list[tuple[int, Path, list[str]]]:
        """(run number, file, video ids shown) for each run of the subject (module docstring's mapping)."""
        conditions = self._conditions_list()
        paths = self._run_paths(subject)
        folder = self._subject_dirs()[subject]
        n_runs, n_cond = len(paths), len(conditions)
        if not paths or sorted(paths) != list(range(1, n_runs + 1)) or n_runs % n_cond:
            raise DataError(
                f"found runs {sorted(paths)}; expected runs 1..R with R a multiple of the {n_cond} condition "
                "files (each run showing a whole condition file or an equal part of one)",
                path=folder,
            )
        k = n_runs // n_cond
        out = []
        for r, path in sorted(paths.items()):
            ids = conditions[(r - 1) // k]
            if len(ids) % k:
                cond = self.root / "stimuli" / "condition" / f"run{(r - 1) // k + 1}.txt"
                raise DataError(f"lists {len(ids)} videos, which subject {subject}'s {n_runs} runs cannot share "
                                f"equally ({k} runs per condition file)", path=cond)
            part = len(ids) // k
            j = (r - 1) % k
            out.append((r, path, ids[j * part:(j + 1) * part]))
        return out

    def runs(self, subject: str) -> list[Run]:
        """The subject's runs in run order; clip ``j`` of a run has onset ``lead_in + j x trial`` seconds."""
        if subject not in self._runs:
            if subject not in self.subjects():
                raise DataError(f"unknown subject {subject!r}; expected one of {self.subjects()}", path=self.root)
            stimuli = self.stimuli()
            readers = [partial(self._read_run, subject, r, path, ids, stimuli)
                       for r, path, ids in self._run_lines(subject)]
            self._runs[subject] = self._read_runs(subject, readers, self._subject_dirs()[subject])
        return list(self._runs[subject])

    def _read_run(self, subject: str, r: int, path: Path, ids: list[str], stimuli: dict[str, Stimulus]) -> Run:
        tr = self._check_tr(self.config.data.tr or self.part.tr, path)
        n_trs = self._images_shape(path)[0]
        lead = self.part.lead_in_trs * tr
        presentations = [
            Presentation(vid, onset=lead + j * self.part.trial_seconds, duration=self.part.clip_seconds)
            for j, vid in enumerate(ids)
        ]
        check_fits(path, presentations, n_trs, tr)
        kept = [p for p in presentations if p.stimulus_id in stimuli]  # skipped stimuli (skip_bad_runs) leave
        return Run(subject=subject, run_id=f"run-{r}", tr=tr, kind="image",
                   load=partial(self._load_images, path), presentations=kept, files=[path])

    # ------------------------------------------------------------------ stimuli and captions

    def stimuli(self) -> dict[str, Stimulus]:
        """Every clip of the condition files: test when listed more than once, else train."""
        if self._stimuli is None:
            counts: dict[str, int] = {}
            for ids in self._conditions_list():
                for vid in ids:
                    counts[vid] = counts.get(vid, 0) + 1
            captions = self._captions()
            stimuli = {}
            for vid in sorted(counts, key=int):
                video = self.root / "stimuli" / f"{vid}.mp4"
                try:
                    if not video.is_file():
                        raise DataError(f"the clip of video id {vid} is missing (expected stimuli/{vid}.mp4)",
                                        path=video)
                    if not captions.get(vid, "").strip():
                        raise DataError(f"no caption for video id {vid}", path=self._captions_path)
                except DataError as error:
                    self._skip_or_raise(error)
                    continue
                split = "test" if counts[vid] > 1 else "train"
                stimuli[vid] = Stimulus(vid, video, split, (captions[vid],))
            self._stimuli = stimuli
        return dict(self._stimuli)

    def _captions(self) -> dict[str, str]:
        """{video id: caption} from captions.json, captions.tsv or (with allow_pickle) vid2name.npy."""
        folder = self.root / "stimuli"
        json_path, tsv_path, npy_path = folder / "captions.json", folder / "captions.tsv", folder / "vid2name.npy"
        if json_path.is_file():
            self._captions_path = json_path
            try:
                data = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read the captions ({exc.__class__.__name__}: {exc})", path=json_path) from None
            if not isinstance(data, dict):
                raise DataError('expected a JSON object {"video id": "caption", ...}', path=json_path)
        elif tsv_path.is_file():
            self._captions_path = tsv_path
            data = self._read_captions_tsv(tsv_path)
        elif npy_path.is_file():
            self._captions_path = npy_path
            if not self.config.data.allow_pickle:
                raise DataError(
                    "the captions are a pickled file, which can run code when loaded; it is read only with "
                    "data.allow_pickle: true in the config (or write stimuli/captions.json instead)",
                    path=npy_path,
                )
            log.warning("reading the pickled captions file %s (data.allow_pickle is true)", npy_path)
            try:
                data = np.load(npy_path, allow_pickle=True).item()
            except Exception as exc:  # numpy / pickle raise many types for a bad file
                raise DataError(f"cannot read the pickled captions ({exc.__class__.__name__}: {exc})",
                                path=npy_path) from None
            if not isinstance(data, dict):
                raise DataError(f"expected a pickled dict {{video id: caption}}, got {type(data).__name__}",
                                path=npy_path)
        else:
            raise DataError("no captions: expected stimuli/captions.json, stimuli/captions.tsv or "
                            "stimuli/vid2name.npy (with data.allow_pickle: true)", path=folder)
        out = {}
        for key, value in data.items():
            if not isinstance(value, str):
                raise DataError(f"caption of video id {key!r} is {type(value).__name__}, expected a string",
                                path=self._captions_path)
            out[str(int(key)) if str(key).strip().isdigit() else str(key)] = value
        return out

    @staticmethod
    def _read_captions_tsv(path: Path) -> dict[str, str]:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t"))
        if not rows or [h.strip() for h in rows[0]][:2] != ["video_id", "caption"]:
            raise DataError("expected a header row 'video_id<TAB>caption'", path=path)
        data = {}
        for number, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) != 2:
                raise DataError(f"line {number}: expected 2 tab-separated fields, got {len(row)}", path=path)
            data[row[0].strip()] = row[1].strip()
        return data

    # ------------------------------------------------------------------ images

    def _label_image(self) -> np.ndarray:
        """The label image ``[H0, W0]`` of ``vc_roi.npz`` (1 visual cortex, -1 other cortex, 0 background)."""
        if self._labels is None:
            path = self.root / "vc_roi.npz"
            if not path.is_file():
                raise DataError("visual-cortex label image not found (expected ROOT/vc_roi.npz)", path=path)
            try:
                with np.load(path, allow_pickle=False) as npz:
                    if "images" not in npz.files:
                        raise DataError(f"expected an array 'images', found {npz.files}", path=path)
                    labels = np.asarray(npz["images"])
            except DataError:
                raise
            except Exception as exc:  # a bad zip or a pickled array
                raise DataError(f"cannot read the label image ({exc.__class__.__name__}: {exc})", path=path) from None
            if labels.ndim == 3 and labels.shape[0] >= 1:
                labels = labels[0]
            if labels.ndim != 2:
                raise DataError(f"expected 'images' of shape [1, H, W] or [H, W], got {labels.shape}", path=path)
            if not np.isin(labels, (-1, 0, 1)).all():
                raise DataError("expected labels 1 (visual cortex), -1 (other cortex) and 0 only", path=path)
            if not (labels == 1).any():
                raise DataError("the label image has no visual-cortex pixel (label 1)", path=path)
            self._labels = labels.astype(np.int8)
        return self._labels

    def _images_shape(self, path: Path) -> tuple[int, int, int]:
        """Shape ``[T, H0, W0]`` of a run's ``images`` dataset, from the HDF5 header; checked against the labels."""
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "images" not in f:
                    raise DataError(f"no dataset 'images' (found {list(f.keys())})", path=path)
                shape = tuple(f["images"].shape)
        except DataError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read the HDF5 file ({exc.__class__.__name__}: {exc})", path=path) from None
        if len(shape) != 3:
            raise DataError(f"dataset 'images' has shape {shape}; expected rank 3 [T, H, W]", path=path)
        labels = self._label_image()
        if shape[1:] != labels.shape:
            raise DataError(f"images are {shape[1]} x {shape[2]} but vc_roi.npz is {labels.shape[0]} x "
                            f"{labels.shape[1]}; expected the same size", path=path)
        return shape  # type: ignore[return-value]

    def _load_images(self, path: Path) -> np.ndarray:
        """A run's native images, float32 ``[T, H0, W0]``."""
        import h5py

        self._images_shape(path)
        try:
            with h5py.File(path, "r") as f:
                return np.asarray(f["images"][...], dtype=np.float32)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read dataset 'images' ({exc.__class__.__name__}: {exc})", path=path) from None

    def native_mask(self) -> np.ndarray:
        """The cortex pixels ``[H0, W0]`` (labels 1 and -1) that ``prepare`` preprocesses."""
        return self._label_image() != 0

    def image_mask(self, size: int) -> np.ndarray:
        """The visual-cortex mask on the ``size x size`` grid: cropped, resized nearest."""
        x0, x1, y0, y1 = crop_box(self._label_image() == 1)
        vc = (self._label_image() == 1)[y0:y1 + 1, x0:x1 + 1]
        return _resize(vc[None].astype(np.float32), size, "nearest")[0] > 0.5

    def to_image_grid(self, frames: np.ndarray, size: int) -> np.ndarray:
        """Preprocessed ``[T, H0, W0]`` -> float32 ``[T, size, size]``: crop, bilinear resize, zero outside the mask."""
        labels = self._label_image()
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != labels.shape:
            raise ValueError(f"expected frames [T, {labels.shape[0]}, {labels.shape[1]}], got {frames.shape}")
        x0, x1, y0, y1 = crop_box(labels == 1)
        mask = self.image_mask(size)
        out = np.empty((len(frames), size, size), dtype=np.float32)
        for start in range(0, len(frames), self.chunk_frames):
            chunk = frames[start:start + self.chunk_frames, y0:y1 + 1, x0:x1 + 1]
            out[start:start + len(chunk)] = _resize(chunk, size, "linear")
        out[:, ~mask] = 0.0
        return out
