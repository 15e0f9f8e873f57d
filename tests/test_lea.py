"""LEA baseline: the cross-validated ridge against sklearn, and fit_lea / LeaDecoder on the tiny decoding store."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.linear_model import Ridge

from fixtures import recording_fmri_reads, write_decoding_store
from glfa.backbones import load_video_generator, tiny_video_generator
from glfa.baselines.lea import LeaDecoder, RidgeCV, _group_folds, encoder_latent, fit_lea, window_caption
from glfa.config import ModelConfig, validate_config
from glfa.data.store import StudyStore
from glfa.errors import CheckpointError, ConfigError, DataError, NotFittedError
from glfa.models.encoder import FmriEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- ridge


@pytest.mark.parametrize("n,d", [(40, 10), (15, 40)])  # N > D and N < D
def test_ridge_matches_sklearn(n, d):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)) + 3.0
    y = (rng.normal(size=(n, 7)) + 1.0).astype(np.float32)
    ridge = RidgeCV(alphas=[2.5], cv=3, block_size=3).fit(x, y)
    reference = Ridge(alpha=2.5).fit(x, y.astype(np.float64))
    np.testing.assert_allclose(ridge.coef_, reference.coef_, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ridge.intercept_ - ridge.x_mean_ @ ridge.coef_.T, reference.intercept_, atol=1e-9)
    np.testing.assert_allclose(ridge.predict(x[:5]), reference.predict(x[:5]), atol=1e-9)
    assert ridge.alpha_ == 2.5 and ridge.cv_scores_.shape == (1,)


def test_ridge_cv_errors_match_refits_per_fold():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8))
    y = x @ rng.normal(size=(8, 5)) + rng.normal(size=(60, 5))
    groups = np.repeat(np.arange(12), 5)  # 12 groups of 5 samples
    alphas = [0.01, 1.0, 30.0, 1000.0]
    ridge = RidgeCV(alphas=alphas, cv=4, random_state=3, block_size=2).fit(x, y, groups=groups)
    folds = _group_folds(groups, 4, 3)
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))
    assert all(len(set(groups[f]) & set(groups[np.setdiff1d(np.arange(60), f)])) == 0 for f in folds)
    expected = []
    for alpha in alphas:
        sse = 0.0
        for val in folds:
            train = np.setdiff1d(np.arange(60), val)
            sse += ((Ridge(alpha=alpha).fit(x[train], y[train]).predict(x[val]) - y[val]) ** 2).sum()
        expected.append(sse / y.size)
    np.testing.assert_allclose(ridge.cv_scores_, expected, rtol=1e-9)
    assert ridge.alpha_ == alphas[int(np.argmin(expected))]


def test_ridge_on_a_table_of_shared_targets_equals_the_full_targets():
    """y_rows: every subject's sample of a stimulus reads one stored target row; same fit as the copies."""
    rng = np.random.default_rng(4)
    table = rng.normal(size=(10, 6)).astype(np.float32)  # 10 distinct targets
    rows = np.tile(np.arange(10), 3)  # 3 subjects x 10 stimuli
    x = table[rows, :4].astype(np.float64) + 0.5 * rng.normal(size=(30, 4))
    groups = rows  # folds split by stimulus
    full = RidgeCV(alphas=[0.1, 10.0], cv=5, block_size=4).fit(x, table[rows], groups=groups)
    shared = RidgeCV(alphas=[0.1, 10.0], cv=5, block_size=4).fit(x, table, groups=groups, y_rows=rows)
    np.testing.assert_allclose(shared.cv_scores_, full.cv_scores_, rtol=1e-12)
    np.testing.assert_allclose(shared.coef_, full.coef_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(shared.intercept_, full.intercept_, rtol=1e-12)
    with pytest.raises(DataError, match="y_rows"):
        RidgeCV(cv=2).fit(x, table, y_rows=np.full(30, 10))  # row 10 of a 10-row table
    with pytest.raises(DataError, match="y_rows"):
        RidgeCV(cv=2).fit(x, table, y_rows=rows[:5])


def test_ridge_recovers_a_planted_map_and_shrinks_more_for_noisier_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 20))
    w = rng.normal(size=(20, 30))
    alphas = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0]
    quiet = RidgeCV(alphas=alphas).fit(x, x @ w + 0.01 * rng.normal(size=(200, 30)))
    noisy = RidgeCV(alphas=alphas).fit(x, x @ w + 10.0 * rng.normal(size=(200, 30)))
    np.testing.assert_allclose(quiet.coef_, w.T, atol=5e-3)  # noise 0.01 / sqrt(200) per weight
    assert quiet.alpha_ <= 1e-2 and noisy.alpha_ >= 10.0
    assert np.argmin(noisy.cv_scores_) > np.argmin(quiet.cv_scores_)


