"""glfa report RUN: one self-contained HTML file with tables, plots, clips and an honest comparison."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures import PLANTED_FRAMES as FRAMES, eval_config, write_planted_run
from glfa.errors import DataError
from glfa.evaluation import (
    AlignmentRow,
    AlignmentTable,
    DecodingResult,
    GlfaAlignment,
    VideoEvaluation,
    evaluate_run,
    method_label,
    method_ttests,
    write_video_tables,
)
from glfa.report import GALLERY_CAP, gallery_windows, honest_comparison, write_report

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "check_report.py"


def planted_alignment(before: float, after: float) -> AlignmentTable:
    """A Table 1 of s1..s3 with every fSC/ISC at ``before`` (identity) and ``after`` (GLFA, s3 held out)."""
    pairs, subjects = ["s1/s2", "s1/s3", "s2/s3"], ["s1", "s2", "s3"]
    return AlignmentTable(subjects=subjects, split="test", n_timepoints=8, rows=[
        AlignmentRow("identity", None, [], {p: before for p in pairs}, {s: before for s in subjects}),
        AlignmentRow("s1,s2 -> s3", "s3", ["s1", "s2"], {p: after for p in pairs}, {s: after for s in subjects})])


def planted_report_run(run: Path, classifiers: dict[str, str], *, good: str = "glfa", bad: str = "lea") -> Path:
    """A run with generations (mp4 + GIF), training logs, a GLFA alignment and a standalone table, evaluated."""
    write_planted_run(run, good=good, bad=bad, media=True)
    for stage, scale in (("contrastive", 4.0), ("cotrain-glfa", 1.0)):
        (run / stage).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"step": s, "loss": scale / s, "lr": 1e-3, "seconds": s * 0.1}) for s in range(1, 21)]
        (run / stage / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "alignment").mkdir()
    (run / "alignment" / "alignment.json").write_text(json.dumps(planted_alignment(0.2, 0.5).to_dict()))
    ev = evaluate_run(run, config=eval_config(classifiers), progress=False)
    ev.alignment = [GlfaAlignment("glfa", str(run / "cotrain-glfa" / "model"), "/data/study",
                                  planted_alignment(0.3, 0.6))]
    ev.alignment_skipped = []
    write_video_tables(ev)
    return run


class _Page(HTMLParser):
    """Tags, attributes and text of a page (html.parser: any HTML it cannot parse raises)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, classifiers):
    run = planted_report_run(tmp_path_factory.mktemp("report") / "run", classifiers)
    return run, write_report(run)


def test_report_is_one_self_contained_file(report_run):
    run, path = report_run
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"https?://", text) and "<link" not in text and "<script" not in text
    page = parse(path)
    ev = VideoEvaluation.load(run / "evaluation" / "video.json")
    words = " ".join(page.text)
    # every table of the evaluation, the standalone Table 1 and one gallery per task
    titles = [t.title for t in ev.tables()] + ["GLFA fitted alone, leave-one-subject-out (Table 1)"]
    for title in titles + ["Honest comparison", "Training curves", "fSC and ISC before and after GLFA"]:
        assert title in words
    tables = [attrs for tag, attrs in page.tags if tag == "table"]
    assert len(tables) == len(titles)
    galleries = [attrs for tag, attrs in page.tags if attrs.get("class") == "gallery"]
    assert len(galleries) == len(ev.tasks()) and sum(a.get("class") == "clip" for _, a in page.tags) == 10
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert all(a["src"].startswith("data:image/") for a in images)
    plots = [a for a in images if a.get("class") == "plot"]
    # accuracy (1 task), alignment (the trained layer's and the standalone one), training curves
    assert len(plots) == 4
    for a in plots:
        assert Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1]))).format == "PNG"
    gifs = [a for a in images if a["src"].startswith("data:image/gif")]
    assert len(gifs) == 10 * 3  # 10 clips: ground truth, LEA, GLFA
    assert [a["alt"] for a in gifs[:3]] == ["ground truth", "decoded by lea", "decoded by glfa"]
    clip = Image.open(io.BytesIO(base64.b64decode(gifs[0]["src"].split(",", 1)[1])))
    assert clip.format == "GIF" and clip.n_frames == FRAMES and clip.size == (32, 32)
    # the same bytes as the GIF glfa generate wrote
    written = (run / "generations" / "glfa" / "s3-test" / "decoded" / "0000.gif").read_bytes()
    assert gifs[2]["src"].split(",", 1)[1] == base64.b64encode(written).decode()
    assert sorted(p.name for p in run.iterdir()) == ["alignment", "contrastive", "cotrain-glfa", "evaluation",
                                                     "generations", "lea", "report.html"]


def test_honest_paragraph_follows_the_numbers(report_run, tmp_path, classifiers):
    run, path = report_run
    words = " ".join(parse(path).text)
    assert "SSIM: GLFA is best (1.000 ± 0.000), ahead of LEA" in words
    assert re.search(r"frame 2-way: GLFA is best \(1\.000 ± 0\.000\), ahead of LEA \([^)]*\); the difference is "
                     r"significant \(two-sample t-test p = ", words)
    assert "GLFA vs LEA: higher on 5 of 5 metrics" in words
    assert "for the held-out subject s3, fSC s1/s3 rises 0.300 -> 0.600" in words

    # the numbers flip: LEA decodes every clip, GLFA the wrong ones; a GLFA layer that lowers fSC
    flipped = planted_report_run(tmp_path / "flipped", classifiers, good="lea", bad="glfa")
    ev = VideoEvaluation.load(flipped / "evaluation" / "video.json")
    ev.alignment = [GlfaAlignment("glfa", "m", "s", planted_alignment(0.6, 0.3))]
    text = " ".join(s for _, sentences in honest_comparison(ev) for s in sentences)
    assert "SSIM: LEA is best (1.000 ± 0.000), ahead of GLFA" in text
    assert re.search(r"frame 2-way: LEA is best .*?; the difference is significant", text)
    assert "GLFA vs LEA: higher on 0 of 5 metrics (0 significantly, p < 0.05), lower on 5 (5 significantly)" in text
    assert "fSC s1/s3 falls 0.600 -> 0.300" in text and "ISC falls 0.600 -> 0.300" in text

    # generations deleted after the evaluation: the report still comes, and says so
    shutil.rmtree(flipped / "generations" / "lea")
    words = " ".join(parse(write_report(flipped)).text)
    assert f"LEA: generations folder {flipped / 'generations' / 'lea' / 's3-test'} not found" in words


