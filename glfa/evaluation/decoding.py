"""Decoding evaluated (paper sections 4.5-4.6, supplementary 2): a run's decoded videos scored.

:func:`evaluate_run` reads every generations folder of a run
(``RUN/generations/<method>/<subject>-<split>/``, written by ``glfa generate``) and measures SSIM
and the N-way top-K accuracies (frame-based, and video-based when a video classifier is
configured) of each clip, keeping the per-clip scores for two-sample t-tests between methods.
Each folder's protocol follows from the model that made it: cross-subject (the subject was not
trained on), within-subject (it was) or cross-dataset (the store differs from the training
store). When the run holds a co-trained GLFA model, the trained GLFA layer is also applied to
the test responses of its training and held-out subjects
(:func:`glfa.evaluation.alignment.glfa_alignment`). :func:`write_video_tables` writes it all as
JSON and as Markdown tables in the layouts of Tables 2 and 3 and supplementary Tables 2 and 3.

Beside the paper's metrics, every folder gets the mismatched baseline (:func:`score_clips`,
:mod:`glfa.metrics.baseline`): each decoded clip is also scored against the ground truth of
partner clips of other stimuli, for every metric with a truth (SSIM, PSNR, N-way with
MinD-Video's top-3 rule and the strict top-1 rule, CLIP similarity), giving the brain signal
(matched - mismatched) and its paired permutation p-value; CLIP-pcc needs no truth. Tables 2
and 3 show, beside each metric, its mismatched baseline, the brain signal and p; the field's
other metrics get tables of the same layout. With a stage-1 encoder in the run,
:func:`brain_retrieval` ranks each window's true clip among all test clips from the encoder's
CLIP-space embedding of the fMRI.
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from glfa.errors import BackboneError, CheckpointError, DataError
from glfa.evaluation.alignment import GlfaAlignment, glfa_alignment, open_store
from glfa.evaluation.tables import Cell, Table, mean_std, signal_cell
from glfa.metrics.video import PSNR_CAP
from glfa.runs import CONTRASTIVE, RunLayout, same_store

#: The paper's names of the methods of the run-folder contract; other methods keep their own name.
METHOD_LABELS = {"lea": "LEA", "pte-v": "fMRI-PTE-V", "glfa": "GLFA"}
#: Row order of the tables, as the paper's: baselines first, GLFA last, any other method in between.
_METHOD_RANK = {"lea": 0, "pte-v": 1, "glfa": 3}
#: The method every other one is t-tested against (supplementary Table 2).
REFERENCE_METHOD = "glfa"
#: The decoding protocols in the order of their tables, with each table's key and title in the paper's layout.
PROTOCOL_TABLES = {"cross-subject": ("table2", "Cross-subject decoding (Table 2)"),
                   "within-subject": ("table3", "Within-subject decoding (Table 3)"),
                   "cross-dataset": ("supp-table3", "Cross-dataset decoding (supplementary Table 3)")}
PROTOCOLS = tuple(PROTOCOL_TABLES)
#: The title suffix of a metric's column of the mismatched baseline and the brain signal.
MISMATCHED_COLUMN = " mismatched (Δ, p)"
GENERATE_HINT = "make them with `glfa generate RUN --method M --subject S`"
#: The significance level of the brain signal (paired permutation test of matched - mismatched).
SIGNAL_LEVEL = 0.05
# Frames and videos per batch of the metric networks: fixed, so a process's share under
# `accelerate launch` is cut into the batches one process would make (the same numbers).
FRAME_BATCH = 64
VIDEO_BATCH = 8


def has_signal(record: dict[str, Any], level: float = SIGNAL_LEVEL) -> bool:
    """Whether a :func:`~glfa.metrics.baseline.brain_signal` record shows matched significantly above mismatched."""
    return record["difference"] > 0 and record["p"] < level


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


def extra_metric_keys(n_ways: list[int]) -> list[str]:
    """The field's metrics beyond the paper's: strict N-ways (ground truth = top-1 class), PSNR, CLIP, CLIP-pcc."""
    return ([f"video-{n}way-strict" for n in n_ways] + [f"frame-{n}way-strict" for n in n_ways]
            + ["psnr", "clip", "clip-pcc"])


#: The metrics without a ground truth, hence without a mismatched baseline.
NO_TRUTH = ("clip-pcc",)
#: Titles of the metrics that are not N-ways.
_METRIC_LABELS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "clip": "CLIP similarity", "clip-pcc": "CLIP-pcc"}


def metric_label(key: str) -> str:
    """Column title of a metric key: ``frame-2way`` -> ``frame 2-way``, ``frame-2way-strict`` -> ``frame 2-way
    strict``, ``ssim`` -> ``SSIM``."""
    if key in _METRIC_LABELS:
        return _METRIC_LABELS[key]
    kind, ways, *strict = key.split("-")
    return f"{kind} {ways.removesuffix('way')}-way" + (" strict" if strict else "")


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
        from glfa.generate import decoder_folder

        candidates = [decoder_folder(run_dir, str(index["method"]))]
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

    def stimuli(self) -> list[str]:
        """The stimulus of each clip, in index order (clips of one stimulus are never each other's mismatch)."""
        items = self.index["items"]
        missing = [i for i, item in enumerate(items) if not isinstance(item, dict) or "stimulus_id" not in item]
        if missing:
            raise DataError(f"item(s) {missing[:5]} have no stimulus_id; {GENERATE_HINT}",
                            path=self.path / "index.json", field="items")
        return [str(item["stimulus_id"]) for item in items]

    def protocol(self) -> tuple[str, str]:
        """(protocol, task label) from what the model was trained on."""
        train = [str(s) for s in self.model.get("train_subjects", [])]
        trained_store, store = self.model.get("store"), self.index["store"]
        if trained_store and not same_store(self.model, self.index):
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
    layout = RunLayout(run_dir)
    found = layout.generations_folders()  # [(method, folder)]
    if not found:
        raise DataError(f"no generations in this run (expected generations/<method>/<subject>-<split>/index.json); "
                        f"{GENERATE_HINT}", path=run_dir)
    if methods is not None:
        have = sorted({method for method, _ in found})
        missing = [m for m in methods if m not in have]
        if missing:
            raise DataError(f"no generations of method(s) {missing}; this run has {have}; {GENERATE_HINT}",
                            path=layout.generations_root, field="methods")
        found = [(method, p) for method, p in found if method in methods]
    return [GenerationsFolder.open(p, run_dir) for _, p in found]


@dataclass
class DecodingResult:
    """The video metrics of one generations folder: one method decoding one subject's split.

    ``scores`` holds the per-clip scores of every computed metric (keys of :func:`metric_keys`),
    ``summary`` their ``{"mean", "std", "n"}`` (and the ``"seed"`` of the N-way trials),
    ``not_computed`` the reason for every metric left out. ``extra_scores`` holds the per-clip
    scores of the field's other metrics (:func:`extra_metric_keys`), ``brain_signal`` the
    matched/mismatched record of every metric with a ground truth (see :func:`score_clips`).
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
    extra_scores: dict[str, list[float]] = field(default_factory=dict)
    brain_signal: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summaries(self) -> dict[str, dict[str, float]]:
        """``{"mean", "std", "n"}`` of every metric, the paper's and the others."""
        from glfa.metrics.video import summarize

        return {**self.summary, **{k: summarize(np.asarray(v)) for k, v in self.extra_scores.items()}}

    def not_significant(self, level: float = SIGNAL_LEVEL) -> list[str]:
        """The metrics whose brain signal is not significant: matched not above mismatched at p < ``level``."""
        return [k for k, v in self.brain_signal.items() if not has_signal(v, level)]



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
    retrieval: list[dict[str, Any]] = field(default_factory=list)
    retrieval_skipped: list[str] = field(default_factory=list)

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

    def _decoding_table(self, protocol: str, key: str, title: str, metrics: list[str], about: str) -> Table | None:
        """Rows = methods grouped by task; per metric its matched score and, where it has a ground truth, the
        mismatched baseline with the brain signal (:func:`~glfa.evaluation.tables.signal_cell`).

        The matched column shows mean ± std over clips, bold for the best of its task. The notes
        say so and what the metrics are (``about``), then why any metric was not computed, then
        what the mismatched columns hold.
        """
        tasks = self.tasks(protocol)
        if not tasks:
            return None
        rows = []
        for _, task, results in tasks:
            summaries = [r.summaries() for r in results]
            # bold: the best of the task's methods (no bold for a task with one method)
            best = {m: max((s[m]["mean"] for s in summaries if m in s), default=None)
                    if len(results) > 1 else None for m in metrics}
            for i, (r, summary) in enumerate(zip(results, summaries)):
                cells = [Cell(task if i == 0 else ""), Cell(method_label(r.method))]
                for m in metrics:
                    cells.append(Cell(mean_std(summary[m]), summary[m]["mean"] == best[m]) if m in summary
                                 else Cell("—"))
                    if m not in NO_TRUTH:
                        cells.append(signal_cell(r.brain_signal[m]) if m in r.brain_signal else Cell("—"))
                rows.append(cells)
        header = ["Task", "Method"]
        for m in metrics:
            header += [metric_label(m)] if m in NO_TRUTH else [metric_label(m), metric_label(m) + MISMATCHED_COLUMN]
        counts = "/".join(map(str, sorted({r.count for r in self.results if r.protocol == protocol})))
        notes = [f"Mean ± standard deviation over the {counts} clips of each task; bold: the best method of its "
                 f"task. {about}"]
        return Table(key, title, header, rows, notes + self._not_computed(protocol, metrics) + [self._signal_note()])

    def _not_computed(self, protocol: str, metrics: list[str]) -> list[str]:
        """One note per reason a metric of ``metrics`` was not computed on ``protocol``, naming the metrics."""
        reasons: dict[str, list[str]] = {}
        for r in self.results:
            for m, why in r.not_computed.items():
                if r.protocol == protocol and m in metrics and metric_label(m) not in reasons.setdefault(why, []):
                    reasons[why].append(metric_label(m))
        return [f"{', '.join(labels)}: {why}" for why, labels in reasons.items()]

    def _signal_note(self) -> str:
        """What the mismatched columns hold, and what "above chance" means."""
        ev = self.evaluation
        signal = next((v for r in self.results for v in r.brain_signal.values()), None)
        partners = signal["partners"] if signal else ev.mismatched_partners
        return (f"{MISMATCHED_COLUMN.strip()}: the same decoded clips scored against the ground truth of {partners} "
                f"other test clips of the task, of other stimuli (seeded, seed {ev.seed}, the same partners for "
                "every method): the mismatched mean, the brain signal Δ = matched - mismatched and its one-sided "
                f"paired permutation p-value ({ev.permutations} relabellings; coloured in the report: p < 0.001 "
                "cyan, p < 0.05 pink, else gray). A method decodes the brain only where matched is above mismatched "
                f"(Δ > 0, p < {SIGNAL_LEVEL}); above 1/N chance says nothing.")

    def _paper_table(self, protocol: str, key: str, title: str, metrics: list[str]) -> Table | None:
        """Table 2, 3 or supplementary Table 3: the paper's metrics, each beside its mismatched baseline."""
        ev = self.evaluation
        return self._decoding_table(protocol, key, title, metrics, (
            f"N-way top-{ev.top_k}: {ev.trials} trials per clip, ground truth = the classifier's "
            f"top-{ev.ground_truth_top} on the true frame (MinD-Video's rule; the strict top-1 rule is in the table "
            f"of the other metrics), seed {ev.seed}."))

    def _extra_table(self, protocol: str, key: str, title: str) -> Table | None:
        """The field's other metrics of ``protocol`` (strict N-ways, PSNR, CLIP, CLIP-pcc) in the layout of Table 2."""
        keys = [k for k in extra_metric_keys(self.evaluation.n_ways)
                if any(k in r.extra_scores for r in self.results if r.protocol == protocol)]
        if not keys:
            return None
        ev = self.evaluation
        return self._decoding_table(protocol, f"{key}-more", f"{title}: the field's other metrics", keys, (
            f"N-way strict: top-{ev.top_k} of {ev.trials} trials per clip as in the paper's table, but the ground "
            f"truth is the classifier's top-1 class on the true frame (the paper's table uses MinD-Video's "
            f"top-{ev.ground_truth_top}), seed {ev.seed}. PSNR: dB, peak 255, a frame equal to its truth counted as "
            f"{PSNR_CAP:g} dB. CLIP: cosine of CLIP image embeddings (stage 1's CLIP), decoded frame against real "
            "frame; CLIP-pcc: consecutive decoded frames against each other (temporal consistency: no ground truth, "
            "no baseline)."))

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
                        cells.append(Cell(mean_std(r.summary[m])))
                    else:
                        p = test["p"]
                        band = significance(p) if math.isfinite(p) else "undefined"
                        cells.append(Cell(f"{mean_std(r.summary[m])} ({band}, p={p:.2g})", p=p))
                rows.append(cells)
        if not rows:
            return None
        return Table("supp-table2", "Two-sample t-tests against GLFA (supplementary Table 2)",
                     ["Task", "Method", "t-test reference"] + [metric_label(m) for m in metrics], rows,
                     [f"p: two-sample (Student) t-test of the per-clip scores against "
                      f"{method_label(REFERENCE_METHOD)} on the same task, in the paper's bands p<0.001 (cyan), "
                      "p<0.05 (pink), p>0.05 (gray)."])

    def _retrieval_table(self) -> Table | None:
        """Brain-to-video retrieval of the stage-1 encoder: top-1 and top-5 with chance, mismatched and p."""
        if not self.retrieval:
            return None
        tops = sorted({int(t) for r in self.retrieval for t in r["top"]})
        head = ["Subject", "Split", "Stage-1 subjects", "Clips"]
        for t in tops:
            head += [f"top-{t}", f"top-{t} chance", f"top-{t} mismatched", f"top-{t} p"]
        rows = []
        for r in self.retrieval:
            cells = [Cell(r["subject"]), Cell(r["split"]), Cell(",".join(r["train_subjects"]) or "?"),
                     Cell(str(r["count"]))]
            for t in tops:
                s = r["top"].get(str(t))
                cells += [Cell("—")] * 4 if s is None else [
                    Cell(f"{s['matched']:.3f}"), Cell(f"{s['chance']:.3f}"), Cell(f"{s['mismatched']:.3f}"),
                    Cell(f"{s['p']:.2g}", bold=has_signal(s), p=s["p"])]
            rows.append(cells)
        ev = self.evaluation
        return Table("retrieval", "Brain-to-video retrieval (stage-1 encoder)", head, rows, [
            "The stage-1 encoder's CLIP-space embedding of each test window's fMRI ranks every test clip of the "
            "subject by mean cosine with the clip's CLIP frame embeddings; top-k: the fraction of windows whose "
            f"true clip is among the k best (ties count against it); chance k / clips. Mismatched: the same for "
            f"the {ev.mismatched_partners} partner clips of the mismatched baseline; p: one-sided paired permutation "
            f"test ({ev.permutations} relabellings), bold: p < {SIGNAL_LEVEL}. It measures what the encoder holds, "
            "whatever the generator makes of it."])

    def tables(self) -> list[Table]:
        """Every table of the paper's layouts this evaluation has data for, in the paper's order.

        Tables 2, 3 and supplementary Table 3 show each metric's mismatched baseline and brain
        signal beside it.
        """
        (key2, title2), (key3, title3), (key_supp3, title_supp3) = PROTOCOL_TABLES.values()
        with_ssim, without_ssim = self.metrics, self.metrics[:-1]
        tables = [
            self._paper_table("cross-subject", key2, title2, with_ssim),
            self._paper_table("within-subject", key3, title3, with_ssim),
            self._ttest_table(),
            self._paper_table("cross-dataset", key_supp3, title_supp3, without_ssim),
        ]
        if tables[3] is not None:
            tables[3].notes.append("SSIM is left out as in the paper's layout (there the two stimulus sets differ "
                                   "in resolution); it is in video.json.")
        tables += [a.table.to_table(f"fSC and ISC before and after the trained GLFA layer of "
                                    f"{method_label(a.method)} (Table 1 style)") for a in self.alignment]
        return [t for t in tables if t is not None]

    def extra_tables(self) -> list[Table]:
        """Beyond the paper: the field's other metrics per protocol, in the layout of Tables 2 and 3 (matched beside
        mismatched), then brain-to-video retrieval, where present."""
        tables = [self._extra_table(protocol, key, title) for protocol, (key, title) in PROTOCOL_TABLES.items()]
        return [t for t in tables + [self._retrieval_table()] if t is not None]

    def to_markdown(self) -> str:
        """Every table as a Markdown document."""
        present = {r.protocol for r in self.results}
        absent = [p for p in PROTOCOLS if p not in present]
        parts = [f"# Video decoding: {self.run_dir}\n",
                 f"Config: {self.config_source}. {len(self.results)} generations folders evaluated in "
                 f"{self.seconds:.1f} s.\n"]
        parts += [t.to_section() for t in self.tables() + self.extra_tables()]
        if absent:
            parts.append(f"Not in this run: {', '.join(absent)} generations.\n")
        parts += [f"GLFA alignment not measured: {why}\n" for why in self.alignment_skipped]
        parts += [f"Retrieval not measured: {why}\n" for why in self.retrieval_skipped]
        return "\n".join(parts)

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (everything: config, seeds, per-clip scores, summaries, t-tests, alignment)."""
        return {"run_dir": self.run_dir, "config": self.config, "config_source": self.config_source,
                "metrics": self.metrics, "extra_metrics": extra_metric_keys(self.evaluation.n_ways),
                "seed": self.evaluation.seed,
                "results": [asdict(r) for r in self.results], "ttests": self.ttests,
                "alignment": [a.to_dict() for a in self.alignment], "alignment_skipped": self.alignment_skipped,
                "seconds": self.seconds, "retrieval": self.retrieval, "retrieval_skipped": self.retrieval_skipped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoEvaluation:
        """The inverse of :meth:`to_dict`."""
        return cls(run_dir=data["run_dir"], config=data["config"], config_source=data["config_source"],
                   results=[DecodingResult(**r) for r in data["results"]], ttests=list(data["ttests"]),
                   alignment=[GlfaAlignment.from_dict(a) for a in data["alignment"]],
                   alignment_skipped=list(data["alignment_skipped"]), seconds=float(data["seconds"]),
                   retrieval=list(data.get("retrieval", [])), retrieval_skipped=list(data.get("retrieval_skipped", [])))

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


class ContentCache:
    """A function of an array whose results are remembered by the array's content.

    Every metric of a generations folder reads the same classifier probabilities and CLIP
    embeddings, matched and mismatched pairings alike, and every method decoding the same
    windows has the same ground truth: each distinct array goes through the networks once.
    Under ``accelerate launch`` (``processes``, a :class:`~glfa.training.loop.Processes`) the
    batches of ``batch_size`` rows are dealt out to the processes and the results gathered in
    every process: each batch is the one a single process computes, so the numbers are the same.
    """

    def __init__(self, compute, processes=None, batch_size: int | None = None):
        self.compute = compute
        self.processes = processes
        self.batch_size = batch_size
        self._cache: dict[tuple[str, tuple[int, ...]], Any] = {}

    def __call__(self, inputs: np.ndarray):
        """``compute(inputs)``, computed once per distinct array."""
        import hashlib

        inputs = np.ascontiguousarray(inputs)
        key = (hashlib.sha1(inputs.view(np.uint8).data).hexdigest(), inputs.shape)
        if key not in self._cache:
            self._cache[key] = self._shared(inputs)
        return self._cache[key]

    def _shared(self, inputs: np.ndarray):
        """``compute(inputs)``, this process computing its share of the batches (an array or a tuple of arrays)."""
        size = self.batch_size
        if self.processes is None or self.processes.count == 1 or not size:
            return self.compute(inputs)
        starts = range(0, len(inputs), size)
        mine = {s: self.compute(inputs[s:s + size]) for s in starts[self.processes.rank::self.processes.count]}
        parts = {s: p for share in self.processes.gather(mine) for s, p in share.items()}
        ordered = [parts[s] for s in starts]
        if isinstance(ordered[0], tuple):
            return tuple(np.concatenate(column) for column in zip(*ordered))
        return np.concatenate(ordered)


def _load_backbone(loader, value, field: str, device, **kwargs):
    """``loader(value, device)``; a missing or wrong folder is a BackboneError naming the config field."""
    try:
        return loader(value, device, **kwargs)
    except BackboneError as exc:
        raise BackboneError(exc.detail, path=exc.path, field=field) from None


@dataclass
class Scorers:
    """The networks of the metrics, each behind a :class:`ContentCache`.

    ``frames(videos [N, f, h, w, 3])`` -> (class probabilities ``[N, f, C]``, CLIP embeddings
    ``[N, f, D]``, with stage 1's CLIP); ``videos(videos)`` -> video-classifier probabilities
    ``[N, C]`` (None when no video classifier is configured).
    """

    frames: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    videos: ContentCache | None

    @classmethod
    def from_config(cls, config, device, processes=None) -> Scorers:
        """The frame classifier, the video classifier (if set) and stage 1's CLIP (``contrastive.clip_model``);
        under ``accelerate launch`` (``processes``) their batches are shared out (:class:`ContentCache`)."""
        from glfa.backbones import classify_and_embed, load_clip, load_frame_classifier, load_video_classifier

        evaluation = config.evaluation
        classifier = _load_backbone(load_frame_classifier, evaluation.frame_classifier, "evaluation.frame_classifier",
                                    device)
        clip = _load_backbone(load_clip, config.contrastive.clip_model, "contrastive.clip_model", device,
                              dim=config.model.heads.clip_dim)

        per_frame = ContentCache(lambda frames: classify_and_embed(classifier, clip, frames), processes,
                                 FRAME_BATCH)

        def frames(videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            n, f = videos.shape[:2]
            probs, embeddings = per_frame(videos.reshape(n * f, *videos.shape[2:]))
            return probs.reshape(n, f, -1), embeddings.reshape(n, f, -1)

        video = None if evaluation.video_classifier is None else _load_backbone(
            load_video_classifier, evaluation.video_classifier, "evaluation.video_classifier", device)
        return cls(frames=frames, videos=None if video is None else ContentCache(
            lambda videos: video.probabilities(videos, batch_size=VIDEO_BATCH), processes, VIDEO_BATCH))


def score_clips(decoded: np.ndarray, truth: np.ndarray, evaluation, scorers: Scorers,
                groups: list[str] | None = None) -> tuple[dict[str, list[float]], dict[str, list[float]],
                                                         dict[str, dict[str, Any]], dict[str, str]]:
    """Every metric of ``evaluation`` (an EvaluationConfig), matched and mismatched.

    Each decoded clip is scored against its own truth and against the truths of its
    ``evaluation.mismatched_partners`` partners (:func:`glfa.metrics.baseline.mismatched_partners`,
    clips of other stimuli, ``groups``: the stimulus of each clip, default all different), from
    probabilities and embeddings computed once per array. Every N-way score uses
    ``evaluation.seed``, so methods and pairings are scored on the same random trials.

    Returns
    -------
    scores : {metric: per-clip matched scores} of the paper's metrics (:func:`metric_keys`)
    extra : {metric: per-clip matched scores} of the other metrics (:func:`extra_metric_keys`)
    signal : {metric: :func:`glfa.metrics.baseline.brain_signal` record} of every metric with a truth
    not_computed : {metric: why} for the video N-ways without a video classifier
    """
    from glfa.metrics.baseline import brain_signal, mismatched_partners
    from glfa.metrics.video import (clip_pcc, clip_similarity_scores, n_way_top_k_pairings, psnr_scores,
                                    ssim_pairings, ssim_scores)

    groups = [str(i) for i in range(len(decoded))] if groups is None else groups
    partners = mismatched_partners(groups, evaluation.mismatched_partners, evaluation.seed)  # [N, K]
    truths = [np.arange(len(decoded))] + list(partners.T)  # index arrays: the matched pairing, then K mismatched
    options = {"top_k": evaluation.top_k, "trials": evaluation.trials, "seed": evaluation.seed}
    pred, pred_clip = scorers.frames(decoded)  # [N, f, C], [N, f, D]
    real, real_clip = scorers.frames(truth)
    video = None if scorers.videos is None else (scorers.videos(decoded), scorers.videos(truth))  # [N, C] each
    paired: dict[str, np.ndarray] = {}  # {metric: [K + 1, N]}, row 0 matched
    not_computed: dict[str, str] = {}
    for n in evaluation.n_ways:
        for key, top in ((f"frame-{n}way", evaluation.ground_truth_top), (f"frame-{n}way-strict", 1)):
            paired[key] = n_way_top_k_pairings(pred, real, truths, n_way=n, ground_truth_top=top,
                                               **options).mean(2)  # [K + 1, N, f] -> [K + 1, N]
        if video is None:
            not_computed[f"video-{n}way"] = VIDEO_CLASSIFIER_UNSET
            continue
        for key, top in ((f"video-{n}way", evaluation.ground_truth_top), (f"video-{n}way-strict", 1)):
            paired[key] = n_way_top_k_pairings(video[0], video[1], truths, n_way=n, ground_truth_top=top, **options)
    paired["ssim"] = np.concatenate([ssim_scores(decoded, truth)[None],  # matched: skimage itself
                                     ssim_pairings(decoded, truth, truths[1:])])
    paired["psnr"] = np.stack([psnr_scores(decoded, truth[t]) for t in truths])
    paired["clip"] = np.stack([clip_similarity_scores(pred_clip, real_clip[t]) for t in truths])
    matched = {k: [float(v) for v in paired[k][0]] for k in paired}
    scores = {k: matched[k] for k in metric_keys(evaluation.n_ways) if k in matched}
    extra = {k: matched[k] for k in extra_metric_keys(evaluation.n_ways) if k in matched}
    extra["clip-pcc"] = [float(v) for v in clip_pcc(pred_clip)]
    signal = {k: {**brain_signal(v[0], v[1:].T, permutations=evaluation.permutations, seed=evaluation.seed),
                  "mismatched_scores": [float(x) for x in v[1:].mean(0)]} for k, v in paired.items()}
    return scores, extra, signal, not_computed


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


#: The ranks of brain-to-video retrieval: the true clip among the top 1 and the top 5.
RETRIEVAL_TOPS = (1, 5)


def _fmri_embeddings(encoder_dir: Path, store, subject: str, windows: list[int], device,
                     front_end=None) -> np.ndarray:
    """The stage-1 encoder's CLIP-space embedding of ``subject``'s fMRI of each window: float32 ``[N, D]``.

    ``front_end`` (frames ``[N, H, W]`` -> the same) takes the place of the encoder's GLFA layer.
    """
    import torch

    from glfa.models.encoder import FmriEncoder

    encoder = FmriEncoder.from_pretrained(encoder_dir, map_location=device).eval()
    if front_end is not None:
        encoder.glfa = front_end.to(device).eval()
    by_index = {w.index: w for w in store.windows()}
    missing = [w for w in windows if w not in by_index]
    if missing:
        raise DataError(f"windows {missing[:5]} of the generations are not in this store", path=store.path,
                        field="items")
    out = []
    with torch.no_grad():
        for start in range(0, len(windows), 32):
            fmri = np.stack([store.fmri(subject, by_index[w]) for w in windows[start:start + 32]])  # [b, n, H, W]
            out.append(encoder(torch.from_numpy(fmri).to(device), heads=("clip",))["clip"].float().cpu().numpy())
    return np.concatenate(out)


def brain_retrieval(run_dir: Path, folders: list[GenerationsFolder], scorers: Scorers, evaluation, device,
                    store=None, front_end=None) -> tuple[list[dict[str, Any]], list[str]]:
    """Brain-to-video retrieval from the stage-1 encoder (``RUN/contrastive/encoder``), per subject and split.

    Each test window's fMRI goes through the encoder's CLIP head (after ``front_end`` instead of the
    encoder's GLFA layer, when given: an adapted subject's way into the common space,
    :func:`glfa.adapt.subject_front_end`); the true clip is ranked among
    all clips of the generations folder by the mean cosine of that embedding with the clip's
    frame embeddings (stage 1's CLIP, as the encoder was trained against). Top-1 and top-5 hits
    are matched scores with the mismatched baseline of :func:`score_clips` (a partner's clip
    ranked as if it were the truth) and its permutation p-value; chance is top / N.

    Returns the records and the reasons any subject and split was not measured.
    """
    from glfa.metrics.baseline import brain_signal, mismatched_partners, retrieval_hits

    layout = RunLayout(run_dir)
    encoder_dir = layout.stage1_encoder
    if not (encoder_dir / "config.json").is_file():
        return [], [f"no stage-1 encoder ({encoder_dir}): retrieval needs `glfa train` stage 1 in this run"]
    stage = layout.stage_config(CONTRASTIVE)
    train_subjects = _json_object(stage).get("train_subjects", []) if stage.is_file() else []
    records, skipped, seen = [], [], set()
    for folder in folders:
        key = (folder.index["store"], folder.subject, folder.split)
        if key in seen:
            continue
        seen.add(key)
        opened = open_store(store, str(folder.index["store"]))
        if opened is None:
            skipped.append(f"{folder.subject}-{folder.split}: the store {folder.index['store']} is not found")
            continue
        _, truth = folder.videos()
        clips = scorers.frames(truth)[1]  # [N, f, D]
        fmri = _fmri_embeddings(encoder_dir, opened, folder.subject,
                                [int(item["window"]) for item in folder.index["items"]], device,
                                front_end)  # [N, D]
        if fmri.shape[1] != clips.shape[2]:
            skipped.append(f"{folder.subject}-{folder.split}: the encoder embeds in {fmri.shape[1]} dimensions, "
                           f"the CLIP in {clips.shape[2]}")
            continue
        unit = fmri / np.maximum(np.linalg.norm(fmri, axis=1, keepdims=True), 1e-12)
        frames = clips / np.maximum(np.linalg.norm(clips, axis=2, keepdims=True), 1e-12)
        similarity = np.einsum("nd,mfd->nm", unit, frames) / frames.shape[1]  # [N, N] fMRI x clip
        partners = mismatched_partners(folder.stimuli(), evaluation.mismatched_partners, evaluation.seed)
        count = len(similarity)
        tops = {}
        for top in sorted({min(t, count) for t in RETRIEVAL_TOPS}):
            matched = retrieval_hits(similarity, np.arange(count), top)
            signal = brain_signal(matched, retrieval_hits(similarity, partners, top),
                                  permutations=evaluation.permutations, seed=evaluation.seed)
            tops[str(top)] = {**signal, "chance": top / count}
        records.append({"subject": folder.subject, "split": folder.split, "store": str(folder.index["store"]),
                        "encoder": str(encoder_dir), "train_subjects": [str(s) for s in train_subjects],
                        "count": count, "top": tops})
    return records, skipped


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

    Under ``accelerate launch`` the processes share out the classifiers' batches (each on its
    own GPU, or the CPU) and every process returns the whole, same result.

    Raises
    ------
    DataError
        No generations, a method without generations, decoded and true clips of different shapes.
    BackboneError
        A classifier folder that is missing or of the wrong kind (field ``evaluation.frame_classifier``
        or ``evaluation.video_classifier``).
    """
    from tqdm.auto import tqdm

    from glfa.devices import resolve_device
    from glfa.metrics.video import summarize
    from glfa.training.loop import Processes

    start = time.perf_counter()
    run_dir = Path(run_dir)
    folders = find_generations(run_dir, methods)
    config, source = _resolve_config(config, folders)
    evaluation = config.evaluation
    processes = Processes(config.device)
    device = resolve_device(processes.device(config.device))
    scorers = Scorers.from_config(config, device, processes)
    results = []
    for folder in tqdm(folders, desc="evaluate", unit="folder", disable=not (progress and processes.is_main)):
        began = time.perf_counter()
        decoded, truth = folder.videos()
        groups = folder.stimuli()
        scores, extra, signal, not_computed = score_clips(decoded, truth, evaluation, scorers, groups)
        protocol, task = folder.protocol()
        summary = {k: {**summarize(np.asarray(v)), **({} if k == "ssim" else {"seed": evaluation.seed})}
                   for k, v in scores.items()}
        results.append(DecodingResult(
            method=folder.method, subject=folder.subject, split=folder.split, protocol=protocol, task=task,
            generations=str(folder.path), model_dir=str(folder.model_dir), store=str(folder.index["store"]),
            train_subjects=[str(s) for s in folder.model.get("train_subjects", [])], count=len(decoded),
            scores=scores, summary=summary,
            not_computed=not_computed, seconds=round(time.perf_counter() - began, 3), extra_scores=extra,
            brain_signal=signal))
    out = VideoEvaluation(run_dir=str(run_dir), config=config.to_dict(), config_source=source, results=results,
                          ttests=method_ttests(results, metric_keys(evaluation.n_ways)))
    out.retrieval, out.retrieval_skipped = brain_retrieval(run_dir, folders, scorers, evaluation, device, store)
    models = {f.method: f.model_dir for f in folders}
    from glfa.generate import BLURRY_SUFFIX

    measured = set()  # a model folder is measured once (glfa+blurry decodes with glfa's: glfa names it)
    for method in sorted(models, key=lambda m: (BLURRY_SUFFIX in m, method_order(m))):
        if Path(models[method]).resolve() in measured:
            continue
        measured.add(Path(models[method]).resolve())
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
    paths = [RunLayout(src).video_evaluation if Path(src).is_dir() else Path(src) for src in sources]
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
        seconds=round(sum(e.seconds for e in evaluations), 3), retrieval=[r for e in evaluations for r in e.retrieval],
        retrieval_skipped=list(dict.fromkeys(s for e in evaluations for s in e.retrieval_skipped)))


def write_video_tables(evaluation: VideoEvaluation, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``video.json`` (everything) and ``video.md`` (the tables) atomically; default ``RUN/evaluation``."""
    from glfa.io import write_bytes_atomic, write_json_atomic

    out = Path(out_dir) if out_dir is not None else RunLayout(evaluation.run_dir).evaluation
    paths = {"json": out / "video.json", "markdown": out / "video.md"}
    write_json_atomic(paths["json"], evaluation.to_dict())
    write_bytes_atomic(paths["markdown"], evaluation.to_markdown().encode())
    return paths
