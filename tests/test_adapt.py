"""glfa adapt: windows of the first minutes, the three methods' model folders, decoding them, bad input;
recovery of planted subject differences on the synthetic study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from glfa import backbones as B
from glfa.adapt import ParcelLinearMap, adapt_model, adaptation_windows, load_subject_map
from glfa.data.store import StudyStore
from glfa.data.synthetic.stimuli import CATEGORIES
from glfa.errors import DataError
from glfa.models.encoder import FmriEncoder
from glfa.pipeline import FmriToVideoPipeline
from tests.fixtures import write_cotrain_model, write_cotrain_run

pytestmark = pytest.mark.usefixtures("one_thread")

#: A fast adaptation for the tiny store (0.2 minutes = the first 2 of its 6-second training stimuli).
FAST = {"adapt": {"steps": 30, "batch_size": 8, "learning_rate": 0.05, "projector_steps": 10, "cv_folds": 2}}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder holding RUN/cotrain-glfa/model (trained on s1, s2; s3 held out) on a tiny generator."""
    return write_cotrain_run(tmp_path_factory.mktemp("adapt"))


def _config(run_dir: Path):
    from glfa.config import validate_config

    info = json.loads((run_dir / "cotrain-glfa" / "model" / "model.json").read_text())
    return validate_config({**info["config"], **FAST})


def test_windows_of_the_first_minutes(run):
    store = StudyStore.open(json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())["store"])
    # TR 1 s, training stimuli of 6 frames in store order, windows of 2 fMRI frames starting at 0, 1, 2
    windows, used = adaptation_windows(store, "s3", ["s1", "s2"], 0.2)
    expected = [w for w in store.windows("train") if w.stimulus_id in ("train0", "train1")]
    assert windows == expected and used == pytest.approx((6 + 4) / 60)
    windows, used = adaptation_windows(store, "s3", ["s1", "s2"], 9 / 60)  # train1's first 3 s: its first 2 windows
    assert [w.stimulus_id for w in windows] == ["train0"] * 3 + ["train1"] * 2 and used == pytest.approx(9 / 60)
    assert all(w.split == "train" for w in adaptation_windows(store, "s3", ["s1", "s2"], 100)[0])
    with pytest.raises(DataError, match="hold no whole window"):
        adaptation_windows(store, "s3", ["s1", "s2"], 1 / 60)
    with pytest.raises(DataError, match="positive number of minutes"):
        adaptation_windows(store, "s3", ["s1", "s2"], 0)
    with pytest.raises(DataError, match="one of the model's training subjects"):
        adaptation_windows(store, "s1", ["s1", "s2"], 1)


@pytest.mark.parametrize("method", ["glfa", "linear", "full"])
def test_adapted_model_folder_decodes_like_any_other(run, method):
    from glfa.generate import generate

    out = adapt_model(run, subject="s3", minutes=0.2, method=method, config=_config(run), progress=False)
    assert out == run / f"cotrain-adapt-{method}-s3-0.2min" / "model"
    info = json.loads((out / "model.json").read_text())
    base_info = json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())
    store = StudyStore.open(info["store"])
    record = info["adaptation"]
    seen = {w.index for w in store.windows() if w.stimulus_id in ("train0", "train1")}
    assert set(record["windows"]) == seen and not seen & {w.index for w in store.windows("test")}
    assert record["subject"] == "s3" and record["method"] == method and info["method"] == out.parent.name[8:]
    assert info["train_subjects"] == base_info["train_subjects"] and info["kind"] == "cotrain"
    base = FmriEncoder.from_pretrained(run / "cotrain-glfa" / "model" / "encoder").state_dict()
    mine = FmriEncoder.from_pretrained(out / "encoder").state_dict()
    changed = {k for k in base if not torch.equal(base[k], mine[k])}
    if method == "linear":
        assert not changed and (out / "subject_map.safetensors").is_file()
    else:
        assert {k.split(".")[0] for k in changed} == ({"glfa", "token_head"} if method == "full" else {"glfa"})
        assert record["loss_last"] < record["loss_first"]
    # the pipeline conditions on the adapted subject's path: map (linear) -> encoder
    pipe = FmriToVideoPipeline.from_model_dir(out, device="cpu")
    fmri = torch.stack([torch.from_numpy(store.fmri("s3", w)) for w in store.windows("test")[:2]])
    encoder = FmriEncoder.from_pretrained(out / "encoder").eval()
    with torch.no_grad():
        x = load_subject_map(out / "subject_map.safetensors")(fmri) if method == "linear" else fmri
        torch.testing.assert_close(pipe.condition(fmri), encoder(x, heads=("tokens",))["tokens"])
    generated = generate(run, method=info["method"], subject="s3", device="cpu", batch_size=4, progress=False)
    assert json.loads((generated / "index.json").read_text())["count"] == len(store.windows("test"))


