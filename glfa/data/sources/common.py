"""Pieces shared by the readers: config handling, bad-input policy, TR checks, CIFTI headers.

Every reader derives from :class:`Reader`, which keeps the study's config, the list of
skipped inputs (``skipped``: one line per skipped run or stimulus, when
``data.skip_bad_runs`` is true) and the repetition time seen so far, so that runs with
different TRs, within or across subjects, are refused.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from glfa.config import GlfaConfig
from glfa.data.sources.base import Presentation, Run, StudySource
from glfa.errors import DataError, GlfaError

__all__ = ["Reader", "SurfaceReader", "cifti_header", "check_fits", "natural_key"]

log = logging.getLogger(__name__)

#: Two repetition times closer than this (seconds) are the same.
TR_TOLERANCE = 1e-4


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers numerically (``run-2`` before ``run-10``)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


class Reader(StudySource):
    """Base of the three readers: config, subject selection, skip policy and the TR check.

    Parameters
    ----------
    root : str or Path
        The study folder.
    config : GlfaConfig, optional
        Its ``data`` section selects subjects, the TR, ``allow_pickle`` and ``skip_bad_runs``;
        defaults when None.
    """

    def __init__(self, root: str | Path, config: GlfaConfig | None = None):
        super().__init__(root)
        self.config = config if config is not None else GlfaConfig()
        self.skipped: list[str] = []
        self._tr: float | None = None
        self._tr_file: Path | None = None
        if not self.root.is_dir():
            raise DataError(f"study folder not found (layout {self.layout})", path=self.root)

    @property
    def tr(self) -> float | None:
        """The repetition time (seconds) common to every run seen so far (None before the first)."""
        return self._tr

    def _skip_or_raise(self, error: GlfaError) -> None:
        """Raise ``error``, or record it in ``skipped`` when ``data.skip_bad_runs`` is true."""
        if not self.config.data.skip_bad_runs:
            raise error
        self.skipped.append(str(error))
        log.warning("skipping (data.skip_bad_runs is true): %s", error)

    def _read_runs(self, subject: str, readers: Iterable[Callable[[], Run]], folder: Path) -> list[Run]:
        """Call each run reader; a DataError is raised or (skip_bad_runs) recorded; error if no run is left."""
        runs = []
        for read in readers:
            try:
                runs.append(read())
            except DataError as error:
                self._skip_or_raise(error)
        if not runs:
            raise DataError(f"subject {subject} has no usable run", path=folder)
        return runs

    def _check_tr(self, tr: float, path: Path) -> float:
        """Refuse a run whose TR differs from ``data.tr`` or from the runs read before it."""
        if not (math.isfinite(tr) and tr > 0):
            raise DataError(f"repetition time must be a positive number of seconds, got {tr}", path=path)
        wanted = self.config.data.tr
        if wanted is not None and abs(tr - wanted) > TR_TOLERANCE:
            raise DataError(
                f"the file's repetition time is {tr:g} s but data.tr is {wanted:g} s "
                "(remove data.tr from the config to take the files' value)",
                path=path,
            )
        if self._tr is None:
            self._tr, self._tr_file = tr, path
        elif abs(tr - self._tr) > TR_TOLERANCE:
            raise DataError(
                f"repetition time {tr:g} s differs from {self._tr:g} s of {self._tr_file}; "
                "every run of a study must share one TR",
                path=path,
            )
        return self._tr

    def _select_subjects(self, found: Iterable[str], where: str) -> list[str]:
        """``found`` subjects filtered by ``data.subjects``; errors when none, or a listed one is missing."""
        found = sorted(set(found), key=natural_key)
        if not found:
            raise DataError(f"no subjects found (expected {where})", path=self.root)
        wanted = self.config.data.subjects
        if wanted is None:
            return found
        missing = [s for s in wanted if s not in found]
        if missing:
            raise self.config.error(
                "data.subjects", f"subject(s) {missing} not found in {self.root}; expected some of {found}"
            )
        return [s for s in found if s in set(wanted)]


class SurfaceReader(Reader):
    """A reader of CIFTI-2 surface runs: loads ``[T, V]`` in the flat-map projector's vertex order."""

    _projector = None

    @property
    def projector(self):
        """The :class:`~glfa.surface.flatmap.FlatMapProjector` of ``data.rois``, ``data.image_size`` and
        ``data.geometry`` (built once)."""
        if self._projector is None:
            from glfa.surface.flatmap import FlatMapProjector

            data = self.config.data
            self._projector = FlatMapProjector(rois=data.rois, height=data.image_size, width=data.image_size,
                                               geometry=data.geometry)
        return self._projector

    def _load_surface(self, path: Path, start: int = 0) -> np.ndarray:
        """Read one dtseries -> float32 ``[T - start, V]`` over the projector's vertices (left then right)."""
        from glfa.surface.cifti import read_dtseries, series_on

        series = read_dtseries(path)
        data = series_on(series, self.projector, path)  # [t, v]
        _check_finite_surface(data, self.projector, path)
        return np.ascontiguousarray(data[start:], dtype=np.float32)


def _check_finite_surface(data: np.ndarray, projector, path: Path) -> None:
    """DataError naming the file's TR (counted as in the file) and grayordinate of the first NaN or Inf.

    ``data`` [T, V] holds the file's columns of the projector's vertices (left, then right).
    """
    from glfa.surface.cifti import LEFT, RIGHT

    bad = ~np.isfinite(data)
    if not bad.any():
        return
    tr, column = (int(i) for i in np.argwhere(bad)[0])
    n_left = len(projector.left)
    structure, vertex = (LEFT, projector.left[column]) if column < n_left else (RIGHT, projector.right[column - n_left])
    raise DataError(f"non-finite value {data[tr, column]} at TR {tr} of the file's {len(data)} (counting from 0), "
                    f"grayordinate {structure} vertex {int(vertex)} ({int(bad.any(axis=1).sum())} TRs hold NaN or "
                    "Inf); expected finite fMRI values", path=path)


def cifti_header(path: Path) -> tuple[int, float]:
    """(number of TRs, TR in seconds) of a dtseries file, from its header only (no data read)."""
    import nibabel as nib

    if not path.is_file():
        raise DataError("dtseries file not found", path=path)
    try:
        img = nib.load(str(path))
        axis = img.header.get_axis(0)
    except Exception as exc:  # nibabel raises many types for a bad file
        raise DataError(f"cannot read the CIFTI-2 header ({exc.__class__.__name__}: {exc})", path=path) from None
    if not isinstance(axis, nib.cifti2.SeriesAxis):
        raise DataError(f"expected a dense time series (SeriesAxis first), got {type(axis).__name__}", path=path)
    unit = str(axis.unit).upper()
    if unit != "SECOND":
        raise DataError(f"expected the series axis in seconds, got unit {axis.unit!r}", path=path)
    return int(axis.size), float(axis.step)


def check_fits(path: Path, presentations: list[Presentation], n_trs: int, tr: float) -> None:
    """DataError naming ``path`` if a presentation ends after the run's last TR (``n_trs * tr`` seconds)."""
    if not presentations:
        return
    last = max(presentations, key=lambda p: p.onset + p.duration)
    end = last.onset + last.duration
    if end > n_trs * tr + 1e-6:
        raise DataError(
            f"the run has {n_trs} TRs ({n_trs * tr:g} s at TR {tr:g} s) but presentation of "
            f"{last.stimulus_id!r} ends at {end:g} s; expected every presentation inside the run",
            path=path,
        )
