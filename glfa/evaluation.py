"""Evaluation protocols over a study store and over a run's decoded videos.

Alignment (paper section 4.4, Table 1): :func:`evaluate_alignment` runs leave-one-subject-out
GLFA alignment: for every held-out subject h it fits a :class:`~glfa.align.GLFAAligner` on the
other subjects' training responses, transforms every subject's TEST responses with it (h
included, never seen in fitting) and measures fSC for every pair and ISC for every subject,
before (identity) and after alignment. :class:`AlignmentTable` renders the result in the
layout of Table 1 (Markdown) and as JSON.

Decoding (sections 4.5-4.6, supplementary 2): :func:`evaluate_run` reads every generations
folder of a run (``RUN/generations/<method>/<subject>-<split>/``, written by ``glfa generate``)
and measures SSIM and the N-way top-K accuracies (frame-based, and video-based when a video
classifier is configured) of each clip, keeping the per-clip scores for two-sample t-tests
between methods. Each folder's protocol follows from the model that made it: cross-subject
(the subject was not trained on), within-subject (it was) or cross-dataset (the store differs
from the training store). When the run holds a co-trained GLFA model, the trained GLFA layer is
also applied to the test responses of its training and held-out subjects (fSC and ISC before and
after, Table 1 style). :func:`write_video_tables` writes it all as JSON and as Markdown tables in
the layouts of Tables 2 and 3 and supplementary Tables 2 and 3.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glfa.errors import BackboneError, CheckpointError, ConfigError, DataError

# ----------------------------------------------------------------------------- tables


@dataclass
class Cell:
    """One table cell: its text, whether it is the best of its column, and the p-value it shows (if any)."""

    text: str
    bold: bool = False
    p: float | None = None

    def to_markdown(self) -> str:
        """The text, bold as ``**text**``."""
        return f"**{self.text}**" if self.bold else self.text


@dataclass
class Table:
    """A titled table: rendered as Markdown here and as HTML by :mod:`glfa.report`."""

    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table itself: a header line, a rule, one line per row."""
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(c.to_markdown() for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_section(self) -> str:
        """``## title``, the table and its notes."""
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return f"## {self.title}\n\n{self.to_markdown()}{notes}"


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
            cells += [_value_cell(row.fsc[p], row.held_out in p.split("/")) for p in self.pairs]
            cells += [_value_cell(row.isc[s], row.held_out == s) for s in self.subjects]
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
            rows.append([Cell(r.held_out), Cell(r.method), _value_cell(r.accuracy, r.accuracy == best),
                         _value_cell(r.mismatched, False), _value_cell(r.chance, False),
                         _value_cell(r.fsc_held, False), _value_cell(r.isc_held, False)])
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


def _value_cell(value: float, bold: bool) -> Cell:
    return Cell("nan" if math.isnan(value) else f"{value:.3f}", bold)


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
    from glfa.training.checkpoint import write_bytes_atomic, write_json_atomic

    out = Path(out_dir)
    data = {"protocol": "alignment/leave-one-subject-out", "store": str(store_path), **table.to_dict(),
            "config": config.to_dict()}
    paths = {"json": out / "alignment.json", "markdown": out / "alignment.md", "config": out / "config.json"}
    write_json_atomic(paths["json"], data)
    write_bytes_atomic(paths["markdown"], table.to_markdown().encode())
    write_json_atomic(paths["config"], config.to_dict())
    return paths


# ----------------------------------------------------------------------------- decoding protocols

#: The paper's names of the methods of the run-folder contract; other methods keep their own name.
METHOD_LABELS = {"lea": "LEA", "pte-v": "fMRI-PTE-V", "glfa": "GLFA"}
#: Row order of the tables, as the paper's: baselines first, GLFA last, any other method in between.
_METHOD_RANK = {"lea": 0, "pte-v": 1, "glfa": 3}
#: The method every other one is t-tested against (supplementary Table 2).
REFERENCE_METHOD = "glfa"
#: The decoding protocols, in the order of their tables.
PROTOCOLS = ("cross-subject", "within-subject", "cross-dataset")
GENERATE_HINT = "make them with `glfa generate RUN --method M --subject S`"
VIDEO_CLASSIFIER_UNSET = ("not computed: evaluation.video_classifier is not set (a VideoMAE Kinetics-400 folder, "
                          "e.g. MCG-NJU/videomae-base-finetuned-kinetics)")


def method_label(method: str) -> str:
    """The paper's name of ``method`` (``glfa`` -> ``GLFA``, ``pte-v`` -> ``fMRI-PTE-V``, ``lea`` -> ``LEA``)."""
    return METHOD_LABELS.get(method, method)


def method_order(method: str) -> tuple[int, str]:
    """Sort key of methods in tables: LEA, fMRI-PTE-V, other methods by name, GLFA."""
    return _METHOD_RANK.get(method, 2), method


def metric_keys(n_ways: list[int]) -> list[str]:
    """Metric columns in the paper's order: video-based N-way, frame-based N-way, SSIM."""
    return [f"video-{n}way" for n in n_ways] + [f"frame-{n}way" for n in n_ways] + ["ssim"]


def metric_label(key: str) -> str:
    """Column title of a metric key: ``frame-2way`` -> ``frame 2-way``, ``ssim`` -> ``SSIM``."""
    if key == "ssim":
        return "SSIM"
    kind, ways = key.split("-")
    return f"{kind} {ways.removesuffix('way')}-way"


def _json_object(path: Path, error: type[Exception] = DataError) -> dict[str, Any]:
    """A JSON object from ``path``; ``error`` naming the file when it is missing or unreadable."""
    from glfa.models.serialization import read_json_object

    if not path.is_file():
        raise error("file not found", path=path)
    try:
        return read_json_object(path)
    except CheckpointError as exc:
        raise error(exc.detail, path=path) from None


def _npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of the arrays in an ``.npz`` file, read from their headers only."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) \
                        else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                out[name.removesuffix(".npy")] = (tuple(shape), dtype)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"not a readable .npz file ({exc.__class__.__name__}: {exc})", path=path) from None
    return out


@dataclass
class GenerationsFolder:
    """One ``RUN/generations/<method>/<subject>-<split>/`` folder, checked; the clips are read on demand."""

    path: Path
    index: dict[str, Any]
    model_dir: Path
    model: dict[str, Any]
    shape: tuple[int, ...]

    @property
    def method(self) -> str:
        """The method that decoded the clips."""
        return str(self.index["method"])

    @property
    def subject(self) -> str:
        """The subject whose fMRI was decoded."""
        return str(self.index["subject"])

    @property
    def split(self) -> str:
        """The store split of the decoded windows."""
        return str(self.index["split"])

    @classmethod
    def open(cls, path: str | Path, run_dir: str | Path) -> GenerationsFolder:
        """Check ``index.json``, the arrays of ``videos.npz`` and the model folder that made them."""
        path, run_dir = Path(path), Path(run_dir)
        index = _json_object(path / "index.json")
        missing = [k for k in ("method", "subject", "split", "items", "store") if k not in index]
        if missing:
            raise DataError(f"missing key(s) {missing}", path=path / "index.json")
        npz = path / "videos.npz"
        if not npz.is_file():
            raise DataError(f"missing videos.npz (an interrupted glfa generate?); {GENERATE_HINT}", path=path)
        arrays = _npz_headers(npz)
        for key in ("decoded", "truth"):
            if key not in arrays:
                raise DataError(f"missing the array {key!r}; it holds {sorted(arrays)}", path=npz, field=key)
            shape, dtype = arrays[key]
            if dtype != np.uint8 or len(shape) != 5 or shape[-1] != 3:
                raise DataError(f"expected uint8 clips [N, f, h, w, 3], got {dtype} {list(shape)}", path=npz,
                                field=key)
        decoded, truth = arrays["decoded"][0], arrays["truth"][0]
        if decoded != truth:
            raise DataError(f"the decoded clips {list(decoded)} and the ground truth {list(truth)} differ "
                            "([N, frames, height, width, 3]); each decoded clip needs its true clip of the same "
                            "length and size", path=npz, field="truth")
        if decoded[0] != len(index["items"]) or decoded[0] == 0:
            raise DataError(f"holds {decoded[0]} clips, index.json lists {len(index['items'])} (need the same, "
                            "at least one)", path=npz, field="decoded")
        model_dir = cls._find_model(path, run_dir, index)
        return cls(path=path, index=index, model_dir=model_dir,
                   model=_json_object(model_dir / "model.json", CheckpointError), shape=decoded)

    @staticmethod
    def _find_model(path: Path, run_dir: Path, index: dict[str, Any]) -> Path:
        """The recorded model folder, else the run's own folder of that method (a run moved since)."""
        method = str(index["method"])
        candidates = [run_dir / ("lea/model" if method == "lea" else f"cotrain-{method}/model")]
        if index.get("model_dir"):
            candidates.insert(0, Path(index["model_dir"]))
        for candidate in candidates:
            if (candidate / "model.json").is_file():
                return candidate
        raise CheckpointError(f"the model that made these clips is gone: no model.json in "
                              f"{' nor '.join(map(str, candidates))}", path=path / "index.json", field="model_dir")

    def videos(self) -> tuple[np.ndarray, np.ndarray]:
        """(decoded, truth): uint8 ``[N, f, h, w, 3]`` each, in index order."""
        with np.load(self.path / "videos.npz", allow_pickle=False) as data:
            return data["decoded"], data["truth"]

    def protocol(self) -> tuple[str, str]:
        """(protocol, task label) from what the model was trained on."""
        train = [str(s) for s in self.model.get("train_subjects", [])]
        trained_store, store = self.model.get("store"), self.index["store"]
        if trained_store and Path(trained_store).resolve() != Path(store).resolve():
            protocol, task = "cross-dataset", f"{Path(trained_store).name} -> {Path(store).name}: {self.subject}"
        elif self.subject in train:
            protocol, task = "within-subject", f"subject {self.subject}"
        else:
            protocol, task = "cross-subject", f"{','.join(train)} -> {self.subject}"
        return protocol, task if self.split == "test" else f"{task} ({self.split} split)"


def find_generations(run_dir: str | Path, methods: list[str] | None = None) -> list[GenerationsFolder]:
    """Every generations folder of ``run_dir`` (of ``methods`` only, when given), checked, in sorted order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError("run folder not found", path=run_dir)
    root = run_dir / "generations"
    folders = sorted(p.parent for p in root.glob("*/*/index.json"))
    if not folders:
        raise DataError(f"no generations in this run (expected generations/<method>/<subject>-<split>/index.json); "
                        f"{GENERATE_HINT}", path=run_dir)
    if methods is not None:
        have = sorted({p.parent.name for p in folders})
        missing = [m for m in methods if m not in have]
        if missing:
            raise DataError(f"no generations of method(s) {missing}; this run has {have}; {GENERATE_HINT}",
                            path=root, field="methods")
        folders = [p for p in folders if p.parent.name in methods]
    return [GenerationsFolder.open(p, run_dir) for p in folders]


@dataclass
class DecodingResult:
    """The video metrics of one generations folder: one method decoding one subject's split.

    ``scores`` holds the per-clip scores of every computed metric (keys of :func:`metric_keys`),
    ``summary`` their ``{"mean", "std", "n"}`` (and the ``"seed"`` of the N-way trials),
    ``not_computed`` the reason for every metric left out.
    """

    method: str
    subject: str
    split: str
    protocol: str
    task: str
    generations: str
    model_dir: str
    store: str
    train_subjects: list[str]
    count: int
    scores: dict[str, list[float]]
    summary: dict[str, dict[str, float]]
    not_computed: dict[str, str]
    seconds: float


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


def _mean_std(summary: dict[str, float]) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


@dataclass
class VideoEvaluation:
    """Everything ``glfa evaluate RUN`` measured: per-clip scores, summaries, t-tests and the GLFA alignment.

    ``config`` is the resolved config whose ``evaluation`` section set the metrics; ``ttests``
    holds one record per task, metric and pair of methods ``a``, ``b`` (in table order) with the
    fields of :func:`glfa.metrics.stats.two_sample_ttest` of a's scores against b's.
    """

    run_dir: str
    config: dict[str, Any]
    config_source: str
    results: list[DecodingResult]
    ttests: list[dict[str, Any]] = field(default_factory=list)
    alignment: list[GlfaAlignment] = field(default_factory=list)
    alignment_skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def evaluation(self):
        """The :class:`~glfa.config.EvaluationConfig` used."""
        from glfa.config import EvaluationConfig

        return EvaluationConfig.model_validate(self.config["evaluation"])

    @property
    def metrics(self) -> list[str]:
        """The metric keys, in column order."""
        return metric_keys(self.evaluation.n_ways)

    def tasks(self, protocol: str | None = None) -> list[tuple[str, str, list[DecodingResult]]]:
        """``(protocol, task, results in method order)`` for every task (of ``protocol`` only, when given)."""
        groups: dict[tuple[str, str], list[DecodingResult]] = {}
        for r in self.results:
            if protocol is None or r.protocol == protocol:
                groups.setdefault((r.protocol, r.task), []).append(r)
        keys = sorted(groups, key=lambda k: (PROTOCOLS.index(k[0]), k[1]))
        return [(p, t, sorted(groups[(p, t)], key=lambda r: method_order(r.method))) for p, t in keys]

    def ttest(self, task: str, metric: str, a: str, b: str) -> dict[str, Any] | None:
        """The t-test record of methods ``a`` and ``b`` (either order) on ``task`` and ``metric``, if any."""
        for record in self.ttests:
            if record["task"] == task and record["metric"] == metric and {record["a"], record["b"]} == {a, b}:
                return record
        return None

    # ------------------------------------------------------------------ tables

    def _decoding_table(self, protocol: str, key: str, title: str, metrics: list[str]) -> Table | None:
        """Rows = methods grouped by task, columns = ``metrics`` as mean ± std; bold: the best of its task."""
        tasks = self.tasks(protocol)
        if not tasks:
            return None
        rows = []
        for _, task, results in tasks:
            # bold: the best of the task's methods (no bold for a task with one method)
            best = {m: max((r.summary[m]["mean"] for r in results if m in r.summary), default=None)
                    if len(results) > 1 else None for m in metrics}
            for i, r in enumerate(results):
                cells = [Cell(task if i == 0 else ""), Cell(method_label(r.method))]
                cells += [Cell(_mean_std(r.summary[m]), r.summary[m]["mean"] == best[m]) if m in r.summary
                          else Cell("—") for m in metrics]
                rows.append(cells)
        return Table(key, title, ["Task", "Method"] + [metric_label(m) for m in metrics], rows,
                     self._notes(protocol, metrics))

    def _notes(self, protocol: str, metrics: list[str]) -> list[str]:
        ev = self.evaluation
        counts = sorted({r.count for r in self.results if r.protocol == protocol})
        notes = [f"Mean ± standard deviation over the {'/'.join(map(str, counts))} clips of each task; bold: the "
                 f"best method of its task. N-way top-{ev.top_k}: {ev.trials} trials per clip, ground truth = the "
                 f"classifier's top-{ev.ground_truth_top} on the true frame, seed {ev.seed}."]
        reasons: dict[str, list[str]] = {}
        for r in self.results:
            for m, why in r.not_computed.items():
                if r.protocol == protocol and m in metrics and metric_label(m) not in reasons.setdefault(why, []):
                    reasons[why].append(metric_label(m))
        return notes + [f"{', '.join(labels)}: {why}" for why, labels in reasons.items()]

    def _ttest_table(self) -> Table | None:
        """Supplementary Table 2: each method against GLFA, mean ± std with the t-test's p-value."""
        from glfa.metrics.stats import significance

        metrics, rows = self.metrics, []
        for protocol, task, results in self.tasks():
            methods = [r.method for r in results]
            if REFERENCE_METHOD not in methods or len(methods) < 2:
                continue
            for i, r in enumerate(results):
                is_ref = r.method == REFERENCE_METHOD
                cells = [Cell(f"{task} ({protocol})" if i == 0 else ""), Cell(method_label(r.method)),
                         Cell("—" if is_ref else method_label(REFERENCE_METHOD))]
                for m in metrics:
                    if m not in r.summary:
                        cells.append(Cell("—"))
                        continue
                    test = None if is_ref else self.ttest(task, m, r.method, REFERENCE_METHOD)
                    if test is None:
                        cells.append(Cell(_mean_std(r.summary[m])))
                    else:
                        p = test["p"]
                        band = significance(p) if math.isfinite(p) else "undefined"
                        cells.append(Cell(f"{_mean_std(r.summary[m])} ({band}, p={p:.2g})", p=p))
                rows.append(cells)
        if not rows:
            return None
        return Table("supp-table2", "Two-sample t-tests against GLFA (supplementary Table 2)",
                     ["Task", "Method", "t-test reference"] + [metric_label(m) for m in metrics], rows,
                     [f"p: two-sample (Student) t-test of the per-clip scores against "
                      f"{method_label(REFERENCE_METHOD)} on the same task, in the paper's bands p<0.001 (cyan), "
                      "p<0.05 (pink), p>0.05 (gray)."])

    def tables(self) -> list[Table]:
        """Every table this evaluation has data for, in the paper's order."""
        with_ssim, without_ssim = self.metrics, self.metrics[:-1]
        tables = [
            self._decoding_table("cross-subject", "table2", "Cross-subject decoding (Table 2)", with_ssim),
            self._decoding_table("within-subject", "table3", "Within-subject decoding (Table 3)", with_ssim),
            self._ttest_table(),
            self._decoding_table("cross-dataset", "supp-table3", "Cross-dataset decoding (supplementary Table 3)",
                                 without_ssim),
        ]
        if tables[3] is not None:
            tables[3].notes.append("SSIM is left out as in the paper's layout (there the two stimulus sets differ "
                                   "in resolution); it is in video.json.")
        tables += [a.table.to_table(f"fSC and ISC before and after the trained GLFA layer of "
                                    f"{method_label(a.method)} (Table 1 style)") for a in self.alignment]
        return [t for t in tables if t is not None]

    def to_markdown(self) -> str:
        """Every table as a Markdown document."""
        present = {r.protocol for r in self.results}
        absent = [p for p in PROTOCOLS if p not in present]
        parts = [f"# Video decoding: {self.run_dir}\n",
                 f"Config: {self.config_source}. {len(self.results)} generations folders evaluated in "
                 f"{self.seconds:.1f} s.\n"]
        parts += [t.to_section() for t in self.tables()]
        if absent:
            parts.append(f"Not in this run: {', '.join(absent)} generations.\n")
        parts += [f"GLFA alignment not measured: {why}\n" for why in self.alignment_skipped]
        return "\n".join(parts)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (everything: config, seeds, per-clip scores, summaries, t-tests, alignment)."""
        return {"run_dir": self.run_dir, "config": self.config, "config_source": self.config_source,
                "metrics": self.metrics, "seed": self.evaluation.seed,
                "results": [asdict(r) for r in self.results], "ttests": self.ttests,
                "alignment": [a.to_dict() for a in self.alignment], "alignment_skipped": self.alignment_skipped,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoEvaluation:
        """The inverse of :meth:`to_dict`."""
        return cls(run_dir=data["run_dir"], config=data["config"], config_source=data["config_source"],
                   results=[DecodingResult(**r) for r in data["results"]], ttests=list(data["ttests"]),
                   alignment=[GlfaAlignment.from_dict(a) for a in data["alignment"]],
                   alignment_skipped=list(data["alignment_skipped"]), seconds=float(data["seconds"]))

    @classmethod
    def load(cls, path: str | Path) -> VideoEvaluation:
        """Read ``video.json`` written by :func:`write_video_tables`."""
        data = _json_object(Path(path))
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError) as exc:
            raise DataError(f"not a video evaluation ({exc.__class__.__name__}: {exc}); rerun `glfa evaluate RUN`",
                            path=path) from None


def _resolve_config(config, folders: list[GenerationsFolder]):
    """The config given, else the one recorded with the first folder's model, else the defaults."""
    from glfa.config import GlfaConfig, validate_config

    if config is not None:
        return config, config.source
    for folder in folders:
        if isinstance(folder.model.get("config"), dict):
            source = str(folder.model_dir / "model.json")
            return validate_config(folder.model["config"], source), source
    return GlfaConfig(), "<defaults>"


class CachedClassifier:
    """A classifier whose ``probabilities`` are remembered by the content of their input.

    Every N-way metric of a generations folder classifies the same frames, and every method
    decoding the same windows has the same ground truth: each array is classified once.
    """

    def __init__(self, classifier):
        self.classifier = classifier
        self._cache: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def probabilities(self, inputs: np.ndarray, **kwargs) -> np.ndarray:
        """The wrapped classifier's probabilities of ``inputs``, computed once per distinct array."""
        import hashlib

        inputs = np.ascontiguousarray(inputs)
        key = (hashlib.sha1(inputs.view(np.uint8).data).hexdigest(), inputs.shape)
        if key not in self._cache:
            self._cache[key] = self.classifier.probabilities(inputs, **kwargs)
        return self._cache[key]


def _load_classifier(loader, value, field: str, device) -> CachedClassifier:
    """``loader(value, device)``, cached; a missing or wrong folder is a BackboneError naming the config field."""
    try:
        return CachedClassifier(loader(value, device))
    except BackboneError as exc:
        raise BackboneError(exc.detail, path=exc.path, field=field) from None


def score_clips(decoded: np.ndarray, truth: np.ndarray, evaluation, frame_classifier,
                video_classifier=None) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Per-clip scores of every metric of ``evaluation`` (an EvaluationConfig), and why any is missing.

    ``decoded`` and ``truth`` are uint8 ``[N, f, h, w, 3]``; video-based N-way needs
    ``video_classifier``. Every N-way metric uses ``evaluation.seed``, so methods are scored on
    the same random trials.
    """
    from glfa.metrics.video import frame_n_way_scores, ssim_scores, video_n_way_scores

    options = {"top_k": evaluation.top_k, "trials": evaluation.trials,
               "ground_truth_top": evaluation.ground_truth_top, "seed": evaluation.seed}
    scores: dict[str, np.ndarray] = {}
    not_computed: dict[str, str] = {}
    for n in evaluation.n_ways:
        if video_classifier is None:
            not_computed[f"video-{n}way"] = VIDEO_CLASSIFIER_UNSET
        else:
            scores[f"video-{n}way"] = video_n_way_scores(video_classifier, decoded, truth, n_way=n, **options)
        scores[f"frame-{n}way"] = frame_n_way_scores(frame_classifier, decoded, truth, n_way=n, **options)
    scores["ssim"] = ssim_scores(decoded, truth)
    order = metric_keys(evaluation.n_ways)
    return {k: [float(v) for v in np.asarray(scores[k])] for k in order if k in scores}, not_computed


def method_ttests(results: list[DecodingResult], metrics: list[str]) -> list[dict[str, Any]]:
    """Two-sample t-tests between every pair of methods of every task, for every metric both have."""
    from glfa.metrics.stats import two_sample_ttest

    groups: dict[str, list[DecodingResult]] = {}
    for r in results:
        groups.setdefault(r.task, []).append(r)
    out = []
    for task, group in groups.items():
        group = sorted(group, key=lambda r: method_order(r.method))
        for a, b in itertools.combinations(group, 2):
            for m in metrics:
                if m in a.scores and m in b.scores and len(a.scores[m]) > 1 and len(b.scores[m]) > 1:
                    with warnings.catch_warnings():  # equal constant scores: p is nan, recorded as such
                        warnings.simplefilter("ignore", RuntimeWarning)
                        test = two_sample_ttest(np.asarray(a.scores[m]), np.asarray(b.scores[m]))
                    out.append({"task": task, "protocol": a.protocol, "metric": m, "a": a.method,
                                "b": b.method, **test})
    return out


def _open_store(store, recorded: str):
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

    model_dir = Path(model_dir)
    model = _json_object(model_dir / "model.json", CheckpointError)
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
    opened = _open_store(store, str(model.get("store", "")))
    if opened is None:
        return [], f"{method}: the training store {model.get('store')} is not found (pass the store to evaluate_run)"
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


def evaluate_run(run_dir: str | Path, *, config=None, store=None, methods: list[str] | None = None,
                 progress: bool = True) -> VideoEvaluation:
    """Video metrics of every generations folder of a run, t-tests between methods, and GLFA's alignment.

    Parameters
    ----------
    run_dir : path
        The run folder; its ``generations/<method>/<subject>-<split>/`` folders are evaluated.
    config : GlfaConfig, optional
        Its ``evaluation`` section sets the metrics (N-ways, top-K, trials, classifiers, seed).
        Default: the config recorded in the generations' model folder (``model.json``), else the
        defaults.
    store : StudyStore or path, optional
        The store of the alignment part; default: the one recorded in ``model.json``.
    methods : list of str, optional
        Only these methods' generations (default: every one).
    progress : bool
        A progress bar over the generations folders.

    Raises
    ------
    DataError
        No generations, a method without generations, decoded and true clips of different shapes.
    BackboneError
        A classifier folder that is missing or of the wrong kind (field ``evaluation.frame_classifier``
        or ``evaluation.video_classifier``).
    """
    from tqdm.auto import tqdm

    from glfa.backbones import load_frame_classifier, load_video_classifier, resolve_device
    from glfa.metrics.video import summarize

    start = time.perf_counter()
    run_dir = Path(run_dir)
    folders = find_generations(run_dir, methods)
    config, source = _resolve_config(config, folders)
    evaluation = config.evaluation
    device = resolve_device(config.device)
    frame_classifier = _load_classifier(load_frame_classifier, evaluation.frame_classifier,
                                        "evaluation.frame_classifier", device)
    video_classifier = None if evaluation.video_classifier is None else _load_classifier(
        load_video_classifier, evaluation.video_classifier, "evaluation.video_classifier", device)
    results = []
    for folder in tqdm(folders, desc="evaluate", unit="folder", disable=not progress):
        began = time.perf_counter()
        decoded, truth = folder.videos()
        scores, not_computed = score_clips(decoded, truth, evaluation, frame_classifier, video_classifier)
        protocol, task = folder.protocol()
        summary = {k: {**summarize(np.asarray(v)), **({} if k == "ssim" else {"seed": evaluation.seed})}
                   for k, v in scores.items()}
        results.append(DecodingResult(
            method=folder.method, subject=folder.subject, split=folder.split, protocol=protocol, task=task,
            generations=str(folder.path), model_dir=str(folder.model_dir), store=str(folder.index["store"]),
            train_subjects=[str(s) for s in folder.model.get("train_subjects", [])], count=len(decoded),
            scores=scores, summary=summary,
            not_computed=not_computed, seconds=round(time.perf_counter() - began, 3)))
    out = VideoEvaluation(run_dir=str(run_dir), config=config.to_dict(), config_source=source, results=results,
                          ttests=method_ttests(results, metric_keys(evaluation.n_ways)))
    models = {f.method: f.model_dir for f in folders}
    for method in sorted(models, key=method_order):
        tables, skipped = glfa_alignment(method, models[method], store)
        out.alignment += tables
        out.alignment_skipped += [skipped] if skipped else []
    if not out.alignment and not out.alignment_skipped:
        out.alignment_skipped.append("no evaluated method is a co-trained model with a GLFA layer")
    out.seconds = round(time.perf_counter() - start, 3)
    return out


def combine_evaluations(sources: list[str | Path], out_dir: str | Path) -> VideoEvaluation:
    """One evaluation from several runs' ``glfa evaluate``: the whole leave-one-subject-out Table 2.

    Leave-one-subject-out decoding trains one run per held-out subject ("1,2 -> 3", "1,3 -> 2",
    "2,3 -> 1"), and each run's evaluation scores its own task. This joins them, so the tables
    have a block of rows per held-out subject, with each run's t-tests and GLFA alignment.

    Parameters
    ----------
    sources : list of paths
        Run folders (their ``evaluation/video.json``) or ``video.json`` files, at least two.
    out_dir : path
        Where the joined tables will be written; it names the result.

    Raises
    ------
    DataError
        Fewer than two sources, a run not yet evaluated, runs scored with different evaluation
        settings (their numbers would not be comparable), or one method on one task in two runs.
    """
    if len(sources) < 2:
        raise DataError(f"expected at least two evaluated runs to combine, got {len(sources)}", field="runs")
    paths = [Path(src) / "evaluation" / "video.json" if Path(src).is_dir() else Path(src) for src in sources]
    for path in paths:
        if not path.is_file():
            raise DataError("no video evaluation here; run `glfa evaluate RUN` on the run first", path=path)
    evaluations = [VideoEvaluation.load(path) for path in paths]
    first = evaluations[0].config["evaluation"]
    for path, other in zip(paths[1:], evaluations[1:]):
        settings = other.config["evaluation"]
        differ = sorted(k for k in set(first) | set(settings) if first.get(k) != settings.get(k))
        if differ:
            raise DataError(f"scored with other evaluation settings than {paths[0]} ({', '.join(differ)}); "
                            "evaluate every run with the same -c CONFIG", path=path, field="evaluation")
    seen: dict[tuple[str, str, str, str], Path] = {}
    for path, evaluation in zip(paths, evaluations):
        for r in evaluation.results:
            key = (r.protocol, r.task, r.method, r.split)
            if key in seen:
                raise DataError(f"method {r.method!r} on task {r.task!r} ({r.split}) is also in {seen[key]}",
                                path=path)
            seen[key] = path
    return VideoEvaluation(
        run_dir=str(out_dir), config=evaluations[0].config,
        config_source=", ".join(dict.fromkeys(e.config_source for e in evaluations)),
        results=[r for e in evaluations for r in e.results], ttests=[t for e in evaluations for t in e.ttests],
        alignment=[a for e in evaluations for a in e.alignment],
        alignment_skipped=list(dict.fromkeys(s for e in evaluations for s in e.alignment_skipped)),
        seconds=round(sum(e.seconds for e in evaluations), 3))


def write_video_tables(evaluation: VideoEvaluation, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``video.json`` (everything) and ``video.md`` (the tables) atomically; default ``RUN/evaluation``."""
    from glfa.training.checkpoint import write_bytes_atomic, write_json_atomic

    out = Path(out_dir) if out_dir is not None else Path(evaluation.run_dir) / "evaluation"
    paths = {"json": out / "video.json", "markdown": out / "video.md"}
    write_json_atomic(paths["json"], evaluation.to_dict())
    write_bytes_atomic(paths["markdown"], evaluation.to_markdown().encode())
    return paths
