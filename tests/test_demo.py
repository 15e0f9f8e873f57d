"""glfa demo --quick: simulate -> prepare -> pretrain -> align -> contrastive -> generator -> cotrain (GLFA and
fMRI-PTE-V) -> LEA -> within-subject -> generate -> evaluate -> report, then a second run that reuses it all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from glfa.cli import main
from glfa.config import load_config
from glfa.data.store import StudyStore
from glfa.demo import QUICK, STEPS, demo_config, demo_config_path, run_demo


def test_demo_config_is_shipped_and_valid():
    path = demo_config_path()
    assert path.is_file() and path.parent.name == "configs" and path.parent.parent.name == "glfa"
    config = load_config(path)
    assert config.simulation.n_categories >= 8 and config.data.layout == "generic"
    quick = demo_config(quick=True)
    assert quick.simulation.n_subjects == QUICK["simulation"]["n_subjects"] == 3  # leave-one-out needs 3
    assert quick.simulation.n_categories < config.simulation.n_categories
    assert quick.pretrain.steps < config.pretrain.steps and quick.align.steps < config.align.steps
    assert config.demo_generator.cross_attention_dim == config.model.heads.token_dim
    assert config.subjects.held_out and config.generation.height == config.data.windows.video_height
    assert quick.generation.height == quick.simulation.frame_size and quick.cotrain.steps < config.cotrain.steps
    assert yaml.safe_load(path.read_text())["name"] == "demo"


def test_quick_demo_end_to_end_and_reuse(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLFA_CACHE", str(tmp_path / "machine-cache"))  # the demo generator is cached there
    out = tmp_path / "demo"
    summary = run_demo(out, quick=True, progress=False)
    sim, prep = summary["steps"]["simulate"], summary["steps"]["prepare"]
    assert not sim["reused"] and not prep["reused"]
    assert sim["subjects"] == ["01", "02", "03"] and prep["subjects"] == ["01", "02", "03"]
    assert prep["windows_train"] > 0 and prep["windows_test"] > 0
    assert prep["stimuli"] == sim["stimuli"] == 4 * 3
    store = StudyStore.open(out / "store")
    assert store.image_size == 64 and store.mask.shape == (64, 64)
    window = store.windows("test")[0]
    assert store.fmri("01", window).shape[1:] == (64, 64)
    assert store.captions(window)[0].startswith(("a ", "an ", "the "))
    store.close()
    pre = summary["steps"]["pretrain"]
    assert not pre["reused"] and pre["steps"] == 10
    assert (Path(pre["path"]) / "config.json").is_file()
    align = summary["steps"]["align"]
    table = (out / "alignment" / "alignment.md").read_text()
    assert "identity" in table and "01,02 -> 03" in table
    assert set(align["held_out_isc_glfa"]) == {"01", "02", "03"}
    steps = summary["steps"]
    assert list(steps) == [name for name, _ in STEPS]
    run = Path(steps["pretrain"]["path"]).parent
    assert Path(steps["generator"]["path"]).parent == tmp_path / "machine-cache"
    for method in ("glfa", "pte-v", "within-03"):
        info = json.loads((run / f"cotrain-{method}" / "model" / "model.json").read_text())
        assert info["train_subjects"] == (["03"] if method == "within-03" else ["01", "02"])
    assert steps["generate"]["clips"] == {f"{m}/03": prep["windows_test"]
                                          for m in ("glfa", "pte-v", "lea", "blurry", "glfa+blurry", "within-03")}
    evaluation = json.loads((run / "evaluation" / "video.json").read_text())
    glfa = next(r for r in evaluation["results"] if r["method"] == "glfa")
    assert glfa["protocol"] == "cross-subject" and glfa["summary"]["frame-2way"]["n"] == prep["windows_test"]
    assert 0 <= glfa["summary"]["frame-2way"]["std"] and "frame-2way" in steps["evaluate"]["glfa/03"]
    # the mismatched baseline is computed for every method and metric (not that the quick demo decodes)
    for result in evaluation["results"]:
        for metric in ("frame-2way", "frame-2way-strict", "ssim", "psnr", "clip"):
            signal = result["brain_signal"][metric]
            assert len(signal["mismatched_scores"]) == prep["windows_test"] and 0 < signal["p"] <= 1
            assert abs(signal["difference"] - (signal["matched"] - signal["mismatched"])) < 1e-9
        assert len(result["extra_scores"]["clip-pcc"]) == prep["windows_test"]
    retrieval = evaluation["retrieval"]
    assert [(r["subject"], r["count"]) for r in retrieval] == [("03", prep["windows_test"])]
    assert retrieval[0]["top"]["1"]["chance"] == 1 / prep["windows_test"]
    blurry = next(r for r in evaluation["results"] if r["method"] == "glfa+blurry")
    # glfa+blurry decodes with glfa's model: its GLFA layer is measured once, under glfa
    assert [a["method"] for a in evaluation["alignment"]] == ["glfa"]
    assert blurry["model_dir"] == glfa["model_dir"] and steps["blurry"]["path"] == str(run / "blurry" / "model")
    report = (run / "report.html").read_text()
    assert "Honest comparison" in report and "data:image/gif;base64," in report and "http://" not in report
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["steps"]["prepare"]["windows_test"] == prep["windows_test"]
    printed = capsys.readouterr().out
    assert "simulate" in printed and "prepare" in printed and str(out / "summary.json") in printed
    # What a broken step would change, however little the tiny models decode: GLFA aligns the simulated
    # subjects (held-out ISC well above the unaligned one), every method decodes every test window into its
    # own non-blank clip of the generation's size (the retrieval decoder's windows that retrieve the same training
    # window share its clip), and the methods' models differ.
    assert all(align["held_out_isc_glfa"][s] > align["held_out_isc_identity"][s] + 0.1 for s in ("01", "02", "03"))
    gen = on_disk["config"]["generation"]
    decoded = {}
    for method in steps["generate"]["clips"]:
        with np.load(run / "generations" / method.split("/")[0] / "03-test" / "videos.npz") as videos:
            clips = decoded[method] = videos["decoded"]
        assert clips.dtype == np.uint8 and clips.shape == (prep["windows_test"], gen["num_frames"], gen["height"],
                                                           gen["width"], 3), method
        distinct = len({clip.tobytes() for clip in clips})
        assert clips.std() > 5 and (distinct == len(clips) or (method == "blurry/03" and distinct > 1)), method
    for a, b in (("glfa", "pte-v"), ("glfa", "glfa+blurry"), ("glfa", "within-03"), ("lea", "blurry")):
        assert not np.array_equal(decoded[f"{a}/03"], decoded[f"{b}/03"]), (a, b)
    outputs = [*run.glob("**/*.safetensors"), *run.glob("generations/**/videos.npz"), run / "evaluation" / "video.json"]
    written = {path: path.stat().st_mtime_ns for path in outputs if "checkpoints" not in path.parts}
    assert len(written) > 10

    # Second run, through the command line: the study, the store and the pretrained PTE are reused.
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["steps"]["simulate"]["reused"] and again["steps"]["prepare"]["reused"]
    assert again["steps"]["pretrain"]["reused"]
    trained = ("contrastive", "generator", "cotrain-glfa", "cotrain-pte-v", "lea", "within", "blurry", "generate",
               "evaluate")
    assert all(again["steps"][name]["reused"] for name in trained)
    assert again["steps"]["generator"]["path"] == steps["generator"]["path"]
    assert again["steps"]["simulate"]["path"] == sim["path"]
    assert {path: path.stat().st_mtime_ns for path in written} == written  # reused, not written again
