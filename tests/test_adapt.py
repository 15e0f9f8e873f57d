"""glfa adapt: windows of the first minutes, the three methods' model folders, decoding them, bad input;
recovery of planted subject differences on the synthetic study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from glfa import backbones as B
from glfa.adapt import ParcelLinearMap, adapt_model, adaptation_windows, load_subject_map
from glfa.data.store import StudyStore
from glfa.errors import DataError
from glfa.models.encoder import FmriEncoder
from glfa.pipeline import FmriToVideoPipeline
from tests.fixtures import write_decoding_store
from tests.test_pipeline import write_cotrain_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: A fast adaptation for the tiny store (0.2 minutes = the first 2 of its 6-second training stimuli).
FAST = {"adapt": {"steps": 30, "batch_size": 8, "learning_rate": 0.05, "projector_steps": 10, "cv_folds": 2}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder holding RUN/cotrain-glfa/model (trained on s1, s2; s3 held out) on a tiny generator."""
    root = tmp_path_factory.mktemp("adapt")
    generator_dir = B.tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=16)
    store_dir = write_decoding_store(root / "store")
    run_dir = root / "run"
    write_cotrain_model(run_dir / "cotrain-glfa" / "model", generator_dir=generator_dir, store_dir=store_dir)
    return run_dir


def _config(run_dir: Path):
    from glfa.config import validate_config

    info = json.loads((run_dir / "cotrain-glfa" / "model" / "model.json").read_text())
    return validate_config({**info["config"], **FAST})


def test_windows_of_the_first_minutes(run):
    store = StudyStore.open(json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())["store"])
    # TR 1 s, training stimuli of 6 frames in store order, windows of 2 fMRI frames starting at 0, 1, 2
    windows, used = adaptation_windows(store, "s3", ["s1", "s2"], 0.2)
    expected = [w for w in store.windows("train") if w.stimulus_id in ("train0", "train1")]
    assert windows == expected and used == pytest.approx((6 + 4) / 60)
    windows, used = adaptation_windows(store, "s3", ["s1", "s2"], 9 / 60)  # train1's first 3 s: its first 2 windows
    assert [w.stimulus_id for w in windows] == ["train0"] * 3 + ["train1"] * 2 and used == pytest.approx(9 / 60)
    assert all(w.split == "train" for w in adaptation_windows(store, "s3", ["s1", "s2"], 100)[0])
    with pytest.raises(DataError, match="hold no whole window"):
        adaptation_windows(store, "s3", ["s1", "s2"], 1 / 60)
    with pytest.raises(DataError, match="positive number of minutes"):
        adaptation_windows(store, "s3", ["s1", "s2"], 0)
    with pytest.raises(DataError, match="one of the model's training subjects"):
        adaptation_windows(store, "s1", ["s1", "s2"], 1)


@pytest.mark.parametrize("method", ["glfa", "linear", "full"])
def test_adapted_model_folder_decodes_like_any_other(run, method):
    from glfa.generate import generate

    out = adapt_model(run, subject="s3", minutes=0.2, method=method, config=_config(run), progress=False)
    assert out == run / f"cotrain-adapt-{method}-s3-0.2min" / "model"
    info = json.loads((out / "model.json").read_text())
    base_info = json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())
    store = StudyStore.open(info["store"])
    record = info["adaptation"]
    seen = {w.index for w in store.windows() if w.stimulus_id in ("train0", "train1")}
    assert set(record["windows"]) == seen and not seen & {w.index for w in store.windows("test")}
    assert record["subject"] == "s3" and record["method"] == method and info["method"] == out.parent.name[8:]
    assert info["train_subjects"] == base_info["train_subjects"] and info["kind"] == "cotrain"
    base = FmriEncoder.from_pretrained(run / "cotrain-glfa" / "model" / "encoder").state_dict()
    mine = FmriEncoder.from_pretrained(out / "encoder").state_dict()
    changed = {k for k in base if not torch.equal(base[k], mine[k])}
    if method == "linear":
        assert not changed and (out / "subject_map.safetensors").is_file()
    else:
        assert {k.split(".")[0] for k in changed} == ({"glfa", "token_head"} if method == "full" else {"glfa"})
        assert record["loss_last"] < record["loss_first"]
    # the pipeline conditions on the adapted subject's path: map (linear) -> encoder
    pipe = FmriToVideoPipeline.from_model_dir(out, device="cpu")
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")[:2]])
    encoder = FmriEncoder.from_pretrained(out / "encoder").eval()
    with torch.no_grad():
        x = load_subject_map(out / "subject_map.safetensors")(fmri) if method == "linear" else fmri
        torch.testing.assert_close(pipe.condition(fmri), encoder(x, heads=("tokens",))["tokens"])
    generated = generate(run, method=info["method"], subject="s3", device="cpu", batch_size=4, progress=False)
    assert json.loads((generated / "index.json").read_text())["count"] == len(store.windows("test"))
