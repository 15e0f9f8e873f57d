"""Reader of the Wen et al. 2017 release ("video_fmri_dataset", Purdue LIBI).

Layout (the release's folder names)::

    ROOT/stimuli/seg{N}.mp4, ROOT/stimuli/test{N}.mp4              8-minute movie segments
    ROOT/subject{k}/fmri/seg{N}/cifti/seg{N}_{r}_Atlas.dtseries.nii    18 training segments x 2 repeats
    ROOT/subject{k}/fmri/test{N}/cifti/test{N}_{r}_Atlas.dtseries.nii  5 test segments x 10 repeats
    ROOT/captions/seg{N}.json                                       optional (see below)

Subjects are ``"1"``, ``"2"``, ``"3"`` (from ``subject{k}``); stimuli are ``seg{N}`` (train)
and ``test{N}`` (test), one per movie segment. Every run shows its segment once, as one
continuous presentation; the repeats of a segment are averaged by ``prepare``. The cortex is
the files' CORTEX_LEFT / CORTEX_RIGHT brain models (the first 59,412 grayordinates), of which
the flat-map ROIs are taken; TR 2 s from the files' series axis.

Trimming. The release's runs hold 245 volumes (training segments and test1) or 246 volumes
(test2..test5): Wen et al.'s own processing code keeps 240 volumes (8 minutes) by dropping the
first volume and the last 4 (245), or the first 2 and the last 4 (246). So the movie fills
the 240 volumes that end 4 volumes before the end of the file, and each run has 1 or 2
volumes before it. This reader makes every run look the same: ``load()`` drops the extra
leading volumes so that exactly **one** volume precedes the movie (245 volumes for the
release: 1 before, 240 during, 4 after), and the presentation's onset is ``1 TR = 2 s``
after the first volume ``load()`` returns, lasting the movie's length (480 s). The movie's
length in TRs is the video's duration rounded to whole TRs, so trimmed or shorter copies
(and the test fixtures) work the same way. ``configs/wen2017.yaml`` then drops that leading
volume (``preprocess.drop_initial_trs: 1``) and keeps the 4 trailing volumes so that the
haemodynamic lag (6 s = 3 TRs) stays inside the run. A run with fewer volumes than
``1 + movie + 4`` is a :class:`~glfa.errors.DataError` naming the file.

Captions. Wen et al. ship none. If ``ROOT/captions/<stimulus id>.json`` exists it is read: a
JSON list of strings, one caption per stored video frame at the config's fps (``glfa caption``
writes them), or one string for the whole segment. Without it the stimulus gets one empty
captions (``()``); ``prepare`` stores empty captions, counts the stimuli without captions and
says to run ``glfa caption``.
"""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

from glfa.data.sources.base import Presentation, Run, Stimulus
from glfa.data.sources.common import SurfaceReader, cifti_header, natural_key
from glfa.errors import DataError

__all__ = ["Wen2017Source", "video_seconds", "LEADING_TRS", "TRAILING_TRS"]

#: Volumes kept before the movie in what ``load()`` returns (dropped by ``drop_initial_trs: 1``).
LEADING_TRS = 1
#: Volumes after the movie's end in every file of the release.
TRAILING_TRS = 4

_RUN = re.compile(r"^(?P<stim>(?P<kind>seg|test)(?P<n>\d+))_(?P<rep>\d+)_Atlas\.dtseries\.nii$")
_SUBJECT = re.compile(r"^subject(?P<k>\d+)$")


def video_seconds(path: Path) -> float:
    """Duration (seconds) of a video file from its container metadata, without decoding it."""
    import av

    if not path.is_file():
        raise DataError("video file not found", path=path)
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise DataError("no video stream in the file", path=path)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate
            if stream.frames and rate:
                return float(stream.frames / rate)
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / av.time_base
    except DataError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise DataError(f"cannot open the video ({exc.__class__.__name__}: {exc})", path=path) from None
    raise DataError("the video's duration is unknown (no frame count or duration in its metadata)", path=path)


