"""FmriToVideoPipeline: guidance, seeding, the conditional-only path, loading a decoder model folder."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler
from safetensors.torch import load_file, save_file

from glfa import backbones as B
from glfa.config import validate_config
from glfa.data.store import StudyStore
from glfa.errors import CheckpointError, DataError
from glfa.models.encoder import FmriEncoder
from glfa.pipeline import FmriToVideoPipeline, guided_noise, overlay_unet
from tests.fixtures import (CONFIG, GENERATION, TRAINED, perturbed_unet_params, write_cotrain_model,
                            write_decoding_store)

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny generator folder, a decoding store and a cotrain model folder built on them."""
    root = tmp_path_factory.mktemp("pipeline")
    generator_dir = B.tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=16)
    store_dir = write_decoding_store(root / "store")
    model_dir = write_cotrain_model(root / "run" / "cotrain-glfa" / "model", generator_dir=generator_dir,
                                    store_dir=store_dir)
    return SimpleNamespace(generator_dir=generator_dir, store_dir=store_dir, model_dir=model_dir,
                           store=StudyStore.open(store_dir))


@pytest.fixture(scope="module")
def pipe(parts):
    """The model folder's pipeline, loaded through from_model_dir."""
    return FmriToVideoPipeline.from_model_dir(parts.model_dir, device="cpu")


def _fmri(store, count: int = 3):
    return torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")[:count]])


def _call(pipe, fmri, **kw):
    settings = {k: GENERATION[k] for k in ("num_inference_steps", "guidance_scale", "num_frames", "height", "width")}
    return pipe(fmri, **{**settings, "num_frames": 4, **kw})


def test_guided_noise_matches_hand_computation():
    neg, cond = torch.tensor([1.0, 2.0, -0.5]), torch.tensor([3.0, -1.0, -0.5])
    assert torch.equal(guided_noise(neg, cond, 6.0), torch.tensor([13.0, -16.0, -0.5]))  # 1+6*2, 2+6*(-3)
    assert torch.equal(guided_noise(neg, cond, 1.0), cond)
    assert torch.equal(guided_noise(neg, cond, 0.0), neg)


