"""``glfa report RUN``: one self-contained HTML file of a run's results.

The report reads what ``glfa evaluate RUN`` wrote (``RUN/evaluation/video.json``), the training
logs (``RUN/*/metrics.jsonl``), the generations folders and, when present, the standalone
alignment table of ``glfa evaluate alignment`` (``RUN/alignment/alignment.json`` or the one beside
the run). It holds:

- an honest comparison, written from the numbers: which method is best on each metric, whether
  the difference to the runner-up is significant (two-sample t-test, p < 0.05), how GLFA fares
  against each baseline, its N-way accuracies against chance (the mismatched baseline: the same
  decoded clips scored against other clips' ground truth, never 1/N), every method's scores
  matched beside mismatched with the brain signal's p-value, brain-to-video retrieval, and how
  fSC and ISC change after GLFA;
- the tables of the paper's layouts (Tables 1-3, supplementary Tables 2-3), each metric of Tables 2
  and 3 beside its mismatched baseline, brain signal and p-value (coloured in the paper's bands);
- plots (matplotlib, Agg, embedded as base64 PNG): accuracy with error bars per method, fSC and
  ISC before and after GLFA, training loss per stage;
- a gallery of decoded clips beside their ground truth (animated GIFs, base64), at most
  :data:`GALLERY_CAP` clips per task, evenly spaced over the test windows.

Nothing refers to anything outside the file (no URL, no linked file): it opens from disk in any
browser without a server. Every text is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from glfa.errors import DataError
from glfa.evaluation import (
    REFERENCE_METHOD,
    AlignmentTable,
    DecodingResult,
    Table,
    VideoEvaluation,
    has_signal,
    mean_std,
    metric_label,
    method_label,
)
from glfa.runs import RunLayout

#: Decoded clips shown per task (evenly spaced over its test windows).
GALLERY_CAP = 12

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 24px; color: #222; background: #fff; line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 21px; border-bottom: 2px solid #ddd; padding-bottom: 4px;
margin-top: 36px; } h3 { font-size: 17px; margin-top: 22px; }
h4 { font-size: 15px; margin: 14px 0 0; font-weight: normal; }
.meta { color: #555; font-size: 14px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
.scroll { overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; white-space: nowrap; }
td.p-strong, td.p-weak, td.p-none { white-space: normal; min-width: 110px; }
th { background: #f1f3f5; text-align: center; } td:first-child, td:nth-child(2) { text-align: left; }
td.p-strong { background: #c9f1f5; } td.p-weak { background: #f9d3df; } td.p-none { background: #e4e4e4; }
.note { color: #555; font-size: 13px; margin: 2px 0 10px; }
.honest p, .honest li { font-size: 15px; } .honest ul { margin-top: 2px; }
img.plot { max-width: 100%; display: block; margin: 8px 0; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.clip { border: 1px solid #ccc; border-radius: 4px; padding: 6px; }
.clip .label { font-size: 12px; color: #444; margin-bottom: 4px; }
.clip .row { display: flex; gap: 6px; align-items: flex-start; }
.clip figure { margin: 0; width: 128px; text-align: center; font-size: 11px; color: #333; white-space: nowrap; }
.clip img { width: 128px; height: auto; image-rendering: pixelated; display: block; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _png(fig) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG (no metadata), closing the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{data}">'


def _pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- tables


def table_html(table: Table) -> str:
    """A :class:`~glfa.evaluation.Table` as an HTML section: title, table, notes."""
    head = "".join(f"<th>{_e(h)}</th>" for h in table.header)
    rows = []
    for row in table.rows:
        cells = []
        for c in row:
            text = f"<b>{_e(c.text)}</b>" if c.bold else _e(c.text)
            band = "" if c.band is None else f' class="p-{c.band}"'  # the paper's significance colours
            cells.append(f"<td{band}>{text}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in table.notes)
    return (f"<h3>{_e(table.title)}</h3><div class=\"scroll\"><table><thead><tr>{head}</tr></thead><tbody>"
            f"{''.join(rows)}</tbody></table></div>{notes}")


def standalone_alignment(run_dir: Path) -> tuple[AlignmentTable, Path] | None:
    """The table of ``glfa evaluate alignment`` in ``RUN/alignment`` or beside the run, if there is one."""
    for folder in (RunLayout(run_dir).alignment, RunLayout(run_dir.parent).alignment):  # the demo's: beside its runs
        path = folder / "alignment.json"
        if path.is_file():
            try:
                return AlignmentTable.from_dict(json.loads(path.read_text())), path
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"not an alignment table ({exc.__class__.__name__}: {exc}); rerun "
                                "`glfa evaluate alignment`", path=path) from None
    return None


# ----------------------------------------------------------------------------- honest comparison


def _chance(metric: str, top_k: int) -> float | None:
    """Chance level of an N-way top-K metric (K / N); None for SSIM."""
    if metric == "ssim":
        return None
    return top_k / int(metric.split("-")[1].removesuffix("way"))


def _p_text(test: dict[str, Any] | None) -> tuple[str, bool]:
    """("p = ..." phrase, significant?) of a t-test record."""
    if test is None:
        return "no t-test (fewer than 2 clips)", False
    p = test["p"]
    if not math.isfinite(p):
        return "the t-test is undefined (constant equal scores)", False
    return f"two-sample t-test p = {p:.2g}", p < 0.05


def _metric_sentence(ev: VideoEvaluation, task: str, metric: str, results: list[DecodingResult]) -> str:
    """Which method is best on ``metric`` and whether its lead over the runner-up is significant."""
    ranked = sorted(results, key=lambda r: -r.summary[metric]["mean"])
    first, second = ranked[0], ranked[1]
    label = metric_label(metric)
    if first.summary[metric]["mean"] == second.summary[metric]["mean"]:
        tied = [method_label(r.method) for r in ranked if r.summary[metric]["mean"] == first.summary[metric]["mean"]]
        return f"{label}: {' and '.join(tied)} tie at {mean_std(first.summary[metric])}."
    phrase, significant = _p_text(ev.ttest(task, metric, first.method, second.method))
    verdict = "significant" if significant else "not significant"
    return (f"{label}: {method_label(first.method)} is best ({mean_std(first.summary[metric])}), ahead of "
            f"{method_label(second.method)} ({mean_std(second.summary[metric])}); the difference is {verdict} "
            f"({phrase}).")


def _versus_sentence(ev: VideoEvaluation, task: str, metrics: list[str], ref: DecodingResult,
                     other: DecodingResult) -> str:
    """How the reference method compares with ``other`` over the metrics both have."""
    higher = lower = higher_sig = lower_sig = 0
    for m in metrics:
        diff = ref.summary[m]["mean"] - other.summary[m]["mean"]
        _, significant = _p_text(ev.ttest(task, m, ref.method, other.method))
        higher, higher_sig = higher + (diff > 0), higher_sig + (diff > 0 and significant)
        lower, lower_sig = lower + (diff < 0), lower_sig + (diff < 0 and significant)
    ties = len(metrics) - higher - lower
    tie_text = f", equal on {ties}" if ties else ""
    return (f"{method_label(ref.method)} vs {method_label(other.method)}: higher on {higher} of {len(metrics)} "
            f"metrics ({higher_sig} significantly, p < 0.05), lower on {lower} ({lower_sig} significantly)"
            f"{tie_text}.")


def _chance_sentence(result: DecodingResult, top_k: int) -> str | None:
    """The N-way accuracies against their chance level: the mismatched baseline, not 1/N.

    A generator that draws photo-like frames whatever the fMRI beats 1/N against any truth; only
    the same accuracy against other clips' truths says what a decoder gets without the brain.
    """
    parts = []
    for m, s in result.summary.items():
        chance = _chance(m, top_k)
        if chance is None:
            continue
        signal = result.brain_signal.get(m)
        if signal is None:
            parts.append(f"{metric_label(m)} {mean_std(s)} (no mismatched baseline recorded: re-run glfa evaluate; "
                         f"1/N chance {chance:.2f} is not a decoder's chance level)")
        else:
            side = "above" if has_signal(signal) else "not above"
            parts.append(f"{metric_label(m)} {mean_std(s)} ({side} chance, i.e. its mismatched baseline "
                         f"{signal['mismatched']:.3f}, p = {signal['p']:.2g}; 1/N = {chance:.2f})")
    if not parts:
        return None
    return f"{method_label(result.method)}'s N-way accuracies: " + "; ".join(parts) + "."


def _p_phrase(signal: dict[str, Any]) -> str:
    """``p = 0.003``, or ``p = 0.2, not significant``, of a brain-signal record."""
    return f"p = {signal['p']:.2g}" + ("" if has_signal(signal) else ", not significant")


def _signal_sentence(result: DecodingResult) -> str | None:
    """Matched beside mismatched on every metric of one method, with the brain signal and its p-value."""
    if not result.brain_signal:
        return None
    parts = [f"{metric_label(m)} {v['matched']:.3f} vs {v['mismatched']:.3f} ({v['difference']:+.3f}, {_p_phrase(v)})"
             for m, v in result.brain_signal.items()]
    weak = result.not_significant()
    verdict = ("a significant brain signal on every metric" if not weak else
               f"no significant brain signal on {len(weak)} of {len(result.brain_signal)} metrics")
    return (f"{method_label(result.method)}, matched vs mismatched (against other clips' ground truth): "
            + "; ".join(parts) + f": {verdict}.")


def _retrieval_sentences(ev: VideoEvaluation) -> list[str]:
    """Brain-to-video retrieval of the stage-1 encoder, per subject and split, against chance and mismatched."""
    out = []
    for r in ev.retrieval:
        parts = [f"top-{t} {v['matched']:.3f} (chance {v['chance']:.3f}, mismatched {v['mismatched']:.3f}, "
                 f"{_p_phrase(v)})" for t, v in r["top"].items()]
        out.append(f"Subject {r['subject']} ({r['split']} split, {r['count']} clips): " + "; ".join(parts) + ".")
    return out + [f"Not measured: {why}" for why in ev.retrieval_skipped]


def _change(before: float, after: float) -> str:
    """``rises 0.300 -> 0.600``; ``stays at 0.300`` when equal at the three decimals shown."""
    a, b = f"{before:.3f}", f"{after:.3f}"
    if a == b:
        return f"stays at {a}"
    if math.isnan(before) or math.isnan(after):
        return f"{a} -> {b}"
    return f"{'rises' if after > before else 'falls'} {a} -> {b}"


def _alignment_sentences(table: AlignmentTable, who: str) -> list[str]:
    """fSC and ISC of each held-out subject before (identity row) and after alignment."""
    rows = {r.task: r for r in table.rows}
    before = rows.get("identity")
    out = []
    for row in table.rows:
        if before is None or row.held_out is None:
            continue
        held = row.held_out
        pairs = [p for p in table.pairs if held in p.split("/")]
        fsc = "; ".join(f"{p} {_change(before.fsc[p], row.fsc[p])}" for p in pairs)
        out.append(f"{who} ({row.task}): for the held-out subject {held}, fSC {fsc}; ISC "
                   f"{_change(before.isc[held], row.isc[held])}.")
    return out


def honest_comparison(ev: VideoEvaluation, standalone: AlignmentTable | None = None) -> list[tuple[str, list[str]]]:
    """The comparison as (heading, sentences) per task, then the alignment, all generated from the numbers."""
    top_k = ev.evaluation.top_k
    out = []
    for protocol, task, results in ev.tasks():
        counts = sorted({r.count for r in results})
        heading = f"{task} ({protocol}, {'/'.join(map(str, counts))} clips)"
        sentences = []
        metrics = [m for m in ev.metrics if all(m in r.summary for r in results)]
        if len(results) < 2:
            sentences.append(f"Only {method_label(results[0].method)} was evaluated on this task: no comparison.")
        else:
            sentences += [_metric_sentence(ev, task, m, results) for m in metrics]
            ref = next((r for r in results if r.method == REFERENCE_METHOD), None)
            if ref is not None:
                sentences += [_versus_sentence(ev, task, metrics, ref, r) for r in results if r is not ref]
        ref = next((r for r in results if r.method == REFERENCE_METHOD), results[-1])
        chance = _chance_sentence(ref, top_k)
        sentences += [chance] if chance else []
        sentences += [s for s in map(_signal_sentence, results) if s]
        out.append((heading, sentences))
    retrieval = _retrieval_sentences(ev)
    if retrieval:
        out.append(("Brain-to-video retrieval (stage-1 encoder)", retrieval))
    alignment = [s for a in ev.alignment for s in _alignment_sentences(a.table, f"Trained GLFA layer of "
                                                                            f"{method_label(a.method)}")]
    if standalone is not None:
        alignment += _alignment_sentences(standalone, "GLFA fitted alone (glfa evaluate alignment)")
    if alignment:
        out.append(("Functional alignment (test split)", alignment))
    return out


# ----------------------------------------------------------------------------- plots


def accuracy_plot(task: str, results: list[DecodingResult], metrics: list[str]) -> str:
    """Grouped bars: one group per metric, one bar per method, mean ± std error bars, the mismatched baseline as x."""
    plt = _pyplot()
    metrics = [m for m in metrics if any(m in r.summary for r in results)]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(metrics), 3.4))
    width = 0.8 / len(results)
    x = np.arange(len(metrics))
    for i, r in enumerate(results):
        means = [r.summary[m]["mean"] if m in r.summary else np.nan for m in metrics]
        stds = [r.summary[m]["std"] if m in r.summary else 0.0 for m in metrics]
        at = x + (i - (len(results) - 1) / 2) * width
        ax.bar(at, means, width, yerr=stds, capsize=3, label=method_label(r.method))
        mismatched = [r.brain_signal[m]["mismatched"] if m in r.brain_signal else np.nan for m in metrics]
        ax.scatter(at, mismatched, marker="x", color="k", zorder=3,
                   label="mismatched baseline" if i == len(results) - 1 else None)
    ax.set_xticks(x, [metric_label(m) for m in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean ± std over clips")
    ax.set_title(f"{task} (x: the same against other clips' truth)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def alignment_plot(table: AlignmentTable, title: str) -> str:
    """fSC per pair and ISC per subject, one bar per row of the table (before = identity, after = GLFA)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, columns, key, name in ((axes[0], table.pairs, "fsc", "fSC"), (axes[1], table.subjects, "isc", "ISC")):
        width = 0.8 / len(table.rows)
        x = np.arange(len(columns))
        for i, row in enumerate(table.rows):
            label = "before (identity)" if row.task == "identity" else f"after GLFA ({row.task})"
            ax.bar(x + (i - (len(table.rows) - 1) / 2) * width, [getattr(row, key)[c] for c in columns], width,
                   label=label)
        ax.set_xticks(x, columns)
        ax.set_title(name)
        ax.axhline(0, color="k", linewidth=0.5)
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return f"<h4>{_e(title)}</h4>{_png(fig)}"


