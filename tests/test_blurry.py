"""The blurry decoder: fit_blurry / BlurryDecoder on the tiny decoding store, its clips, and blurry-initialised generation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glfa import backbones as B
from glfa.baselines.blurry import (
    BlurryDecoder, ConvBlurryDecoder, RetrievalBlurryDecoder, fit_blurry, load_blurry_decoder,
)
from glfa.baselines.lea import encoder_latent
from glfa.cli import main
from glfa.config import GenerationConfig, validate_config
from glfa.data.features import LatentFeatures, vae_latents
from glfa.data.store import StudyStore
from glfa.errors import CheckpointError, ConfigError, DataError
from glfa.generate import generate, truth_clip
from glfa.models.encoder import FmriEncoder
from glfa.pipeline import FmriToVideoPipeline
from tests.fixtures import write_decoding_store
from tests.fixtures import GENERATION, recording_fmri_reads, write_cotrain_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: The stored window: 4 frames of 16 x 16 (the decoding store), so the blurry latents fit this generation.
STORED = {**GENERATION, "num_frames": 4}


def blurry_config(root, generator, **overrides):
    data = {"name": "blurry-test", "output_dir": str(root / "runs"), "device": "cpu",
            "model": {"preset": "tiny", "glfa": {"enabled": False}}, "subjects": {"held_out": ["s3"]},
            "cotrain": {"generator": str(generator) if generator else None},
            "blurry": {"alphas": [1e-3, 1.0], "cv_folds": 2, "pool": 8}, "generation": STORED}
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    return validate_config(data)


def save_encoder(config, store, run_dir, seed: int = 0):
    torch.manual_seed(seed)
    encoder = FmriEncoder(config.model, store.image_size, store.fmri_frames)
    encoder.save_pretrained(run_dir / "contrastive" / "encoder")
    return encoder.eval()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with a cotrain model (RUN/cotrain-glfa) and a fitted blurry decoder (RUN/blurry) on one generator."""
    root = tmp_path_factory.mktemp("blurry")
    generator = B.tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=16)
    store_dir = write_decoding_store(root / "store")
    store = StudyStore.open(store_dir)
    config = blurry_config(root, generator)
    run_dir = root / "runs" / "blurry-test"
    write_cotrain_model(run_dir / "cotrain-glfa" / "model", generator_dir=generator, store_dir=store_dir)
    save_encoder(config, store, run_dir)
    with recording_fmri_reads(store) as read:
        model_dir = fit_blurry(config, store, run_dir, progress=False)
    return {"root": root, "generator": generator, "store": store, "config": config, "run_dir": run_dir,
            "model_dir": model_dir, "read": read}


def test_fit_blurry_writes_the_model_folder(run):
    model_dir, store = run["model_dir"], run["store"]
    assert model_dir == run["run_dir"] / "blurry" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["encoder", "model.json", "ridge.safetensors"]
    info = json.loads((model_dir / "model.json").read_text())
    assert (info["kind"], info["method"]) == ("blurry", "blurry")
    assert (info["features"], info["pool"]) == ("aligned", 8)
    assert info["encoder_source"] == str((run["run_dir"] / "cotrain-glfa" / "model" / "encoder").resolve())
    assert (info["train_subjects"], info["held_out"]) == (["s1", "s2"], ["s3"])
    assert info["samples"] == 2 * 4 * 3 and info["alpha"] in (1e-3, 1.0)
    assert set(run["read"]) == {("s1", "train"), ("s2", "train")}  # never a held-out subject or a test window
    generator = B.load_video_generator(run["generator"], device="cpu")
    cache = vae_latents(store, generator, split="train", progress=False)
    assert info["latent_shape"] == list(cache.latents.shape[1:])
    ridge = load_file(model_dir / "ridge.safetensors")
    assert ridge["latent_shape"].tolist() == info["latent_shape"]
    decoder = BlurryDecoder.load(model_dir, "cpu")
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    latents = decoder.latents(fmri)
    assert latents.shape == (len(fmri), *info["latent_shape"]) and latents.dtype == torch.float32
    # it reads GLFA's aligned images pooled to 8 x 8 through the saved ridge weights
    encoder = FmriEncoder.from_pretrained(run["run_dir"] / "cotrain-glfa" / "model" / "encoder").eval()
    with torch.no_grad():
        x = torch.nn.functional.avg_pool2d(encoder.align(fmri), 2).reshape(len(fmri), -1)  # 16 -> 8 pixels a side
    expected = (x - ridge["x_mean"]) @ ridge["coef"].T + ridge["intercept"]
    torch.testing.assert_close(latents.reshape(len(fmri), -1), expected, atol=1e-4, rtol=1e-4)