# ----------------------------------------------------------------------------- bad input, command line


def _store_without_shared_stimuli(path: Path) -> Path:
    """s1 and s2 watched train0; s3 watched only train1 (also a training stimulus) and the test clip."""
    from glfa.data.store import StoreWriter
    from glfa.data.windows import Window

    rng = np.random.default_rng(0)
    seen = {"train0": ("s1", "s2"), "train1": ("s3",), "test0": ("s1", "s2", "s3")}
    with StoreWriter(path, image_size=16, video_size=(16, 16), fmri_dtype="float32") as writer:
        for stim, subjects in seen.items():
            writer.add_stimulus(stim, stim[:-1] if stim.startswith("test") else "train",
                                np.zeros((4, 16, 16, 3), np.uint8), ["a clip"] * 4, 4.0)
            for s in subjects:
                writer.add_response(s, stim, rng.normal(size=(4, 16, 16)).astype(np.float32))
        writer.set_mask(np.ones((16, 16), bool))
        writer.finish([Window(stim, "test" if stim == "test0" else "train", 0.0, 0, 0, i)
                       for i, stim in enumerate(seen)],
                      {"tr": 1.0, "fps": 1.0, "fmri_frames": 2, "video_frames": 4, "config": {}})
    return path


def test_cli_adapt_and_bad_input(run, tmp_path, capsys):
    import yaml

    from glfa.cli import main

    config = tmp_path / "adapt.yaml"
    config.write_text(yaml.safe_dump({**FAST, "model": {"preset": "tiny", "glfa": {"parcel_size": 8,
                                                                                   "kernel_size": 5}}}))
    args = ["adapt", str(run), "--subject", "s3", "-c", str(config), "--quiet"]
    within = run / "cotrain-within" / "model"  # a trained model an adaptation must not replace
    if not within.exists():
        base = json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())
        write_cotrain_model(within, generator_dir=Path(base["generator"]), store_dir=Path(base["store"]))
    assert main([*args, "--minutes", "0.2", "--name", "mine"]) == 0
    assert "on 6 training windows (0.17 of the 0.2 minutes asked)" in capsys.readouterr().out
    assert json.loads((run / "cotrain-mine" / "model" / "model.json").read_text())["adaptation"]["settings"][
        "steps"] == FAST["adapt"]["steps"]
    # --denoising-weight: 0 is the plain fit bit for bit; 0.5 moves only the subject's GLFA layer away from it
    weights = {}
    for w in ("0", "0.5"):
        assert main([*args, "--minutes", "0.2", "--name", f"mine-{w}", "--denoising-weight", w]) == 0
        record = json.loads((run / f"cotrain-mine-{w}" / "model" / "model.json").read_text())["adaptation"]
        assert record["settings"]["denoising_weight"] == float(w)
        weights[w] = FmriEncoder.from_pretrained(run / f"cotrain-mine-{w}" / "model" / "encoder").state_dict()
    plain = FmriEncoder.from_pretrained(run / "cotrain-mine" / "model" / "encoder").state_dict()
    assert all(torch.equal(plain[k], weights["0"][k]) for k in plain)
    assert {k.split(".")[0] for k in plain if not torch.equal(plain[k], weights["0.5"][k])} == {"glfa"}
    for extra, message in [
        (["--minutes", "1", "--subject", "s1"], "one of the model's training subjects"),
        (["--minutes", "0"], "positive number of minutes"),
        (["--minutes", "0.01"], "hold no whole window"),
        (["--minutes", "1", "--base", "pte-v"], "no model for method 'pte-v'"),
        (["--minutes", "1", "--name", "glfa"], "not the base model's name"),
        (["--minutes", "1", "--name", "blurry"], "or one of ['lea', 'blurry']"),  # RUN/blurry/model would hide it
        (["--minutes", "1", "--name", "within"], "not an adaptation; choose another name"),
        (["--minutes", "1", "--denoising-weight", "-1"], "--denoising-weight: expected a weight >= 0"),
        (["--minutes", "1", "--store", str(_store_without_shared_stimuli(tmp_path / "store"))],
         "watched none of the training stimuli that the trained subjects"),
    ]:
        assert main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_denoising_term_trains_the_layer_through_the_frozen_rest(run):
    """The optional denoising loss of glfa adapt: its gradient reaches the subject's GLFA layer through the frozen
    encoder and UNet, whose parameters never change; the global RNG is left as it was."""
    from glfa.adapt import DenoisingTerm, fit_subject_layer, window_frames

    base = run / "cotrain-glfa" / "model"
    store = StudyStore.open(json.loads((base / "model.json").read_text())["store"])
    windows, _ = adaptation_windows(store, "s3", ["s1", "s2"], 0.2)
    term = DenoisingTerm.for_model(base, store, "s3", windows, weight=0.5, batch_size=2, seed=0,
                                   device=torch.device("cpu"))
    frozen = {**{f"encoder.{k}": v.clone() for k, v in term.encoder.state_dict().items() if not k.startswith("glfa.")},
              **{f"unet.{k}": v.clone() for k, v in term.unet.state_dict().items()}}
    layer = FmriEncoder.from_pretrained(base / "encoder").glfa.requires_grad_(True)
    rng = torch.get_rng_state()
    term(layer).backward()
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    rest = [p for n, p in term.encoder.named_parameters() if not n.startswith("glfa.")] + list(term.unet.parameters())
    assert all(p.grad is None and not p.requires_grad for p in rest)

    frames, _ = window_frames(store, ["s3", "s1", "s2"], windows)
    x = frames.pop("s3")
    settings = dict(consistency_weight=0.5, steps=5, batch_size=8, learning_rate=0.05, weight_decay=0.0, seed=0,
                    device=torch.device("cpu"))
    trained = FmriEncoder.from_pretrained(base / "encoder").glfa
    plain, plain_losses = fit_subject_layer(trained, x, list(frames.values()), store.mask, **settings)
    denoised, losses = fit_subject_layer(trained, x, list(frames.values()), store.mask, denoising=term, **settings)
    assert losses[0] > plain_losses[0]  # the same first batch of frames, plus the denoising loss
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), denoised.state_dict().values()))
    after = {**{f"encoder.{k}": v for k, v in term.encoder.state_dict().items() if not k.startswith("glfa.")},
             **{f"unet.{k}": v for k, v in term.unet.state_dict().items()}}
    assert after.keys() == frozen.keys() and all(torch.equal(after[k], frozen[k]) for k in frozen)


