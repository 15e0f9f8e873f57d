"""The training loop (toy stage) and stage 0, fMRI-PTE reconstruction fine-tuning, on a tiny store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from fixtures import ToyStage, final_weights, kill_after_first_checkpoint, toy_settings

pytestmark = pytest.mark.usefixtures("one_thread")

from glfa.cli import main
from glfa.config import validate_config
from glfa.data.store import StoreWriter, StudyStore
from glfa.data.windows import Window
from glfa.errors import ConfigError, GlfaError
from glfa.training.checkpoint import latest_checkpoint
from glfa.training.loop import IndexStream, _ShardedBatches, main_process_first, train
from glfa.training.pretrain import PretrainStage, TrainingFrames
from glfa.training.stage import run_stage

SUBJECTS = ["s1", "s2", "s3"]
TRAIN_STIMULI = ["a", "b", "c"]
TEST_STIMULI = ["t1", "t2"]
FRAMES = 6  # stored fMRI frames per stimulus
N = 2  # fMRI frames per window
SIZE = 16


def _responses(seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    """Planted responses: a shared image structure with random weights; test ones far off (100 + ...)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE] / SIZE
    basis = np.stack([np.ones_like(xx), np.sin(3 * xx), np.cos(4 * yy)])  # [3, H, W]
    out = {}
    for subject in SUBJECTS:
        for stim in TRAIN_STIMULI + TEST_STIMULI:
            coef = rng.normal(size=(FRAMES, 3))
            x = np.einsum("tk,khw->thw", coef, basis) + 0.5 + 0.05 * rng.normal(size=(FRAMES, SIZE, SIZE))
            out[subject, stim] = (x + (100.0 if stim in TEST_STIMULI else 0.0)).astype(np.float32)
    return out


def _mask() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - 7.5) ** 2 + (xx - 7.5) ** 2 < 7**2


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """A tiny study store: 3 subjects, 3 training and 2 test stimuli, overlapping windows of 2 frames."""
    path = tmp_path_factory.mktemp("store") / "study"
    responses = _responses()
    windows = []
    with StoreWriter(path, image_size=SIZE, video_size=(8, 8), fmri_dtype="float32") as writer:
        for stim in TRAIN_STIMULI + TEST_STIMULI:
            split = "test" if stim in TEST_STIMULI else "train"
            writer.add_stimulus(stim, split, np.zeros((FRAMES, 8, 8, 3), np.uint8), [stim] * FRAMES, float(FRAMES))
            for start in range(FRAMES - N + 1):  # stride 1: windows overlap
                windows.append(Window(stim, split, float(start), start, start, len(windows)))
        for subject in SUBJECTS:
            for stim in TRAIN_STIMULI + TEST_STIMULI:
                writer.add_response(subject, stim, responses[subject, stim])
        writer.set_mask(_mask())
        writer.finish(windows, {"tr": 1.0, "fps": 1.0, "fmri_frames": N, "video_frames": 1, "config": {}})
    return path


def _config(tmp_path: Path, **pretrain) -> Path:
    settings = dict(batch_size=8, learning_rate=3e-3, weight_decay=0.01, steps=40, checkpoint_every=20,
                    log_every=5, num_workers=0, seed=1)
    settings.update(pretrain)
    data = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "device": "cpu",
            "model": {"preset": "tiny"}, "subjects": {"held_out": ["s3"]}, "pretrain": settings}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ----------------------------------------------------------------------------- data order


def test_index_stream_is_a_seeded_permutation_per_epoch_and_resumes_exactly():
    stream = IndexStream(10, seed=4)
    first = stream.take(25)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]  # a new order each epoch
    assert IndexStream(10, seed=4).take(25) == first and IndexStream(10, seed=5).take(25) != first
    later = IndexStream(10, seed=4, offset=7)
    assert later.take(18) == first[7:25]
    assert later.position == {"epoch": 2, "index": 5, "offset": 25}
    # a dataset smaller than a batch still works, crossing epochs
    assert sorted(IndexStream(3, seed=0).take(6)) == [0, 0, 1, 1, 2, 2]


def test_sharded_batches_partition_each_global_batch():
    shards = [iter(_ShardedBatches(IndexStream(20, seed=1), 8, rank, 2)) for rank in range(2)]
    whole = iter(_ShardedBatches(IndexStream(20, seed=1), 8, 0, 1))
    for _ in range(4):
        a, b, w = next(shards[0]), next(shards[1]), next(whole)
        assert len(a) == len(b) == 4 and sorted(a + b) == sorted(w)