def test_ridge_errors():
    x, y = np.zeros((6, 2)), np.zeros((6, 3))
    with pytest.raises(NotFittedError):
        RidgeCV().predict(x)
    with pytest.raises(DataError, match="same n"):
        RidgeCV(cv=2).fit(x, y[:5])
    with pytest.raises(DataError, match="NaN"):
        RidgeCV(cv=2).fit(np.full((6, 2), np.nan), y)
    with pytest.raises(DataError, match="positive penalties"):
        RidgeCV(alphas=[0.0, 1.0], cv=2).fit(x, y)
    with pytest.raises(DataError, match="at least 3 groups"):
        RidgeCV(cv=3).fit(x, y, groups=[0, 0, 0, 1, 1, 1])
    fitted = RidgeCV(cv=2).fit(np.arange(12.0).reshape(6, 2) ** 2, y)
    with pytest.raises(DataError, match=r"X \[n, 2\]"):
        fitted.predict(np.zeros((2, 3)))


# ----------------------------------------------------------------------------- fit_lea and LeaDecoder


def lea_config(root, generator, **lea):
    return validate_config({
        "name": "lea-test", "output_dir": str(root / "runs"), "device": "cpu",
        "model": {"preset": "tiny", "glfa": {"enabled": False}}, "subjects": {"held_out": ["s3"]},
        "cotrain": {"generator": str(generator) if generator else None},
        "lea": {"alphas": [1e-3], "cv_folds": 2, **lea},
    })


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("lea")
    store = StudyStore.open(write_decoding_store(root / "store"))
    generator = tiny_video_generator(root / "generator", cross_attention_dim=32)
    config = lea_config(root, generator)
    run_dir = root / "runs" / "lea-test"
    torch.manual_seed(0)
    FmriEncoder(config.model, store.image_size, store.fmri_frames).save_pretrained(run_dir / "contrastive" / "encoder")
    with recording_fmri_reads(store) as read, torch.random.fork_rng():
        model_dir = fit_lea(config, store, progress=False)
    return {"root": root, "store": store, "generator": generator, "config": config, "run_dir": run_dir,
            "model_dir": model_dir, "read": read}


def test_fit_lea_writes_the_model_folder(fitted):
    model_dir, store = fitted["model_dir"], fitted["store"]
    assert model_dir == fitted["run_dir"] / "lea" / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["encoder", "model.json", "negative.safetensors",
                                                           "ridge.safetensors"]
    assert not [p for p in model_dir.parent.iterdir() if p.name.startswith(".")]  # no partial folder left
    info = json.loads((model_dir / "model.json").read_text())
    assert info["kind"] == "lea" and info["method"] == "lea"
    assert info["generator"] == str(fitted["generator"].resolve())
    assert info["store"] == str(store.path.resolve())
    assert (info["train_subjects"], info["held_out"]) == (["s1", "s2"], ["s3"])
    assert (info["num_frames"], info["image_size"]) == (2, 16)
    assert info["config"]["lea"] == {"alphas": [1e-3], "cv_folds": 2}
    assert info["alpha"] == 1e-3 and info["samples"] == 2 * 4 * 3 and set(info["cv_mse"]) == {"0.001"}
    # only the training subjects' training windows were read
    assert set(fitted["read"]) == {("s1", "train"), ("s2", "train")}

    ridge = load_file(model_dir / "ridge.safetensors")
    assert ridge["coef"].shape == (77 * 32, 2 * 32) and ridge["intercept"].shape == (77 * 32,)
    assert ridge["x_mean"].shape == (2 * 32,) and ridge["token_shape"].tolist() == [77, 32]
    assert ridge["alpha"].tolist() == [pytest.approx(1e-3)]
    negative = load_file(model_dir / "negative.safetensors")
    windows = store.windows("train")
    mean = np.mean([store.fmri(s, w) for s in ("s1", "s2") for w in windows], axis=0)
    np.testing.assert_allclose(negative["mean_fmri"].numpy(), mean, atol=1e-6)
    decoder = LeaDecoder.load(model_dir, device="cpu")
    np.testing.assert_allclose(negative["tokens"].numpy(), decoder.tokens(negative["mean_fmri"][None])[0].numpy(),
                               atol=1e-4)
    saved = FmriEncoder.from_pretrained(model_dir / "encoder")
    original = FmriEncoder.from_pretrained(fitted["run_dir"] / "contrastive" / "encoder")
    for (name, a), b in zip(saved.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), name