def test_parcel_ridge_recovers_a_planted_linear_map():
    m = ParcelLinearMap(height=16, width=16, parcel_size=8)
    x = torch.randn(3, 2, 16, 16)
    torch.testing.assert_close(m(x), x)  # the identity at the start, any leading shape
    # planted: every 8 x 8 parcel of the target is its own affine map of the same parcel of x (mask: 3 rows out)
    rng = np.random.default_rng(0)
    mask = np.ones((16, 16), bool)
    mask[:3] = False
    planted = ParcelLinearMap(height=16, width=16, parcel_size=8, mask=mask)
    planted.weight += 0.2 * torch.from_numpy(rng.normal(size=(4, 64, 64))).float()
    planted.bias += torch.from_numpy(rng.normal(size=(4, 64))).float()
    x = rng.normal(size=(400, 16, 16)).astype(np.float32) * mask
    with torch.no_grad():
        y = planted(torch.from_numpy(x)).numpy()
    fitted, alphas = ParcelLinearMap.fit(x, y, np.arange(400) // 20, mask, parcel_size=8, alphas=[1e-4, 1e2],
                                         cv_folds=4)
    assert list(alphas) == [1e-4] * 4  # noise-free: the smallest penalty wins in cross-validation
    x_new = rng.normal(size=(10, 16, 16)).astype(np.float32) * mask
    with torch.no_grad():
        np.testing.assert_allclose(fitted(torch.from_numpy(x_new)).numpy(), planted(torch.from_numpy(x_new)).numpy(),
                                   atol=1e-3)
    assert np.all(fitted(torch.from_numpy(x_new)).numpy()[:, ~mask] == 0)


