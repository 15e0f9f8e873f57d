"""glfa evaluate RUN: video metrics of planted generations, protocols, tables, t-tests, GLFA alignment, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from glfa import backbones as B
from glfa.config import validate_config
from glfa.errors import BackboneError, DataError
from glfa.evaluation import VideoEvaluation, combine_evaluations, evaluate_run, write_video_tables
from glfa.metrics import fsc, isc, n_way_top_k

from fixtures import (PLANTED_CLIPS as CLIPS, PLANTED_FRAMES as FRAMES, PLANTED_SIZE as SIZE, eval_config,
                      planted_clips, write_generations, write_model, write_planted_run)

pytestmark = pytest.mark.usefixtures("one_thread")

def test_planted_methods_scores_ttests_and_tables(tmp_path, classifiers, monkeypatch):
    run = tmp_path / "run"
    truth = write_planted_run(run)
    classified = []
    probabilities = B.FrameClassifier.probabilities
    monkeypatch.setattr(B.FrameClassifier, "probabilities",
                        lambda self, frames, **kw: classified.append(len(frames)) or probabilities(self, frames, **kw))
    ev = evaluate_run(run, config=eval_config(classifiers, seed=3), progress=False)
    # each distinct array of frames is classified once for both N-ways and both methods: the truth
    # (which GLFA's clips equal) and LEA's clips
    assert classified == [CLIPS * FRAMES] * 2

    assert [(r.method, r.protocol, r.task) for r in ev.results] == [
        ("glfa", "cross-subject", "s1,s2 -> s3"), ("lea", "cross-subject", "s1,s2 -> s3")]
    good, bad = ev.results
    assert good.count == bad.count == CLIPS
    assert list(good.scores) == ["video-2way", "video-50way", "frame-2way", "frame-50way", "ssim"]
    for metric, scores in good.scores.items():  # decoded == truth: SSIM 1 and every trial correct
        np.testing.assert_allclose(scores, 1.0, err_msg=metric)
    # the wrong clips: SSIM as skimage computes it, and lower accuracies
    decoded = np.roll(truth, 1, axis=0)
    expected = [np.mean([structural_similarity(a, b, data_range=255, channel_axis=-1) for a, b in zip(d, t)])
                for d, t in zip(decoded, truth)]
    np.testing.assert_allclose(bad.scores["ssim"], expected, rtol=1e-9)
    assert bad.summary["ssim"]["mean"] < 0.9
    assert bad.summary["frame-2way"]["mean"] < 0.9 and bad.summary["frame-50way"]["mean"] < 0.5
    for metric, scores in bad.scores.items():
        seed = {} if metric == "ssim" else {"seed": 3}
        assert bad.summary[metric] == pytest.approx({"mean": np.mean(scores), "std": np.std(scores), "n": CLIPS,
                                                     **seed})
    assert ev.evaluation.seed == 3 and ev.config_source == "<config>"
    # t-tests: the good method's SSIM and frame 2-way are significantly higher
    for metric in ("ssim", "frame-2way"):
        test = ev.ttest("s1,s2 -> s3", metric, "glfa", "lea")
        assert test is not None and test["p"] < 0.05, metric
    assert ev.alignment == [] and ev.alignment_skipped == [
        f"glfa: the co-trained model has no encoder/ folder ({run / 'cotrain-glfa' / 'model'})"]

    paths = write_video_tables(ev)
    assert paths == {"json": run / "evaluation" / "video.json", "markdown": run / "evaluation" / "video.md"}
    again = VideoEvaluation.load(paths["json"])
    assert again.to_dict() == json.loads(json.dumps(ev.to_dict()))
    md = paths["markdown"].read_text()
    table2 = md.split("## Cross-subject decoding (Table 2)")[1].split("##")[0]
    lines = [line for line in table2.splitlines() if line.startswith("|")]
    assert lines[0] == ("| Task | Method | video 2-way | video 2-way mismatched (Δ, p) | video 50-way | video 50-way "
                        "mismatched (Δ, p) | frame 2-way | frame 2-way mismatched (Δ, p) | frame 50-way | frame 50-way "
                        "mismatched (Δ, p) | SSIM | SSIM mismatched (Δ, p) |")
    assert lines[2].startswith("| s1,s2 -> s3 | LEA | ") and lines[3].startswith("|  | GLFA | **1.000 ± 0.000** |")
    assert lines[3].count("**") == 10 and "**" not in lines[2]  # GLFA best in all five columns
    supp2 = md.split("(supplementary Table 2)")[1].split("##")[0]
    lines = [line for line in supp2.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| Task | Method | t-test reference | video 2-way |")
    p = ev.ttest("s1,s2 -> s3", "ssim", "glfa", "lea")["p"]
    assert lines[2].startswith("| s1,s2 -> s3 (cross-subject) | LEA | GLFA |")
    assert lines[2].endswith(f"({'p<0.001' if p < 0.001 else 'p<0.05'}, p={p:.2g}) |")
    assert lines[3].startswith("|  | GLFA | — |")
    assert "Table 3" not in md.replace("supplementary Table 3", "")
    assert "Not in this run: within-subject, cross-dataset generations." in md


def test_protocols_recorded_config_and_missing_video_classifier(tmp_path, classifiers):
    run = tmp_path / "run"
    clips = planted_clips(4, seed=1)
    recorded = {"evaluation": {"frame_classifier": classifiers["frame_classifier"], "n_ways": [2, 5],
                               "trials": 20}, "device": "cpu", "model": {"preset": "tiny"},
                "contrastive": {"clip_model": classifiers["clip_model"]}}
    # within-subject: a model trained on s1 alone decodes s1's test clips
    write_model(run, "within", train=["s1"], held_out=[], store="/data/study", config=recorded)
    write_generations(run, "within", "s1", clips[::-1].copy(), clips, store="/data/study")
    # cross-dataset: LEA trained on one store decodes another store's clips
    write_model(run, "lea", train=["s1", "s2"], held_out=[], store="/data/webvid", kind="lea", config=recorded)
    write_generations(run, "lea", "s1", clips, clips, store="/data/fcvid")

    ev = evaluate_run(run, progress=False)
    assert ev.config_source.endswith("model.json") and ev.metrics == [
        "video-2way", "video-5way", "frame-2way", "frame-5way", "ssim"]
    assert {(r.method, r.protocol, r.task) for r in ev.results} == {
        ("within", "within-subject", "subject s1"), ("lea", "cross-dataset", "webvid -> fcvid: s1")}
    for r in ev.results:
        assert set(r.not_computed) == {"video-2way", "video-5way"}
        assert "evaluation.video_classifier is not set" in r.not_computed["video-2way"]
    tables = {t.key: t for t in ev.tables()}
    assert list(tables) == ["table3", "supp-table3"]
    mismatched = " mismatched (Δ, p)"
    assert tables["table3"].header == ["Task", "Method"] + [
        column for metric in ("video 2-way", "video 5-way", "frame 2-way", "frame 5-way", "SSIM")
        for column in (metric, metric + mismatched)]
    assert tables["supp-table3"].header == ["Task", "Method"] + [
        column for metric in ("video 2-way", "video 5-way", "frame 2-way", "frame 5-way")
        for column in (metric, metric + mismatched)]
    row = tables["table3"].rows[0]
    assert [c.text for c in row[:4]] == ["subject s1", "within", "—", "—"]
    assert tables["table3"].notes[1].startswith("video 2-way, video 5-way: not computed: evaluation.video_classifier")
    assert any("SSIM is left out" in n for n in tables["supp-table3"].notes)

    # --methods: only the ones asked for; a method without generations is an error naming the command
    assert [r.method for r in evaluate_run(run, methods=["lea"], progress=False).results] == ["lea"]
    with pytest.raises(DataError, match=r"no generations of method\(s\) \['glfa'\].*glfa generate RUN"):
        evaluate_run(run, methods=["glfa"], progress=False)


def test_glfa_alignment_of_the_cotrained_layer(tmp_path, classifiers):
    from glfa.align import responses_from_store
    from glfa.data.store import StudyStore
    from glfa.models.encoder import FmriEncoder
    from fixtures import write_decoding_store

    store_dir = write_decoding_store(tmp_path / "store")
    store = StudyStore.open(store_dir)
    run = tmp_path / "run"
    config = {"model": {"preset": "tiny", "glfa": {"parcel_size": 8, "kernel_size": 5}}}
    model_dir = write_model(run, "glfa", train=["s1", "s2"], held_out=["s3"], store=store_dir, config=config)
    torch.manual_seed(0)
    encoder = FmriEncoder(validate_config(config).model, store.image_size, store.fmri_frames)
    with torch.no_grad():  # a trained layer is not the identity
        encoder.glfa.global_map.weight.normal_(0, 0.3)
        encoder.glfa.local.weight.normal_(0, 0.3)
    encoder.save_pretrained(model_dir / "encoder")
    write_generations(run, "glfa", "s3", planted_clips(3), planted_clips(3), store=store_dir)

    ev = evaluate_run(run, config=eval_config(classifiers, n_ways=[2]), progress=False)
    assert ev.alignment_skipped == [] and len(ev.alignment) == 1
    table = ev.alignment[0].table
    assert table.subjects == ["s1", "s2", "s3"] and [r.task for r in table.rows] == ["identity", "s1,s2 -> s3"]
    before = responses_from_store(store, ["s1", "s2", "s3"], "test")
    with torch.no_grad():
        after = {s: encoder.glfa(torch.from_numpy(x)).numpy() for s, x in before.items()}
    for row, responses in zip(table.rows, (before, after)):
        assert row.fsc["s1/s3"] == pytest.approx(fsc(responses["s1"], responses["s3"], store.mask))
        assert row.isc == pytest.approx(isc(responses, store.mask))
    assert table.rows[1].fsc["s2/s3"] != pytest.approx(table.rows[0].fsc["s2/s3"])
    md = ev.to_markdown()
    assert "fSC and ISC before and after the trained GLFA layer of GLFA (Table 1 style)" in md
    assert "| s1,s2 -> s3 | " in md and f"**{table.rows[1].isc['s3']:.3f}**" in md


def test_bad_input(tmp_path, classifiers):
    config = eval_config(classifiers)
    with pytest.raises(DataError, match="run folder not found"):
        evaluate_run(tmp_path / "missing", config=config, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no generations in this run.*`glfa generate RUN --method M --subject S`"):
        evaluate_run(tmp_path / "empty", config=config, progress=False)

    run = tmp_path / "run"
    write_planted_run(run)
    folder = run / "generations" / "lea" / "s3-test"
    truth = planted_clips()
    np.savez(folder / "videos.npz", decoded=truth[:, :3], truth=truth)  # decoded clips one frame short
    with pytest.raises(DataError, match=r"videos.npz: truth: the decoded clips \[10, 3, 32, 32, 3\] and the "
                                        r"ground truth \[10, 4, 32, 32, 3\] differ"):
        evaluate_run(run, config=config, progress=False)
    np.savez(folder / "videos.npz", decoded=truth[:9], truth=truth[:9])  # fewer clips than index.json lists
    with pytest.raises(DataError, match="holds 9 clips, index.json lists 10"):
        evaluate_run(run, config=config, progress=False)
    np.savez(folder / "videos.npz", decoded=truth, truth=truth)

    for field in ("frame_classifier", "video_classifier"):
        bad = eval_config({**classifiers, field: str(tmp_path / "no-such-classifier")})
        with pytest.raises(BackboneError, match=f"no-such-classifier: evaluation.{field}: folder not found"):
            evaluate_run(run, config=bad, progress=False)


def test_combine_runs_into_the_leave_one_subject_out_table(tmp_path, classifiers, capsys):
    """One run per held-out subject, each evaluated alone, joined into one Table 2 with a block per subject."""
    from glfa.cli import main

    first, second = tmp_path / "held-out-s3", tmp_path / "held-out-s2"
    write_planted_run(first)
    truth = planted_clips(seed=5)
    for method in ("glfa", "lea"):
        write_model(second, method, train=["s1", "s3"], held_out=["s2"], store="/data/study",
                    kind="lea" if method == "lea" else "cotrain")
    write_generations(second, "glfa", "s2", np.roll(truth, 1, axis=0), truth, store="/data/study")
    write_generations(second, "lea", "s2", truth.copy(), truth, store="/data/study")
    config = eval_config(classifiers, seed=3)
    alone = {}
    for run in (first, second):
        alone[run] = evaluate_run(run, config=config, progress=False)
        write_video_tables(alone[run])

    out = tmp_path / "loso"
    assert main(["evaluate", "combine", str(first), str(second / "evaluation" / "video.json"), "-o", str(out)]) == 0
    capsys.readouterr()
    joined = VideoEvaluation.load(out / "video.json")
    assert [(r.task, r.method) for r in joined.results] == [
        ("s1,s2 -> s3", "glfa"), ("s1,s2 -> s3", "lea"), ("s1,s3 -> s2", "glfa"), ("s1,s3 -> s2", "lea")]
    for result in joined.results:  # each run's numbers, unchanged
        run = first if result.task == "s1,s2 -> s3" else second
        original = next(r for r in alone[run].results if r.method == result.method)
        assert result.scores == original.scores and result.summary == original.summary
    assert joined.ttest("s1,s3 -> s2", "ssim", "glfa", "lea") == alone[second].ttest("s1,s3 -> s2", "ssim", "glfa",
                                                                                        "lea")
    table2 = (out / "video.md").read_text().split("## Cross-subject decoding (Table 2)")[1].split("##")[0]
    rows = [line.split("|")[1:3] for line in table2.splitlines() if line.startswith("|")][2:]
    assert [(task.strip(), method.strip()) for task, method in rows] == [
        ("s1,s2 -> s3", "LEA"), ("", "GLFA"), ("s1,s3 -> s2", "LEA"), ("", "GLFA")]

    with pytest.raises(DataError, match="also in"):
        combine_evaluations([first, first], out)
    other = tmp_path / "other"
    write_planted_run(other)
    write_video_tables(evaluate_run(other, config=eval_config(classifiers, seed=3, trials=7), progress=False))
    with pytest.raises(DataError, match="other evaluation settings.*trials"):
        combine_evaluations([second, other], out)
    with pytest.raises(DataError, match="run `glfa evaluate RUN`"):
        combine_evaluations([first, tmp_path / "never-evaluated"], out)
    with pytest.raises(DataError, match="at least two"):
        combine_evaluations([first], out)


def test_mismatched_baseline_of_planted_methods(tmp_path, classifiers, capsys):
    """Exact decoding carries a brain signal on every metric; the next clip's video instead carries none."""
    import yaml

    from glfa.cli import main
    from glfa.metrics.baseline import mismatched_partners

    run = tmp_path / "run"
    truth = write_planted_run(run)
    ev = evaluate_run(run, config=eval_config(classifiers, seed=3, permutations=2000), progress=False)
    good, bad = ev.results
    partners = mismatched_partners([f"test{i}" for i in range(CLIPS)], 8, seed=3)  # the stimuli of the planted run
    decoded = np.roll(truth, 1, axis=0)
    for result, clips in ((good, truth), (bad, decoded)):
        ssim = result.brain_signal["ssim"]
        # each clip's mismatched SSIM: the mean of skimage's SSIM against its partners' truths
        expected = [np.mean([np.mean([structural_similarity(a, b, data_range=255, channel_axis=-1)
                                      for a, b in zip(clips[i], truth[j])]) for j in partners[i]])
                    for i in range(CLIPS)]
        np.testing.assert_allclose(ssim["mismatched_scores"], expected, rtol=1e-9)
        assert ssim["mismatched"] == pytest.approx(np.mean(expected))
        assert ssim["matched"] == pytest.approx(np.mean(result.scores["ssim"]))
        assert ssim["difference"] == pytest.approx(ssim["matched"] - ssim["mismatched"])
        assert ssim["partners"] == 8 and ssim["permutations"] == 2000 and ssim["seed"] == 3
    assert set(good.brain_signal) == {"video-2way", "video-50way", "frame-2way", "frame-50way", "ssim",
                                      "video-2way-strict", "video-50way-strict", "frame-2way-strict",
                                      "frame-50way-strict", "psnr", "clip"}
    assert set(good.extra_scores) == set(good.brain_signal) - set(good.scores) | {"clip-pcc"}
    np.testing.assert_allclose(good.extra_scores["psnr"], 100.0)  # decoded == truth: PSNR capped
    np.testing.assert_allclose(good.extra_scores["clip"], 1.0, rtol=1e-6)
    for metric in ("ssim", "frame-2way", "psnr", "clip"):
        assert good.brain_signal[metric]["difference"] > 0 and good.brain_signal[metric]["p"] < 0.01, metric
    # strict N-way and CLIP similarity of LEA's clips, matched and mismatched, computed here
    frames = B.load_frame_classifier(classifiers["frame_classifier"], "cpu")
    clip = B.load_clip(classifiers["clip_model"], "cpu", dim=32)
    pred, real = (frames.probabilities(v.reshape(-1, SIZE, SIZE, 3)).reshape(CLIPS, FRAMES, -1)
                  for v in (decoded, truth))
    embed_pred, embed_real = (clip.embed_images(v.reshape(-1, SIZE, SIZE, 3)).numpy().reshape(CLIPS, FRAMES, -1)
                              for v in (decoded, truth))
    pairings = [np.arange(CLIPS), *partners.T]  # the matched truth, then each partner's
    strict = [n_way_top_k(pred, real[p], n_way=2, trials=100, ground_truth_top=1, seed=3).mean(1) for p in pairings]
    np.testing.assert_allclose(bad.extra_scores["frame-2way-strict"], strict[0])
    np.testing.assert_allclose(bad.brain_signal["frame-2way-strict"]["mismatched_scores"], np.mean(strict[1:], 0))
    cosine = [(embed_pred * embed_real[p]).sum(-1).mean(1) for p in pairings]  # unit vectors
    np.testing.assert_allclose(bad.extra_scores["clip"], cosine[0], rtol=1e-5)
    np.testing.assert_allclose(bad.brain_signal["clip"]["mismatched_scores"], np.mean(cosine[1:], 0), rtol=1e-5)
    # LEA's clip i is the truth of clip i - 1, one of the partners of some clips: no brain signal
    assert bad.brain_signal["ssim"]["difference"] < 0.05 and bad.brain_signal["ssim"]["p"] > 0.05
    assert "ssim" in bad.not_significant() and good.not_significant() == []

    # Table 2 holds each metric's mismatched baseline beside it; the field's other metrics, the same layout
    md = ev.to_markdown()
    table2 = md.split("## Cross-subject decoding (Table 2)\n")[1].split("##")[0]
    lines = [line for line in table2.splitlines() if line.startswith("|")]
    assert lines[0].endswith("| frame 50-way | frame 50-way mismatched (Δ, p) | SSIM | SSIM mismatched (Δ, p) |")
    ssim = good.brain_signal["ssim"]
    assert lines[3].startswith("|  | GLFA | ") and lines[3].endswith(
        f"| **1.000 ± 0.000** | {ssim['mismatched']:.3f} ({ssim['difference']:+.3f}, p {ssim['p']:.2g}) |")
    assert "ground truth = the classifier's top-3 on the true frame (MinD-Video's rule" in table2
    more = md.split("## Cross-subject decoding (Table 2): the field's other metrics\n")[1].split("##")[0]
    lines = [line for line in more.splitlines() if line.startswith("|")]
    assert lines[0] == ("| Task | Method | " + " | ".join(
        f"{m} | {m} mismatched (Δ, p)" for m in ("video 2-way strict", "video 50-way strict", "frame 2-way strict",
                                                 "frame 50-way strict", "PSNR (dB)", "CLIP similarity"))
                        + " | CLIP-pcc |")
    assert "the ground truth is the classifier's top-1 class on the true frame" in more
    assert "above 1/N chance says nothing" in more and "above 1/N chance says nothing" in table2

    # the command line: one warning line for LEA, none for GLFA
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(eval_config(classifiers, seed=3, permutations=2000).to_dict()))
    capsys.readouterr()
    assert main(["evaluate", str(run), "-c", str(config), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("glfa: warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("glfa: warning: lea on s1,s2 -> s3: no significant brain signal")
    assert "SSIM" in warnings[0]


def test_brain_signal_columns_of_table2_equal_an_independent_computation(tmp_path, classifiers):
    """Table 2's SSIM and the other metrics' PSNR columns: skimage against each clip's partners, then the permutation
    test on those scores; the report colours the cell by its p-value."""
    from skimage.metrics import peak_signal_noise_ratio

    from glfa.metrics.baseline import brain_signal, mismatched_partners
    from glfa.report import table_html

    run = tmp_path / "run"
    truth = write_planted_run(run)
    ev = evaluate_run(run, config=eval_config(classifiers, n_ways=[2], seed=4, permutations=500), progress=False)
    partners = mismatched_partners([f"test{i}" for i in range(CLIPS)], 8, seed=4)  # [10, 8]
    tables = {t.key: t for t in ev.tables() + ev.extra_tables()}
    for key, label, metric in (("table2", "SSIM", lambda a, b: structural_similarity(a, b, data_range=255,
                                                                                      channel_axis=-1)),
                               ("table2-more", "PSNR (dB)", lambda a, b: min(100.0, peak_signal_noise_ratio(
                                   b, a, data_range=255)) if np.any(a != b) else 100.0)):
        table = tables[key]
        column = table.header.index(f"{label} mismatched (Δ, p)")
        assert table.header[column - 1] == label
        for row, decoded in zip(table.rows, (np.roll(truth, 1, axis=0), truth)):  # LEA's row, then GLFA's
            def score(i: int, j: int) -> float:  # decoded clip i against true clip j: the mean over frames
                return float(np.mean([metric(a, b) for a, b in zip(decoded[i], truth[j])]))

            matched = np.array([score(i, i) for i in range(CLIPS)])
            mismatched = np.array([[score(i, j) for j in partners[i]] for i in range(CLIPS)])  # [10, 8]
            p = brain_signal(matched, mismatched, permutations=500, seed=4)["p"]
            expected = f"{mismatched.mean():.3f} ({matched.mean() - mismatched.mean():+.3f}, p {p:.2g})"
            assert row[column].text == expected, (key, row[1].text)
            assert row[column].p == pytest.approx(p)
            assert row[column - 1].text.startswith(f"{matched.mean():.3f} ± {matched.std():.3f}")
    glfa = tables["table2"].rows[1][tables["table2"].header.index("SSIM mismatched (Δ, p)")]
    assert glfa.p < 0.01 and f'<td class="p-weak">{glfa.text}</td>' in table_html(tables["table2"])  # p >= 1/501


def test_brain_to_video_retrieval_from_the_stage1_encoder(tmp_path, classifiers):
    from glfa.data.store import StudyStore
    from glfa.metrics.baseline import mismatched_partners
    from glfa.models.encoder import FmriEncoder
    from fixtures import write_decoding_store

    store_dir = write_decoding_store(tmp_path / "store")
    store = StudyStore.open(store_dir)
    run = tmp_path / "run"
    config = eval_config(classifiers, n_ways=[2], seed=1, permutations=500)
    torch.manual_seed(0)
    encoder = FmriEncoder(config.model, store.image_size, store.fmri_frames).eval()
    encoder.save_pretrained(run / "contrastive" / "encoder")
    (run / "contrastive" / "config.json").write_text(json.dumps({"train_subjects": ["s1", "s2"]}))
    windows = store.windows("test")  # 2 stimuli, 3 overlapping windows each
    truth = np.stack([store.frames(w) for w in windows])  # [6, 4, 16, 16, 3]
    write_model(run, "glfa", train=["s1", "s2"], held_out=["s3"], store=store_dir)
    folder = write_generations(run, "glfa", "s3", truth.copy(), truth, store=store_dir)
    index = json.loads((folder / "index.json").read_text())
    for item, w in zip(index["items"], windows):
        item["window"], item["stimulus_id"] = w.index, w.stimulus_id
    (folder / "index.json").write_text(json.dumps(index))

    ev = evaluate_run(run, config=config, progress=False)
    assert ev.retrieval_skipped == [] and len(ev.retrieval) == 1
    record = ev.retrieval[0]
    assert (record["subject"], record["split"], record["count"], record["train_subjects"]) == ("s3", "test", 6,
                                                                                               ["s1", "s2"])
    # brute force: embed each window's fMRI and each true frame, rank the clips by mean cosine, count
    clip = B.load_clip(classifiers["clip_model"], "cpu", dim=32)
    with torch.no_grad():
        fmri = [encoder(torch.from_numpy(store.fmri("s3", w))[None], heads=("clip",))["clip"][0] for w in windows]
    frames = [clip.embed_images(video) for video in truth]
    similarity = np.array([[float(torch.nn.functional.cosine_similarity(f[None], e).mean()) for e in frames]
                           for f in fmri])
    rank = [[int((similarity[i] > similarity[i, j]).sum() + (similarity[i] == similarity[i, j]).sum() - 1)
             for j in range(6)] for i in range(6)]
    assert len({tuple(r) for r in rank}) > 1  # the ranking differs between windows
    partners = mismatched_partners([w.stimulus_id for w in windows], 8, seed=1)
    assert partners.shape == (6, 3)  # 3 windows of the other stimulus
    for top in (1, 5):
        signal = record["top"][str(top)]
        assert signal["chance"] == pytest.approx(top / 6)
        assert signal["matched"] == pytest.approx(np.mean([rank[i][i] < top for i in range(6)]))
        assert signal["mismatched"] == pytest.approx(np.mean([[rank[i][j] < top for j in partners[i]]
                                                              for i in range(6)]))
    table = next(t for t in ev.extra_tables() if t.key == "retrieval")
    assert table.header[:6] == ["Subject", "Split", "Stage-1 subjects", "Clips", "top-1", "top-1 chance"]
    assert [c.text for c in table.rows[0][:6]] == ["s3", "test", "s1,s2", "6",
                                                   f"{record['top']['1']['matched']:.3f}", "0.167"]
    assert "## Brain-to-video retrieval (stage-1 encoder)" in ev.to_markdown()
    # without a stage-1 encoder: not measured, and said why
    shutil.rmtree(run / "contrastive")
    ev = evaluate_run(run, config=config, progress=False)
    assert ev.retrieval == [] and "no stage-1 encoder" in ev.retrieval_skipped[0]
    assert "Retrieval not measured: no stage-1 encoder" in ev.to_markdown()