# ----------------------------------------------------------------------------- the loop on a toy stage


def test_toy_run_loss_falls_and_writes_metrics_config_checkpoints(tmp_path):
    stage = ToyStage(toy_settings(steps=60, log_every=10, checkpoint_every=25), dropout=0.0)
    result = train(stage, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines] == [10, 20, 30, 40, 50, 60]
    assert all({"step", "loss", "lr", "seconds", "x_mean"} <= set(e) for e in lines)
    assert lines[-1]["loss"] < 0.3 * lines[0]["loss"]
    assert lines[0]["lr"] == pytest.approx(1e-2) and lines[-1]["seconds"] >= lines[0]["seconds"]
    assert json.loads((tmp_path / "toy" / "config.json").read_text()) == {"toy": True}
    summary = json.loads((tmp_path / "toy" / "metrics.json").read_text())
    assert summary["steps"] == 60 and summary["final_loss"] == lines[-1]["loss"] and summary["samples"] == 480
    ckpts = sorted(p.name for p in (tmp_path / "toy" / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-50", "checkpoint-60"]  # 25 pruned: the last two stay
    assert result.outputs == {"toy": str(tmp_path / "toy.txt")}
    # the final checkpoint holds the weights the stage finished with
    weights = final_weights(tmp_path)
    for key, value in stage.finished["net"].state_dict().items():
        assert torch.equal(weights[key], value)
    # every index was drawn from the seeded stream, not a shuffled DataLoader
    assert stage.data.loaded == IndexStream(48, seed=3).take(480)


def test_gradient_accumulation_matches_one_larger_batch(tmp_path):
    big = ToyStage(toy_settings(steps=6, batch_size=8, gradient_accumulation_steps=1), dropout=0.0, noise=0.0)
    small = ToyStage(toy_settings(steps=6, batch_size=4, gradient_accumulation_steps=2), dropout=0.0, noise=0.0)
    train(big, tmp_path / "big", progress=False)
    train(small, tmp_path / "small", progress=False)
    assert big.data.loaded == small.data.loaded
    for key, value in big.finished["net"].state_dict().items():
        torch.testing.assert_close(small.finished["net"].state_dict()[key], value, atol=1e-5, rtol=0)


def test_cpu_runs_are_deterministic(tmp_path):
    train(ToyStage(toy_settings(steps=12)), tmp_path / "one", progress=False)
    train(ToyStage(toy_settings(steps=12)), tmp_path / "two", progress=False)
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_without_support_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="toy.gradient_checkpointing"):
        train(ToyStage(toy_settings(gradient_checkpointing=True)), tmp_path, progress=False)


def test_mixed_precision_on_cpu(tmp_path):
    with pytest.raises(ConfigError, match="fp16 mixed precision needs a CUDA device"):
        train(ToyStage(toy_settings(mixed_precision="fp16")), tmp_path / "fp16", device="cpu", progress=False)
    result = train(ToyStage(toy_settings(steps=10, mixed_precision="bf16")), tmp_path / "bf16", device="cpu",
                   progress=False)
    assert np.isfinite(result.history[-1]["loss"]) and result.step == 10


# ----------------------------------------------------------------------------- stage 0: fMRI-PTE


class SpyStore:
    """A store that records every fMRI read (subject, split, stimulus)."""

    def __init__(self, store: StudyStore):
        self._store = store
        self.reads: list[tuple[str, str, str]] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def fmri(self, subject, window, out=None):
        self.reads.append((subject, window.split, window.stimulus_id))
        return self._store.fmri(subject, window, out)

    def response(self, subject, stimulus_id):
        raise AssertionError("pretraining must read windows, not whole responses")


def test_training_frames_are_every_distinct_training_frame_once(tiny_store):
    frames = TrainingFrames(StudyStore.open(tiny_store), ["s1", "s2"])
    assert len(frames) == 2 * len(TRAIN_STIMULI) * FRAMES
    got = np.stack([frames[i]["fmri"].numpy()[0] for i in range(len(frames))])  # [k, H, W]
    responses = _responses()
    want = np.concatenate([responses[s, st] for s in ("s1", "s2") for st in TRAIN_STIMULI])
    key = lambda a: np.lexsort(a.reshape(len(a), -1).T[::-1])  # noqa: E731
    np.testing.assert_array_equal(got[key(got)], want[key(want)])


def test_pretrain_reads_only_the_training_split_and_loss_falls(tiny_store, tmp_path):
    from glfa.config import load_config
    from glfa.models.pte import FmriPTE

    config = load_config(_config(tmp_path, steps=40))
    spy = SpyStore(StudyStore.open(tiny_store))
    stage = PretrainStage(config, spy)
    result = train(stage, tmp_path / "run", device="cpu", progress=False)

    assert spy.reads and {split for _, split, _ in spy.reads} == {"train"}
    assert {s for s, _, _ in spy.reads} == {"s1", "s2"}  # s3 is held out
    assert {(s, st) for s, _, st in spy.reads} == {(s, st) for s in ("s1", "s2") for st in TRAIN_STIMULI}
    losses = [e["loss"] for e in result.history]
    assert losses[-1] < 0.5 * losses[0]
    # the saved PTE is the final checkpoint's model and reconstructs like it
    pte = FmriPTE.from_pretrained(Path(result.outputs["pte"]))
    weights = load_file(str(latest_checkpoint(tmp_path / "run" / "pretrain" / "checkpoints") / "model-pte.safetensors"))
    for key, value in pte.state_dict().items():
        assert torch.equal(weights[key], value)
    resolved = json.loads((tmp_path / "run" / "pretrain" / "config.json").read_text())
    assert resolved["train_subjects"] == ["s1", "s2"] and resolved["held_out"] == ["s3"]
    assert resolved["config"]["pretrain"]["batch_size"] == 8 and resolved["training_frames"] == 36


def test_pretrain_gradient_checkpointing_changes_memory_not_results(tiny_store, tmp_path, monkeypatch):
    import glfa.models.layers as layers
    from glfa.config import load_config

    calls = []
    real = layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    store = StudyStore.open(tiny_store)
    plain = PretrainStage(load_config(_config(tmp_path, steps=3)), store)
    saving = PretrainStage(load_config(_config(tmp_path, steps=3, gradient_checkpointing=True)), store)
    train(plain, tmp_path / "plain", device="cpu", progress=False)
    assert not calls
    train(saving, tmp_path / "saving", device="cpu", progress=False)
    assert calls  # the flag reached the PTE's blocks
    a = load_file(str(tmp_path / "plain" / "pte" / "model.safetensors"))
    b = load_file(str(tmp_path / "saving" / "pte" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0)


def test_cli_train_pretrain_and_resume(tiny_store, tmp_path, capsys):
    config = _config(tmp_path, steps=10, checkpoint_every=5)
    run = tmp_path / "run"
    args = ["train", "pretrain", "-c", str(config), "--store", str(tiny_store), "--out", str(run), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"saved to {run / 'pte'}" in out
    assert (run / "pte" / "model.safetensors").is_file() and (run / "pretrain" / "metrics.json").is_file()
    # running again without --resume is refused; with --resume at the end it is a no-op that keeps the weights
    assert main(args) == 2 and "--resume" in capsys.readouterr().err
    before = load_file(str(run / "pte" / "model.safetensors"))
    assert main([*args, "--resume"]) == 0
    after = load_file(str(run / "pte" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    # a resumed run with more steps continues from the checkpoint
    longer = _config(tmp_path, steps=15, checkpoint_every=5)
    assert main(["train", "pretrain", "-c", str(longer), "--store", str(tiny_store), "--out", str(run),
                 "--quiet", "--resume"]) == 0
    summary = json.loads((run / "pretrain" / "metrics.json").read_text())
    assert summary["steps"] == 15 and summary["resumed_from"].endswith("checkpoint-10")


def test_cli_pretrain_resumed_after_sigkill_ends_with_identical_weights(tiny_store, tmp_path):
    config = _config(tmp_path, steps=20, checkpoint_every=4, batch_size=4, gradient_accumulation_steps=2)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = ["train", "pretrain", "-c", str(config), "--store", str(tiny_store), "--quiet"]

    def cli(*extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "glfa.cli", *args, "--out", str(killed), *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))

    kill_after_first_checkpoint([sys.executable, "-m", "glfa.cli", *args, "--out", str(killed)],
                                killed / "pretrain" / "checkpoints" / "latest")
    assert not (killed / "pte").exists()  # killed before the end
    resumed = cli("--resume")
    assert main([*args, "--out", str(whole)]) == 0  # the uninterrupted run, meanwhile
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()
    a = load_file(str(whole / "pte" / "model.safetensors"))
    b = load_file(str(killed / "pte" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((killed / "pretrain" / "metrics.json").read_text())
    assert summary["steps"] == 20 and "checkpoint-" in summary["resumed_from"]


def test_cli_bad_input_is_one_clear_line(tiny_store, tmp_path, capsys):
    config = _config(tmp_path)
    assert main(["train", "pretrain", "-c", str(config), "--store", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no study store here" in capsys.readouterr().err
    bad = yaml.safe_load(config.read_text())
    bad["subjects"] = {"train": ["s1", "s3"], "held_out": ["s3"]}
    config.write_text(yaml.safe_dump(bad))
    assert main(["train", "pretrain", "-c", str(config), "--store", str(tiny_store), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "subjects" in err and "s3" in err and "Traceback" not in err
    bad["subjects"] = {"train": ["s1", "s9"]}
    config.write_text(yaml.safe_dump(bad))
    assert main(["train", "pretrain", "-c", str(config), "--store", str(tiny_store), "--quiet"]) == 2
    assert "s9" in capsys.readouterr().err


def test_pretrain_init_from_must_match_the_model(tiny_store, tmp_path):
    from glfa.models.pte import FmriPTE

    config = validate_config({"model": {"preset": "tiny"}, "device": "cpu",
                              "pretrain": {"steps": 2, "batch_size": 4, "num_workers": 0}})
    other = FmriPTE(image_size=SIZE, patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_depth=1,
                    decoder_num_heads=2, bottleneck_dim=8)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(GlfaError, match="patch_size"):
        run_stage(PretrainStage, config, tiny_store, tmp_path / "run", init_from=tmp_path / "other", progress=False)


def test_the_init_rule_names_the_folder_and_what_it_expected(tiny_store, tmp_path):
    """An explicit --init of the wrong class, or a run's default start that is not what its stage wrote, is refused."""
    from glfa.config import ModelConfig
    from glfa.models.encoder import FmriEncoder
    from glfa.training.contrastive import ContrastiveStage

    config = validate_config({"model": {"preset": "tiny"}, "device": "cpu"})
    store = StudyStore.open(tiny_store)
    encoder = FmriEncoder(ModelConfig.model_validate({"preset": "tiny", "glfa": {"enabled": False}}), SIZE, N)
    encoder.save_pretrained(tmp_path / "run" / "pte")  # not the FmriPTE that glfa train pretrain writes there
    for folder in (tmp_path / "run" / "pte", tmp_path / "nowhere"):
        with pytest.raises(ConfigError, match=r"expected a saved FmriPTE \(fine-tuned PTE\) folder") as err:
            PretrainStage(config, store, init_from=folder)
        assert str(folder) in str(err.value) and "init_from" in str(err.value)
    stage = PretrainStage(config, store, run_dir=tmp_path / "run")  # stage 0 never starts from its own output
    assert stage.init_from is None and stage.resolved_config()["init_kind"] is None
    with pytest.raises(ConfigError, match=r"expected the fine-tuned PTE \(FmriPTE\) written by `glfa train pretrain`"):
        ContrastiveStage(config, store, run_dir=tmp_path / "run")
    store.close()


_MAIN_FIRST = """
import sys, time
from pathlib import Path
from glfa.training.loop import main_process_first
marker = Path(sys.argv[1])
with main_process_first("cpu") as is_main:
    if is_main:
        time.sleep(1.0)  # a slow cache build
        marker.write_text("built")
    else:
        assert marker.read_text() == "built", "a second process entered before the main one had finished"
print("main" if is_main else "other", flush=True)
"""


def test_main_process_builds_first_under_two_processes(tmp_path):
    """Two processes as ``accelerate launch`` starts them: the other waits until the main one has left the block."""
    script = tmp_path / "main_first.py"
    script.write_text(_MAIN_FIRST)
    marker = tmp_path / "cache-built"
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in (1, 0):  # the other process starts first
        env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen([sys.executable, str(script), str(marker)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
    assert [out.strip() for out, _ in outs] == ["other", "main"]
    with main_process_first("cpu") as is_main:  # a single process is the main one
        assert is_main
