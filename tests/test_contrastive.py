"""Stage 1 (contrastive) on the tiny decodable store with a tiny CLIP: learning, data use, resume, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from fixtures import kill_after_first_checkpoint, write_decoding_store
from safetensors.torch import load_file
from fixtures import write_uncaptioned_store

from glfa.backbones import load_clip, tiny_clip
from glfa.config import validate_config
from glfa.data.features import clip_features
from glfa.data.store import StudyStore
from glfa.errors import ConfigError, StoreError
from glfa.models.encoder import FmriEncoder
from glfa.training.checkpoint import latest_checkpoint, load_checkpoint
from glfa.training.contrastive import ContrastiveStage
from glfa.training.stage import run_stage
from glfa.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    return write_decoding_store(tmp_path_factory.mktemp("contrastive") / "store")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "clip", dim=32, image_size=16)


def _config(clip_dir: Path, **contrastive) -> dict:
    section = {"steps": 60, "stimuli_per_batch": 6, "subjects_per_batch": 2, "learning_rate": 1e-3,
               "weight_decay": 0.0, "dropout": 0.0, "clip_model": str(clip_dir), "num_workers": 0, "log_every": 10,
               "augment_views": 2}
    return {"model": {"preset": "tiny"}, "device": "cpu", "contrastive": {**section, **contrastive}}


def test_loss_falls_and_fmri_retrieves_its_stimulus(store_path, clip_dir, tmp_path):
    config = validate_config(_config(clip_dir))
    result = run_stage(ContrastiveStage, config, store_path, tmp_path / "run", progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < 0.7 * first["loss"]
    assert last["retrieval_image"] > 2 / 6 and last["retrieval_text"] > 2 / 6  # chance 1/6 in batches of 6
    encoder = FmriEncoder.from_pretrained(result.outputs["encoder"]).eval()
    assert Path(result.outputs["encoder"]) == tmp_path / "run" / "contrastive" / "encoder" and encoder.glfa is None
    # independent check over every training window: the nearest stimulus image is the window's own stimulus
    store = StudyStore.open(store_path)
    windows = store.windows("train")
    feats = clip_features(store, load_clip(clip_dir, device="cpu"), config=config, progress=False)
    images = feats.image[[store.frame_index(w) for w in windows], 0].float()  # [N, D]
    with torch.no_grad():
        f = encoder(torch.stack([torch.from_numpy(store.fmri("s1", w)) for w in windows]))["clip"]  # [N, D]
    nearest = (f @ images.T).argmax(-1)
    hits = sum(windows[int(j)].stimulus_id == w.stimulus_id for j, w in zip(nearest, windows)) / len(windows)
    assert hits > 0.5  # chance 1/4 (4 training stimuli)
    summary = json.loads((tmp_path / "run" / "contrastive" / "metrics.json").read_text())
    assert summary["steps"] == 60 and summary["outputs"]["encoder"] == result.outputs["encoder"]


def test_held_out_subjects_and_test_windows_are_never_read(store_path, clip_dir, tmp_path, monkeypatch):
    from glfa.models.pte import FmriPTE

    config = validate_config({**_config(clip_dir, steps=3, dropout=0.3), "subjects": {"held_out": ["s3"]}})
    run = tmp_path / "run"
    pte = FmriPTE(image_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, decoder_depth=1,
                  decoder_num_heads=2, bottleneck_dim=64)
    pte.save_pretrained(run / "pte")  # stage 0's output: the encoder starts from it
    store = StudyStore.open(store_path)
    read = []
    fmri = store.fmri
    monkeypatch.setattr(store, "fmri", lambda subject, window, out=None: (read.append((subject, window.split)),
                                                                          fmri(subject, window, out))[1])
    stage = ContrastiveStage(config, store, run_dir=run, progress=False)
    models = stage.build_models()
    encoder = models["encoder"]
    assert encoder.glfa is None and encoder.clip_head.channel_mapper[1].p == 0.3  # their fmri2clip dropout
    # the fmri2clip head reads the condition tokens: stage 1 trains the token projector, as theirs does
    assert all(p.requires_grad for p in encoder.token_head.parameters())
    assert all(torch.equal(v, pte.encoder.state_dict()[k]) for k, v in models["encoder"].pte.state_dict().items())
    train(stage, run, device="cpu", progress=False)
    assert read and {s for s, _ in read} == {"s1", "s2"} and {split for _, split in read} == {"train"}
    resolved = json.loads((run / "contrastive" / "config.json").read_text())
    assert resolved["held_out"] == ["s3"] and resolved["init_from"] == str(run / "pte")


_CHILD = """
import sys, torch
torch.set_num_threads(1)
from glfa.config import load_config
from glfa.training.contrastive import ContrastiveStage
from glfa.training.stage import run_stage
run_stage(ContrastiveStage, load_config(sys.argv[1]), sys.argv[2], sys.argv[3], progress=False)
"""


def test_resumed_after_sigkill_ends_with_identical_weights(store_path, clip_dir, tmp_path):
    import yaml

    data = _config(clip_dir, steps=30, checkpoint_every=3, gradient_accumulation_steps=2, stimuli_per_batch=4)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = validate_config(data)
    clip_features(StudyStore.open(store_path), clip_dir, config=config, progress=False)  # shared by both runs
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    kill_after_first_checkpoint([sys.executable, "-c", _CHILD, str(config_path), str(store_path), str(killed)],
                                killed / "contrastive" / "checkpoints" / "latest")
    assert not (killed / "contrastive" / "encoder").exists()  # killed before the end
    run_stage(ContrastiveStage, config, store_path, killed, resume=True, progress=False)  # resumed here, on one thread too
    run_stage(ContrastiveStage, config, store_path, whole, progress=False)  # the uninterrupted run
    a = load_file(str(whole / "contrastive" / "encoder" / "model.safetensors"))
    b = load_file(str(killed / "contrastive" / "encoder" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    scales = [load_checkpoint(latest_checkpoint(r / "contrastive" / "checkpoints")).models["logit_scale"]["value"]
              for r in (whole, killed)]
    assert torch.equal(*scales)
    summary = json.loads((killed / "contrastive" / "metrics.json").read_text())
    assert summary["steps"] == 30 and "checkpoint-" in summary["resumed_from"]


def test_bad_input_gives_clear_errors(store_path, clip_dir, tmp_path):
    with pytest.raises(ConfigError, match="s3"):
        validate_config({**_config(clip_dir), "subjects": {"train": ["s1", "s3"], "held_out": ["s3"]}})
    config = validate_config({**_config(clip_dir), "subjects": {"train": ["s1", "s9"]}})
    with pytest.raises(ConfigError, match="s9"):
        run_stage(ContrastiveStage, config, store_path, tmp_path / "run", progress=False)
    bare = write_uncaptioned_store(tmp_path / "nocap")
    with pytest.raises(StoreError, match="no captions"):
        run_stage(ContrastiveStage, validate_config(_config(clip_dir)), bare, tmp_path / "run", progress=False)