# ----------------------------------------------------------------------------- planted truth


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory) -> Path:
    """A small synthetic study (3 subjects with planted deformations, gains, delays and parcel mixing; 20 training
    clips, about 3.5 minutes of training fMRI each) prepared into a 32 x 32 store."""
    from glfa.config import validate_config
    from glfa.data.prepare import prepare_study
    from glfa.data.synthetic import simulate_study

    root = tmp_path_factory.mktemp("synthetic")
    config = validate_config({
        "data": {"layout": "generic", "image_size": 32, "fmri_dtype": "float32",
                 "preprocess": {"drop_initial_trs": 0, "detrend_order": 1, "zscore": True, "hrf_lag_seconds": 4.0,
                                "average_repeats": True},
                 "windows": {"fmri_seconds": 4.0, "video_seconds": 2.0, "stride_seconds": 2.0, "fps": 3,
                             "video_height": 16, "video_width": 16}},
        "simulation": {"n_subjects": 3, "n_categories": 4, "train_clips_per_category": 5,
                       "test_clips_per_category": 1, "test_repeats": 1, "clip_seconds": 8.0, "blank_seconds": 2.4,
                       "clips_per_run": 12, "frame_size": 16, "snr": 2.0}})
    study = simulate_study(root / "study", config, progress=False)
    return prepare_study(study, root / "store", config, progress=False)


def test_more_minutes_recover_more_of_the_planted_differences(synthetic_store):
    """Subject 03 differs from 01 and 02 by the generator's planted deformation, gain, delay and parcel mixing
    (truth/subjects.json). On test windows, adapting to it brings its aligned responses closer to theirs
    (fSC) the more minutes it sees, and at the most minutes beats the zero-shot layer (paired t-test over
    test time points); the linear baseline is measured beside it."""
    from glfa.adapt import SubjectAdapter, window_frames
    from glfa.align import GLFAAligner, apply_frames, responses_from_store
    from glfa.metrics.alignment import fsc_per_timepoint
    from glfa.metrics.stats import two_sample_ttest

    store = StudyStore.open(synthetic_store)
    truth = json.loads((synthetic_store.parent / "study" / "truth" / "subjects.json").read_text())
    assert truth["03"]["deformation_rms_mm"] > 0 and truth["03"]["mixing_off_diagonal_rms"] > 0
    train, new = ["01", "02"], "03"
    layer = GLFAAligner(parcel_size=8, kernel_size=5, n_steps=100, batch_size=16, device="cpu", mask=store.mask).fit(
        responses_from_store(store, train, "train")).model_
    test = responses_from_store(store, [*train, new], "test")
    others = [apply_frames(layer, test[s]) for s in train]

    def fsc_with_others(x):  # [T]: mean over the trained subjects of the spatial correlation at each time point
        return np.mean([fsc_per_timepoint(x, o, store.mask) for o in others], axis=0)

    zero_shot = fsc_with_others(apply_frames(layer, test[new]))
    curves = {}
    for method in ("glfa", "linear"):
        for minutes in (0.5, 1, 2, 3.5):
            windows, _ = adaptation_windows(store, new, train, minutes)
            frames, groups = window_frames(store, [new, *train], windows)
            x = frames.pop(new)
            adapter = SubjectAdapter(method, steps=100, batch_size=16, learning_rate=0.02, device="cpu")
            adapter.fit(x, frames, layer, groups, store.mask)
            curves.setdefault(method, []).append(fsc_with_others(adapter.transform(test[new])))
    means = {m: [float(c.mean()) for c in curve] for m, curve in curves.items()}
    for method, curve in curves.items():
        assert np.all(np.diff(means[method]) > 0), (method, means[method])
        test_ = two_sample_ttest(curve[-1], zero_shot, paired=True)
        assert test_["t"] > 0 and test_["p"] < 0.05, (method, test_)
    assert means["glfa"][-1] > float(zero_shot.mean()) + 0.1


