"""Reader of the generic (BIDS-like) layout, the one ``glfa simulate`` writes.

Layout::

    ROOT/stimuli/<file>.mp4                                   (any subfolders)
    ROOT/sub-<id>/func/sub-<id>_task-<t>_run-<r>_bold.dtseries.nii
    ROOT/sub-<id>/func/sub-<id>_task-<t>_run-<r>_events.tsv   (beside each dtseries)

``sub-<id>/ses-<s>/func/`` folders are read too. The subject id is ``<id>`` (without
``sub-``); the run id is the file name between ``sub-<id>_`` and ``_bold``, and runs are in
natural order of that id (``run-2`` before ``run-10``).

The dtseries is CIFTI-2 on 32k_fs_LR holding any set of vertices that covers the visual ROIs;
its TR is the series axis step (seconds). ``events.tsv`` is tab-separated with a header row:

- ``onset``, ``duration``: seconds from the run's first TR (``duration`` > 0);
- ``stim_file``: the video, relative to ``ROOT/stimuli``;
- ``caption``: the clip's caption (not empty);
- ``split`` (optional): ``train`` or ``test``; empty or absent = ``train``.

A stimulus shown in several runs or subjects must keep one split and one caption. The
stimulus id is ``stim_file`` without its extension, ``/`` replaced by ``_``.

Bad input (a missing or malformed events file, a missing column, a missing caption, a
stim_file not in ``stimuli/``, events after the run's last TR) raises
:class:`~glfa.errors.DataError` naming the file, the line and what was expected; with
``data.skip_bad_runs: true`` the run is skipped instead and recorded in ``skipped``.
Different TRs across runs or subjects are always an error.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from glfa.data.sources.base import Presentation, Run, Stimulus
from glfa.data.sources.common import SurfaceReader, check_fits, cifti_header, natural_key
from glfa.errors import DataError

__all__ = ["GenericSource", "read_events", "Event"]

REQUIRED_COLUMNS = ("onset", "duration", "stim_file", "caption")
SPLITS = ("train", "test")

_BOLD = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)_(?P<run>.+)_bold\.dtseries\.nii$")
_EVENTS = re.compile(r"^sub-(?P<sub>[A-Za-z0-9]+)_(?P<run>.+)_events\.tsv$")


@dataclass(frozen=True)
class Event:
    """One row of an events.tsv file."""

    onset: float
    duration: float
    stim_file: str
    caption: str
    split: str
    line: int


def read_events(path: Path) -> list[Event]:
    """Parse one events.tsv; DataError naming the file, the line and the column for anything malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the events file ({exc.__class__.__name__}: {exc})", path=path) from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t"))
    if not rows:
        raise DataError(f"empty events file; expected a header row with columns {list(REQUIRED_COLUMNS)}", path=path)
    header = [h.strip() for h in rows[0]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; expected tab-separated columns {list(REQUIRED_COLUMNS)} "
            f"(+ optional split), got {header}",
            path=path,
        )
    col = {name: header.index(name) for name in header}
    events = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"line {line}: expected {len(header)} tab-separated fields, got {len(row)}", path=path)
        cells = {name: row[i].strip() for name, i in col.items()}
        values = {}
        for name in ("onset", "duration"):
            try:
                values[name] = float(cells[name])
            except ValueError:
                raise DataError(f"line {line}, column {name}: expected a number of seconds, got {cells[name]!r}",
                                path=path) from None
        if not (math.isfinite(values["onset"]) and values["onset"] >= 0):
            raise DataError(f"line {line}, column onset: expected seconds >= 0, got {cells['onset']!r}", path=path)
        if not (math.isfinite(values["duration"]) and values["duration"] > 0):
            raise DataError(f"line {line}, column duration: expected seconds > 0, got {cells['duration']!r}", path=path)
        if not cells["stim_file"]:
            raise DataError(f"line {line}, column stim_file: empty; expected a file in stimuli/", path=path)
        if not cells["caption"]:
            raise DataError(f"line {line}, column caption: missing caption for {cells['stim_file']!r}", path=path)
        split = cells.get("split") or "train"
        if split not in SPLITS:
            raise DataError(f"line {line}, column split: expected train or test, got {split!r}", path=path)
        events.append(Event(values["onset"], values["duration"], cells["stim_file"], cells["caption"], split, line))
    if not events:
        raise DataError("the events file lists no presentation", path=path)
    return events


