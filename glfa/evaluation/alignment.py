"""Functional alignment judged on the test split (paper section 4.4, Table 1).

:func:`evaluate_alignment` runs leave-one-subject-out GLFA alignment: for every held-out subject
h it fits a :class:`~glfa.align.GLFAAligner` on the other subjects' training responses,
transforms every subject's TEST responses with it (h included, never seen in fitting) and
measures fSC for every pair and ISC for every subject, before (identity) and after alignment,
and the inter-subject decoding of the stimulus after identity, tuned smoothing and GLFA.
:class:`AlignmentTable` renders the result in the layout of Table 1 (Markdown) and as JSON.

:func:`glfa_alignment` measures the same for the GLFA layer a co-trained decoder learned: its
training subjects and each held-out subject, before and after the layer.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glfa.errors import ConfigError, DataError
from glfa.evaluation.tables import Cell, Table, value_cell


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
class DecodingRow:
    """Inter-subject decoding (Bazeille et al. 2021) of one held-out subject after one alignment.

    ``accuracy``: a linear classifier of the stimulus trained on the other subjects' responses,
    applied to the held-out subject's; ``mismatched``: the same predictions scored against other
    stimuli's labels; ``fsc_held`` / ``isc_held``: the held-out subject's mean fSC with the others
    and its ISC after the same alignment (see :func:`glfa.metrics.decoding.inter_subject_decoding`).
    """

    held_out: str
    method: str
    accuracy: float
    mismatched: float
    chance: float
    fsc_held: float
    isc_held: float
    n: int


@dataclass
class AlignmentTable:
    """The leave-one-subject-out alignment table: an ``identity`` row, then one row per held-out subject.

    ``decoding`` holds the inter-subject decoding rows (identity, tuned smoothing and the
    alignment, per held-out subject) of the stimulus labels named by ``labels``.
    """

    subjects: list[str]
    split: str
    n_timepoints: int
    rows: list[AlignmentRow] = field(default_factory=list)
    decoding: list[DecodingRow] = field(default_factory=list)
    labels: str = "clip id"

    @property
    def pairs(self) -> list[str]:
        """Column names of fSC: ``"a/b"`` for every pair a < b in subject order."""
        return [f"{a}/{b}" for a, b in itertools.combinations(self.subjects, 2)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"subjects": self.subjects, "split": self.split, "n_timepoints": self.n_timepoints,
                "pairs": self.pairs, "rows": [asdict(r) for r in self.rows],
                "decoding": [asdict(r) for r in self.decoding], "labels": self.labels}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignmentTable:
        """The table of :meth:`to_dict`'s data."""
        return cls(subjects=list(data["subjects"]), split=data["split"], n_timepoints=int(data["n_timepoints"]),
                   rows=[AlignmentRow(**row) for row in data["rows"]],
                   decoding=[DecodingRow(**row) for row in data.get("decoding", [])],
                   labels=data.get("labels", "clip id"))

    def to_table(self, title: str = "fSC and ISC before and after GLFA (Table 1)") -> Table:
        """Table 1's layout; cells that involve the row's held-out (unseen) subject are bold."""
        head = ["Task"] + [f"fSC {p}" for p in self.pairs] + [f"ISC {s}" for s in self.subjects]
        rows = []
        for row in self.rows:
            cells = [Cell(row.task)]
            cells += [value_cell(row.fsc[p], row.held_out in p.split("/")) for p in self.pairs]
            cells += [value_cell(row.isc[s], row.held_out == s) for s in self.subjects]
            rows.append(cells)
        return Table("table1", title, head, rows,
                     [f"{self.split} split, {self.n_timepoints} time points; bold: the subject held out of fitting."])

    def decoding_table(self) -> Table | None:
        """Inter-subject decoding: one row per held-out subject and alignment; None without decoding rows."""
        if not self.decoding:
            return None
        rows = []
        for r in self.decoding:
            best = max(d.accuracy for d in self.decoding if d.held_out == r.held_out)
            rows.append([Cell(r.held_out), Cell(r.method), value_cell(r.accuracy, r.accuracy == best),
                         value_cell(r.mismatched, False), value_cell(r.chance, False),
                         value_cell(r.fsc_held, False), value_cell(r.isc_held, False)])
        return Table("decoding", f"Inter-subject decoding of the {self.labels} (Bazeille et al. 2021)",
                     ["Held out", "Alignment", "accuracy", "mismatched", "chance", "fSC with others", "ISC"], rows,
                     [f"A ridge classifier of the {self.labels}, trained on the other subjects' aligned {self.split} "
                      "responses (time points standardised across voxels), applied to the held-out subject's; "
                      "mismatched: its predictions scored against other stimuli's labels. fSC and ISC reward "
                      "blur (see the smoothing row); decoding accuracy need not. Bold: the best accuracy per "
                      "subject."])

    def to_markdown(self) -> str:
        """Table 1's layout (see :meth:`to_table`) as Markdown, then the decoding table when there is one."""
        decoding = self.decoding_table()
        return self.to_table().to_markdown() + ("" if decoding is None else "\n" + decoding.to_section())


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


