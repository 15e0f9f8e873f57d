"""glfa.runs: the run folder's paths, and cross-dataset generations beside the run's own (issue 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from glfa import backbones as B
from glfa.cli import main
from glfa.data.store import StudyStore
from glfa.runs import RunLayout, default_run_dir, same_store, store_tag
from tests.fixtures import CONFIG, GENERATION, write_cotrain_run, write_decoding_store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layout_names_the_paths_of_the_run_folder_contract(tmp_path):
    """Every path as runs before glfa.runs wrote them, so old run folders still load."""
    run = RunLayout(tmp_path / "run")
    r = tmp_path / "run"
    assert run.pte == r / "pte"
    assert run.stage1_encoder == r / "contrastive" / "encoder"
    assert run.stage("pretrain") == r / "pretrain"
    assert run.checkpoints("contrastive") == r / "contrastive" / "checkpoints"
    assert run.stage_config("pretrain") == r / "pretrain" / "config.json"
    assert run.metrics_log("cotrain-glfa") == r / "cotrain-glfa" / "metrics.jsonl"
    assert run.metrics("cotrain-glfa") == r / "cotrain-glfa" / "metrics.json"
    assert run.cotrain_stage("pte-v") == "cotrain-pte-v"
    assert run.model_dir("glfa") == run.cotrain_model("glfa") == r / "cotrain-glfa" / "model"
    assert run.model_dir("lea") == r / "lea" / "model" and run.model_dir("blurry") == r / "blurry" / "model"
    assert run.cotrain_model("lea") == r / "cotrain-lea" / "model"  # a co-trained decoder may have any name
    assert run.within_method("03") == "within-03"
    assert run.model_dir(run.within_method("03")) == r / "cotrain-within-03" / "model"
    assert run.within("03").stage1_encoder == r / "within-03" / "contrastive" / "encoder"
    assert run.generations("glfa+blurry", "03", "test") == r / "generations" / "glfa+blurry" / "03-test"
    assert run.generations("glfa", "03", "test", "fcvid-0123abcd") == r / "generations" / "glfa" / "03-test@fcvid-0123abcd"
    assert run.evaluation == r / "evaluation" and run.video_evaluation == r / "evaluation" / "video.json"
    assert run.alignment == r / "alignment" and run.report == r / "report.html"
    for method in ("glfa", "pte-v", "lea", "blurry", "within-03", "glfa-2min-s3"):
        assert run.method_of(run.model_dir(method)) == method

    class Config:
        output_dir, name = "runs", "wen"

    assert default_run_dir(Config()) == Path("runs") / "wen"


def test_layout_lists_what_is_on_disk(tmp_path):
    run = RunLayout(tmp_path)
    for method in ("pte-v", "glfa", "lea"):
        run.model_dir(method).mkdir(parents=True)
    run.stage("cotrain-half").mkdir()  # a stage killed before its model was written
    assert run.decoder_methods() == ["glfa", "pte-v", "lea"]
    finished = [run.generations("glfa", "s3", "test"), run.generations("glfa", "s3", "test", "other-0123abcd"),
                run.generations("lea", "s1", "train")]
    for folder in finished:
        folder.mkdir(parents=True)
        (folder / "index.json").write_text("{}")
    (run.generations_root / "glfa" / ".s3-test.tmp-1-x").mkdir()  # a generate still running: no index.json yet
    assert run.generations_folders() == sorted(zip(["glfa", "glfa", "lea"], finished), key=lambda m: m[1])
    for stage in ("pretrain", "contrastive"):
        run.stage(stage).mkdir(exist_ok=True)
        run.metrics_log(stage).write_text("")
    assert run.metrics_logs() == [run.metrics_log("contrastive"), run.metrics_log("pretrain")]


def test_store_tag_follows_the_content(tmp_path):
    own = StudyStore.open(write_decoding_store(tmp_path / "webvid"))
    copy = StudyStore.open(shutil.copytree(own.path, tmp_path / "moved"))
    other = StudyStore.open(write_decoding_store(tmp_path / "fcvid", seed=1))
    record = {"store": str(own.path), "store_identity": own.identity}
    assert same_store(record, {"store": str(copy.path), "store_identity": copy.identity})
    assert not same_store(record, {"store": str(other.path), "store_identity": other.identity})
    # records without an identity (runs older than it) compare paths
    assert same_store({"store": str(own.path)}, {"store": str(tmp_path / "x" / ".." / "webvid")})
    assert not same_store({"store": str(own.path)}, {"store": str(copy.path), "store_identity": copy.identity})
    assert store_tag(other.path, other.identity) == f"fcvid-{other.identity[:8]}"
    assert store_tag(copy.path, copy.identity) == f"moved-{own.identity[:8]}"  # the content's digits, not the path's
    assert store_tag(tmp_path / "Fudan FCVID (v2)", None).startswith("Fudan_FCVID_v2_-")
    assert store_tag(tmp_path / "old", None) != store_tag(tmp_path / "sub" / "old", None)  # no identity: the path's


@pytest.fixture(scope="module")
def cross(tmp_path_factory):
    """A run whose GLFA decoder (trained on s1, s2 of its store) decoded s3 of its own store and of another."""
    root = tmp_path_factory.mktemp("cross")
    run = write_cotrain_run(root)
    model = run / "cotrain-glfa" / "model" / "model.json"
    info = json.loads(model.read_text())
    own = StudyStore.open(info["store"])
    model.write_text(json.dumps({**info, "store_identity": own.identity}))  # as glfa train cotrain records it
    # the same subjects, other fMRI and one more test stimulus
    other = StudyStore.open(write_decoding_store(root / "fcvid", test_stimuli=3, seed=1))
    generate = ["generate", str(run), "--method", "glfa", "--subject", "s3", "--device", "cpu", "--quiet"]
    assert main(generate) == 0
    assert main([*generate, "--store", str(other.path)]) == 0
    config = root / "evaluate.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cpu", "model": CONFIG["model"], "generation": GENERATION,
        "contrastive": {"clip_model": str(B.tiny_clip(root / "clip", dim=32))},
        "evaluation": {"n_ways": [2], "trials": 5, "permutations": 200,
                       "frame_classifier": str(B.tiny_frame_classifier(root / "vit"))}}))
    return {"run": run, "own": own, "other": other, "config": config}


def test_cross_dataset_generations_keep_their_own_folder(cross):
    """Issue 12: `glfa generate RUN --store OTHER` wrote over the run's own store's clips of the same subject."""
    run, own, other = RunLayout(cross["run"]), cross["own"], cross["other"]
    within = run.generations("glfa", "s3", "test")
    across = run.generations("glfa", "s3", "test", f"fcvid-{other.identity[:8]}")
    assert [folder for _, folder in run.generations_folders()] == sorted([within, across])
    for folder, store in ((within, own), (across, other)):
        index = json.loads((folder / "index.json").read_text())
        assert (index["store"], index["store_identity"]) == (str(store.path.resolve()), store.identity)
        assert index["count"] == len(store.windows("test"))  # 6 and 9
        with np.load(folder / "videos.npz") as clips:
            truth = clips["truth"]
        expected = store.frames(store.windows("test")[0])[[0, 1, 1, 2, 3, 3]]  # window 0's 4 frames spread over 6
        np.testing.assert_array_equal(truth[0], expected)
    with np.load(within / "videos.npz") as a, np.load(across / "videos.npz") as b:
        assert not np.array_equal(a["decoded"][:6], b["decoded"][:6])  # other fMRI, other clips


def test_a_copied_store_decodes_into_the_own_folder(cross, tmp_path):
    run = RunLayout(cross["run"])
    copy = shutil.copytree(cross["own"].path, tmp_path / "copy")
    before = run.generations_folders()
    assert main(["generate", str(run.root), "--method", "glfa", "--subject", "s3", "--store", str(copy),
                 "--device", "cpu", "--quiet"]) == 0
    assert run.generations_folders() == before  # the same study: no folder of its own


def test_evaluate_scores_both_protocols(cross):
    run = RunLayout(cross["run"])
    assert main(["evaluate", str(run.root), "-c", str(cross["config"]), "--quiet"]) == 0
    results = json.loads(run.video_evaluation.read_text())["results"]
    tag = f"fcvid-{cross['other'].identity[:8]}"
    assert {(r["method"], r["subject"], r["protocol"], r["task"], r["generations"], r["count"]) for r in results} == {
        ("glfa", "s3", "cross-subject", "s1,s2 -> s3", str(run.generations("glfa", "s3", "test")), 6),
        ("glfa", "s3", "cross-dataset", "store -> fcvid: s3", str(run.generations("glfa", "s3", "test", tag)), 9)}
    assert all(set(r["brain_signal"]) >= {"frame-2way", "ssim"} for r in results)
