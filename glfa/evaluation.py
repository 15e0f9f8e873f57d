"""Evaluation protocols over a study store.

Alignment (paper section 4.4, Table 1): :func:`evaluate_alignment` runs leave-one-subject-out
GLFA alignment: for every held-out subject h it fits a :class:`~glfa.align.GLFAAligner` on the
other subjects' training responses, transforms every subject's TEST responses with it (h
included, never seen in fitting) and measures fSC for every pair and ISC for every subject,
before (identity) and after alignment. :class:`AlignmentTable` renders the result in the
layout of Table 1 (Markdown) and as JSON.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glfa.errors import ConfigError

# ----------------------------------------------------------------------------- alignment protocol


@dataclass
class AlignmentRow:
    """One row of Table 1: fSC per pair ("1/2") and ISC per subject, for one task."""

    task: str
    held_out: str | None
    train_subjects: list[str]
    fsc: dict[str, float]
    isc: dict[str, float]
    fit_seconds: float | None = None
    final_loss: float | None = None


@dataclass
class AlignmentTable:
    """The leave-one-subject-out alignment table: an ``identity`` row, then one row per held-out subject."""

    subjects: list[str]
    split: str
    n_timepoints: int
    rows: list[AlignmentRow] = field(default_factory=list)

    @property
    def pairs(self) -> list[str]:
        """Column names of fSC: ``"a/b"`` for every pair a < b in subject order."""
        return [f"{a}/{b}" for a, b in itertools.combinations(self.subjects, 2)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"subjects": self.subjects, "split": self.split, "n_timepoints": self.n_timepoints,
                "pairs": self.pairs, "rows": [asdict(r) for r in self.rows]}

    def to_markdown(self) -> str:
        """Table 1's layout; cells that involve the row's held-out (unseen) subject are bold."""
        head = ["Task"] + [f"fSC {p}" for p in self.pairs] + [f"ISC {s}" for s in self.subjects]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cells = [row.task]
            for p in self.pairs:
                cells.append(_cell(row.fsc[p], row.held_out in p.split("/")))
            for s in self.subjects:
                cells.append(_cell(row.isc[s], row.held_out == s))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _cell(value: float, bold: bool) -> str:
    text = "nan" if math.isnan(value) else f"{value:.3f}"
    return f"**{text}**" if bold else text


def alignment_row(task: str, responses: dict[str, np.ndarray], mask: np.ndarray, *, held_out: str | None = None,
                  train_subjects: list[str] | None = None, fit_seconds: float | None = None,
                  final_loss: float | None = None) -> AlignmentRow:
    """fSC for every pair and ISC for every subject of ``responses`` ({subject: [T, ...]}) over ``mask``."""
    from glfa.metrics.alignment import fsc_matrix, isc

    names = list(responses)
    matrix = fsc_matrix(responses, mask)
    fsc = {f"{names[i]}/{names[j]}": float(matrix[i, j]) for i, j in itertools.combinations(range(len(names)), 2)}
    return AlignmentRow(task=task, held_out=held_out, train_subjects=list(train_subjects or []), fsc=fsc,
                        isc={s: float(v) for s, v in isc(responses, mask).items()}, fit_seconds=fit_seconds,
                        final_loss=final_loss)


def evaluate_alignment(store, config, *, subjects: list[str] | None = None, split: str = "test",
                       verbose: bool = False) -> AlignmentTable:
    """Leave-one-subject-out GLFA alignment on ``store`` (a :class:`~glfa.data.store.StudyStore`).

    Parameters
    ----------
    store : StudyStore
    config : GlfaConfig
        ``model.glfa`` (parcel, kernel, lambda), ``align`` (steps, batch, optimiser, seed), ``device``.
    subjects : list of str, optional
        The subjects of the table (at least 3: two to fit on, one held out); default: every
        subject of the store.
    split : str
        The split measured (``test``); GLFA is always fitted on ``train``.
    verbose : bool
        Progress bars and one line per fitted aligner.

    Returns
    -------
    AlignmentTable
    """
    from glfa.align import GLFAAligner, responses_from_store

    subjects = list(store.subjects if subjects is None else subjects)
    if len(subjects) < 3:
        raise ConfigError(f"leave-one-subject-out alignment needs at least 3 subjects (2 to fit on, 1 held out), "
                          f"got {subjects}", path=store.path, field="subjects")
    mask = store.mask
    test = responses_from_store(store, subjects, split)
    table = AlignmentTable(subjects=subjects, split=split, n_timepoints=int(next(iter(test.values())).shape[0]))
    table.rows.append(alignment_row("identity", test, mask))
    for held in subjects:
        train_subjects = [s for s in subjects if s != held]
        train = responses_from_store(store, train_subjects, "train")
        aligner = GLFAAligner.from_config(config, mask=mask, verbose=verbose).fit(train)
        del train
        if verbose:
            print(f"GLFA fitted on {','.join(train_subjects)} in {aligner.fit_seconds_:.1f} s "
                  f"(L_GLFA {aligner.loss_history_[0]:.4f} -> {aligner.loss_history_[-1]:.4f})")
        aligned = aligner.transform(test)
        table.rows.append(alignment_row(f"{','.join(train_subjects)} -> {held}", aligned, mask, held_out=held,
                                        train_subjects=train_subjects, fit_seconds=aligner.fit_seconds_,
                                        final_loss=aligner.loss_history_[-1]))
    return table


def write_alignment_table(table: AlignmentTable, out_dir: str | Path, config, *, store_path: str | Path) -> dict[str, Path]:
    """Write ``alignment.json`` (table + resolved config), ``alignment.md`` and ``config.json`` atomically."""
    from glfa.training.checkpoint import write_bytes_atomic, write_json_atomic

    out = Path(out_dir)
    data = {"protocol": "alignment/leave-one-subject-out", "store": str(store_path), **table.to_dict(),
            "config": config.to_dict()}
    paths = {"json": out / "alignment.json", "markdown": out / "alignment.md", "config": out / "config.json"}
    write_json_atomic(paths["json"], data)
    write_bytes_atomic(paths["markdown"], table.to_markdown().encode())
    write_json_atomic(paths["config"], config.to_dict())
    return paths
