"""The decoding path through the command line, end to end on a tiny store with tiny backbones:
train pretrain -> contrastive -> cotrain (GLFA and --no-glfa) -> lea -> generate -> evaluate -> report.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml
from fixtures import write_decoding_store

from glfa.backbones import tiny_clip, tiny_frame_classifier, tiny_video_generator
from glfa.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    store = write_decoding_store(root / "store")
    train = {"checkpoint_every": 2, "log_every": 1, "num_workers": 0}
    config = {
        "name": "tiny", "output_dir": str(root / "runs"), "device": "cpu",
        "subjects": {"held_out": ["s3"]},
        "model": {"preset": "tiny"},
        "pretrain": {**train, "steps": 2, "batch_size": 4},
        "contrastive": {**train, "steps": 3, "stimuli_per_batch": 4, "learning_rate": 1e-3, "augment_views": 2,
                        "clip_model": str(tiny_clip(root / "clip", dim=32))},
        "cotrain": {**train, "steps": 3, "batch_size": 4, "learning_rate": 1e-3,
                    "generator": str(tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=16))},
        "lea": {"cv_folds": 2},
        "generation": {"num_inference_steps": 2, "guidance_scale": 2.0, "num_frames": 4, "height": 16, "width": 16,
                       "fps": 1},
        "evaluation": {"n_ways": [2], "trials": 5, "frame_classifier": str(tiny_frame_classifier(root / "vit"))},
    }  # fmt: skip
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "store": store, "config": path, "run": root / "runs" / "tiny"}


def _cli(setup, *args: str) -> int:
    return main([*args, "-c", str(setup["config"]), "--store", str(setup["store"]), "--quiet"])


def test_train_generate_evaluate_report(setup, capsys):
    run = setup["run"]
    assert _cli(setup, "train", "pretrain") == 0
    assert _cli(setup, "train", "contrastive") == 0
    assert f"saved to {run / 'contrastive' / 'encoder'}" in capsys.readouterr().out
    assert _cli(setup, "train", "cotrain") == 0
    assert _cli(setup, "train", "cotrain", "--no-glfa") == 0
    assert _cli(setup, "train", "lea") == 0
    for stage in ("contrastive", "cotrain-glfa", "cotrain-pte-v"):
        assert (run / stage / "checkpoints" / "latest").is_file()
    model = json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())
    assert model["train_subjects"] == ["s1", "s2"] and model["held_out"] == ["s3"]

    for method in ("glfa", "pte-v", "lea"):
        assert main(["generate", str(run), "--method", method, "--subject", "s3", "--quiet"]) == 0
        index = json.loads((run / "generations" / method / "s3-test" / "index.json").read_text())
        assert index["count"] == 6 and index["subject"] == "s3"  # 2 test stimuli x 3 windows
        clips = np.load(run / "generations" / method / "s3-test" / "videos.npz")
        assert clips["decoded"].shape == clips["truth"].shape == (6, 4, 16, 16, 3)
    capsys.readouterr()

    assert main(["evaluate", str(run), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "Table 2" in table and "GLFA" in table and "fMRI-PTE-V" in table and "LEA" in table
    evaluation = json.loads((run / "evaluation" / "video.json").read_text())
    assert {r["method"] for r in evaluation["results"]} == {"glfa", "pte-v", "lea"}
    assert all(set(r["brain_signal"]) >= {"frame-2way", "ssim", "psnr", "clip"} for r in evaluation["results"])
    # retrieval from the trained stage-1 encoder, with the run's CLIP and the store recorded in the generations
    assert evaluation["retrieval_skipped"] == []
    retrieval = evaluation["retrieval"][0]
    assert (retrieval["subject"], retrieval["count"], retrieval["train_subjects"]) == ("s3", 6, ["s1", "s2"])
    assert set(retrieval["top"]) == {"1", "5"} and retrieval["top"]["5"]["chance"] == 5 / 6
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert html.count("data:image/gif;base64,") >= 6 and "https://" not in html

    # a copied store is the same study (issue 13): clips decoded from the copy stay cross-subject, not cross-dataset
    copy = shutil.copytree(setup["store"], setup["root"] / "store-copy")
    assert main(["generate", str(run), "--method", "glfa", "--subject", "s3", "--store", str(copy), "--quiet"]) == 0
    assert main(["evaluate", str(run), "--methods", "glfa", "--quiet"]) == 0
    evaluation = json.loads((run / "evaluation" / "video.json").read_text())
    assert [r["protocol"] for r in evaluation["results"]] == ["cross-subject"]


def test_bad_input_is_one_clear_line(setup, tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nowhere"), "--subject", "s3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glfa: error:") and err.count("\n") == 1
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "glfa generate" in capsys.readouterr().err  # says how to make generations
    assert main(["report", str(tmp_path)]) == 2
    assert "glfa evaluate" in capsys.readouterr().err
    missing = yaml.safe_load(setup["config"].read_text())
    missing["cotrain"]["generator"] = str(tmp_path / "no-generator")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(missing))
    stage1 = setup["run"] / "contrastive" / "encoder"  # trained by the test above
    args = ["train", "cotrain", "-c", str(bad), "--store", str(setup["store"]), "--out", str(tmp_path / "r"),
            "--init", str(stage1)]
    assert main([*args, "--quiet"]) == 2
    assert "no-generator" in capsys.readouterr().err