def test_the_ridge_recovers_planted_linear_latents(tmp_path, monkeypatch):
    """Targets that are a linear map of the encoder's latent: the fit predicts them for unseen windows of a new subject."""
    generator = B.tiny_video_generator(tmp_path / "generator", cross_attention_dim=32, sample_size=16)
    store = StudyStore.open(write_decoding_store(tmp_path / "store", train_stimuli=32))  # 96 windows > 64 features
    config = blurry_config(tmp_path, generator, subjects={"train": ["s1"], "held_out": ["s3"]},
                           blurry={"alphas": [1e-8, 1e2], "cv_folds": 2, "features": "latent"})
    encoder = save_encoder(config, store, tmp_path / "run")
    shape = (4, 4, 8, 8)
    rng = np.random.default_rng(0)
    windows = store.windows("train")
    fmri = torch.stack([torch.from_numpy(store.fmri("s1", w)) for w in windows])
    width = encoder_latent(encoder, fmri[:1]).shape[1]  # the n frames' [CLS] tokens: 2 x 32
    weights, bias = torch.from_numpy(rng.normal(size=(width, int(np.prod(shape))))).float(), 0.5

    def planted(fmri):  # [b, n, H, W] -> [b, *shape]
        return (encoder_latent(encoder, fmri) @ weights + bias).reshape(len(fmri), *shape)

    targets = planted(fmri)

    def fake_cache(store_, generator_, *, split, progress):
        assert split == "train"
        return LatentFeatures(latents=targets, window_indices=[w.index for w in windows], split=split, key="planted",
                              folder=tmp_path, store_path=store.path)

    monkeypatch.setattr("glfa.data.features.vae_latents", fake_cache)
    model_dir = fit_blurry(config, store, tmp_path / "run", progress=False)
    assert json.loads((model_dir / "model.json").read_text())["alpha"] == 1e-8
    decoder = BlurryDecoder.load(model_dir, "cpu")
    unseen = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    expected = planted(unseen)
    torch.testing.assert_close(decoder.latents(unseen), expected, atol=1e-3 * float(expected.abs().max()), rtol=0)


def test_fit_blurry_bad_input(run, tmp_path):
    root, store = run["root"], run["store"]
    with pytest.raises(CheckpointError, match="no fMRI encoder here"):
        fit_blurry(run["config"], store, tmp_path / "empty-run", progress=False)
    with pytest.raises(ConfigError, match="blurry.features"):
        blurry_config(root, run["generator"], blurry={"features": "tokens"})
    with pytest.raises(ConfigError, match="cotrain.generator"):
        fit_blurry(blurry_config(root, None), store, run["run_dir"], progress=False)
    with pytest.raises(ConfigError, match="blurry.cv_folds"):
        fit_blurry(blurry_config(root, run["generator"], blurry={"cv_folds": 5}), store, run["run_dir"],
                   progress=False)
    with pytest.raises(CheckpointError, match="model.json"):
        BlurryDecoder.load(tmp_path)
    with pytest.raises(CheckpointError, match="kind is 'cotrain', expected 'blurry'"):
        shutil.copytree(run["model_dir"], tmp_path / "other")
        shutil.copy(run["run_dir"] / "cotrain-glfa" / "model" / "model.json", tmp_path / "other" / "model.json")
        BlurryDecoder.load(tmp_path / "other")
    with pytest.raises(CheckpointError, match="conditions no diffusion"):
        FmriToVideoPipeline.from_model_dir(run["model_dir"], device="cpu")


