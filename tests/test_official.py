"""Importing the authors' checkpoints: equal outputs to an independent transcription of their modules.

The checkpoints are written here in the authors' exact format (``torch.save({'model': state,
'cur_epoch', 'accum_iter'})``, DDP's ``module.`` prefix, their key names and shapes) with random
weights at a tiny size. The reference functions below transcribe the authors' code
(``models/transformer_models.py``, ``models/utils.py``, ``models/LocallyConnected2d.py`` of
chongjg/GLFA-fmri-video) in plain torch, without glfa's modules.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from glfa import backbones as B
from glfa.cli import main
from glfa.config import ModelConfig, load_config, validate_config
from glfa.data.store import StudyStore
from glfa.errors import CheckpointError, DataError
from glfa.evaluation import evaluate_run
from glfa.generate import generate
from glfa.models import FmriEncoder, FmriPTE
from glfa.models.official import import_checkpoint, import_weights, infer_config, to_authors_state
from glfa.pipeline import read_model_info, read_negative_tokens
from glfa.training.cotrain import CotrainStage
from tests.fixtures import write_decoding_store

pytestmark = pytest.mark.usefixtures("one_thread")

D, HEADS, DEPTH, PATCH, IMAGE, WINDOW, BOTTLENECK = 128, 2, 2, 16, 32, 2, 64  # head width 64, as theirs
TOKENS = (IMAGE // PATCH) ** 2 + 1  # 5 per frame
KERNEL, PARCEL = 13, 16


# ----------------------------------------------------------------------------- their checkpoints


def _randn(gen: torch.Generator, *shape: int, std: float = 0.1, mean: float = 0.0) -> torch.Tensor:
    return mean + std * torch.randn(*shape, generator=gen)


def _block(gen, prefix: str, dim: int, hidden: int) -> dict[str, torch.Tensor]:
    """A timm ``Block`` / their ``BlockTemp`` attention + MLP with random weights (norms near 1)."""
    out = {}
    for norm in ("norm1", "norm2"):
        out[f"{prefix}{norm}.weight"], out[f"{prefix}{norm}.bias"] = _randn(gen, dim, mean=1.0), _randn(gen, dim)
    out.update({f"{prefix}attn.qkv.weight": _randn(gen, 3 * dim, dim), f"{prefix}attn.qkv.bias": _randn(gen, 3 * dim),
                f"{prefix}attn.proj.weight": _randn(gen, dim, dim), f"{prefix}attn.proj.bias": _randn(gen, dim),
                f"{prefix}mlp.fc1.weight": _randn(gen, hidden, dim), f"{prefix}mlp.fc1.bias": _randn(gen, hidden),
                f"{prefix}mlp.fc2.weight": _randn(gen, dim, hidden), f"{prefix}mlp.fc2.bias": _randn(gen, dim)})
    return out


def _pte_encoder(gen, prefix: str) -> dict[str, torch.Tensor]:
    state = {f"{prefix}cls_token": _randn(gen, 1, 1, D), f"{prefix}pos_embed": _randn(gen, 1, TOKENS, D, std=0.5),
             f"{prefix}patch_embed.proj.weight": _randn(gen, D, 1, PATCH, PATCH, std=0.05),
             f"{prefix}patch_embed.proj.bias": _randn(gen, D),
             f"{prefix}norm.weight": _randn(gen, D, mean=1.0), f"{prefix}norm.bias": _randn(gen, D)}
    for i in range(DEPTH):
        state.update(_block(gen, f"{prefix}blocks.{i}.", D, 4 * D))
    return state


def pte_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """``Neural_fMRI2fMRI``: encoder, [CLS] bottleneck, decoder (one block) with a non-sin-cos decoder_pos_embed."""
    gen = torch.Generator().manual_seed(seed)
    state = _pte_encoder(gen, "transformer.")
    state.update({"transformer.pred.weight": _randn(gen, BOTTLENECK, D),
                  "transformer.pred.bias": _randn(gen, BOTTLENECK),
                  "transformer.decoder_embed.weight": _randn(gen, D, BOTTLENECK),
                  "transformer.decoder_embed.bias": _randn(gen, D), "transformer.mask_token": _randn(gen, 1, 1, D),
                  "transformer.decoder_pos_embed": _randn(gen, 1, TOKENS, D, std=0.5),
                  "transformer.decoder_norm.weight": _randn(gen, D, mean=1.0),
                  "transformer.decoder_norm.bias": _randn(gen, D),
                  "transformer.decoder_pred.weight": _randn(gen, PATCH * PATCH, D),
                  "transformer.decoder_pred.bias": _randn(gen, PATCH * PATCH)})
    state.update(_block(gen, "transformer.decoder_blocks.0.", D, 4 * D))
    return state


def encoder_state(stage: int, *, clip: str = "fmri2clip", glfa: bool = True, seed: int = 1) -> dict[str, torch.Tensor]:
    """``fMRI_encoder`` after stage 1 (with ``fmri2clip`` and ``logit_scale``) or stage 2 (with GLFA when asked)."""
    gen = torch.Generator().manual_seed(seed)
    state = _pte_encoder(gen, "fmri_encoder.transformer.")
    state.update(_block(gen, "fmri_encoder_proj.attn.", D, D))
    state["fmri_encoder_proj.attn.norm_temp.weight"] = _randn(gen, D, mean=1.0)
    state["fmri_encoder_proj.attn.norm_temp.bias"] = _randn(gen, D)
    for name in ("qkv", "proj"):
        rows = 3 * D if name == "qkv" else D
        state[f"fmri_encoder_proj.attn.attn_temp.{name}.weight"] = _randn(gen, rows, D)
        state[f"fmri_encoder_proj.attn.attn_temp.{name}.bias"] = _randn(gen, rows)
    t = WINDOW * TOKENS
    cond = "fmri_encoder_proj.cond_state_transform."
    state.update({cond + "channel_mapper.0.weight": _randn(gen, t // 4, t, std=0.3),
                  cond + "channel_mapper.1.weight": _randn(gen, 77, t // 4, std=0.3),
                  cond + "projection.weight": _randn(gen, D, D), cond + "fc.weight": _randn(gen, D, D)})
    if stage == 1:
        state["logit_scale"] = torch.tensor(math.log(1 / 0.07))
        if clip == "linear":
            state["fmri2clip.1.weight"], state["fmri2clip.1.bias"] = _randn(gen, D, WINDOW * D), _randn(gen, D)
        else:
            for i, (a, b) in zip((0, 2, 4), ((77, 19), (19, 4), (4, 1))):
                state[f"fmri2clip.channel_mapper.{i}.weight"] = _randn(gen, b, a, 1, std=0.3)
            state["fmri2clip.dim_mapper.weight"], state["fmri2clip.dim_mapper.bias"] = _randn(gen, D, D), _randn(gen, D)
    if glfa:
        state["func_align_layer.weight"] = _randn(gen, 1, 1, 1, IMAGE, IMAGE, KERNEL * KERNEL, std=0.3)
        parcels = (IMAGE // PARCEL) ** 2
        state["func_align_layer.global_align_weight"] = _randn(gen, 1, 1, parcels, parcels, std=0.3)
    return state


def save_theirs(path, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
    """``torch.save`` as their ``save_model`` does, from a DDP-wrapped model (``module.`` prefix)."""
    model = {f"module.{k}": v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"model": model, "cur_epoch": 3, "accum_iter": 120}, path)
    return path


# ----------------------------------------------------------------------------- their equations


def ref_attention(x, s, p, heads):
    b, n, c = x.shape
    qkv = (x @ s[p + "qkv.weight"].T + s[p + "qkv.bias"]).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    return (attn @ v).transpose(1, 2).reshape(b, n, c) @ s[p + "proj.weight"].T + s[p + "proj.bias"]


def ref_ln(x, s, p):
    return F.layer_norm(x, x.shape[-1:], s[p + "weight"], s[p + "bias"], eps=1e-5)


def ref_mlp(x, s, p):
    h = F.gelu(x @ s[p + "fc1.weight"].T + s[p + "fc1.bias"])
    return h @ s[p + "fc2.weight"].T + s[p + "fc2.bias"]


def ref_block(x, s, p):
    x = x + ref_attention(ref_ln(x, s, p + "norm1."), s, p + "attn.", HEADS)
    return x + ref_mlp(ref_ln(x, s, p + "norm2."), s, p + "mlp.")


def ref_encoder_wo_pred(img, s, p):
    """forward_encoder_wo_pred: [N, 1, H, W] -> [N, 1 + L, D]."""
    x = F.conv2d(img, s[p + "patch_embed.proj.weight"], s[p + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2) + s[p + "pos_embed"][:, 1:]
    cls = (s[p + "cls_token"] + s[p + "pos_embed"][:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for i in range(DEPTH):
        x = ref_block(x, s, f"{p}blocks.{i}.")
    return ref_ln(x, s, p + "norm.")


def ref_reconstruction(img, s):
    """forward_encoder (pred on [CLS]) -> forward_decoder -> unpatchify: [N, 1, H, W]."""
    p = "transformer."
    z = ref_encoder_wo_pred(img, s, p)[:, :1] @ s[p + "pred.weight"].T + s[p + "pred.bias"]
    x = z @ s[p + "decoder_embed.weight"].T + s[p + "decoder_embed.bias"]
    x = torch.cat([x, s[p + "mask_token"].repeat(x.shape[0], TOKENS - 1, 1)], dim=1) + s[p + "decoder_pos_embed"]
    x = ref_block(x, s, p + "decoder_blocks.0.")
    out = (ref_ln(x, s, p + "decoder_norm.") @ s[p + "decoder_pred.weight"].T + s[p + "decoder_pred.bias"])[:, 1:]
    g = IMAGE // PATCH
    out = torch.einsum("nhwpqc->nchpwq", out.reshape(out.shape[0], g, g, PATCH, PATCH, 1))
    return out.reshape(out.shape[0], 1, IMAGE, IMAGE)


def ref_func_align(x, s):
    """Their LocallyConnected2d with global_align: [N, 1, H, W] -> [N, 1, H, W]."""
    n, c, h, w = x.shape
    mask = x != 0
    x = x.view(n, c, h // PARCEL, PARCEL, w // PARCEL, PARCEL).transpose(-2, -3)
    x = x.contiguous().view(n, c, -1, PARCEL * PARCEL)
    g = s["func_align_layer.global_align_weight"]
    x = (g + torch.eye(g.shape[-1])[None, None]) @ x
    x = x.view(n, c, h // PARCEL, w // PARCEL, PARCEL, PARCEL).transpose(-2, -3).contiguous().view(n, c, h, w) * mask
    mask = x != 0
    x = F.pad(x, (KERNEL // 2,) * 4).unfold(2, KERNEL, 1).unfold(3, KERNEL, 1)
    x = x.contiguous().view(*x.shape[:-2], -1)
    bias = torch.zeros_like(s["func_align_layer.weight"])
    bias[..., KERNEL * KERNEL // 2] = 1
    weight = bias + s["func_align_layer.weight"]
    return (x.unsqueeze(1) * (weight.abs() / weight.norm(p=1, dim=-1, keepdim=True))).sum([2, -1]) * mask


def ref_block_temp(x, s, window):
    """BlockTemp on [(b f), d, c]."""
    p = "fmri_encoder_proj.attn."
    x = x + ref_attention(ref_ln(x, s, p + "norm1."), s, p + "attn.", HEADS)
    d = x.shape[1]
    x = x.reshape(-1, window, d, x.shape[-1]).transpose(1, 2).reshape(-1, window, x.shape[-1])  # (b d) f c
    x = x + ref_attention(ref_ln(x, s, p + "norm_temp."), s, p + "attn_temp.", HEADS)
    x = x.reshape(-1, d, window, x.shape[-1]).transpose(1, 2).reshape(-1, d, x.shape[-1])  # (b f) d c
    return x + ref_mlp(ref_ln(x, s, p + "norm2."), s, p + "mlp.")


def ref_fmri_encoder(fmri, s):
    """fMRI_encoder.forward on [B, n, 1, H, W]: {fmri_embedding, func_align_fmri?, fmri_latent?}."""
    bn = fmri.shape[0]
    x = fmri.flatten(0, 1)
    out = {}
    if "func_align_layer.weight" in s:
        x = ref_func_align(x, s)
        out["func_align_fmri"] = x
    latent = ref_encoder_wo_pred(x, s, "fmri_encoder.transformer.").reshape(bn, WINDOW, TOKENS, D)
    h = ref_block_temp(latent.flatten(0, 1), s, WINDOW).reshape(bn, WINDOW * TOKENS, D)
    cond = "fmri_encoder_proj.cond_state_transform."
    h = h.transpose(1, 2) @ s[cond + "channel_mapper.0.weight"].T @ s[cond + "channel_mapper.1.weight"].T
    projected = h.transpose(1, 2) @ s[cond + "projection.weight"].T
    out["fmri_embedding"] = F.gelu(projected) @ s[cond + "fc.weight"].T + projected
    if "fmri2clip.1.weight" in s:
        clip = latent[:, :, 0].reshape(bn, -1) @ s["fmri2clip.1.weight"].T + s["fmri2clip.1.bias"]
    elif "fmri2clip.dim_mapper.weight" in s:
        y = out["fmri_embedding"]
        for i in (0, 2, 4):
            y = F.conv1d(y, s[f"fmri2clip.channel_mapper.{i}.weight"])
        clip = (y @ s["fmri2clip.dim_mapper.weight"].T + s["fmri2clip.dim_mapper.bias"]).view(bn, -1)
    else:
        return out
    out["fmri_latent"] = clip / clip.norm(p=2, dim=-1, keepdim=True)
    return out


def fmri_window(batch: int = 2, seed: int = 5) -> torch.Tensor:
    """[B, n, H, W] frames, zero outside a disc (the cortex) as real flat images are."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(IMAGE), torch.arange(IMAGE), indexing="ij")
    disc = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 14**2).float()
    return torch.randn(batch, WINDOW, IMAGE, IMAGE, generator=gen) * disc