class FakeUnet:
    """eps = 0.1 * x + mean of each sample's tokens; records the conditions it is called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, *, encoder_hidden_states):
        self.calls.append(encoder_hidden_states.clone())
        return SimpleNamespace(sample=0.1 * x + encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None, None])


def test_call_steps_the_scheduler_on_the_guided_noise(parts):
    generator = B.load_video_generator(parts.generator_dir, device="cpu")
    negative = torch.full((8, 32), -1.0)
    fake = FakeUnet()
    pipe = FmriToVideoPipeline(condition=lambda f: f.mean(dim=(1, 2, 3))[:, None, None] + torch.zeros(1, 8, 32),
                               generator=generator, negative_tokens=negative, unet=fake)
    fmri = torch.stack([torch.full((2, 16, 16), 0.5), torch.full((2, 16, 16), 2.0)])
    got = pipe(fmri, num_inference_steps=1, guidance_scale=6.0, num_frames=3, height=16, width=8, seed=11,
               output_type="latent")
    # by hand: per-sample noise from seed + i, one DPM-Solver step on eps_neg + 6 (eps_cond - eps_neg)
    scheduler = DPMSolverMultistepScheduler.from_config(generator.inference_scheduler.config)
    scheduler.set_timesteps(1)
    noise = torch.stack([torch.randn((4, 3, 4, 2), generator=torch.Generator().manual_seed(11 + i)) for i in range(2)])
    x = noise * scheduler.init_noise_sigma
    cond = torch.tensor([0.5, 2.0])[:, None, None, None, None]
    eps_neg, eps_cond = 0.1 * x - 1.0, 0.1 * x + cond
    expected = scheduler.step(eps_neg + 6.0 * (eps_cond - eps_neg), scheduler.timesteps[0], x).prev_sample
    torch.testing.assert_close(got, expected)
    (hidden,) = fake.calls  # one UNet call on [neg; cond]
    assert torch.equal(hidden[:2], negative.expand(2, -1, -1)) and torch.equal(hidden[2:, 0, 0], cond.flatten())
    pipe(fmri, num_inference_steps=1, guidance_scale=1.0, num_frames=3, height=16, width=8, output_type="latent")
    assert fake.calls[-1].shape[0] == 2  # scale 1: the conditional batch alone


def test_seeds_are_reproducible_and_independent_of_the_batch_split(parts, pipe):
    fmri = _fmri(parts.store)
    whole = _call(pipe, fmri, seed=3)
    assert whole.shape == (3, 4, 16, 16, 3) and whole.dtype == torch.uint8
    split = _call(pipe, fmri, seed=3, batch_size=2)
    assert (whole.int() - split.int()).abs().max() <= 1
    assert torch.equal(_call(pipe, fmri, seed=3), whole)
    latent = _call(pipe, fmri, seed=3, output_type="latent")
    alone = _call(pipe, fmri[1:2], seed=[4], output_type="latent")  # sample 1 of seed 3 = seed 4 on its own
    torch.testing.assert_close(alone[0], latent[1], atol=1e-4, rtol=0)
    assert not torch.equal(_call(pipe, fmri, seed=4, output_type="latent")[0], latent[0])


def test_scale_one_is_the_conditional_path(parts, pipe):
    fmri = _fmri(parts.store, 2)
    plain = _call(pipe, fmri, guidance_scale=1.0, output_type="latent")
    other = FmriToVideoPipeline(condition=pipe.condition, generator=pipe.generator,
                                negative_tokens=torch.randn(8, 32))
    torch.testing.assert_close(_call(other, fmri, guidance_scale=1.0, output_type="latent"), plain, atol=0, rtol=0)
    # the guided branch at a scale next to 1 reduces to the same noise
    guided = _call(pipe, fmri, guidance_scale=1.0 + 1e-7, output_type="latent")
    torch.testing.assert_close(guided, plain, atol=1e-4, rtol=0)
    assert not torch.allclose(_call(pipe, fmri, guidance_scale=6.0, output_type="latent"), plain, atol=1e-3)


def test_from_model_dir_equals_the_pipeline_built_by_hand(parts, pipe):
    generator = B.load_video_generator(parts.generator_dir, device="cpu")
    trained = perturbed_unet_params(generator.unet)
    generator.unet.load_state_dict({**generator.unet.state_dict(), **trained})
    torch.manual_seed(0)  # the encoder write_cotrain_model saved
    encoder = FmriEncoder(validate_config(CONFIG).model, 16, 2).eval()
    negative = load_file(parts.model_dir / "negative.safetensors")["tokens"]
    by_hand = FmriToVideoPipeline(condition=lambda f: encoder(f)["tokens"], generator=generator,
                                  negative_tokens=negative)
    fmri = _fmri(parts.store, 2)
    assert torch.equal(_call(pipe, fmri, seed=9), _call(by_hand, fmri, seed=9))
    loaded = dict(pipe.generator.unet.named_parameters())
    assert all(torch.equal(loaded[name], value) for name, value in trained.items())
    assert pipe.model_info["kind"] == "cotrain" and pipe.fmri_shape == (2, 16, 16)


def test_from_model_dir_conditions_a_lea_model_on_its_ridge_tokens(parts):
    from glfa.baselines.lea import LeaDecoder, fit_lea
    from glfa.generate import available_methods, model_dir_for

    run = parts.model_dir.parents[1]
    config = validate_config({**CONFIG, "device": "cpu", "lea": {"cv_folds": 2}})
    lea_dir = fit_lea(config, parts.store, run, encoder_dir=parts.model_dir / "encoder",
                      generator=parts.generator_dir, progress=False)
    assert model_dir_for(run, "lea") == lea_dir and available_methods(run) == ["glfa", "lea"]
    pipe = FmriToVideoPipeline.from_model_dir(lea_dir, device="cpu")
    fmri = _fmri(parts.store, 2)
    assert torch.equal(pipe.condition(fmri), LeaDecoder.load(lea_dir, "cpu").tokens(fmri))
    assert torch.equal(pipe.negative_tokens, load_file(lea_dir / "negative.safetensors")["tokens"].float())
    assert pipe.model_info["kind"] == "lea"
    base = dict(B.load_video_generator(parts.generator_dir, device="cpu").unet.named_parameters())
    assert all(torch.equal(base[n], p) for n, p in pipe.generator.unet.named_parameters())  # no overlay


def test_unet_overlay_refuses_unknown_names_and_wrong_shapes(parts, tmp_path):
    unet = B.load_video_generator(parts.generator_dir, device="cpu").unet
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    name, param = next((n, p) for n, p in unet.named_parameters() if TRAINED in n)
    cases = {"unknown.weight": ({name: param.detach(), "unknown.weight": torch.zeros(2)}, "not in the base UNet"),
             "shape": ({name: torch.zeros(*param.shape, 2)}, "shape")}
    for label, (tensors, message) in cases.items():
        path = tmp_path / f"{label}.safetensors"
        save_file(tensors, path)
        with pytest.raises(CheckpointError, match=message) as info:
            overlay_unet(unet, path)
        assert str(path) in str(info.value) and (label in str(info.value) or name in str(info.value))
    assert all(torch.equal(before[k], v) for k, v in unet.state_dict().items())  # left unchanged
    with pytest.raises(CheckpointError, match="missing file"):
        overlay_unet(unet, tmp_path / "nothing.safetensors")


def test_model_folder_errors(parts, tmp_path):
    with pytest.raises(CheckpointError, match="missing model.json"):
        FmriToVideoPipeline.from_model_dir(tmp_path)
    info = json.loads((parts.model_dir / "model.json").read_text())
    for change, field in (({"kind": "ridge"}, "kind"), ({"generator": None}, "generator")):
        folder = tmp_path / field
        folder.mkdir()
        (folder / "model.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(CheckpointError, match=field) as err:
            FmriToVideoPipeline.from_model_dir(folder)
        assert "model.json" in str(err.value)
    (tmp_path / "kind" / "model.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="negative.safetensors"):
        FmriToVideoPipeline.from_model_dir(tmp_path / "kind")


def test_bad_call_arguments(parts, pipe):
    fmri = _fmri(parts.store, 1)
    with pytest.raises(DataError, match="height: must be a positive multiple of the VAE factor 4, got 18"):
        _call(pipe, fmri, height=18)
    with pytest.raises(DataError, match=r"fmri: expected fmri of shape \[B, 2, 16, 16\]"):
        _call(pipe, fmri[:, :1])
    with pytest.raises(DataError, match="one seed per sample"):
        _call(pipe, fmri, seed=[1, 2])
    with pytest.raises(DataError, match="negative tokens"):
        FmriToVideoPipeline(condition=pipe.condition, generator=pipe.generator, negative_tokens=torch.zeros(8, 7))