def test_honest_paragraph_says_not_significant():
    rng = np.random.default_rng(0)
    scores = {m: rng.uniform(0.4, 0.8, size=(2, 12)) for m in ("frame-2way", "frame-50way", "ssim")}
    results = [DecodingResult(method, "s3", "test", "cross-subject", "s1,s2 -> s3", "g", "m", "s", ["s1", "s2"], 12,
                              {m: list(v[i]) for m, v in scores.items()},
                              {m: {"mean": float(v[i].mean()), "std": float(v[i].std()), "n": 12}
                               for m, v in scores.items()}, {}, 0.0)
               for i, method in enumerate(("glfa", "pte-v"))]
    config = eval_config({"frame_classifier": None, "video_classifier": None})
    ev = VideoEvaluation("run", config.to_dict(), "<config>", results, method_ttests(results, list(scores)))
    sentences = dict(honest_comparison(ev))["s1,s2 -> s3 (cross-subject, 12 clips)"]
    for m, label in (("frame-2way", "frame 2-way"), ("ssim", "SSIM")):
        a, b = scores[m]
        winner, loser = ("GLFA", "fMRI-PTE-V") if a.mean() > b.mean() else ("fMRI-PTE-V", "GLFA")
        p = ev.ttest("s1,s2 -> s3", m, "glfa", "pte-v")["p"]
        assert p > 0.05
        assert any(s.startswith(f"{label}: {winner} is best") and f"ahead of {loser}" in s
                   and s.endswith(f"the difference is not significant (two-sample t-test p = {p:.2g}).")
                   for s in sentences), sentences
    chance = [s for s in sentences if s.startswith("GLFA's N-way accuracies")][0]
    assert "frame 2-way" in chance and "chance 0.50" in chance and "chance 0.02" in chance


def test_gallery_windows_are_capped_and_deterministic():
    assert gallery_windows([5, 1, 3]) == [1, 3, 5]
    chosen = gallery_windows(list(range(100, 130)))
    assert len(chosen) == GALLERY_CAP and chosen[0] == 100 and chosen[-1] == 129
    assert chosen == gallery_windows(list(reversed(range(100, 130))))


def test_report_needs_an_evaluated_run(tmp_path):
    write_planted_run(tmp_path / "run")
    with pytest.raises(DataError, match=r"not been evaluated.*run `glfa evaluate RUN` first"):
        write_report(tmp_path / "run")
    with pytest.raises(DataError, match="run folder not found"):
        write_report(tmp_path / "nowhere")


def _check(path: Path, shot: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(path), "--screenshot", str(shot)], capture_output=True,
                          text=True, timeout=300)


def test_check_report_in_a_headless_browser(report_run, tmp_path):
    sys.path.insert(0, str(CHECK.parent))
    try:
        from check_report import external_references, find_browser
    finally:
        sys.path.remove(str(CHECK.parent))
    _, path = report_run
    # the static check needs no browser
    assert external_references(path.read_text()) == []
    outside = path.read_text().replace("<h1>", '<h1><img src="https://example.org/x.png">', 1)
    problems = external_references(outside)  # the attribute and the address in the text
    assert len(problems) == 2 and "is not a data: URI" in problems[0]
    assert len(external_references('<style>p { background: url("x.png") }</style>')) == 1
    if find_browser() is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the rendering check needs a browser")
    result = _check(path, tmp_path / "report.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.png").stat().st_size > 10_000
    (tmp_path / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>")
    result = _check(tmp_path / "blank.html", tmp_path / "blank.png")
    assert result.returncode == 1 and "blank" in result.stderr


def test_honest_comparison_puts_matched_beside_mismatched(report_run):
    """Chance is the mismatched baseline: every method's scores beside the same against other clips' truth."""
    run, path = report_run
    ev = VideoEvaluation.load(run / "evaluation" / "video.json")
    words = " ".join(parse(path).text)
    good, bad = (next(r for r in ev.results if r.method == m) for m in ("glfa", "lea"))
    for r in (good, bad):
        ssim = r.brain_signal["ssim"]
        assert (f"{method_label(r.method)}, matched vs mismatched (against other clips' ground truth): " in words)
        assert f"SSIM {ssim['matched']:.3f} vs {ssim['mismatched']:.3f} ({ssim['difference']:+.3f}, " in words
    assert "GLFA, matched vs mismatched" in words and ": a significant brain signal on every metric." in words
    frame = good.brain_signal["frame-2way"]
    assert (f"frame 2-way {good.summary['frame-2way']['mean']:.3f} ± 0.000 (above chance, i.e. its mismatched "
            f"baseline {frame['mismatched']:.3f}, p = {frame['p']:.2g}; 1/N = 0.50)") in words
    assert re.search(r"LEA, matched vs mismatched .*: no significant brain signal on \d+ of 11 metrics\.", words)
    assert "Not measured: no stage-1 encoder" in words  # the planted run has training logs, no encoder
