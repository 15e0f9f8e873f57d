"""Stage 2, co-training: which parameters train, the losses, the saved decoder folder, resume, bad input."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from accelerate.utils import set_seed
from diffusers.models.resnet import TemporalConvLayer
from fixtures import kill_after_first_checkpoint, write_decoding_store
from safetensors.torch import load_file

from glfa.backbones import load_video_generator, tiny_video_generator
from glfa.config import load_config, validate_config
from glfa.data.store import StudyStore
from glfa.errors import BackboneError, CheckpointError, ConfigError
from glfa.models.encoder import FmriEncoder
from glfa.models.pte import FmriPTE
from glfa.training.cotrain import CotrainStage, TrainableUNet, trainable_unet_parameters
from glfa.training.stage import run_stage

pytestmark = pytest.mark.usefixtures("one_thread")

PATTERNS = ("attn1", "attn2", "temp_conv")
STEPS = 20


@pytest.fixture(scope="module", autouse=True)
def module_on_one_thread():
    """One torch thread for the module-scoped runs too (``one_thread`` only starts after them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny store (16 x 16 video), a tiny generator (tokens of width 32), a stage-1 encoder, a config file."""
    root = tmp_path_factory.mktemp("cotrain")
    store = StudyStore.open(write_decoding_store(root / "store", video_size=16))
    generator = tiny_video_generator(root / "generator", cross_attention_dim=32, sample_size=16)
    data = {"model": {"preset": "tiny"}, "device": "cpu", "output_dir": str(root / "runs"), "name": "run",
            "cotrain": {"steps": STEPS, "batch_size": 6, "learning_rate": 1e-3, "num_workers": 0, "log_every": 1,
                        "checkpoint_every": 5, "seed": 3, "generator": str(generator)}}
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    torch.manual_seed(0)
    no_glfa = config.model.model_copy(update={"glfa": config.model.glfa.model_copy(update={"enabled": False})})
    stage1 = FmriEncoder(no_glfa, store.image_size, store.fmri_frames)
    stage1.save_pretrained(root / "stage1")
    run = root / "runs" / "run"
    shutil.copytree(root / "stage1", run / "contrastive" / "encoder")
    return {"root": root, "store": store, "generator": generator, "config": config, "config_path": config_path,
            "data": data, "stage1": root / "stage1", "run": run}


def _config(setup, **cotrain):
    data = copy.deepcopy(setup["data"])
    data["cotrain"].update(cotrain)
    return validate_config(data)


@pytest.fixture(scope="module")
def trained(setup):
    """An uninterrupted run of STEPS steps with GLFA (3 training subjects, 2 windows per step)."""
    return run_stage(CotrainStage, setup["config"], setup["store"], setup["run"], progress=False)


def _batch(stage: CotrainStage, indices=(0, 5)) -> dict[str, torch.Tensor]:
    return stage.collate([stage.dataset()[i] for i in indices])


def test_exactly_the_named_unet_parameters_receive_gradients(setup):
    stage = CotrainStage(setup["config"], setup["store"], run_dir=setup["run"], progress=False)
    unet = stage.generator.unet
    names = trainable_unet_parameters(unet, list(PATTERNS))
    assert names == [n for n, _ in unet.named_parameters() if "attn1" in n or "attn2" in n or "temp_conv" in n]
    assert any("temp_conv" in n for n in names) and any("attn2" in n for n in names)
    for module in unet.modules():  # a new temporal convolution is the identity (last conv zero), a trained one not
        if isinstance(module, TemporalConvLayer):
            torch.nn.init.normal_(module.conv4[-1].weight, std=0.02)
    models = stage.build_models()
    for model in models.values():
        model.train()
    out = stage.step(models, _batch(stage))
    out.loss.backward()
    for name, param in unet.named_parameters():
        if name in names:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    assert stage.generator.text_encoder is None  # never loaded in stage 2
    assert all(p.grad is None and not p.requires_grad for p in stage.generator.vae.parameters())
    encoder = models["encoder"]
    for name, param in encoder.named_parameters():
        if name.startswith("clip_head."):  # no CLIP loss in stage 2
            assert param.grad is None and not param.requires_grad, name
        else:
            assert param.grad is not None, name
    assert encoder.glfa.local.weight.grad.abs().sum() > 0
    # the UNet's state dict (checkpoints, unet_trainable.safetensors) holds the trained parameters only
    assert list(models["unet"].state_dict()) == names
    with pytest.raises(ConfigError, match="trainable_unet_patterns"):
        trainable_unet_parameters(unet, ["no_such_layer"])


def test_losses_equal_an_independent_computation(setup):
    stage = CotrainStage(setup["config"], setup["store"], run_dir=setup["run"], progress=False)
    models = stage.build_models()
    for model in models.values():
        model.eval()  # no dropout: the same forward twice
    batch = _batch(stage)
    torch.manual_seed(11)
    with torch.no_grad():
        out = stage.step(models, batch)
    fmri = batch["fmri"].float()  # [b, s, n, h, w]
    b, s = fmri.shape[:2]
    x = fmri.transpose(0, 1).reshape(s * b, *fmri.shape[2:])  # subject-major
    z0 = batch["latents"].float().repeat(s, 1, 1, 1, 1)
    torch.manual_seed(11)
    noise = torch.randn_like(z0)
    t = torch.randint(0, 1000, (s * b,))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2  # scaled_linear
    abar = torch.cumprod(1 - betas, 0)[t].view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        encoded = models["encoder"](x)
        pred = stage.generator.unet(abar.sqrt() * z0 + (1 - abar).sqrt() * noise, t,
                                    encoder_hidden_states=encoded["tokens"]).sample
    denoise = ((pred - noise) ** 2).mean()
    assert out.logs["denoise"].item() == pytest.approx(denoise.item(), rel=1e-5)
    aligned = encoded["aligned"].reshape(s, b, *x.shape[1:]).numpy()
    orig, mask = x.reshape(s, b, *x.shape[1:]).numpy(), setup["store"].mask

    def mse(p, q):
        return ((p - q) ** 2)[..., mask].mean()

    # the authors' weighting: mean over pairs of the alignment + reg_scale 0.5 * mean over subjects of consistency
    glfa = (np.mean([mse(aligned[i], aligned[j]) for i in range(s) for j in range(i + 1, s)])
            + 0.5 * np.mean([mse(aligned[i], orig[i]) for i in range(s)]))
    assert out.logs["glfa"].item() == pytest.approx(glfa, rel=1e-4)
    assert out.loss.item() == pytest.approx(denoise.item() + glfa, rel=1e-4)


def test_gradient_checkpointed_unet_gives_the_same_gradients(setup):
    generator = load_video_generator(setup["generator"], device="cpu")
    names = trainable_unet_parameters(generator.unet, list(PATTERNS))
    plain, ckpt = TrainableUNet(generator.unet, names), TrainableUNet(copy.deepcopy(generator.unet), names)
    ckpt.enable_gradient_checkpointing()
    grads = []
    for model in (plain, ckpt):
        model.train()  # the temporal convolutions' dropout is replayed in the recomputation
        torch.manual_seed(5)
        z = torch.randn(2, 4, 4, 4, 4)
        tokens = torch.randn(2, 8, 32, requires_grad=True)
        torch.manual_seed(6)
        model(z, torch.tensor([10, 700]), encoder_hidden_states=tokens).sample.square().mean().backward()
        grads.append([tokens.grad, *(p.grad for p in model.unet.parameters() if p.requires_grad)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_cotraining_lowers_the_loss_trains_glfa_and_saves_the_decoder(setup, trained):
    history = [json.loads(line) for line in (trained.stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert all("denoise" in h and "glfa" in h for h in history)
    losses = [h["loss"] for h in history]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.05
    assert trained.stage_dir.name == "cotrain-glfa"

    model_dir = Path(trained.outputs["model"])
    assert model_dir == setup["run"] / "cotrain-glfa" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["encoder", "model.json", "negative.safetensors",
                                                           "unet_trainable.safetensors"]
    meta = json.loads((model_dir / "model.json").read_text())
    store = setup["store"]
    assert meta["kind"] == "cotrain" and meta["method"] == "glfa"
    assert meta["generator"] == str(Path(setup["generator"]).resolve())
    assert meta["store"] == str(Path(store.path).resolve())
    assert meta["train_subjects"] == ["s1", "s2", "s3"] and meta["held_out"] == []
    assert meta["trainable_unet_patterns"] == list(PATTERNS)
    assert meta["num_frames"] == store.fmri_frames and meta["image_size"] == store.image_size
    assert meta["config"]["model"]["glfa"]["enabled"] is True and meta["config"]["cotrain"]["steps"] == STEPS

    # the negative condition: the mean training window, and the saved encoder's tokens for it
    negative = load_file(str(model_dir / "negative.safetensors"))
    windows = store.windows("train")
    mean = np.mean([store.fmri(s, w) for s in store.subjects for w in windows], axis=0)
    np.testing.assert_allclose(negative["mean_fmri"].numpy(), mean, rtol=1e-5, atol=1e-6)
    encoder = FmriEncoder.from_pretrained(model_dir / "encoder").eval()
    with torch.no_grad():
        tokens = encoder(negative["mean_fmri"][None])["tokens"][0]
    assert negative["tokens"].shape == (8, 32) and negative["tokens"].dtype == torch.float32
    torch.testing.assert_close(negative["tokens"], tokens)

    # GLFA trained away from its identity start (the same seeded initial weights the run started from)
    set_seed(3)
    start = CotrainStage(setup["config"], store, run_dir=setup["run"], progress=False).build_models()["encoder"]
    for name in ("glfa.global_map.weight", "glfa.local.weight"):
        assert (encoder.state_dict()[name] - start.state_dict()[name]).abs().max() > 1e-4, name
    torch.testing.assert_close(encoder.clip_head.state_dict(), start.clip_head.state_dict())  # frozen

    # the trained UNet parameters, by name; the checkpoint holds only them too
    trainable = load_file(str(model_dir / "unet_trainable.safetensors"))
    base = load_video_generator(setup["generator"], device="cpu").unet
    assert sorted(trainable) == sorted(trainable_unet_parameters(base, list(PATTERNS)))
    params = dict(base.named_parameters())
    assert all(trainable[n].dtype == params[n].dtype and trainable[n].shape == params[n].shape for n in trainable)
    assert sum(not torch.equal(trainable[n], params[n]) for n in trainable) > len(trainable) // 2
    saved = load_file(str(trained.checkpoint / "model-unet.safetensors"))
    assert saved.keys() == trainable.keys() and all(torch.equal(saved[k], trainable[k]) for k in saved)


def test_resumed_after_sigkill_ends_with_identical_weights(setup, trained, tmp_path):
    killed = tmp_path / "killed"
    code = ("import sys; from glfa.config import load_config; from glfa.training.cotrain import CotrainStage; "
            "from glfa.training.stage import run_stage; "
            "run_stage(CotrainStage, load_config(sys.argv[1]), sys.argv[2], sys.argv[3], init_from=sys.argv[4], "
            "progress=False)")
    kill_after_first_checkpoint([sys.executable, "-c", code, str(setup["config_path"]), str(setup["store"].path),
                                 str(killed), str(setup["stage1"])], killed / "cotrain-glfa" / "checkpoints" / "latest")
    assert not (killed / "cotrain-glfa" / "model").exists()  # killed before the end
    result = run_stage(CotrainStage, setup["config"], setup["store"], killed, init_from=setup["stage1"], resume=True,
                       progress=False)  # resumed here, on one thread too
    assert result.resumed_from is not None and result.step == STEPS
    whole, again = Path(trained.outputs["model"]), Path(result.outputs["model"])
    for name in ("encoder/model.safetensors", "unet_trainable.safetensors", "negative.safetensors"):
        a, b = load_file(str(whole / name)), load_file(str(again / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_pte_v_with_gradient_checkpointing_and_bf16(setup, tmp_path):
    config = _config(setup, steps=2, gradient_checkpointing=True, mixed_precision="bf16", checkpoint_every=2)
    result = run_stage(CotrainStage, config, setup["store"], tmp_path / "run", glfa=False, init_from=setup["stage1"],
                       progress=False)
    assert result.stage_dir.name == "cotrain-pte-v" and result.step == 2
    assert all("denoise" in h and "glfa" not in h and np.isfinite(h["loss"]) for h in result.history)
    model_dir = Path(result.outputs["model"])
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["method"] == "pte-v" and meta["config"]["model"]["glfa"]["enabled"] is False
    encoder = FmriEncoder.from_pretrained(model_dir / "encoder")
    assert encoder.glfa is None


def test_mixed_precision_stores_the_frozen_layer_weights_in_half(setup):
    config = _config(setup, mixed_precision="bf16")
    stage = CotrainStage(config, setup["store"], run_dir=setup["run"], progress=False)
    models = stage.build_models()
    unet = stage.generator.unet
    layers = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    frozen_layer_weights = {id(p) for m in unet.modules() if isinstance(m, layers)
                            for p in m.parameters(recurse=False) if not p.requires_grad}
    assert frozen_layer_weights
    for name, param in unet.named_parameters():
        if param.requires_grad:  # trained: float32 for the optimizer
            assert param.dtype == torch.float32, name
        else:  # frozen: half in linear and conv layers, float32 in norms
            assert param.dtype == (torch.bfloat16 if id(param) in frozen_layer_weights else torch.float32), name
    batch = _batch(stage)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = stage.step(models, batch)
    out.loss.backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bad_input_is_refused_clearly(setup, tmp_path):
    store, run = setup["store"], setup["run"]
    with pytest.raises(BackboneError, match="folder not found"):
        CotrainStage(setup["config"], store, run_dir=run, generator=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="cotrain.generator"):
        CotrainStage(_config(setup, generator=None), store, run_dir=run)
    one = validate_config({**setup["data"], "subjects": {"train": ["s1"]}})
    with pytest.raises(ConfigError, match="--no-glfa"):
        CotrainStage(one, store, run_dir=run)
    assert CotrainStage(one, store, run_dir=run, glfa=False, progress=False).name == "cotrain-pte-v"
    with pytest.raises(ConfigError, match="contrastive"):
        CotrainStage(setup["config"], store, run_dir=tmp_path / "empty-run")
    with pytest.raises(ConfigError, match="subjects"):
        validate_config({**setup["data"], "subjects": {"train": ["s1", "s3"], "held_out": ["s3"]}})
    wide = validate_config({**setup["data"], "model": {"preset": "tiny", "heads": {"token_dim": 48}}})
    with pytest.raises(ConfigError, match="token_dim"):
        CotrainStage(wide, store, run_dir=run)
    with pytest.raises(ConfigError, match="method"):
        CotrainStage(setup["config"], store, run_dir=run, method="../x")
    for name in ("lea", "blurry"):  # RUN/<name>/model would hide RUN/cotrain-<name>/model from glfa generate
        with pytest.raises(ConfigError, match="would hide"):
            CotrainStage(setup["config"], store, run_dir=run, method=name)


def test_held_out_subjects_are_never_read(setup):
    config = validate_config({**setup["data"], "subjects": {"held_out": ["s3"]}})
    stage = CotrainStage(config, setup["store"], run_dir=setup["run"], progress=False)
    assert stage.train_subjects == ["s1", "s2"] and stage.settings.batch_size == 3  # 6 samples = 2 subjects x 3
    item = stage.dataset()[4]
    window = stage.dataset().windows[4]
    expected = np.stack([setup["store"].fmri(s, window) for s in ("s1", "s2")]).astype(np.float16)
    np.testing.assert_array_equal(item["fmri"].numpy(), expected)
    assert item["fmri"].dtype == torch.float16


def test_without_stage1_the_pte_is_used_with_a_warning(setup, tmp_path):
    pte = setup["config"].model.pte
    torch.manual_seed(1)
    saved = FmriPTE(image_size=16, patch_size=pte.patch_size, embed_dim=pte.embed_dim, depth=pte.depth,
                    num_heads=pte.num_heads, decoder_depth=1, decoder_num_heads=2, bottleneck_dim=8)
    saved.save_pretrained(tmp_path / "run" / "pte")
    with pytest.warns(UserWarning, match="PTE"):
        stage = CotrainStage(setup["config"], setup["store"], run_dir=tmp_path / "run", progress=False)
    encoder = stage.build_models()["encoder"]
    torch.testing.assert_close(encoder.pte.state_dict(), saved.encoder.state_dict())


def test_stage1_weights_load_into_an_encoder_with_glfa(setup, tmp_path):
    config = setup["config"]
    saved = FmriEncoder.from_pretrained(setup["stage1"])
    mask = setup["store"].mask
    encoder = FmriEncoder(config.model, 16, setup["store"].fmri_frames)
    fresh = encoder.load_encoder_weights(setup["stage1"])
    assert fresh == ["glfa.global_map.weight", "glfa.local.weight"]
    state = encoder.state_dict()
    assert all(torch.equal(state[k], v) for k, v in saved.state_dict().items())
    x = torch.randn(2, setup["store"].fmri_frames, 16, 16) * torch.from_numpy(mask)
    torch.testing.assert_close(encoder.align(x), x, atol=1e-2, rtol=0)  # GLFA starts near the identity
    other = config.model.model_copy(update={"temporal": config.model.temporal.model_copy(update={"num_heads": 4})})
    with pytest.raises(CheckpointError, match="model.temporal.num_heads"):
        FmriEncoder(other, 16, setup["store"].fmri_frames).load_encoder_weights(setup["stage1"])