def assert_rel(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-4) -> None:
    """Equal to ``rel`` of the reference's largest magnitude (float32, CPU)."""
    assert ours.shape == theirs.shape
    err = (ours - theirs).abs().max().item()
    assert err <= rel * theirs.abs().max().item(), f"max error {err} vs scale {theirs.abs().max().item()}"


# ----------------------------------------------------------------------------- equal outputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_pte_checkpoint_imports_with_equal_tokens_and_reconstruction(tmp_path, dtype):
    state = pte_state()
    path = save_theirs(tmp_path / "checkpoint_120000.pth", state, dtype)
    model, report = import_checkpoint(path)
    assert isinstance(model, FmriPTE) and report["kind"] == "pte" and report["kept_initial"] == []
    assert model.config == {"image_size": IMAGE, "patch_size": PATCH, "embed_dim": D, "depth": DEPTH,
                            "num_heads": HEADS, "mlp_ratio": 4.0, "decoder_depth": 1, "decoder_num_heads": HEADS,
                            "bottleneck_dim": BOTTLENECK}
    stored = {k: v.to(dtype).float() for k, v in state.items()}  # what the file holds, read back as float32
    img = fmri_window()[:, :1]  # [N, 1, H, W]
    with torch.no_grad():
        assert_rel(model.encode(img), ref_encoder_wo_pred(img, stored, "transformer."))
        assert_rel(model(img), ref_reconstruction(img, stored))
    model.save_pretrained(tmp_path / "pte")
    loaded = FmriPTE.from_pretrained(tmp_path / "pte")
    with torch.no_grad():
        assert torch.equal(loaded(img), model(img))  # the stored decoder position embedding travels