def test_alignment_judged_by_decoding(synthetic_store, tmp_path, capsys):
    """glfa evaluate alignment --labels: inter-subject decoding of the clip's category after identity, tuned
    smoothing and GLFA. Smoothing wins on fSC with the others and loses on decoding (this study, this seed)."""
    from glfa.cli import main

    config = tmp_path / "align.yaml"
    config.write_text("device: cpu\nmodel:\n  glfa:\n    parcel_size: 8\n    kernel_size: 5\n"
                      "align:\n  steps: 100\n  batch_size: 16\n")
    clips = synthetic_store.parent / "study" / "truth" / "clips.json"
    out = tmp_path / "eval"
    assert main(["evaluate", "alignment", str(synthetic_store), "-c", str(config), "-o", str(out), "--labels",
                 str(clips), "--quiet"]) == 0
    assert "Inter-subject decoding of the category (Bazeille et al. 2021)" in capsys.readouterr().out
    data = json.loads((out / "alignment.json").read_text())
    assert data["labels"] == "category"
    rows = {(r["held_out"], r["method"].split(",")[0]): r for r in data["decoding"]}
    assert sorted(rows) == [(h, m) for h in ("01", "02", "03") for m in ("GLFA", "identity", "smoothing")]
    for held in ("01", "02", "03"):
        glfa, smooth = rows[held, "GLFA"], rows[held, "smoothing"]
        assert glfa["accuracy"] > glfa["mismatched"] + 0.3 and glfa["chance"] == 0.25
        assert smooth["fsc_held"] > glfa["fsc_held"] and smooth["accuracy"] < glfa["accuracy"], held
    partial = tmp_path / "partial.json"
    first = CATEGORIES[0].name
    partial.write_text(json.dumps({f"{first}_test01": first}))
    assert main(["evaluate", "alignment", str(synthetic_store), "-c", str(config), "-o", str(out), "--labels",
                 str(partial), "--quiet"]) == 2
    assert "--labels: the labels name 3 of the measured stimuli nowhere" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the data-efficiency sweep


def test_evaluate_adaptation_sweep(run, tmp_path, capsys):
    import yaml

    from glfa.cli import main
    from glfa.metrics.alignment import fsc_per_timepoint
    from tests.fixtures import GENERATION

    base = json.loads((run / "cotrain-glfa" / "model" / "model.json").read_text())
    store = StudyStore.open(base["store"])
    # the ceiling: a model trained on s3 alone
    within = write_cotrain_model(run / "cotrain-within" / "model", generator_dir=Path(base["generator"]),
                                 store_dir=Path(base["store"]))
    info = json.loads((within / "model.json").read_text())
    (within / "model.json").write_text(json.dumps({**info, "train_subjects": ["s3"], "held_out": []}))
    stage1 = _stage1_encoder(run, store)
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        **FAST, "device": "cpu", "model": {"preset": "tiny", "glfa": {"parcel_size": 8, "kernel_size": 5}},
        "generation": GENERATION, "evaluation": {"n_ways": [2], "trials": 5,
                                                 "frame_classifier": str(B.tiny_frame_classifier(tmp_path / "vit"))}}))
    args = ["evaluate", "adaptation", str(run), "--subject", "s3", "-c", str(config), "--device", "cpu", "--quiet"]
    assert main([*args, "--minutes", "0,0.2,0.4", "--methods", "glfa,linear"]) == 0
    printed = capsys.readouterr().out
    assert "## Adapting to subject s3 (s1,s2 -> s3)" in printed and "| glfa, 0.2 min | 0.167 | 6 |" in printed
    data = json.loads((run / "evaluation" / "adaptation-s3.json").read_text())
    assert [s["label"] for s in data["settings"]] == [
        "zero-shot (floor)", "glfa, 0.2 min", "glfa, 0.4 min", "linear, 0.2 min", "linear, 0.4 min",
        "within-subject (ceiling)"]
    assert [s["windows"] for s in data["settings"]] == [None, 6, 12, 6, 12, None]
    n_test = len(store.windows("test"))
    for setting in data["settings"]:
        assert {"ssim", "frame-2way"} <= set(setting["video"]) and setting["video"]["ssim"]["n"] == n_test
        signal = setting["brain_signal"]["frame-2way"]  # matched against the other clips' truth, with p
        assert abs(signal["difference"] - (signal["matched"] - signal["mismatched"])) < 1e-9 and 0 < signal["p"] <= 1
        assert signal["matched"] == pytest.approx(setting["video"]["frame-2way"]["mean"])
        assert setting["alignment"]["decoding"]["n"] == 12  # 2 test stimuli x 6 frames
    # the floor's fSC: the base layer on every subject's test responses, against an independent computation
    layer = FmriEncoder.from_pretrained(run / "cotrain-glfa" / "model" / "encoder").glfa.eval()
    test = {s: np.concatenate([store.response(s, st) for st in ("test0", "test1")]) for s in ("s1", "s2", "s3")}
    with torch.no_grad():
        aligned = {s: layer(torch.from_numpy(x)).numpy() for s, x in test.items()}
    expected = np.mean([fsc_per_timepoint(aligned["s3"], aligned[s], store.mask) for s in ("s1", "s2")], axis=0)
    assert data["settings"][0]["alignment"]["fsc"]["mean"] == pytest.approx(expected.mean(), abs=1e-5)
    # retrieval of each setting: the stage-1 encoder reads the subject's fMRI through the setting's own front end
    clip = B.load_clip(None, "cpu", dim=32)
    for setting in data["settings"]:
        expected = _retrieval_by_hand(run, setting["model"], store, stage1, clip)
        assert set(setting["retrieval"]) == {"1", "5"}, setting["label"]
        for top, hits in expected.items():
            assert setting["retrieval"][top]["matched"] == pytest.approx(hits), (setting["label"], top)
            assert setting["retrieval"][top]["chance"] == pytest.approx(int(top) / n_test)
    assert "retrieval top-1 (chance)" in printed
    # the report draws the curves (one panel per metric, a line per method, the ceiling dashed)
    from glfa.report import adaptation_html

    html = "".join(adaptation_html(run))
    assert "the data-efficiency curve" in html and html.count("<img") == 1 and "s1,s2 -&gt; s3" in html
    # a second sweep reuses the adapted models and their generations
    model = run / "cotrain-adapt-glfa-s3-0.2min" / "model" / "model.json"
    before = model.stat().st_mtime_ns
    assert main([*args, "--minutes", "0.2", "--methods", "glfa"]) == 0
    assert model.stat().st_mtime_ns == before
    assert main([*args, "--minutes", "0,x"]) == 2 and "comma-separated numbers" in capsys.readouterr().err
    assert main([*args, "--methods", "ridge"]) == 2 and "adaptation methods" in capsys.readouterr().err
    assert main([*args, "--minutes", "0.01"]) == 2 and "no whole window" in capsys.readouterr().err
    # without a stage-1 encoder the sweep still runs and says why retrieval is missing
    shutil.rmtree(run / "contrastive")
    assert main([*args, "--minutes", "0.2", "--methods", "glfa"]) == 0
    setting = json.loads((run / "evaluation" / "adaptation-s3.json").read_text())["settings"][0]
    assert setting["retrieval"] == {} and "no stage-1 encoder" in setting["not_computed"]["retrieval"]