def _clips(folder):
    with np.load(folder / "videos.npz") as npz:
        return npz["decoded"], npz["truth"]


def assert_blurry_clips_and_start_read(decoder, run_dir, config, fmri, generator):
    """The run's blurry clips of s3 are ``decoder``'s latents decoded by the VAE, and GLFA started from them at
    strength 0 gives those clips."""
    out = generate(run_dir, method="blurry", subject="s3", config=config, device="cpu", progress=False)
    np.testing.assert_array_equal(_clips(out)[0], generator.decode_latents(decoder.latents(fmri)).numpy())
    start = generate(run_dir, method="glfa", subject="s3", init="blurry", device="cpu", progress=False,
                     config=config.generation.model_copy(update={"init_strength": 0.0}))
    np.testing.assert_array_equal(_clips(start)[0], _clips(out)[0])


def test_blurry_method_clips_are_the_decoded_predicted_latents(run):
    out = generate(run["run_dir"], method="blurry", subject="s3", config=run["config"], device="cpu",
                   progress=False)
    assert out == run["run_dir"] / "generations" / "blurry" / "s3-test"
    index = json.loads((out / "index.json").read_text())
    assert (index["method"], index["kind"], index["subject_role"]) == ("blurry", "blurry", "held_out")
    store = run["store"]
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    generator = B.load_video_generator(run["generator"], device="cpu")
    expected = generator.decode_latents(BlurryDecoder.load(run["model_dir"], "cpu").latents(fmri)).numpy()
    decoded, _ = _clips(out)
    np.testing.assert_array_equal(decoded, expected)


def test_blurry_init_at_strength_zero_is_the_blurry_clip_and_one_is_the_noise_start(run):
    run_dir, config = run["run_dir"], run["config"]
    blurry = generate(run_dir, method="blurry", subject="s3", config=config, device="cpu", progress=False)
    noise = generate(run_dir, method="glfa", subject="s3", config=config, device="cpu", progress=False)
    settings = {name: config.generation.model_copy(update={"init_strength": s}) for name, s in
                (("zero", 0.0), ("half", 0.5), ("one", 1.0))}
    decoded = {}
    for name, gen in settings.items():
        out = generate(run_dir, method="glfa", subject="s3", config=gen, init="blurry", device="cpu", progress=False)
        assert out == run_dir / "generations" / "glfa+blurry" / "s3-test"
        index = json.loads((out / "index.json").read_text())
        assert index["method"] == "glfa+blurry" and index["generation"]["init"] == "blurry"
        decoded[name] = _clips(out)[0]
    np.testing.assert_array_equal(decoded["zero"], _clips(blurry)[0])
    np.testing.assert_array_equal(decoded["one"], _clips(noise)[0])
    half = decoded["half"].astype(float)
    assert np.abs(half - _clips(blurry)[0]).mean() < np.abs(_clips(noise)[0] - _clips(blurry)[0]).mean()


def test_blurry_clips_are_resampled_to_another_generation_size(run):
    """Generation asks for 6 frames of 8 x 8: the 4-frame 16 x 16 blurry clips are resampled as the truth is."""
    gen = GenerationConfig(**{**STORED, "num_frames": 6, "height": 8, "width": 8})
    store = run["store"]
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    generator = B.load_video_generator(run["generator"], device="cpu")
    stored = generator.decode_latents(BlurryDecoder.load(run["model_dir"], "cpu").latents(fmri)).numpy()
    out = generate(run["run_dir"], method="blurry", subject="s3", config=gen, device="cpu", progress=False)
    decoded, truth = _clips(out)
    assert decoded.shape == truth.shape == (len(fmri), 6, 8, 8, 3)
    np.testing.assert_array_equal(decoded, np.stack([truth_clip(c, 6, 8, 8) for c in stored]))
    started = generate(run["run_dir"], method="glfa", subject="s3", config=gen.model_copy(update={"init_strength": 0.0}),
                       init="blurry", device="cpu", progress=False)
    again = generator.decode_latents(generator.encode_videos(decoded)).numpy()  # strength 0: the re-encoded clip
    np.testing.assert_array_equal(_clips(started)[0], again)