@pytest.mark.parametrize("clip", ["fmri2clip", "linear"])
def test_stage1_checkpoint_imports_with_equal_condition_tokens_and_clip_embedding(tmp_path, clip):
    state = encoder_state(1, clip=clip, glfa=False)
    model, report = import_checkpoint(save_theirs(tmp_path / "fmri-encoder-checkpoint_12000.pth", state))
    assert isinstance(model, FmriEncoder) and report["kind"] == "stage1" and report["dropped"] == ["logit_scale"]
    assert model.glfa is None and model.num_frames == WINDOW and model.config.heads.clip_head == clip
    assert model.config.heads.num_tokens == 77 and model.config.temporal.depth == 1
    fmri = fmri_window()
    with torch.no_grad():
        ours, theirs = model(fmri), ref_fmri_encoder(fmri[:, :, None], state)
    assert_rel(ours["tokens"], theirs["fmri_embedding"])
    assert_rel(ours["clip"], theirs["fmri_latent"])


def test_stage2_checkpoint_imports_with_equal_glfa_output_and_tokens(tmp_path):
    state = encoder_state(2)
    model, report = import_checkpoint(save_theirs(tmp_path / "fmri-encoder-checkpoint.pth", state))
    assert report["kind"] == "stage2" and model.glfa is not None
    assert (model.config.glfa.kernel_size, model.config.glfa.parcel_size) == (KERNEL, PARCEL)
    assert all(k.startswith("clip_head.") for k in report["kept_initial"]) and report["kept_initial"]
    fmri = fmri_window()
    with torch.no_grad():
        ours, theirs = model(fmri, heads=("tokens",)), ref_fmri_encoder(fmri[:, :, None], state)
    assert_rel(ours["aligned"], theirs["func_align_fmri"].reshape(ours["aligned"].shape))
    assert_rel(ours["tokens"], theirs["fmri_embedding"])
    # GLFA moved the frames (the check is not of an identity), and nothing outside the cortex
    assert (ours["aligned"] - fmri).abs().max() > 0.1 and torch.all(ours["aligned"][fmri == 0] == 0)