def training_logs(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """``{stage: [log entries]}`` of every ``RUN/<stage>/metrics.jsonl`` (bad lines skipped)."""
    logs = {}
    for path in RunLayout(run_dir).metrics_logs():
        entries = []
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict) and "step" in entry and isinstance(entry.get("loss"), (int, float)):
                entries.append(entry)
        if entries:
            logs[path.parent.name] = entries
    return logs


def training_plot(logs: dict[str, list[dict[str, Any]]]) -> str:
    """Loss vs step, one panel per stage (log scale when the loss spans more than two decades)."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    cols = min(3, len(logs))
    rows = math.ceil(len(logs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, (stage, entries) in zip(axes.flat, logs.items()):
        steps = [e["step"] for e in entries]
        loss = np.array([e["loss"] for e in entries], dtype=float)
        ax.plot(steps, loss, marker="." if len(steps) < 30 else None)
        if np.all(loss > 0) and loss.max() > 100 * loss.min():
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
    for ax in list(axes.flat)[len(logs):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------- gallery


def _gif_uri(folder: Path, item: dict[str, Any], key: str, position: int, fps: float) -> str:
    """``data:`` URI of a clip's GIF: the file glfa generate wrote, else one made from ``videos.npz``."""
    from glfa.data.video import write_gif

    path = folder / str(item.get(key, {}).get("gif", ""))
    if path.is_file() and path.suffix == ".gif":
        data = path.read_bytes()
    else:
        with np.load(folder / "videos.npz", allow_pickle=False) as videos, tempfile.TemporaryDirectory() as tmp:
            data = write_gif(Path(tmp) / "clip.gif", videos[key][position], fps).read_bytes()
    return "data:image/gif;base64," + base64.b64encode(data).decode()


