"""fMRI-PTE, spatiotemporal block, heads and FmriEncoder: shapes, counts, behaviour, save/load."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from glfa.config import ModelConfig
from glfa.errors import CheckpointError, ConfigError, DataError
from glfa.models import ClipHead, FmriEncoder, FmriPTE, SpatioTemporalBlock, TokenProjector
from glfa.models.layers import Attention, sincos_pos_embed_2d

IMAGE = 32
FRAMES = 3



pytestmark = pytest.mark.usefixtures("one_thread")

def tiny_config(**glfa) -> ModelConfig:
    return ModelConfig.model_validate({"preset": "tiny", "glfa": {"parcel_size": 8, "kernel_size": 5, **glfa}})


def _mask() -> np.ndarray:
    yy, xx = np.mgrid[:IMAGE, :IMAGE]
    return (yy - 16) ** 2 + (xx - 16) ** 2 < 14 ** 2


def _block_params(d: int, hidden: int) -> int:
    # two LayerNorms, qkv (bias), proj, fc1, fc2
    return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * hidden + hidden) + (hidden * d + d)


def test_full_preset_parameter_counts_on_meta_device():
    cfg = ModelConfig(preset="full")
    with torch.device("meta"):
        pte = FmriPTE.from_config(cfg, 256)
    d, s, depth, bott = 1024, 16, 24, 2048
    block = _block_params(d, 4 * d)
    encoder = (s * s * d + d) + d + depth * block + 2 * d  # patch conv, cls, blocks, final LN
    decoder = (d * bott + bott) + (bott * d + d) + d + 24 * block + 2 * d + (d * s * s + s * s)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(pte.encoder) == encoder == 302_575_616  # 24 * (12 d^2 + 13 d) + 256 d + d + d + 2 d
    assert count(pte.decoder) == decoder
    assert count(pte) == encoder + decoder
    assert pte.encoder.num_patches == 256
    assert pte.encoder.pos_embed.shape == (1, 257, 1024)


def test_full_preset_encoder_parameter_count_with_glfa_on_meta_device():
    with torch.device("meta"):
        enc = FmriEncoder(ModelConfig(preset="full"), 256, 5)
    assert sum(p.numel() for p in enc.glfa.local.parameters()) == 256 * 256 * 169
    assert sum(p.numel() for p in enc.glfa.global_map.parameters()) == 256 * 256
    t = 5 * 257
    hidden = t // 4
    # the authors' fmri2text: two bias-free token mixers, bias-free projection and fc
    token_head = t * hidden + hidden * 77 + 1024 * 1024 + 1024 * 1024
    assert sum(p.numel() for p in enc.token_head.parameters()) == token_head
    # their fmri2clip head: Conv1d 77 -> 19 -> 4 -> 1 without bias, Linear(1024 -> 1024) with bias
    assert sum(p.numel() for p in enc.clip_head.parameters()) == 77 * 19 + 19 * 4 + 4 + 1024 * 1024 + 1024


def test_sincos_position_embedding_values():
    d, g = 16, 4
    emb = sincos_pos_embed_2d(d, g)
    assert emb.shape == (g * g + 1, d)
    assert torch.all(emb[0] == 0)
    r, c = 2, 3
    omega = 1.0 / 10000 ** (np.arange(d // 4) / (d / 4))
    row = emb[1 + r * g + c].numpy()
    np.testing.assert_allclose(row[: d // 4], np.sin(c * omega), atol=1e-6)
    np.testing.assert_allclose(row[d // 4: d // 2], np.cos(c * omega), atol=1e-6)
    np.testing.assert_allclose(row[d // 2: 3 * d // 4], np.sin(r * omega), atol=1e-6)


def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    attn = Attention(dim=8, num_heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = lambda t: t.reshape(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    w = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(4), dim=-1)
    manual = attn.proj((w @ heads(v)).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(attn(x), manual)


def test_pte_shapes_and_reconstruction_loss_falls():
    torch.manual_seed(0)
    pte = FmriPTE.from_config(tiny_config(), IMAGE)
    mask = torch.from_numpy(_mask())
    x = torch.randn(4, 1, IMAGE, IMAGE) * mask
    assert pte.encode(x).shape == (4, (IMAGE // 8) ** 2 + 1, 32)
    assert pte(x).shape == x.shape
    opt = torch.optim.AdamW(pte.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = pte.reconstruction_loss(x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(DataError, match=r"\[N, 1, 32, 32\]"):
        pte.encode(torch.zeros(2, 1, 16, 16))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    pte = FmriPTE.from_config(tiny_config(), IMAGE)
    x = torch.randn(2, 1, IMAGE, IMAGE)
    grads = []
    for flag in (False, True):
        pte.enable_gradient_checkpointing(flag)
        assert pte.is_gradient_checkpointing is flag
        pte.zero_grad()
        pte.reconstruction_loss(x).backward()
        grads.append([p.grad.clone() for p in pte.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_spatiotemporal_block_attends_within_frames_then_within_tokens():
    torch.manual_seed(0)
    block = SpatioTemporalBlock(dim=8, num_frames=3, depth=1, num_heads=2).eval()
    x = torch.randn(1, 3, 5, 8)
    assert block(x).shape == x.shape
    layer = block.layers[0]
    x2 = x.clone()
    x2[0, 1, 2] += torch.randn(8)  # perturb token 2 of frame 1 (not by a constant: LayerNorm removes those)
    with torch.no_grad():
        saved = layer.temporal.proj.weight.clone(), layer.temporal.proj.bias.clone()
        layer.temporal.proj.weight.zero_()
        layer.temporal.proj.bias.zero_()
        # spatial attention only: other frames are untouched
        diff = (block(x2) - block(x)).abs().amax(dim=(0, 2, 3))
        assert diff[0] == 0 and diff[2] == 0 and diff[1] > 0
        layer.temporal.proj.weight.copy_(saved[0])
        layer.temporal.proj.bias.copy_(saved[1])
        layer.spatial.proj.weight.zero_()
        layer.spatial.proj.bias.zero_()
        # temporal attention only: the same token in every frame changes, other tokens do not
        diff = (block(x2) - block(x)).abs().amax(dim=(0, 1, 3))
        assert diff[2] > 0 and torch.all(diff[[0, 1, 3, 4]] == 0)
        assert torch.all((block(x2) - block(x)).abs().amax(dim=(0, 3))[:, 2] > 0)
    with pytest.raises(DataError, match="3"):
        block(torch.randn(1, 4, 5, 8))
    identity = SpatioTemporalBlock(dim=8, num_frames=3, depth=0, num_heads=2)
    assert torch.equal(identity(x), x)


def test_heads_shapes_normalisation_and_dropout():
    torch.manual_seed(0)
    x = torch.randn(2, 3 * 17, 32)
    proj = TokenProjector(num_input_tokens=51, dim=32, num_tokens=8, token_dim=24)
    assert proj(x).shape == (2, 8, 24)
    assert proj.channel_mapper[0].out_features == 12  # a quarter of 51, rounded down
    tokens = proj(x)
    head = ClipHead(kind="fmri2clip", dim=32, num_frames=3, num_tokens=8, token_dim=24, clip_dim=16)
    emb = head(tokens)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    linear = ClipHead(kind="linear", dim=32, num_frames=3, num_tokens=8, token_dim=24, clip_dim=16)
    assert linear(torch.randn(2, 3, 32)).shape == (2, 16)
    assert linear.proj.in_features == 3 * 32
    with pytest.raises(ConfigError, match="clip_head"):
        ClipHead(kind="mean", dim=32, num_frames=3, num_tokens=8, token_dim=24, clip_dim=16)
    drop = TokenProjector(num_input_tokens=51, dim=32, num_tokens=8, token_dim=24, dropout=0.5).train()
    assert not torch.equal(drop(x), drop(x))
    drop.eval()
    assert torch.equal(drop(x), drop(x))
    with pytest.raises(DataError, match="51"):
        proj(torch.randn(2, 50, 32))


def test_encoder_forward_with_and_without_glfa():
    torch.manual_seed(0)
    mask = _mask()
    x = torch.randn(2, FRAMES, IMAGE, IMAGE) * torch.from_numpy(mask)
    enc = FmriEncoder(tiny_config(), IMAGE, FRAMES).eval()
    out = enc(x)
    assert out["tokens"].shape == (2, 8, 32)
    assert out["clip"].shape == (2, 32)
    assert out["aligned"].shape == x.shape
    assert (out["aligned"] - x).abs().max() < 5e-3  # GLFA starts as the identity
    plain = FmriEncoder(tiny_config(enabled=False), IMAGE, FRAMES).eval()
    assert plain.glfa is None
    assert not any(name.startswith("glfa.") for name in plain.state_dict())
    assert plain(x)["aligned"] is x
    n_glfa = sum(p.numel() for p in enc.glfa.parameters())
    assert sum(p.numel() for p in enc.parameters()) - sum(p.numel() for p in plain.parameters()) == n_glfa
    with pytest.raises(DataError, match="fmri"):
        enc(torch.randn(2, FRAMES + 1, IMAGE, IMAGE))


def test_encoder_computes_only_the_heads_asked_for():
    torch.manual_seed(0)
    enc = FmriEncoder(tiny_config(), IMAGE, FRAMES).eval()
    x = torch.randn(3, FRAMES, IMAGE, IMAGE)
    full = enc(x)
    tokens_only = enc(x, heads=("tokens",))
    assert set(tokens_only) == {"tokens", "aligned"}
    torch.testing.assert_close(tokens_only["tokens"], full["tokens"])
    clip_only = enc(x, heads=("clip",))  # the fmri2clip head reads the condition tokens
    assert set(clip_only) == {"clip", "aligned"}
    torch.testing.assert_close(clip_only["clip"], full["clip"])
    # the linear CLIP head reads the PTE's [CLS] tokens: no token projector, no spatiotemporal block
    cfg = tiny_config()
    cfg.heads.clip_head = "linear"
    linear = FmriEncoder(cfg, IMAGE, FRAMES).eval()
    calls = []
    linear.token_head.register_forward_hook(lambda *args: calls.append("tokens"))
    linear.temporal.register_forward_hook(lambda *args: calls.append("temporal"))
    assert set(linear(x, heads=("clip",))) == {"clip", "aligned"} and calls == []
    linear(x, heads=("tokens",))
    assert calls == ["temporal", "tokens"]
    with pytest.raises(ConfigError, match="unknown encoder head.*'latent'"):
        enc(x, heads=("latent",))


def test_encoder_gradients_reach_glfa_and_checkpointing_matches():
    torch.manual_seed(0)
    enc = FmriEncoder(tiny_config(), IMAGE, FRAMES)
    x = torch.randn(2, FRAMES, IMAGE, IMAGE)
    grads = []
    for flag in (False, True):
        enc.enable_gradient_checkpointing(flag)
        assert enc.is_gradient_checkpointing is flag and enc.temporal.gradient_checkpointing is flag
        enc.zero_grad()
        out = enc(x)
        (out["tokens"].square().mean() + out["clip"].sum()).backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0]["glfa.local.weight"].abs().sum() > 0
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4)


def test_encoder_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    enc = FmriEncoder(tiny_config(), IMAGE, FRAMES).eval()
    with torch.no_grad():
        enc.glfa.local.weight.normal_(0, 0.1)  # make the GLFA weights matter
        enc.pte.pos_embed.normal_()  # stored with the weights, not recomputed on load
    x = torch.randn(2, FRAMES, IMAGE, IMAGE) * torch.from_numpy(_mask())
    enc.save_pretrained(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["config.json", "model.safetensors"]
    loaded = FmriEncoder.from_pretrained(tmp_path / "enc").eval()
    assert torch.equal(loaded.pte.pos_embed, enc.pte.pos_embed)
    a, b = enc(x), loaded(x)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert loaded.config == enc.config


def test_save_load_errors_name_the_folder(tmp_path):
    enc = FmriEncoder(tiny_config(enabled=False), IMAGE, FRAMES)
    with pytest.raises(CheckpointError, match="missing config.json") as err:
        FmriEncoder.from_pretrained(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)
    folder = enc.save_pretrained(tmp_path / "enc")
    with pytest.raises(CheckpointError, match="expected a FmriPTE"):
        FmriPTE.from_pretrained(folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="half-written"):
        FmriEncoder.from_pretrained(folder)
    weights.write_bytes(b"\x00" * len(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        FmriEncoder.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        FmriEncoder.from_pretrained(folder)


def test_pte_save_load_and_load_into_encoder(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    pte = FmriPTE.from_config(cfg, IMAGE).eval()
    x = torch.randn(2, 1, IMAGE, IMAGE)
    pte.save_pretrained(tmp_path / "pte")
    meta = json.loads((tmp_path / "pte" / "config.json").read_text())
    assert meta["class"] == "FmriPTE" and meta["config"]["embed_dim"] == 32
    loaded = FmriPTE.from_pretrained(tmp_path / "pte").eval()
    assert torch.equal(pte(x), loaded(x))
    enc = FmriEncoder(cfg, IMAGE, FRAMES).eval()
    assert not torch.equal(enc.pte(x), pte.encode(x))
    enc.load_pte(tmp_path / "pte")
    assert torch.equal(enc.pte(x), pte.encode(x))
    other = FmriEncoder(cfg, IMAGE, FRAMES)
    other.load_pte(pte)
    assert torch.equal(other.pte(x), pte.encode(x))
    wider = FmriEncoder(ModelConfig.model_validate({"preset": "tiny", "pte": {"embed_dim": 64}}), IMAGE, FRAMES)
    with pytest.raises(CheckpointError, match="embed_dim"):
        wider.load_pte(tmp_path / "pte")


def test_both_models_share_save_load_and_checkpointing(tmp_path):
    """FmriPTE and FmriEncoder: a bad saved config is one CheckpointError; the switch reaches every block stack."""
    models = (FmriPTE.from_config(tiny_config(), IMAGE), FmriEncoder(tiny_config(), IMAGE, FRAMES))
    for model, stacks in zip(models, (("encoder", "decoder"), ("pte", "temporal"))):
        model.enable_gradient_checkpointing()
        assert all(getattr(model, name).gradient_checkpointing for name in stacks) and model.is_gradient_checkpointing
        model.enable_gradient_checkpointing(False)
        assert not any(getattr(model, name).gradient_checkpointing for name in stacks)
        folder = model.save_pretrained(tmp_path / type(model).__name__)
        assert type(model).read_saved_config(folder) == json.loads((folder / "config.json").read_text())["config"]
        meta = json.loads((folder / "config.json").read_text())
        del meta["config"]["image_size"]
        (folder / "config.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError, match="invalid model config.*image_size") as err:
            type(model).from_pretrained(folder)
        assert type(model).__name__ in str(err.value)


def test_construction_is_deterministic_under_a_seed():
    x = torch.randn(1, FRAMES, IMAGE, IMAGE)
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(FmriEncoder(tiny_config(), IMAGE, FRAMES).eval()(x)["clip"])
    assert torch.equal(outs[0], outs[1])