def test_cli_writes_folders_that_from_pretrained_loads(tmp_path, capsys):
    pte_path = save_theirs(tmp_path / "pte.pth", pte_state())
    assert main(["import-weights", str(pte_path), str(tmp_path / "pte")]) == 0
    assert "imported a pte checkpoint as a FmriPTE" in capsys.readouterr().out
    img = fmri_window()[:, :1]
    with torch.no_grad():
        assert_rel(FmriPTE.from_pretrained(tmp_path / "pte")(img), ref_reconstruction(img, pte_state()))
    state = encoder_state(2)
    stage2 = save_theirs(tmp_path / "stage2.pth", state)
    assert main(["import-weights", str(stage2), str(tmp_path / "enc"), "--kind", "stage2"]) == 0
    assert "kept at their initial values: clip_head." in capsys.readouterr().out
    fmri = fmri_window()
    with torch.no_grad():
        tokens = FmriEncoder.from_pretrained(tmp_path / "enc")(fmri, heads=("tokens",))["tokens"]
    assert_rel(tokens, ref_fmri_encoder(fmri[:, :, None], state)["fmri_embedding"])
    # the published models saw the authors' flat images: both folders say so, and a store of others is refused
    assert FmriPTE.from_pretrained(tmp_path / "pte").geometry == "fmri-pte"
    encoder = FmriEncoder.from_pretrained(tmp_path / "enc")
    assert encoder.geometry == "fmri-pte"
    other = FmriEncoder(encoder.config, encoder.image_size, encoder.num_frames, geometry="barycentric")
    with pytest.raises(CheckpointError, match="'fmri-pte' flat images"):
        other.load_encoder_weights(tmp_path / "enc")