def gallery_windows(windows: list[int], cap: int = GALLERY_CAP) -> list[int]:
    """At most ``cap`` of the sorted ``windows``, evenly spaced (first and last included)."""
    windows = sorted(set(windows))
    if len(windows) <= cap:
        return windows
    return [windows[i] for i in np.linspace(0, len(windows) - 1, cap).round().astype(int)]


def _figure(uri: str, alt: str, lines: list[str]) -> str:
    """A clip with its caption: the first line bold, one line each."""
    caption = "<br>".join([f"<b>{_e(lines[0])}</b>"] + [_e(x) for x in lines[1:]])
    return f'<figure><img alt="{_e(alt)}" src="{uri}"><figcaption>{caption}</figcaption></figure>'


def gallery_html(task: str, results: list[DecodingResult]) -> str:
    """One card per chosen window: the ground truth, then every method's decoded clip with its scores."""
    gone = [r for r in results if not (Path(r.generations) / "index.json").is_file()]
    missing = "".join(f'<p class="note">{_e(method_label(r.method))}: generations folder {_e(r.generations)} not '
                      "found (moved or deleted since glfa evaluate).</p>" for r in gone)
    results = [r for r in results if r not in gone]
    if not results:
        return f"<h3>{_e(task)}</h3>{missing}"
    folders, items = {}, {}
    for r in results:
        folder = Path(r.generations)
        index = json.loads((folder / "index.json").read_text())
        folders[r.method] = (folder, float(index.get("fps", 3.0)))
        items[r.method] = {int(item["window"]): (i, item) for i, item in enumerate(index["items"])}
    windows = {w for by_window in items.values() for w in by_window}
    chosen = gallery_windows(list(windows))
    frame_metric = next((m for m in results[0].scores if m.startswith("frame-")), None)
    cards = []
    for window in chosen:
        truth, decoded, label = "", [], ""
        for r in results:
            folder, fps = folders[r.method]
            if window not in items[r.method]:
                decoded.append(f"<figure><figcaption>{_e(method_label(r.method))}: not decoded</figcaption></figure>")
                continue
            i, item = items[r.method][window]
            if not truth:
                label = f"window {window}: {item.get('stimulus_id', '')} at {float(item.get('onset', 0.0)):g} s"
                truth = _figure(_gif_uri(folder, item, "truth", i, fps), "ground truth", ["ground truth"])
            lines = [method_label(r.method), f"SSIM {r.scores['ssim'][i]:.2f}"]
            if frame_metric:
                lines.append(f"{metric_label(frame_metric)} {r.scores[frame_metric][i]:.2f}")
            decoded.append(_figure(_gif_uri(folder, item, "decoded", i, fps), f"decoded by {r.method}", lines))
        cards.append(f'<div class="clip"><div class="label">{_e(label)}</div><div class="row">{truth}'
                     f'{"".join(decoded)}</div></div>')
    note = (f"{len(chosen)} of {len(windows)} test windows shown (at most {GALLERY_CAP} per task, evenly spaced over "
            "the windows in order); each decoded clip with its SSIM and frame-based accuracy.")
    return f'<h3>{_e(task)}</h3><p class="note">{_e(note)}</p>{missing}<div class="gallery">{"".join(cards)}</div>'


