"""glfa generate and glfa evaluate under ``accelerate launch``: two CPU processes (gloo) give what one process gives."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from glfa import backbones as B
from glfa.config import load_config
from glfa.evaluation import evaluate_run
from glfa.generate import generate
from tests.fixtures import planted_clips, write_cotrain_model, write_decoding_store, write_generations, write_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]


def _launch(args: list[str], processes: int) -> list[str]:
    """Run ``glfa ARGS`` in ``processes`` processes as ``accelerate launch`` starts them (CPU, gloo); their stdout."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(processes):
        env = {**os.environ, "WORLD_SIZE": str(processes), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": "",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-m", "glfa.cli", *args], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (_, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    return [out for out, _ in outs]


def test_two_processes_equal_one(tmp_path):
    generator_dir = B.tiny_video_generator(tmp_path / "generator", cross_attention_dim=32, sample_size=16)
    store_dir = write_decoding_store(tmp_path / "store")
    run = tmp_path / "run"
    write_cotrain_model(run / "cotrain-glfa" / "model", generator_dir=generator_dir, store_dir=store_dir)
    single = generate(run, method="glfa", subject="s3", device="cpu", batch_size=2, progress=False)
    shutil.move(single, tmp_path / "single")
    single = tmp_path / "single"

    outs = _launch(["generate", str(run), "--subject", "s3", "--device", "cpu", "--batch-size", "2", "--quiet"], 2)
    sharded = run / "generations" / "glfa" / "s3-test"
    assert all(str(sharded) in out for out in outs)
    assert sorted(p.name for p in sharded.parent.iterdir()) == ["s3-test"]  # no temporary folder left
    files = sorted(str(p.relative_to(single)) for p in single.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(sharded)) for p in sharded.rglob("*") if p.is_file())
    clips = [f for f in files if f.endswith((".mp4", ".gif"))]
    assert len(clips) == 4 * 6  # 6 test windows: decoded and truth, mp4 and gif
    for name in clips:
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), name
    with np.load(single / "videos.npz") as a, np.load(sharded / "videos.npz") as b:
        for key in ("decoded", "truth"):
            np.testing.assert_array_equal(a[key], b[key])
        assert a["decoded"].any()
    assert (single / "index.json").read_bytes() == (sharded / "index.json").read_bytes()
    timing = json.loads((sharded / "generation.json").read_text())
    assert timing["processes"] == 2 and timing["clips"] == 6
    assert json.loads((single / "generation.json").read_text())["processes"] == 1


def test_evaluate_shares_the_classifier_batches(tmp_path, classifiers):
    run = tmp_path / "run"
    truth = planted_clips(20)  # 80 frames: frame batches of 64 and 16, video batches of 8, 8 and 4
    write_model(run, "glfa", train=["s1", "s2"], held_out=["s3"], store="/data/study")
    write_generations(run, "glfa", "s3", np.roll(truth, 1, axis=0), truth, store="/data/study")
    config = tmp_path / "evaluation.yaml"
    networks = {k: v for k, v in classifiers.items() if k != "clip_model"}
    config.write_text(yaml.safe_dump({"device": "cpu", "model": {"preset": "tiny"},
                                      "contrastive": {"clip_model": classifiers["clip_model"]},
                                      "evaluation": {**networks, "n_ways": [2, 5], "seed": 3}}))
    single = evaluate_run(run, config=load_config(config), progress=False).to_dict()["results"]

    outs = _launch(["evaluate", "run", str(run), "-c", str(config), "--quiet"], 2)
    assert "written to" in outs[0] and outs[1] == ""  # the main process writes the tables
    sharded = json.loads((run / "evaluation" / "video.json").read_text())["results"]
    assert [r["scores"] for r in sharded] == [r["scores"] for r in single]
    for key in ("extra_scores", "brain_signal"):  # CLIP embeddings and the mismatched pairings too
        assert [r[key] for r in sharded] == [r[key] for r in single]
    assert set(single[0]["scores"]) == {"video-2way", "video-5way", "frame-2way", "frame-5way", "ssim"}
