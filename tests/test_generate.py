"""glfa.generate: the generations folder of the contract, truth frames, seeds, atomic replacement, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glfa.config import GenerationConfig
from glfa.data.store import StudyStore
from glfa.data.video import read_video
from glfa.errors import CheckpointError, DataError
from glfa.generate import generate
from glfa.pipeline import FmriToVideoPipeline
from tests.fixtures import GENERATION, write_cotrain_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder holding RUN/cotrain-glfa/model on a tiny generator and decoding store."""
    return write_cotrain_run(tmp_path_factory.mktemp("generate"))


@pytest.fixture(scope="module")
def generated(run) -> Path:
    return generate(run, method="glfa", subject="s3", device="cpu", batch_size=4, progress=False)


def test_generate_writes_the_contract_folder(run, generated):
    assert generated == run / "generations" / "glfa" / "s3-test"
    store = StudyStore.open(json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())["store"])
    windows = store.windows("test")
    index = json.loads((generated / "index.json").read_text())
    assert index["count"] == len(windows) == len(index["items"]) == 6
    assert (index["method"], index["subject"], index["split"], index["kind"]) == ("glfa", "s3", "test", "cotrain")
    assert index["generation"] == GENERATION and index["fps"] == 3.0 and index["seed"] == 5
    assert index["subject_role"] == "held_out" and index["seen_in_training"] is False
    assert index["model_dir"] == str((run / "cotrain-glfa" / "model").resolve())
    assert index["store"] == str(store.path.resolve())
    f, h, w = GENERATION["num_frames"], GENERATION["height"], GENERATION["width"]
    with np.load(generated / "videos.npz") as npz:
        decoded, truth = npz["decoded"], npz["truth"]
    assert decoded.shape == truth.shape == (6, f, h, w, 3) and decoded.dtype == truth.dtype == np.uint8
    for i, (item, window) in enumerate(zip(index["items"], windows)):
        assert item["index"] == i and item["window"] == window.index
        assert (item["stimulus_id"], item["onset"]) == (window.stimulus_id, window.onset)
        assert item["decoded"] == {"mp4": f"decoded/{i:04d}.mp4", "gif": f"decoded/{i:04d}.gif"}
        assert item["truth"] == {"mp4": f"truth/{i:04d}.mp4", "gif": f"truth/{i:04d}.gif"}
        # 4 stored frames spread over 6 (nearest frame in time); the sizes already match
        np.testing.assert_array_equal(truth[i], store.frames(window)[[0, 1, 1, 2, 3, 3]])
    for part in ("decoded", "truth"):
        assert sorted(p.name for p in (generated / part).iterdir()) == sorted(
            f"{i:04d}.{ext}" for i in range(6) for ext in ("mp4", "gif"))
    frames, fps = read_video(generated / "decoded" / "0002.mp4")
    assert frames.shape == (f, h, w, 3) and fps == pytest.approx(3.0)
    truth_back, _ = read_video(generated / "truth" / "0001.mp4")  # smooth colours survive yuv420p + H.264
    assert truth_back.shape == (f, h, w, 3) and np.abs(truth_back.astype(int) - truth[1]).mean() < 8
    timing = json.loads((generated / "generation.json").read_text())
    assert timing["clips"] == 6 and timing["clips_per_second"] > 0 and timing["device"] == "cpu"
    assert [p.name for p in generated.parent.iterdir()] == ["s3-test"]  # no temporary folder left


def test_each_clip_uses_its_window_seed(run, generated):
    """Clip i = the pipeline on window i's fMRI alone, seeded generation.seed + window index."""
    store = StudyStore.open(json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())["store"])
    window = store.windows("test")[4]
    pipe = FmriToVideoPipeline.from_model_dir(run / "cotrain-glfa" / "model", device="cpu")
    settings = {k: GENERATION[k] for k in ("num_inference_steps", "guidance_scale", "num_frames", "height", "width")}
    alone = pipe(torch.from_numpy(store.fmri("s3", window))[None], seed=5 + window.index, **settings)[0].numpy()
    with np.load(generated / "videos.npz") as npz:
        assert np.abs(npz["decoded"][4].astype(int) - alone).max() <= 1


def test_a_failed_run_leaves_the_previous_result(run, generated):
    before = (generated / "index.json").read_bytes()
    with pytest.raises(DataError, match="multiple of the VAE factor"):
        generate(run, method="glfa", subject="s3", config=GenerationConfig(height=18, width=16, num_frames=2),
                 device="cpu", progress=False)
    assert (generated / "index.json").read_bytes() == before
    assert [p.name for p in generated.parent.iterdir()] == ["s3-test"]


def test_training_subject_on_the_train_split_is_recorded(run):
    config = GenerationConfig(**{**GENERATION, "num_inference_steps": 1, "num_frames": 2, "height": 8, "width": 8})
    out = generate(run, method="glfa", subject="s1", split="train", config=config, device="cpu", batch_size=16,
                   progress=False)
    index = json.loads((out / "index.json").read_text())
    assert out.name == "s1-train" and index["count"] == 12
    assert index["subject_role"] == "train" and index["seen_in_training"] is True
    assert index["generation"]["num_frames"] == 2


def test_bad_input(run, tmp_path):
    with pytest.raises(DataError, match=r"unknown subject 's9'; the store holds \['s1', 's2', 's3'\]"):
        generate(run, method="glfa", subject="s9", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"no model for method 'ridge'.*this run holds \['glfa'\]"):
        generate(run, method="ridge", subject="s3", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"no model for method 'lea' \(no .*lea/model/model.json\)"):
        generate(run, method="lea", subject="s3", device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="this run holds no decoder model"):
        generate(tmp_path, method="glfa", subject="s3", device="cpu", progress=False)
    with pytest.raises(DataError, match="method"):
        generate(run, method="../x", subject="s3", device="cpu", progress=False)
    assert not (run / "generations" / "ridge").exists()