def _stage1_encoder(run: Path, store) -> FmriEncoder:
    """A tiny stage-1 encoder (no GLFA, as stage 1 trains it) saved as RUN/contrastive/encoder."""
    from glfa.config import validate_config

    torch.manual_seed(3)
    encoder = FmriEncoder(validate_config({"model": {"preset": "tiny", "glfa": {"enabled": False}}}).model,
                          store.image_size, store.fmri_frames).eval()
    encoder.save_pretrained(run / "contrastive" / "encoder")
    return encoder


def _retrieval_by_hand(run: Path, method: str, store, stage1: FmriEncoder, clip) -> dict[str, float]:
    """Top-1 and top-5 hit rates of the test windows, computed window by window from the model folder's files:
    S's frames through its subject map (linear) and its encoder's GLFA layer, then the stage-1 encoder's CLIP
    head, ranked against the mean cosine with each true clip's frame embeddings."""
    model = run / f"cotrain-{method}" / "model"
    layer = FmriEncoder.from_pretrained(model / "encoder").glfa.eval()
    subject_map = model / "subject_map.safetensors"
    front = (lambda x: layer(load_subject_map(subject_map)(x))) if subject_map.is_file() else layer
    folder = run / "generations" / method / "s3-test"
    windows = {w.index: w for w in store.windows()}
    items = [windows[item["window"]] for item in json.loads((folder / "index.json").read_text())["items"]]
    with np.load(folder / "videos.npz") as npz:
        truth = npz["truth"]
    with torch.no_grad():
        fmri = [stage1(front(torch.from_numpy(store.fmri("s3", w)))[None], heads=("clip",))["clip"][0] for w in items]
    frames = [clip.embed_images(video) for video in truth]
    similarity = np.array([[float(torch.nn.functional.cosine_similarity(f[None], e).mean()) for e in frames]
                           for f in fmri])
    ahead = [int((similarity[i] >= similarity[i, i]).sum()) - 1 for i in range(len(items))]
    return {str(top): float(np.mean([a < top for a in ahead])) for top in (1, 5)}