def decoding_rows(held: str, versions: dict[str, dict[str, np.ndarray]], labels: np.ndarray, stimuli: np.ndarray,
                  mask: np.ndarray) -> list[DecodingRow]:
    """Inter-subject decoding of ``held`` after each alignment of ``versions`` ({method: {subject: [T, H, W]}})."""
    from glfa.metrics.alignment import fsc, isc
    from glfa.metrics.decoding import inter_subject_decoding

    rows = []
    for method, responses in versions.items():
        others = {s: x for s, x in responses.items() if s != held}
        scores = inter_subject_decoding(others, responses[held], labels, stimuli, mask)
        rows.append(DecodingRow(
            held_out=held, method=method, accuracy=scores["accuracy"], mismatched=scores["mismatched"],
            chance=scores["chance"], fsc_held=float(np.mean([fsc(responses[held], x, mask) for x in others.values()])),
            isc_held=float(isc(responses, mask)[held]), n=scores["n"]))
    return rows


def timepoint_labels(stimuli: np.ndarray, labels: dict[str, str] | None) -> np.ndarray:
    """The label of every time point's stimulus (the stimulus id itself when ``labels`` is None)."""
    if labels is None:
        return np.asarray(stimuli)
    missing = sorted(set(stimuli) - set(labels))
    if missing:
        raise DataError(f"the labels name {len(missing)} of the measured stimuli nowhere, e.g. {missing[:3]}",
                        field="--labels")
    return np.array([labels[st] for st in stimuli])