def test_stage2_with_pipeline_is_a_decoder_model_that_generate_decodes(tmp_path):

    generator = B.tiny_video_generator(tmp_path / "pipeline", cross_attention_dim=D, sample_size=16)
    store = write_decoding_store(tmp_path / "store", image_size=IMAGE, fmri_frames=WINDOW)
    config = validate_config({"subjects": {"train": ["s1", "s2"], "held_out": ["s3"]}, "generation": {
        "num_inference_steps": 2, "guidance_scale": 6.0, "num_frames": 2, "height": 16, "width": 16, "fps": 3.0}})
    state = encoder_state(2)
    out = tmp_path / "run" / "cotrain-glfa" / "model"
    import_weights(save_theirs(tmp_path / "stage2.pth", state), out, pipeline=generator, store=store, config=config)
    info = read_model_info(out)
    assert (info["kind"], info["method"], info["train_subjects"], info["held_out"]) == ("cotrain", "glfa",
                                                                                         ["s1", "s2"], ["s3"])
    assert info["generator"] == str(generator.resolve()) and info["imported_from"].endswith("stage2.pth")
    # the negative condition: the imported encoder's tokens for the mean training window of s1 and s2
    opened = StudyStore.open(store)
    windows = opened.windows("train")
    mean = torch.stack([torch.from_numpy(opened.fmri(s, w)) for s in ("s1", "s2") for w in windows]).mean(0)
    expected = ref_fmri_encoder(mean[None, :, None], state)["fmri_embedding"][0]
    assert_rel(read_negative_tokens(out), expected)
    folder = generate(tmp_path / "run", method="glfa", subject="s3", device="cpu", progress=False)
    assert json.loads((folder / "index.json").read_text())["count"] == len(opened.windows("test"))
    # glfa evaluate scores the imported decoder as any trained one: cross-subject, with its GLFA layer's alignment
    evaluation = evaluate_run(tmp_path / "run", progress=False)
    (result,) = evaluation.results
    assert (result.method, result.protocol) == ("glfa", "cross-subject")
    assert result.summary["ssim"]["n"] == len(opened.windows("test"))