def test_lea_decoder_predicts_each_windows_caption(fitted):
    store = fitted["store"]
    decoder = LeaDecoder.load(fitted["model_dir"])
    generator = load_video_generator(fitted["generator"], device="cpu")
    windows = store.windows("train")
    captions = sorted({window_caption(store, w) for w in windows})
    embeddings = generator.encode_text(captions).reshape(len(captions), -1)  # [u, K*C]
    fmri = torch.from_numpy(np.stack([store.fmri(s, w) for s in ("s1", "s2") for w in windows]))
    tokens = decoder.tokens(fmri)
    assert tokens.shape == (len(fmri), 77, 32) and tokens.dtype == torch.float32
    distances = torch.cdist(tokens.reshape(len(fmri), -1), embeddings)  # [b, u]
    own = [captions.index(window_caption(store, w)) for _ in ("s1", "s2") for w in windows]
    assert distances.argmin(1).tolist() == own
    # the latent is the fMRI-PTE's [CLS] token of each frame, concatenated
    latent = encoder_latent(decoder.encoder, fmri[:3])
    frames = decoder.encoder.pte(fmri[:3].reshape(-1, 1, *fmri.shape[-2:]))  # GLFA is off in stage 1
    torch.testing.assert_close(latent, frames[:, 0].reshape(3, -1))
    assert not decoder.encoder.training


def test_the_latent_head_is_what_the_linear_clip_head_projects():
    """LEA reads the encoder's "cls" head: exactly what a hook on ``clip_head.proj`` saw (the latent it read before)."""
    torch.manual_seed(0)
    config = ModelConfig.model_validate({"preset": "tiny", "glfa": {"enabled": False},
                                         "heads": {"clip_head": "linear", "dropout": 0.5}})
    encoder = FmriEncoder(config, 16, 2)
    fmri = torch.randn(3, 2, 16, 16)
    hooked = []
    hook = encoder.clip_head.proj.register_forward_hook(lambda module, inputs, output: hooked.append(inputs[0]))
    with torch.no_grad():
        encoder.eval()(fmri, heads=("clip",))
    hook.remove()
    latent = encoder_latent(encoder.train(), fmri)  # dropout off inside, the training mode given back
    assert latent.shape == (3, 2 * config.pte.embed_dim) and torch.equal(latent, hooked[0]) and encoder.training


def test_fit_lea_bad_input(fitted, tmp_path, monkeypatch):
    root, store = fitted["root"], fitted["store"]
    with pytest.raises(CheckpointError, match="no fMRI encoder here"):
        fit_lea(lea_config(root, fitted["generator"]), store, tmp_path / "empty-run", progress=False)
    with pytest.raises(ConfigError, match="cotrain.generator"):
        fit_lea(lea_config(root, None), store, fitted["run_dir"], progress=False)
    with pytest.raises(ConfigError, match="lea.cv_folds"):
        fit_lea(lea_config(root, fitted["generator"], cv_folds=5), store, fitted["run_dir"], progress=False)
    with pytest.raises(ConfigError, match="both in train and held_out"):
        validate_config({"subjects": {"train": ["s1", "s3"], "held_out": ["s3"]}})
    with pytest.raises(ConfigError, match="subjects.held_out"):
        fit_lea(validate_config({"subjects": {"held_out": ["s9"]}}), store, fitted["run_dir"], progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(store, "captions", lambda window: [""] * 4)
        with pytest.raises(DataError, match="caption is empty"):
            fit_lea(lea_config(root, fitted["generator"]), store, fitted["run_dir"], progress=False)
    wrong = tmp_path / "wrong-run"
    FmriEncoder(ModelConfig.model_validate({"preset": "tiny", "glfa": {"enabled": False}}), 16, 3) \
        .save_pretrained(wrong / "contrastive" / "encoder")
    with pytest.raises(CheckpointError, match=r"reads \[3, 16, 16\] windows, the store holds \[2, 16, 16\]"):
        fit_lea(lea_config(root, fitted["generator"]), store, wrong, progress=False)


def test_lea_decoder_missing_files(fitted, tmp_path):
    import shutil

    with pytest.raises(CheckpointError, match="model.json"):
        LeaDecoder.load(tmp_path)
    broken = tmp_path / "model"
    shutil.copytree(fitted["model_dir"], broken)
    (broken / "ridge.safetensors").unlink()
    with pytest.raises(CheckpointError, match="ridge.safetensors"):
        LeaDecoder.load(broken)