# ----------------------------------------------------------------------------- the report


def adaptation_plot(sweep: dict[str, Any]) -> str:
    """The data-efficiency curves of one ``glfa evaluate adaptation`` sweep (its JSON): one panel per metric,
    one line per method over the minutes (0: the zero-shot floor), error bars = std over test time
    points (fSC) or clips (retrieval, video metrics), the within-subject ceiling dashed."""
    plt = _pyplot()
    settings = sweep["settings"]
    panels = [("fSC with trained", lambda s: s["alignment"].get("fsc"))]
    # a clip's retrieval is a hit or a miss: the std over clips of a rate m is sqrt(m (1 - m))
    panels += [(f"retrieval top-{top}", lambda s, top=top: _hit_rate(s.get("retrieval", {}).get(top)))
               for top in dict.fromkeys(t for s in settings for t in s.get("retrieval", {}))]
    panels += [(key, lambda s, key=key: s["video"].get(key))
               for key in dict.fromkeys(k for s in settings for k in s["video"])]
    floor = [s for s in settings if s["role"] == "floor"]
    ceiling = [s for s in settings if s["role"] == "ceiling"]
    methods = list(dict.fromkeys(s["method"] for s in settings if s["role"] == "adapted"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (title, get) in zip(axes[0], panels):
        for method in methods:
            points = [(0.0, get(s)) for s in floor] + [(s["minutes"], get(s)) for s in settings
                                                       if s["role"] == "adapted" and s["method"] == method]
            points = [(m, v) for m, v in points if v]
            if points:
                ax.errorbar([m for m, _ in points], [v["mean"] for _, v in points], yerr=[v["std"] for _, v in points],
                            marker="o", capsize=3, label=method)
        for s in ceiling:
            if get(s):
                ax.axhline(get(s)["mean"], color="k", linestyle="dashed", linewidth=1, label="within-subject")
        ax.set_title(title)
    fig.supxlabel("minutes of the new subject's training fMRI (0: zero-shot)", fontsize=10)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _hit_rate(record: dict[str, Any] | None) -> dict[str, float] | None:
    """A retrieval record's hit rate as ``{"mean", "std"}`` over clips (hits are 0 or 1); None without one."""
    if not record:
        return None
    m = record["matched"]
    return {"mean": m, "std": math.sqrt(max(m * (1 - m), 0.0))}


def adaptation_html(run_dir: Path) -> list[str]:
    """The report's section on adapting to a new subject: every ``RUN/evaluation/adaptation-*.json``
    (``glfa evaluate adaptation``) as its curve and its notes; nothing when there is none."""
    sweeps = RunLayout(run_dir).adaptation_sweeps()
    if not sweeps:
        return []
    parts = ["<h2>A new subject in minutes: the data-efficiency curve</h2>"]
    for path in sweeps:
        sweep = json.loads(path.read_text())
        title = f"{','.join(sweep['train_subjects'])} -> {sweep['subject']}: adapted from {method_label(sweep['base'])}"
        parts.append(f"<h4>{_e(title)}</h4>{adaptation_plot(sweep)}")
        parts += [f'<p class="note">{_e(why)}</p>' for why in sweep["skipped"]]
        parts.append(f'<p class="note">Table: {_e(path.with_suffix(".md"))}.</p>')
    return parts


def render_report(run_dir: str | Path, evaluation: VideoEvaluation) -> str:
    """The whole report as one HTML string."""
    run_dir = Path(run_dir)
    ev = evaluation
    settings = ev.evaluation
    standalone = standalone_alignment(run_dir)
    parts = [f"<h1>GLFA decoding report: {_e(run_dir.name)}</h1>",
             f'<p class="meta">Run folder {_e(run_dir)}; evaluation config {_e(ev.config_source)}; '
             f"{len(ev.results)} generations folders, evaluated in {ev.seconds:.1f} s. Metrics: SSIM and N-way "
             f"top-{settings.top_k} for N in {_e(settings.n_ways)} ({settings.trials} trials per clip, seed "
             f"{settings.seed}), PSNR, CLIP similarity and CLIP-pcc, each decoded clip also scored against "
             f"{settings.mismatched_partners} other clips' ground truth (the mismatched baseline); frame "
             f"classifier {_e(settings.frame_classifier or 'EfficientNet-Lite0 (offline)')}; video classifier "
             f"{_e(settings.video_classifier or 'none')}.</p>"]

    parts.append('<h2>Honest comparison</h2><div class="honest">')
    for heading, sentences in honest_comparison(ev, standalone[0] if standalone else None):
        parts.append(f"<p><b>{_e(heading)}</b></p><ul>" + "".join(f"<li>{_e(s)}</li>" for s in sentences) + "</ul>")
    parts.append("</div>")

    parts.append("<h2>Tables</h2>")
    parts += [table_html(t) for t in ev.tables()]
    if standalone is not None:
        parts.append(table_html(standalone[0].to_table("GLFA fitted alone, leave-one-subject-out (Table 1)")))
        parts.append(f'<p class="note">From {_e(standalone[1])} (glfa evaluate alignment).</p>')
    parts += [f'<p class="note">GLFA alignment not measured: {_e(why)}</p>' for why in ev.alignment_skipped]

    parts.append("<h2>Plots</h2><h3>Accuracy and SSIM per method (mean ± std)</h3>")
    parts += [accuracy_plot(f"{task} ({protocol})", results, ev.metrics)
              for protocol, task, results in ev.tasks()]
    alignments = [(a.table, f"fSC and ISC before and after the trained GLFA layer of {method_label(a.method)}")
                  for a in ev.alignment]
    if standalone is not None:
        alignments.append((standalone[0], "fSC and ISC before and after GLFA fitted alone (leave-one-subject-out)"))
    parts.append("<h3>fSC and ISC before and after GLFA</h3>")
    parts += [alignment_plot(t, title) for t, title in alignments] or [
        '<p class="note">No alignment result in this run.</p>']
    logs = training_logs(run_dir)
    parts.append("<h3>Training curves</h3>")
    parts.append(training_plot(logs) if logs else '<p class="note">No training log (RUN/*/metrics.jsonl) found.</p>')

    parts += adaptation_html(run_dir)
    parts.append("<h2>Decoded clips beside the ground truth</h2>")
    parts += [gallery_html(f"{task} ({protocol})", results) for protocol, task, results in ev.tasks()]
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>GLFA report: {_e(run_dir.name)}'
            f"</title><style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


def write_report(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of ``run_dir`` (default ``RUN/report.html``) atomically.

    Raises
    ------
    DataError
        When the run has not been evaluated (``RUN/evaluation/video.json``; run ``glfa evaluate RUN``).
    """
    from glfa.io import write_bytes_atomic

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError("run folder not found", path=run_dir)
    layout = RunLayout(run_dir)
    path = layout.video_evaluation
    if not path.is_file():
        raise DataError("this run has not been evaluated (no evaluation/video.json); run `glfa evaluate RUN` first",
                        path=run_dir)
    html_text = render_report(run_dir, VideoEvaluation.load(path))
    out = Path(out) if out is not None else layout.report
    return write_bytes_atomic(out, html_text.encode())
