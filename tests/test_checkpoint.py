"""Checkpoints: safetensors + JSON round trips, atomic layout, corrupt ones refused, exact resume after SIGKILL."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glfa.errors import CheckpointError
from glfa.training.checkpoint import (
    capture_rng,
    flatten_optimizer_state,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
    unflatten_optimizer_state,
)
from glfa.training.loop import StepOutput, TrainSettings, train
from fixtures import ToyStage, dead_pid, final_weights, toy_settings

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- round trips


def _adam_after_steps(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias], "weight_decay": 0.0}], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def test_optimizer_state_round_trip_continues_identically():
    model, opt = _adam_after_steps()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    json.dumps(meta)  # the rest is plain JSON
    restored = unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))

    twin = nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    twin_opt = torch.optim.AdamW([{"params": [twin.weight]}, {"params": [twin.bias], "weight_decay": 0.0}], lr=0.5)
    twin_opt.load_state_dict(restored)
    assert twin_opt.param_groups[0]["lr"] == 0.1 and twin_opt.param_groups[0]["betas"] == (0.9, 0.999)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)


def test_rng_round_trip_through_json():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = json.loads(json.dumps(capture_rng()))
    first = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng(state)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def _write(root: Path, step: int, keep: int = 2) -> Path:
    model, opt = _adam_after_steps(step)
    return save_checkpoint(root, step, models={"net": model.state_dict()}, optimizer=opt.state_dict(),
                           state={"stage": "toy", "scheduler": {}, "rng": [capture_rng()], "data": {"offset": step}},
                           keep=keep)


def test_save_layout_latest_pointer_and_pruning(tmp_path):
    for step in (10, 20, 30):
        path = _write(tmp_path, step)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [20, 30]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint-30" == path.name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    ckpt = load_checkpoint(path)
    model, opt = _adam_after_steps(30)
    assert ckpt.step == 30 and ckpt.state["data"]["offset"] == 30
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.models["net"][key], value)
    assert torch.equal(ckpt.optimizer["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # the same step written twice (a resumed run's end) replaces the folder
    assert _write(tmp_path, 30) == path and load_checkpoint(path).step == 30


# ----------------------------------------------------------------------------- corrupt or half-written


def test_truncated_safetensors_refused(tmp_path):
    path = _write(tmp_path, 5)
    weights = path / "model-net.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model-net.safetensors") as info:
        load_checkpoint(path)
    assert "truncated" in str(info.value)


def test_flipped_byte_refused(tmp_path):
    path = _write(tmp_path, 5)
    weights = path / "optimizer.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="optimizer.safetensors.*corrupt"):
        load_checkpoint(path)


def test_missing_or_incomplete_state_json_refused(tmp_path):
    path = _write(tmp_path, 5)
    state_path = path / "state.json"
    state = json.loads(state_path.read_text())
    del state["rng"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match=r"state\.json.*'rng'"):
        load_checkpoint(path)
    state_path.write_text('{"format": "glfa-checkpoint", "ver')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    state_path.unlink()
    with pytest.raises(CheckpointError, match="missing state.json"):
        load_checkpoint(path)


def test_resume_refuses_a_corrupt_newest_checkpoint_and_ignores_half_written(tmp_path):
    train(ToyStage(toy_settings(steps=20)), tmp_path, progress=False)
    root = tmp_path / "toy" / "checkpoints"
    # a killed write leaves a hidden temp folder: ignored and cleaned on resume
    half = root / f".checkpoint-30.tmp-{dead_pid()}-abcd"
    half.mkdir()
    (half / "model-net.safetensors").write_bytes(b"\x00" * 10)
    result = train(ToyStage(toy_settings(steps=20)), tmp_path, resume=True, progress=False)
    assert result.resumed_from == root / "checkpoint-20" and not half.exists()
    # a damaged checkpoint-20 is refused, naming the file
    weights = root / "checkpoint-20" / "model-net.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match="checkpoint-20/model-net.safetensors"):
        train(ToyStage(toy_settings(steps=40)), tmp_path, resume=True, progress=False)


def test_fresh_run_refuses_existing_checkpoints_and_config_change_refused(tmp_path):
    train(ToyStage(toy_settings(steps=10)), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="--resume"):
        train(ToyStage(toy_settings(steps=10)), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="learning_rate"):
        train(ToyStage(toy_settings(steps=20, learning_rate=0.5)), tmp_path, resume=True, progress=False)


# ----------------------------------------------------------------------------- crash and resume
# (the SIGKILL of a real subprocess is in test_training.py, through `python -m glfa.cli train pretrain`)


class SimulatedCrash(Exception):
    """Raised by :class:`CrashingStage`."""


class CrashingStage(ToyStage):
    """The toy stage dying at a given micro-step, as a killed process would (after some checkpoint)."""

    def __init__(self, settings: TrainSettings, *, crash_at: int):
        super().__init__(settings)
        self.crash_at = crash_at
        self.calls = 0

    def step(self, models, batch) -> StepOutput:
        self.calls += 1
        if self.calls == self.crash_at:
            raise SimulatedCrash(f"micro-step {self.calls}")
        return super().step(models, batch)


def test_resume_after_a_crash_gives_identical_weights_rng_and_data_order(tmp_path):
    settings = toy_settings(steps=40, gradient_accumulation_steps=2)  # dropout and noise draw from the RNG
    whole = ToyStage(settings)
    train(whole, tmp_path / "whole", progress=False)
    with pytest.raises(SimulatedCrash):
        train(CrashingStage(settings, crash_at=2 * 27 + 1), tmp_path / "crashed", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "crashed" / "toy" / "checkpoints")] == [10, 20]
    torch.manual_seed(123)  # the resumed run must not depend on the RNG state it starts with
    resumed = ToyStage(settings)
    result = train(resumed, tmp_path / "crashed", resume=True, progress=False)
    assert result.resumed_from.name == "checkpoint-20"
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "crashed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.data.loaded == whole.data.loaded[20 * 2 * 8:]  # the data order continued exactly
    # the metrics log was continued, not duplicated
    lines = (tmp_path / "crashed" / "toy" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(5, 41, 5))
    state = json.loads((tmp_path / "crashed" / "toy" / "checkpoints" / "checkpoint-40" / "state.json").read_text())
    assert state["data"]["offset"] == 40 * 2 * 8 and state["data"]["epoch"] == 640 // 48