def test_blurry_init_errors(run, tmp_path, capsys):
    run_dir = run["run_dir"]
    bare = tmp_path / "bare"
    shutil.copytree(run_dir / "cotrain-glfa", bare / "cotrain-glfa")
    with pytest.raises(CheckpointError, match="no blurry decoder.*glfa train blurry"):
        generate(bare, method="glfa", subject="s3", config=run["config"], init="blurry", device="cpu", progress=False)
    assert not (bare / "generations" / "glfa+blurry" / "s3-test").exists()
    with pytest.raises(DataError, match="'noise' or 'blurry'"):
        generate(run_dir, method="glfa", subject="s3", init="zeros", progress=False)
    assert main(["generate", str(bare), "--subject", "s3", "--init", "blurry", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("glfa: error:") and err.count("\n") == 1 and "glfa train blurry" in err


def test_train_blurry_cli(run, tmp_path, capsys):
    import yaml

    run_dir = tmp_path / "cli-run"
    shutil.copytree(run["run_dir"] / "cotrain-glfa", run_dir / "cotrain-glfa")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(run["config"].to_dict()))
    assert main(["train", "blurry", "-c", str(config), "--store", str(run["store"].path), "--out", str(run_dir),
                 "--quiet"]) == 0
    assert f"saved to {run_dir / 'blurry' / 'model'}" in capsys.readouterr().out
    fitted, again = (load_file(d / "ridge.safetensors") for d in (run["model_dir"], run_dir / "blurry" / "model"))
    assert all(torch.equal(fitted[k], again[k]) for k in fitted)  # the same fit: deterministic, saved and loaded


def test_pipeline_start_arguments_are_checked_and_seeded(run):
    pipe = FmriToVideoPipeline.from_model_dir(run["run_dir"] / "cotrain-glfa" / "model", device="cpu")
    store = run["store"]
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")[:2]])
    settings = dict(num_inference_steps=4, guidance_scale=2.0, num_frames=4, height=16, width=16, output_type="latent")
    init = torch.randn(2, 4, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    first = pipe(fmri, **settings, seed=3, init_latents=init, init_strength=0.5)
    torch.testing.assert_close(pipe(fmri, **settings, seed=3, init_latents=init, init_strength=0.5), first, rtol=0,
                               atol=0)
    assert not torch.equal(pipe(fmri, **settings, seed=4, init_latents=init, init_strength=0.5), first)
    with pytest.raises(DataError, match=r"strength in \[0, 1\]"):
        pipe(fmri, **settings, init_latents=init, init_strength=1.5)
    with pytest.raises(DataError, match="init latents of shape"):
        pipe(fmri, **settings, init_latents=init[:1], init_strength=0.5)


# ----------------------------------------------------------------------------- the convolutional kind

CONV = {"kind": "conv", "conv_channels": 16, "conv_batch_size": 16, "conv_learning_rate": 3e-3}


def test_the_conv_decoder_fits_planted_latents_better_than_the_mean(tmp_path, monkeypatch):
    """Latents planted as a low-rank linear map of the pooled flat images (every pixel to every latent pixel, as a
    flat map relates to the picture): the conv decoder trained on s1 predicts them for a new subject's test windows
    far better than the training latents' mean does."""
    generator = B.tiny_video_generator(tmp_path / "generator", cross_attention_dim=32, sample_size=16)
    store = StudyStore.open(write_decoding_store(tmp_path / "store", train_stimuli=96))  # 288 training windows
    config = blurry_config(tmp_path, generator, subjects={"train": ["s1"], "held_out": ["s3"]},
                           blurry={**CONV, "conv_steps": 600})
    encoder_dir = tmp_path / "run" / "contrastive" / "encoder"
    save_encoder(config, store, tmp_path / "run")  # no GLFA: the aligned images are the flat images
    rng = np.random.default_rng(0)
    weights = torch.from_numpy(rng.normal(size=(2 * 8 * 8, 3)) @ rng.normal(size=(3, 4 * 4 * 8 * 8)) / 8).float()
    windows = store.windows("train")

    def planted(fmri):  # [b, n, 16, 16] -> [b, 4, 4, 8, 8]
        return (torch.nn.functional.avg_pool2d(fmri, 2).flatten(1) @ weights).reshape(len(fmri), 4, 4, 8, 8) + 0.5

    targets = planted(torch.stack([torch.from_numpy(store.fmri("s1", w)) for w in windows]))

    def fake_cache(store_, generator_, *, split, progress):
        return LatentFeatures(latents=targets.half(), window_indices=[w.index for w in windows], split=split,
                              key="planted", folder=tmp_path, store_path=store.path)

    monkeypatch.setattr("glfa.data.features.vae_latents", fake_cache)
    model_dir = fit_blurry(config, store, tmp_path / "run", encoder_dir=encoder_dir, progress=False)
    info = json.loads((model_dir / "model.json").read_text())
    assert info["decoder"] == "conv" and info["loss_last"] < info["loss_first"] and "alpha" not in info
    decoder = load_blurry_decoder(model_dir, "cpu")
    assert isinstance(decoder, ConvBlurryDecoder) and decoder.shape == (4, 4, 8, 8)
    unseen = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    expected = planted(unseen)
    mean = targets.half().float().mean(0)
    error = float(((decoder.latents(unseen) - expected) ** 2).mean())
    baseline = float(((mean - expected) ** 2).mean())
    assert error < 0.4 * baseline, (error, baseline)


def test_conv_decoder_round_trip_and_its_clips(run, tmp_path):
    """blurry.kind conv: saved in RUN/blurry/model (config, weights), loaded by the same code path as the ridge,
    its latents decoded as the blurry method's clips and used as the start of a diffusion method."""
    from glfa.baselines.blurry import ConvLatentDecoder, fit_conv_decoder

    store = run["store"]
    config = blurry_config(run["root"], run["generator"], blurry={**CONV, "conv_steps": 10})
    run_dir = tmp_path / "conv-run"
    shutil.copytree(run["run_dir"] / "cotrain-glfa", run_dir / "cotrain-glfa")
    model_dir = fit_blurry(config, store, run_dir, progress=False)
    assert sorted(p.name for p in model_dir.iterdir()) == ["conv", "encoder", "model.json"]
    decoder = load_blurry_decoder(model_dir, "cpu")
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    encoder = FmriEncoder.from_pretrained(run_dir / "cotrain-glfa" / "model" / "encoder").eval()
    net = ConvLatentDecoder.from_pretrained(model_dir / "conv")
    with torch.no_grad():
        by_hand = net(torch.nn.functional.avg_pool2d(encoder.align(fmri), 2))  # 16 -> 8 pixels a side
    torch.testing.assert_close(decoder.latents(fmri), by_hand, rtol=0, atol=0)
    # early stopping keeps the network of the lowest validation MSE, measured on the held-out stimulus
    x, rows = np.random.default_rng(0).normal(size=(12, 2, 8, 8)), np.arange(12) % 6
    y = torch.randn(6, 4, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    groups = [f"stim{r // 2}" for r in rows]  # 3 stimuli of 2 windows
    settings = config.blurry.model_copy(update={"conv_steps": 20, "conv_eval_every": 5, "conv_validation": 0.3,
                                                "conv_learning_rate": 0.05})
    fitted, losses, validation = fit_conv_decoder(x, y, rows, groups, settings, "cpu")
    assert len(losses) == 20 and validation["steps"] == [5, 10, 15, 20] and len(validation["stimuli"]) == 1
    held = [i for i, g in enumerate(groups) if g in validation["stimuli"]]
    with torch.no_grad():
        mse = float(((fitted(torch.from_numpy(x[held]).float()) - y[rows[held]]) ** 2).mean())
    assert mse == pytest.approx(min(validation["mse"]), rel=1e-5)
    assert validation["best_step"] == validation["steps"][int(np.argmin(validation["mse"]))] < 20  # not the last
    # save -> load keeps every weight and buffer
    fitted.save_pretrained(tmp_path / "net")
    again = ConvLatentDecoder.from_pretrained(tmp_path / "net")
    assert fitted.config == again.config
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in fitted.state_dict().items())
    # the blurry method's clips and the blurry start read it like the ridge
    assert_blurry_clips_and_start_read(decoder, run_dir, config, fmri,
                                       B.load_video_generator(run["generator"], device="cpu"))
    # bad input: a conv needs images; a folder without its network
    with pytest.raises(ConfigError, match="blurry: kind 'conv' reads images"):
        blurry_config(run["root"], run["generator"], blurry={"kind": "conv", "features": "latent"})
    shutil.rmtree(model_dir / "conv")
    with pytest.raises(CheckpointError, match="expected the convolutional decoder"):
        load_blurry_decoder(model_dir)


def test_retrieval_returns_the_latents_of_the_training_windows_nearest_to_the_planted_embedding(tmp_path, monkeypatch):
    """Window embeddings planted as a linear map of the encoder's latent: the ridge recovers the map, a training
    window's own fMRI retrieves that window's latents (k = 1), and a new subject's test windows get the mean latents
    of the k library windows ranked first by a brute-force cosine on the planted embeddings."""
    generator = B.tiny_video_generator(tmp_path / "generator", cross_attention_dim=32, sample_size=16)
    store = StudyStore.open(write_decoding_store(tmp_path / "store", train_stimuli=32))  # 96 windows > 64 features
    config = blurry_config(tmp_path, generator, subjects={"train": ["s1"], "held_out": ["s3"]},
                           blurry={"alphas": [1e-8, 1e2], "cv_folds": 2, "features": "latent", "kind": "retrieval",
                                   "retrieval_k": 1})
    encoder = save_encoder(config, store, tmp_path / "run")
    windows = store.windows("train")
    fmri = torch.stack([torch.from_numpy(store.fmri("s1", w)) for w in windows])
    width = encoder_latent(encoder, fmri[:1]).shape[1]
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=(width, 12))).float()

    def planted(fmri):  # [b, n, H, W] -> [b, 12]
        return encoder_latent(encoder, fmri) @ weights

    embeddings = planted(fmri)
    latents = torch.randn(len(windows), 4, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def fake_cache(store_, generator_, *, split, progress):
        return LatentFeatures(latents=latents, window_indices=[w.index for w in windows], split=split, key="planted",
                              folder=tmp_path, store_path=store.path)

    monkeypatch.setattr("glfa.data.features.vae_latents", fake_cache)
    monkeypatch.setattr("glfa.data.features.clip_features", lambda *args, **kwargs: None)
    monkeypatch.setattr("glfa.baselines.blurry.window_embeddings",
                        lambda store_, features, ws: embeddings[[windows.index(w) for w in ws]].double().numpy())
    model_dir = fit_blurry(config, store, tmp_path / "run", progress=False)
    info = json.loads((model_dir / "model.json").read_text())
    assert (info["decoder"], info["retrieval_k"], info["library_windows"], info["alpha"]) == ("retrieval", 1, 96, 1e-8)
    decoder = load_blurry_decoder(model_dir, "cpu")
    assert isinstance(decoder, RetrievalBlurryDecoder) and decoder.shape == (4, 4, 8, 8)
    torch.testing.assert_close(decoder.latents(fmri), latents)  # each window finds itself
    decoder.k = 3
    unseen = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    query, library = planted(unseen).numpy(), embeddings.numpy()
    cosine = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        library / np.linalg.norm(library, axis=1, keepdims=True)).T
    expected = torch.stack([latents[np.argsort(-row)[:3]].mean(0) for row in cosine])
    torch.testing.assert_close(decoder.latents(unseen), expected)