class GenericSource(SurfaceReader):
    """Reader of the generic BIDS-like layout (module docstring)."""

    layout = "generic"

    def __init__(self, root, config=None):
        super().__init__(root, config)
        self._scanned = False
        self._stimuli: dict[str, Stimulus] = {}
        self._runs: dict[str, list[Run]] = {}
        self._first_seen: dict[str, Path] = {}

    # ------------------------------------------------------------------ StudySource

    def subjects(self) -> list[str]:
        """Subject ids (``sub-<id>`` folders holding dtseries), filtered by ``data.subjects``."""
        self._scan()
        return list(self._runs)

    def stimuli(self) -> dict[str, Stimulus]:
        """Every stimulus presented in the selected subjects' runs."""
        self._scan()
        return dict(self._stimuli)

    def runs(self, subject: str) -> list[Run]:
        """The subject's runs in natural order of their run id."""
        self._scan()
        if subject not in self._runs:
            raise DataError(f"unknown subject {subject!r}; expected one of {list(self._runs)}", path=self.root)
        return list(self._runs[subject])

    # ------------------------------------------------------------------ scanning

    def _func_dirs(self, subject_dir: Path) -> list[Path]:
        return [d for d in [subject_dir / "func", *sorted(subject_dir.glob("ses-*/func"))] if d.is_dir()]

    def _scan(self) -> None:
        if self._scanned:
            return
        stim_dir = self.root / "stimuli"
        if not stim_dir.is_dir():
            raise DataError("no stimuli/ folder (generic layout: ROOT/stimuli/<file>.mp4)", path=stim_dir)
        found = [d.name[4:] for d in self.root.glob("sub-*") if d.is_dir() and self._func_dirs(d)]
        subjects = self._select_subjects(found, "sub-<id>/func/ folders")
        for subject in subjects:
            runs = []
            for path in self._run_files(subject):
                try:
                    runs.append(self._read_run(subject, path, stim_dir))
                except DataError as error:
                    self._skip_or_raise(error)
            if not runs:
                self._skip_or_raise(DataError(f"subject {subject} has no usable run",
                                              path=self.root / f"sub-{subject}"))
                continue
            self._runs[subject] = runs
        if not self._runs:
            raise DataError("no subject has a usable run", path=self.root)
        self._scanned = True

    def _run_files(self, subject: str) -> list[Path]:
        """The subject's dtseries files; an events.tsv without its dtseries is an error."""
        bolds, orphans = [], []
        for func in self._func_dirs(self.root / f"sub-{subject}"):
            for path in func.iterdir():
                m = _BOLD.match(path.name)
                if m and m["sub"] == subject:
                    bolds.append(path)
                m = _EVENTS.match(path.name)
                if m and m["sub"] == subject:
                    bold = path.with_name(path.name[: -len("_events.tsv")] + "_bold.dtseries.nii")
                    if not bold.exists():
                        orphans.append(path)
        for path in orphans:
            self._skip_or_raise(DataError(f"events file without its dtseries (expected {path.name[:-11]}"
                                          "_bold.dtseries.nii beside it)", path=path))
        if not bolds and not orphans:
            raise DataError(f"no sub-{subject}_*_bold.dtseries.nii files", path=self.root / f"sub-{subject}")
        return sorted(bolds, key=lambda p: natural_key(p.name))

    def _read_run(self, subject: str, bold: Path, stim_dir: Path) -> Run:
        events_path = bold.with_name(bold.name[: -len("_bold.dtseries.nii")] + "_events.tsv")
        if not events_path.is_file():
            raise DataError(f"no events file beside the dtseries (expected {events_path.name})", path=bold)
        events = read_events(events_path)
        n_trs, tr = cifti_header(bold)
        tr = self._check_tr(tr, bold)
        presentations, stimuli = [], {}
        for ev in events:
            stim_id, stimulus = self._stimulus(ev, events_path, stim_dir, stimuli)
            stimuli[stim_id] = stimulus
            presentations.append(Presentation(stim_id, ev.onset, ev.duration))
        check_fits(events_path, presentations, n_trs, tr)
        for stim_id, stimulus in stimuli.items():  # the run is good: register its stimuli
            if stim_id not in self._stimuli:
                self._stimuli[stim_id] = stimulus
                self._first_seen[stim_id] = events_path
        run_id = _BOLD.match(bold.name)["run"]
        return Run(subject=subject, run_id=run_id, tr=tr, kind="surface",
                   load=partial(self._load_surface, bold), presentations=presentations,
                   files=[bold, events_path])

    def _stimulus(self, ev: Event, events_path: Path, stim_dir: Path,
                  pending: dict[str, Stimulus]) -> tuple[str, Stimulus]:
        """The stimulus of one event, checked against earlier runs and earlier rows (``pending``) of this one."""
        rel = Path(ev.stim_file)
        video = stim_dir / rel
        if rel.is_absolute() or ".." in rel.parts or not video.is_file():
            raise DataError(f"line {ev.line}: stim_file {ev.stim_file!r} not found in {stim_dir}", path=events_path)
        stim_id = rel.with_suffix("").as_posix().replace("/", "_")
        stimulus = Stimulus(stim_id, video, ev.split, (ev.caption,))
        known, where = pending.get(stim_id), events_path
        if known is None and stim_id in self._stimuli:
            known, where = self._stimuli[stim_id], self._first_seen[stim_id]
        if known is not None:
            if known.video != video:
                raise DataError(f"line {ev.line}: stimulus id {stim_id!r} names {video} here but {known.video} "
                                f"in {where}; expected distinct file names", path=events_path)
            if known.split != ev.split:
                raise DataError(f"line {ev.line}: {ev.stim_file!r} has split {ev.split!r} here but "
                                f"{known.split!r} in {where}; expected one split per stimulus", path=events_path)
            if known.captions != stimulus.captions:
                raise DataError(f"line {ev.line}: {ev.stim_file!r} has caption {ev.caption!r} here but "
                                f"{known.captions[0]!r} in {where}; expected one caption per stimulus",
                                path=events_path)
        return stim_id, stimulus
