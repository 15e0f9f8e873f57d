"""The demo's text-to-video model: trained on a tiny store of flat-colour clips, cached, loadable, and it knows its clips."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import glfa.demo_generator as dg
from glfa.backbones import load_video_generator
from glfa.config import validate_config
from glfa.data.store import StudyStore
from glfa.errors import ConfigError, StoreError
from tests.fixtures import write_decoding_store

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINED = {"vae_steps": 150, "unet_steps": 150, "batch_size": 8, "learning_rate": 2e-3, "seed": 0}
BRIEF = {"vae_steps": 2, "unet_steps": 2, "batch_size": 4, "seed": 0}


def make_config(**generator):
    return validate_config({"model": {"preset": "tiny"}, "demo_generator": generator})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = write_decoding_store(tmp_path_factory.mktemp("store") / "store", video_size=32, frames=6, video_frames=4)
    opened = StudyStore.open(path)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = dg.train_demo_generator(store, make_config(**TRAINED), cache_dir=tmp_path_factory.mktemp("cache"),
                                     progress=False)
    torch.set_num_threads(before)
    return folder


def window_videos(store, split="train"):
    """uint8 [N, m, h, w, 3] and the middle frame's caption of every window of ``split``."""
    windows = store.windows(split)
    return (np.stack([store.frames(w) for w in windows]),
            [store.captions(w)[store.video_frames // 2] for w in windows])


def untrained(tmp_path, store):
    frames = window_videos(store)[0]
    return load_video_generator(dg.build_demo_generator(tmp_path / "untrained", cross_attention_dim=32,
                                                        height=frames.shape[2], width=frames.shape[3], seed=0))


@torch.no_grad()
def sample(generator, captions, *, frames, size, steps=20, seed=0):
    """A plain conditional DPM-Solver loop (no guidance): uint8 videos [b, frames, size, size, 3]."""
    scheduler = generator.inference_scheduler
    scheduler.set_timesteps(steps)
    condition = generator.encode_text(captions)
    side = size // generator.vae_scale_factor
    z = torch.randn(len(captions), generator.latent_channels, frames, side, side,
                    generator=torch.Generator().manual_seed(seed)) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = generator.unet(scheduler.scale_model_input(z, t), t, encoder_hidden_states=condition).sample
        z = scheduler.step(eps, t, z).prev_sample
    return generator.decode_latents(z).numpy()


def test_result_is_a_loadable_text_to_video_folder(trained):
    for name in ("model_index.json", "unet", "vae", "scheduler", "text_encoder", "tokenizer"):
        assert (trained / name).exists(), name
    generator = load_video_generator(trained)
    assert generator.cross_attention_dim == 32
    assert generator.vae_scale_factor == 8
    assert generator.encode_text(["a red ball rolls on grass"]).shape == (1, 77, 32)
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["train_windows"] == 12 and metrics["test_windows"] == 6 and metrics["captions"] == 4
    assert metrics["vae"]["steps"] == TRAINED["vae_steps"] and metrics["unet"]["steps"] == TRAINED["unet_steps"]


def test_vae_reconstructs_better_than_untrained(trained, store, tmp_path):
    videos = window_videos(store)[0]
    errors = {}
    for name, generator in (("trained", load_video_generator(trained)), ("untrained", untrained(tmp_path, store))):
        decoded = generator.decode_latents(generator.encode_videos(videos)).numpy()
        errors[name] = np.mean((decoded.astype(np.float64) - videos) ** 2)
    assert errors["trained"] < 0.5 * errors["untrained"], errors  # 2.6 x lower at this test-sized training
    psnr = 10 * np.log10(255.0**2 / errors["trained"])
    assert json.loads((trained / "metrics.json").read_text())["vae"]["psnr_train"] == pytest.approx(psnr, abs=1e-2)


def test_trained_vae_latents_have_unit_scale(trained, store):
    generator = load_video_generator(trained)
    latents = generator.encode_videos(window_videos(store)[0])
    assert float(latents.std()) == pytest.approx(1.0, abs=1e-3)


def test_unet_denoises_better_than_untrained(trained, store, tmp_path):
    generator = load_video_generator(trained)
    assert generator.scheduler.config.prediction_type == "v_prediction"
    assert float(generator.scheduler.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
    videos, captions = window_videos(store)
    z0 = generator.encode_videos(videos)
    condition = generator.encode_text(captions)
    rng = torch.Generator().manual_seed(123)
    noise = torch.randn(z0.shape, generator=rng)
    t = torch.randint(0, 1000, (len(z0),), generator=rng)
    a = generator.scheduler.alphas_cumprod[t].float().sqrt().view(-1, 1, 1, 1, 1)
    noisy = a * z0 + (1 - a**2).sqrt() * noise
    velocity = a * noise - (1 - a**2).sqrt() * z0
    losses = {}
    for name, unet in (("trained", generator.unet), ("untrained", untrained(tmp_path, store).unet)):
        with torch.no_grad():
            losses[name] = F.mse_loss(unet.eval()(noisy, t, encoder_hidden_states=condition).sample, velocity).item()
    assert losses["trained"] < 0.5 * losses["untrained"], losses
    metrics = json.loads((trained / "metrics.json").read_text())["unet"]
    assert metrics["final_loss"] < 0.5 * metrics["first_loss"]


def test_samples_take_the_colour_of_their_caption(trained, store):
    """Two training captions -> two videos, each closer in mean colour to its own clip than to the other's."""
    videos, captions = window_videos(store)
    first = {c: i for i, c in reversed(list(enumerate(captions)))}
    a, b = list(first)[:2]
    samples = sample(load_video_generator(trained), [a, b], frames=videos.shape[1], size=videos.shape[2])
    colour = samples.reshape(2, -1, 3).mean(1)  # [2, 3]
    truth = np.stack([videos[first[a]].reshape(-1, 3).mean(0), videos[first[b]].reshape(-1, 3).mean(0)])
    dist = np.abs(colour[:, None] - truth[None]).sum(-1)  # [sample, clip]
    assert dist[0, 0] < dist[0, 1] and dist[1, 1] < dist[1, 0], (colour, truth)


def test_second_call_reuses_the_folder(trained, store, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(dg, "_train", fail)
    again = dg.train_demo_generator(store, make_config(**TRAINED), cache_dir=trained.parent, progress=False)
    assert again == trained


def test_key_depends_on_config_and_data_not_on_store_path(store, tmp_path, monkeypatch):
    base = dg.demo_generator_dir(store, make_config(**BRIEF), cache_dir=tmp_path)
    assert base.parent == tmp_path and base.name.startswith("demo-generator-")
    for change in ({"seed": 1}, {"unet_steps": 3}, {"learning_rate": 1e-4}):
        assert dg.demo_generator_dir(store, make_config(**BRIEF | change), cache_dir=tmp_path) != base
    moved = shutil.copytree(store.path, tmp_path / "elsewhere")
    copy = StudyStore.open(moved)
    assert dg.demo_generator_dir(copy, make_config(**BRIEF), cache_dir=tmp_path) == base
    copy.close()
    other = StudyStore.open(write_decoding_store(tmp_path / "other", video_size=32, frames=6, video_frames=4, seed=1,
                                                 train_stimuli=3))
    assert dg.demo_generator_dir(other, make_config(**BRIEF), cache_dir=tmp_path) != base
    other.close()
    # the cache root: argument, then demo_generator.cache_dir, then $GLFA_CACHE
    in_config = make_config(**BRIEF, cache_dir=str(tmp_path / "cfg"))
    assert dg.demo_generator_dir(store, in_config).parent == tmp_path / "cfg"
    monkeypatch.setenv("GLFA_CACHE", str(tmp_path / "env"))
    assert dg.demo_generator_dir(store, make_config(**BRIEF)).parent == tmp_path / "env"


def test_incomplete_folder_and_dead_temporaries_are_rebuilt(store, tmp_path, monkeypatch):
    config = make_config(**BRIEF)
    folder = dg.train_demo_generator(store, config, cache_dir=tmp_path, progress=False)
    weights = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    assert not dg.is_complete(folder)
    # temporaries named by glfa.io in other processes: one that has ended, one still building
    name = [sys.executable, "-c", "import sys; from pathlib import Path; from glfa.io import temporary_name; "
            "print(temporary_name(Path(sys.argv[1])), flush=True); sys.stdin.read()", str(folder)]
    stale = Path(subprocess.run(name, input="", capture_output=True, text=True, check=True).stdout.strip())
    building = subprocess.Popen(name, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        living = Path(building.stdout.readline().strip())
        for tmp in (stale, living):
            (tmp / "unet").mkdir(parents=True)
        calls = []
        real = dg._train
        monkeypatch.setattr(dg, "_train", lambda *a, **k: calls.append(1) or real(*a, **k))
        assert dg.train_demo_generator(store, config, cache_dir=tmp_path, progress=False) == folder
        assert calls == [1] and dg.is_complete(folder) and not stale.exists() and living.is_dir()
        assert (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == weights  # deterministic
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, living.name])
    finally:
        building.communicate("")


def test_mismatched_cross_attention_dim_is_a_config_error(store, tmp_path):
    with pytest.raises(ConfigError, match="demo_generator.cross_attention_dim.*token_dim"):
        dg.train_demo_generator(store, make_config(**BRIEF, cross_attention_dim=48), cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_frame_sides_must_suit_the_vae(tmp_path):
    odd = StudyStore.open(write_decoding_store(tmp_path / "odd", video_size=24))
    with pytest.raises(StoreError, match="multiples of 16"):
        dg.train_demo_generator(odd, make_config(**BRIEF), cache_dir=tmp_path / "cache")
    odd.close()