# ----------------------------------------------------------------------------- bad input


class Arbitrary:
    """A class a pickle needs to rebuild: torch.load(weights_only=True) refuses it."""

    def __init__(self):
        self.payload = [1, 2, 3]


def test_bad_checkpoints_name_the_file_and_the_key(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "extra": Arbitrary()}, evil)
    with pytest.raises(CheckpointError, match="could run arbitrary code") as err:
        import_checkpoint(evil)
    assert "evil.pth" in str(err.value)
    good = save_theirs(tmp_path / "good.pth", pte_state())
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        import_checkpoint(truncated)
    unknown = save_theirs(tmp_path / "unknown.pth", {"backbone.conv1.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="keys of an unknown model.*backbone.conv1.weight"):
        import_checkpoint(unknown)
    state = pte_state()
    state["transformer.blocks.1.attn.qkv.weight"] = torch.zeros(3 * D, D + 1)
    with pytest.raises(CheckpointError, match=r"mis-shaped keys.*transformer.blocks.1.attn.qkv.weight \[384, 129\]"):
        import_checkpoint(save_theirs(tmp_path / "shape.pth", state))
    state = pte_state()
    del state["transformer.decoder_norm.bias"]
    with pytest.raises(CheckpointError, match=r"missing keys.*transformer.decoder_norm.bias"):
        import_checkpoint(save_theirs(tmp_path / "missing.pth", state))
    state = encoder_state(1)
    state["fmri_encoder.extra_head.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="unexpected keys.*fmri_encoder.extra_head.weight"):
        import_checkpoint(save_theirs(tmp_path / "extra.pth", state))
    with pytest.raises(CheckpointError, match="num_heads.*no valid glfa model"):  # 3 heads do not divide D
        import_checkpoint(good, num_heads=3)
    with pytest.raises(CheckpointError, match="--kind pte was asked for.*stage1"):
        import_checkpoint(save_theirs(tmp_path / "s1.pth", encoder_state(1)), kind="pte")
    assert main(["import-weights", str(evil), str(tmp_path / "out")]) == 2  # one line, status 2


def test_pipeline_refuses_a_store_of_another_window_and_generate_explains_an_encoder_folder(tmp_path, capsys):
    stage2 = save_theirs(tmp_path / "stage2.pth", encoder_state(2))
    store = write_decoding_store(tmp_path / "store", image_size=IMAGE, fmri_frames=WINDOW + 1, frames=6)
    config = validate_config({"subjects": {"held_out": ["s3"]}})
    with pytest.raises(DataError, match=f"num_frames {WINDOW}.*holds {WINDOW + 1}"):
        import_weights(stage2, tmp_path / "out", pipeline=tmp_path / "unused", store=store, config=config)
    with pytest.raises(CheckpointError, match="needs --store"):
        import_weights(stage2, tmp_path / "out", pipeline=tmp_path / "unused")
    # a stage-2 checkpoint imported without --pipeline is an encoder only: generate says what to do
    run = tmp_path / "run"
    import_weights(stage2, run / "cotrain-glfa" / "model")
    with pytest.raises(CheckpointError, match="--pipeline"):
        generate(run, method="glfa", subject="s3", store=store, device="cpu", progress=False)


@pytest.mark.parametrize("kind", ["pte", "stage1", "stage2"])
def test_authors_state_of_a_glfa_model_round_trips_through_the_importer(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "pte":
        model = FmriPTE(image_size=IMAGE, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=HEADS,
                        decoder_depth=1, decoder_num_heads=HEADS, bottleneck_dim=BOTTLENECK)
        expected = set(pte_state())
    else:
        config = ModelConfig.model_validate({"pte": {"embed_dim": D, "depth": DEPTH, "num_heads": HEADS},
                                             "temporal": {"num_heads": HEADS},
                                             "heads": {"token_dim": D, "clip_dim": D},
                                             "glfa": {"enabled": kind == "stage2"}})
        model = FmriEncoder(config, IMAGE, WINDOW)
        expected = set(encoder_state(int(kind[-1]), glfa=kind == "stage2"))
    state = to_authors_state(model, kind)
    assert set(state) == expected  # exactly the authors' keys
    assert all(state[k].shape == v.shape for k, v in (pte_state() if kind == "pte" else encoder_state(
        int(kind[-1]), glfa=kind == "stage2")).items())
    imported, report = import_checkpoint(save_theirs(tmp_path / f"{kind}.pth", state))
    ours = imported.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items() if not k.startswith("clip_head.")
               or kind != "stage2")


def test_imported_pte_starts_stage_0_from_the_cli(tmp_path):
    """The UKB checkpoint as --init of `glfa train pretrain` (the paper's stage 0 starts from it)."""
    pte = tmp_path / "ukb"
    assert main(["import-weights", str(save_theirs(tmp_path / "checkpoint_120000.pth", pte_state())), str(pte)]) == 0
    store = write_decoding_store(tmp_path / "store", image_size=IMAGE, fmri_frames=WINDOW)
    config = tmp_path / "release-tiny.yaml"
    config.write_text(yaml.safe_dump({
        "name": "imported", "output_dir": str(tmp_path / "runs"), "device": "cpu",
        "subjects": {"held_out": ["s3"]},
        "model": {"pte": {"patch_size": PATCH, "embed_dim": D, "depth": DEPTH, "num_heads": HEADS,
                          "decoder_depth": 1, "decoder_num_heads": HEADS, "bottleneck_dim": BOTTLENECK}},
        "pretrain": {"steps": 1, "batch_size": 2, "num_workers": 0}}))
    run = tmp_path / "run"
    assert main(["train", "pretrain", "-c", str(config), "--store", str(store), "--init", str(pte), "--out", str(run),
                 "--quiet"]) == 0
    tuned, imported = FmriPTE.from_pretrained(run / "pte"), FmriPTE.from_pretrained(pte)
    # one step of fine-tuning moved the imported weights a little, and kept the stored decoder position embedding
    moved = (tuned.encoder.blocks[0].attn.qkv.weight - imported.encoder.blocks[0].attn.qkv.weight).abs().max()
    assert 0 < moved < 1e-2
    assert torch.equal(tuned.decoder.pos_embed, pte_state()["transformer.decoder_pos_embed"])


def test_the_released_shapes_give_the_release_config():
    """At full size (meta tensors: shapes only), the importer reads off exactly the release config's model."""
    release = load_config(Path(__file__).resolve().parents[1] / "configs" / "fudan-webvid-release.yaml")
    with torch.device("meta"):
        model = FmriEncoder(release.model, 256, 5)
    state = to_authors_state(model, "stage2")
    assert state["func_align_layer.weight"].shape == (1, 1, 1, 256, 256, 169)
    assert state["fmri_encoder_proj.cond_state_transform.channel_mapper.0.weight"].shape == (321, 1285)
    inferred = infer_config(state, "stage2")
    assert (inferred["image_size"], inferred["num_frames"]) == (256, 5)
    assert inferred["model"]["pte"]["num_heads"] == 16  # 1024 / 64, their head width
    assert ModelConfig.model_validate(inferred["model"]) == release.model


def test_imported_stage1_encoder_starts_stage_2(tmp_path):
    """An imported stage-1 checkpoint is --init of `glfa train cotrain`: its weights, GLFA at the identity."""
    state = encoder_state(1, glfa=False)
    stage1 = tmp_path / "stage1"
    import_weights(save_theirs(tmp_path / "fmri-encoder-checkpoint_12000.pth", state), stage1)
    generator = B.tiny_video_generator(tmp_path / "generator", cross_attention_dim=D, sample_size=16)
    store = write_decoding_store(tmp_path / "store", image_size=IMAGE, fmri_frames=WINDOW)
    model = FmriEncoder.from_pretrained(stage1).config.model_dump(mode="json")  # the imported shapes, GLFA off
    model["glfa"] = {"enabled": True, "parcel_size": PARCEL, "kernel_size": KERNEL}
    config = validate_config({"device": "cpu", "subjects": {"held_out": ["s3"]}, "cotrain": {"num_workers": 0},
                              "model": model})
    stage = CotrainStage(config, StudyStore.open(store), init_from=stage1, generator=generator,
                         run_dir=tmp_path / "run", progress=False)
    encoder = stage.build_models()["encoder"].eval()
    assert encoder.glfa is not None
    fmri = fmri_window()
    with torch.no_grad():
        tokens = encoder(fmri, heads=("tokens",))["tokens"]
    # GLFA starts at the identity (weights near zero), so the tokens are the imported encoder's
    assert_rel(tokens, ref_fmri_encoder(fmri[:, :, None], state)["fmri_embedding"], rel=1e-2)