def test_retrieval_decoder_round_trip_and_its_clips(run, tmp_path):
    """blurry.kind retrieval on the stand-in study: the library holds every training window's CLIP embedding (the
    mean of its frames', as stage 1 caches them) and latents; the blurry clips and the blurry start read it."""
    store = run["store"]
    clip = B.tiny_clip(tmp_path / "clip", dim=32, image_size=16)
    config = blurry_config(run["root"], run["generator"], blurry={"kind": "retrieval", "retrieval_k": 2},
                           contrastive={"clip_model": str(clip)})
    run_dir = tmp_path / "retrieval-run"
    shutil.copytree(run["run_dir"] / "cotrain-glfa", run_dir / "cotrain-glfa")
    model_dir = fit_blurry(config, store, run_dir, progress=False)
    assert sorted(p.name for p in model_dir.iterdir()) == ["encoder", "library.safetensors", "model.json",
                                                          "ridge.safetensors"]
    library = load_file(model_dir / "library.safetensors")
    generator = B.load_video_generator(run["generator"], device="cpu")
    cache = vae_latents(store, generator, split="train", progress=False)
    assert library["latents"].dtype == torch.float16  # as the cache keeps them: half the folder
    torch.testing.assert_close(library["latents"], cache.latents)
    features = B.load_clip(clip, "cpu")
    by_index = {w.index: w for w in store.windows("train")}
    frames = [store.frames(by_index[i]) for i in cache.window_indices]  # [m, h, w, 3] each
    by_hand = torch.stack([features.embed_images(f).float().mean(0) for f in frames])
    torch.testing.assert_close(library["embeddings"], torch.nn.functional.normalize(by_hand, dim=-1),
                               atol=2e-3, rtol=0)  # the cache keeps float16
    # the latents: the mean of the library rows nearest (cosine) to the ridge's prediction from the aligned images
    decoder = load_blurry_decoder(model_dir, "cpu")
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")])
    ridge = load_file(model_dir / "ridge.safetensors")
    encoder = FmriEncoder.from_pretrained(run_dir / "cotrain-glfa" / "model" / "encoder").eval()
    with torch.no_grad():
        x = torch.nn.functional.avg_pool2d(encoder.align(fmri), 2).reshape(len(fmri), -1)
    query = torch.nn.functional.normalize((x - ridge["x_mean"]) @ ridge["coef"].T + ridge["intercept"], dim=-1)
    nearest = (query @ library["embeddings"].T).argsort(dim=1, descending=True)[:, :2]
    torch.testing.assert_close(decoder.latents(fmri), library["latents"][nearest].float().mean(1))
    assert_blurry_clips_and_start_read(decoder, run_dir, config, fmri, generator)
    # bad input: k must be positive; a folder without its library, or with a bad k
    with pytest.raises(ConfigError, match="retrieval_k"):
        blurry_config(run["root"], run["generator"], blurry={"kind": "retrieval", "retrieval_k": 0})
    info = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps({**info, "retrieval_k": 0}))
    with pytest.raises(CheckpointError, match="retrieval_k is 0"):
        load_blurry_decoder(model_dir)
    (model_dir / "library.safetensors").unlink()
    with pytest.raises(CheckpointError, match="expected the training windows' embeddings and latents"):
        load_blurry_decoder(model_dir)