class Wen2017Source(SurfaceReader):
    """Reader of the Wen et al. 2017 release (module docstring)."""

    layout = "wen2017"

    def __init__(self, root, config=None):
        super().__init__(root, config)
        self._stimuli: dict[str, Stimulus] | None = None
        self._movie_trs: dict[str, int] = {}
        self._runs: dict[str, list[Run]] = {}

    def _subject_dirs(self) -> dict[str, Path]:
        dirs = {}
        for d in self.root.iterdir():
            m = _SUBJECT.match(d.name)
            if m and (d / "fmri").is_dir():
                dirs[str(int(m["k"]))] = d
        return dirs

    def subjects(self) -> list[str]:
        """Subject ids ``"1"``, ``"2"``... (``subject{k}/fmri`` folders), filtered by ``data.subjects``."""
        return self._select_subjects(self._subject_dirs(), "subject{k}/fmri/ folders")

    def _run_files(self, subject: str) -> list[tuple[re.Match, Path]]:
        """(name match, path) of the subject's dtseries files, training segments first, natural order."""
        fmri = self._subject_dirs()[subject] / "fmri"
        found = []
        for path in fmri.glob("*/cifti/*_Atlas.dtseries.nii"):
            m = _RUN.match(path.name)
            if m and path.parent.parent.name == m["stim"]:
                found.append((m, path))
        if not found:
            raise DataError("no seg{N}/cifti/seg{N}_{r}_Atlas.dtseries.nii or test{N}/cifti/... files", path=fmri)
        return sorted(found, key=lambda mp: (mp[0]["kind"] != "seg", int(mp[0]["n"]), int(mp[0]["rep"])))

    def stimuli(self) -> dict[str, Stimulus]:
        """The movie segments shown to the selected subjects: ``seg{N}`` (train), ``test{N}`` (test)."""
        if self._stimuli is None:
            ids = {m["stim"] for s in self.subjects() for m, _ in self._run_files(s)}
            self._stimuli = {}
            for stim_id in sorted(ids, key=lambda i: (not i.startswith("seg"), natural_key(i))):
                video = self.root / "stimuli" / f"{stim_id}.mp4"
                if not video.is_file():
                    raise DataError(f"the movie of {stim_id} is missing (expected stimuli/{stim_id}.mp4)", path=video)
                split = "train" if stim_id.startswith("seg") else "test"
                self._stimuli[stim_id] = Stimulus(stim_id, video, split, self._captions(stim_id))
        return dict(self._stimuli)

    def _captions(self, stim_id: str) -> tuple[str, ...]:
        path = self.root / "captions" / f"{stim_id}.json"
        if not path.is_file():
            return ()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read the captions ({exc.__class__.__name__}: {exc})", path=path) from None
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list) or not data or not all(isinstance(c, str) for c in data):
            raise DataError("expected a JSON string or a non-empty list of strings (one caption per frame)", path=path)
        return tuple(data)

    def _movie_length(self, stim_id: str) -> int:
        """The movie's length in TRs: its video's duration rounded to whole TRs."""
        if stim_id not in self._movie_trs:
            video = self.stimuli()[stim_id].video
            n = int(round(video_seconds(video) / self._tr))
            if n < 1:
                raise DataError(f"the movie is shorter than one TR ({self._tr:g} s)", path=video)
            self._movie_trs[stim_id] = n
        return self._movie_trs[stim_id]

    def runs(self, subject: str) -> list[Run]:
        """The subject's runs: one per dtseries file, each presenting its segment once at onset 1 TR."""
        if subject not in self._runs:
            if subject not in self.subjects():
                raise DataError(f"unknown subject {subject!r}; expected one of {self.subjects()}", path=self.root)
            readers = [partial(self._read_run, subject, m, path) for m, path in self._run_files(subject)]
            self._runs[subject] = self._read_runs(subject, readers, self._subject_dirs()[subject])
        return list(self._runs[subject])

    def _read_run(self, subject: str, m: re.Match, path: Path) -> Run:
        n_file, tr = cifti_header(path)
        tr = self._check_tr(tr, path)
        stim_id = m["stim"]
        movie = self._movie_length(stim_id)
        extra = n_file - TRAILING_TRS - movie - LEADING_TRS  # volumes before the movie beyond the one kept
        if extra < 0:
            raise DataError(
                f"the run has {n_file} volumes; expected at least {LEADING_TRS + movie + TRAILING_TRS} "
                f"({LEADING_TRS} before the {movie}-TR movie of {stim_id}, {TRAILING_TRS} after it)",
                path=path,
            )
        presentation = Presentation(stim_id, onset=LEADING_TRS * tr, duration=movie * tr)
        return Run(subject=subject, run_id=f"{stim_id}_{m['rep']}", tr=tr, kind="surface",
                   load=partial(self._load_surface, path, extra), presentations=[presentation], files=[path])