def evaluate_alignment(store, config, *, subjects: list[str] | None = None, split: str = "test",
                       labels: dict[str, str] | None = None, labels_name: str = "clip id",
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
    labels : {stimulus id: label}, optional
        The classes of the decoding rows (e.g. categories, :func:`glfa.metrics.decoding.read_stimulus_labels`);
        default: every clip is its own class. ``labels_name`` says what they are, for the table.
    verbose : bool
        Progress bars and one line per fitted aligner.

    Returns
    -------
    AlignmentTable
        Table 1's rows, and per held-out subject the decoding rows of identity, Gaussian smoothing
        tuned on the training subjects (:func:`glfa.align.tune_smoothing`) and GLFA.
    """
    from glfa.align import GLFAAligner, masked_smooth, responses_from_store, timepoint_stimuli, tune_smoothing

    subjects = list(store.subjects if subjects is None else subjects)
    if len(subjects) < 3:
        raise ConfigError(f"leave-one-subject-out alignment needs at least 3 subjects (2 to fit on, 1 held out), "
                          f"got {subjects}", path=store.path, field="subjects")
    mask = store.mask
    test = responses_from_store(store, subjects, split)
    stimuli = timepoint_stimuli(store, subjects, split)
    classes = timepoint_labels(stimuli, labels)
    table = AlignmentTable(subjects=subjects, split=split, n_timepoints=int(next(iter(test.values())).shape[0]),
                           labels=labels_name)
    table.rows.append(alignment_row("identity", test, mask))
    for held in subjects:
        train_subjects = [s for s in subjects if s != held]
        train = responses_from_store(store, train_subjects, "train")
        aligner = GLFAAligner.from_config(config, mask=mask, verbose=verbose).fit(train)
        sigma = tune_smoothing(train, mask)
        del train
        if verbose:
            print(f"GLFA fitted on {','.join(train_subjects)} in {aligner.fit_seconds_:.1f} s "
                  f"(L_GLFA {aligner.loss_history_[0]:.4f} -> {aligner.loss_history_[-1]:.4f})")
        aligned = aligner.transform(test)
        table.rows.append(alignment_row(f"{','.join(train_subjects)} -> {held}", aligned, mask, held_out=held,
                                        train_subjects=train_subjects, fit_seconds=aligner.fit_seconds_,
                                        final_loss=aligner.loss_history_[-1]))
        smoothed = {s: masked_smooth(x, mask, sigma) for s, x in test.items()}
        table.decoding += decoding_rows(held, {"identity": test, f"smoothing, sigma {sigma:.3g} tuned on training":
                                               smoothed, "GLFA": aligned}, classes, stimuli, mask)
    return table


def write_alignment_table(table: AlignmentTable, out_dir: str | Path, config, *, store_path: str | Path) -> dict[str, Path]:
    """Write ``alignment.json`` (table + resolved config), ``alignment.md`` and ``config.json`` atomically."""
    from glfa.io import write_bytes_atomic, write_json_atomic

    out = Path(out_dir)
    data = {"protocol": "alignment/leave-one-subject-out", "store": str(store_path), **table.to_dict(),
            "config": config.to_dict()}
    paths = {"json": out / "alignment.json", "markdown": out / "alignment.md", "config": out / "config.json"}
    write_json_atomic(paths["json"], data)
    write_bytes_atomic(paths["markdown"], table.to_markdown().encode())
    write_json_atomic(paths["config"], config.to_dict())
    return paths


@dataclass
class GlfaAlignment:
    """fSC and ISC of a co-trained model's subjects on the test split, before and after its GLFA layer."""

    method: str
    model_dir: str
    store: str
    table: AlignmentTable

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data."""
        return {"method": self.method, "model_dir": self.model_dir, "store": self.store, "table": self.table.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GlfaAlignment:
        """The inverse of :meth:`to_dict`."""
        return cls(method=data["method"], model_dir=data["model_dir"], store=data["store"],
                   table=AlignmentTable.from_dict(data["table"]))


def open_store(store, recorded: str):
    """A StudyStore: ``store`` (a store or a path) when given, else the recorded path; None if it is gone."""
    from glfa.data.store import StudyStore

    if isinstance(store, StudyStore):
        return store
    path = Path(store if store is not None else recorded)
    return StudyStore.open(path) if path.exists() else None


def _glfa_layer(model_dir: Path):
    """The trained GLFA layer of a co-trained model's encoder, or None when it has none."""
    from glfa.models.encoder import FmriEncoder
    from glfa.models.serialization import read_config

    encoder_dir = model_dir / "encoder"
    saved = read_config(encoder_dir, FmriEncoder.__name__)["config"]
    if not saved.get("model", {}).get("glfa", {}).get("enabled", False):
        return None
    return FmriEncoder.from_pretrained(encoder_dir).glfa.eval()


def glfa_alignment(method: str, model_dir: str | Path, store=None) -> tuple[list[GlfaAlignment], str | None]:
    """fSC and ISC before and after a co-trained model's GLFA layer, one table per held-out subject.

    The layer (``encoder.glfa`` of the co-trained encoder, applied frame-wise) aligns the test
    responses of the model's training subjects and of each held-out subject. Returns the
    tables; or no table and None for a model without a GLFA layer (LEA, fMRI-PTE-V); or no table
    and the reason it cannot be measured (no held-out subject, store not found).
    """
    from glfa.align import apply_frames, responses_from_store
    from glfa.models.serialization import read_json_object

    model_dir = Path(model_dir)
    model = read_json_object(model_dir / "model.json")
    if model.get("kind") != "cotrain":
        return [], None
    if isinstance(model.get("adaptation"), dict):  # glfa adapt: the layer is one subject's, not the shared one
        return [], (f"{method}: adapted to subject {model['adaptation'].get('subject')!r} alone (glfa adapt); its "
                    "GLFA layer is not shared by the other subjects")
    if not (model_dir / "encoder").is_dir():
        return [], f"{method}: the co-trained model has no encoder/ folder ({model_dir})"
    layer = _glfa_layer(model_dir)
    if layer is None:
        return [], None
    train, held_out = list(model.get("train_subjects", [])), list(model.get("held_out", []))
    if not held_out:
        return [], f"{method}: the model holds no subject out (model.json held_out is empty)"
    opened = open_store(store, str(model.get("store", "")))
    if opened is None:
        return [], f"{method}: the training store {model.get('store')} is not found (pass the store to evaluate_run)"
    opened.check_geometry(model.get("geometry"), model_dir)
    tables = []
    for held in held_out:
        subjects = train + [held]
        responses = responses_from_store(opened, subjects, "test")  # {s: [t, h, w]}
        aligned = {s: apply_frames(layer, x) for s, x in responses.items()}
        table = AlignmentTable(subjects=subjects, split="test", n_timepoints=int(len(responses[held])))
        table.rows.append(alignment_row("identity", responses, opened.mask))
        table.rows.append(alignment_row(f"{','.join(train)} -> {held}", aligned, opened.mask, held_out=held,
                                        train_subjects=train))
        tables.append(GlfaAlignment(method=method, model_dir=str(model_dir), store=str(opened.path), table=table))
    return tables, None
