"""GLFAAligner: planted-transform recovery, loss, held-out subject, save/load, bad input, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from glfa.align import GLFAAligner
from glfa.errors import CheckpointError, DataError, NotFittedError
from glfa.metrics import fsc, isc

SMALL = dict(parcel_size=8, kernel_size=5, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _patches(x: np.ndarray, k: int) -> np.ndarray:
    """Interior k x k patches of images [T, H, W] -> [T * (H-k+1) * (W-k+1), k*k] (float64, row-major offsets)."""
    r = k // 2
    h, w = x.shape[1:]
    cols = [x[:, a:a + h - 2 * r, b:b + w - 2 * r] for a in range(k) for b in range(k)]
    return np.stack(cols, axis=-1).reshape(-1, k * k).astype(np.float64)


def _optimal_shared_kernel(x1: np.ndarray, x2: np.ndarray, k: int, lam: float) -> np.ndarray:
    """The single k x k kernel (summing to one) minimising |d k|^2 + lam * (|p1 k - y1|^2 + |p2 k - y2|^2).

    Least squares on interior pixels, d = p1 - p2.
    """
    r = k // 2
    p1, p2 = _patches(x1, k), _patches(x2, k)
    y1 = x1[:, r:-r, r:-r].reshape(-1).astype(np.float64)
    y2 = x2[:, r:-r, r:-r].reshape(-1).astype(np.float64)
    d = p1 - p2
    q = d.T @ d + lam * (p1.T @ p1 + p2.T @ p2)
    c = lam * (p1.T @ y1 + p2.T @ y2)
    qc, q1 = np.linalg.solve(q, c), np.linalg.solve(q, np.ones(k * k))
    mu = (1 - qc.sum()) / q1.sum()  # Lagrange multiplier of sum(kernel) = 1
    return (qc + mu * q1).reshape(k, k)


@pytest.fixture(scope="module")
def shifted_pair():
    """Subject 2 sees subject 1's white-noise images shifted one pixel to the right; GLFA fitted on them."""
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(256, 24, 24)).astype(np.float32)
    x2 = np.roll(x1, 1, axis=2)
    aligner = GLFAAligner(**SMALL, n_steps=200, batch_size=16, learning_rate=2e-2, seed=0,
                          mask=np.ones((24, 24), bool))
    aligner.fit({"1": x1, "2": x2})
    return x1, x2, aligner


def test_recovers_planted_shift(shifted_pair):
    x1, x2, aligner = shifted_pair
    k = 5
    kernel = aligner.model_.local.normalized_kernel().detach().numpy().reshape(k, k, 24, 24)
    learned = kernel[:, :, 3:-3, 3:-3].mean(axis=(2, 3))  # mean interior kernel [k, k]
    # two subjects: L_GLFA = align + lambda * (const_1 + const_2) / 2
    optimum = _optimal_shared_kernel(x1, x2, k, aligner.consistency_weight / 2)
    identity = np.zeros((k, k))
    identity[2, 2] = 1
    # the learned kernel is the least-squares optimum of the planted shift, far from where it started
    assert np.abs(learned - optimum).max() < 0.06
    assert np.abs(identity - optimum).max() > 0.5
    # identifiable structure: it spreads along the shift axis (row 2), not across it
    assert learned[2, 1] > 0.1 and learned[2, 3] > 0.1
    assert learned[1, 2] < 0.03 and learned[3, 2] < 0.03
    # aligned responses are closer than the raw ones, on new data with the same planted shift
    z = np.random.default_rng(1).normal(size=(32, 24, 24)).astype(np.float32)
    a1, a2 = aligner.transform(z), aligner.transform(np.roll(z, 1, axis=2))
    assert np.mean((a1 - a2) ** 2) < 0.6 * np.mean((z - np.roll(z, 1, axis=2)) ** 2)


def test_loss_falls(shifted_pair):
    _, _, aligner = shifted_pair
    history = aligner.loss_history_
    assert len(history) == 200
    assert np.mean(history[-10:]) < 0.5 * np.mean(history[:3])


def _toy_study(n_subjects: int, t: int, size: int = 32, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Subjects = a shared smooth signal, each with its own small shift, gain and plenty of noise, in a disc mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (0.45 * size) ** 2
    shared = ndimage.gaussian_filter(rng.normal(size=(t, size, size)), sigma=(0, 2, 2))
    shared /= shared.std()
    out = {}
    for s in range(1, n_subjects + 1):
        moved = ndimage.shift(shared, (0, *rng.uniform(-1, 1, size=2)), order=1)
        x = rng.uniform(0.8, 1.2) * moved + rng.normal(scale=1.5, size=shared.shape)
        out[str(s)] = (x * mask).astype(np.float32)
    return out, mask


def test_held_out_subject_fsc_and_isc_rise():
    responses, mask = _toy_study(3, 320)
    train = {s: x[:240] for s, x in responses.items() if s != "3"}
    test = {s: x[240:] for s, x in responses.items()}
    aligner = GLFAAligner(**SMALL, n_steps=120, batch_size=16, learning_rate=2e-2).fit(train)  # mask inferred
    assert aligner.mask_.sum() == mask.sum() and np.array_equal(aligner.mask_, mask)
    aligned = aligner.transform(test)  # subject 3 never seen
    for other in ("1", "2"):
        before = fsc(test["3"], test[other], mask)
        after = fsc(aligned["3"], aligned[other], mask)
        assert after > before + 0.05, (other, before, after)
    before, after = isc(test, mask), isc(aligned, mask)
    assert after["3"] > before["3"] + 0.05
    assert np.all(aligned["3"][:, ~mask] == 0)


def test_deterministic_and_save_load_round_trip(tmp_path):
    responses, _ = _toy_study(2, 40, size=16)
    params = dict(**SMALL, n_steps=5, batch_size=4)
    a = GLFAAligner(**params).fit(responses)
    b = GLFAAligner(**params).fit(responses)
    for (name, p), q in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        assert torch.equal(p, q), name
    path = a.save(tmp_path / "aligner")
    assert sorted(p.name for p in path.iterdir()) == ["aligner.json", "weights.safetensors"]
    loaded = GLFAAligner.load(path)
    x = responses["1"] * 1.5
    np.testing.assert_array_equal(loaded.transform(x), a.transform(x))
    assert loaded.get_params()["kernel_size"] == 5 and loaded.loss_history_ == a.loss_history_
    assert loaded.image_shape_ == (16, 16) and loaded.n_subjects_ == 2 and loaded.subjects_ == ["1", "2"]
    a.save(path)  # overwriting a saved aligner is fine and leaves no temporary folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aligner"]


def test_surface_input_through_projector():
    """[T, V] data through a projector: fitted and transformed as images, returned as [T, V]."""

    class PixelProjector:
        """Each of the V vertices is one pixel of a 16 x 16 image (a test double of FlatMapProjector)."""

        def __init__(self, mask):
            self.mask = mask
            self.n_vertices = int(mask.sum())

        def to_image(self, x):
            img = np.zeros((x.shape[0], *self.mask.shape), np.float32)
            img[:, self.mask] = x
            return img

        def to_surface(self, img):
            return img[:, self.mask]

    images, mask = _toy_study(2, 40, size=16)
    projector = PixelProjector(mask)
    surface = {s: x[:, mask] for s, x in images.items()}
    aligner = GLFAAligner(**SMALL, n_steps=5, batch_size=4, projector=projector).fit(surface)
    out = aligner.transform(surface["1"])
    assert out.shape == surface["1"].shape and out.dtype == np.float32
    np.testing.assert_allclose(out, aligner.transform(images["1"])[:, mask], rtol=0, atol=1e-6)
    with pytest.raises(DataError, match="projector's vertices"):
        aligner.transform(surface["1"][:, :-1])


def test_bad_input(tmp_path):
    responses, _ = _toy_study(2, 20, size=16)
    aligner = GLFAAligner(**SMALL, n_steps=2, batch_size=4)
    with pytest.raises(NotFittedError, match="fit"):
        aligner.transform(responses["1"])
    with pytest.raises(NotFittedError):
        aligner.save(tmp_path / "a")
    with pytest.raises(DataError, match="at least 2 subjects"):
        aligner.fit({"1": responses["1"]})
    with pytest.raises(DataError, match=r"responses\['2'\].*20 time points.*19"):
        aligner.fit({"1": responses["1"][:19], "2": responses["2"]})
    with pytest.raises(DataError, match=r"expected images \[T, H, W\] or surface data \[T, V\], got shape"):
        aligner.fit({"1": responses["1"][None], "2": responses["2"][None]})
    with pytest.raises(DataError, match="no projector"):
        aligner.fit({"1": responses["1"][:, 0], "2": responses["2"][:, 0]})
    bad = responses["2"].copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(DataError, match=r"responses\['2'\].*NaN"):
        aligner.fit({"1": responses["1"], "2": bad})
    with pytest.raises(DataError, match="differ"):
        aligner.fit({"1": responses["1"], "2": responses["2"][:, :8, :8]})
    aligner.fit(responses)
    with pytest.raises(DataError, match="16 x 16 the aligner was fitted on"):
        aligner.transform(np.zeros((3, 24, 24), np.float32))
    with pytest.raises(CheckpointError, match="no saved aligner"):
        GLFAAligner.load(tmp_path / "missing")
    path = aligner.save(tmp_path / "a")
    (path / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="weights"):
        GLFAAligner.load(path)
    info = json.loads((path / "aligner.json").read_text())
    info["version"] = 99
    (path / "aligner.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="version"):
        GLFAAligner.load(path)


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    """A 3-subject 32 x 32 store written through StoreWriter: 6 training and 2 test stimuli of 20 TRs."""
    from glfa.data.store import StoreWriter
    from glfa.data.windows import Window

    responses, mask = _toy_study(3, 160, seed=3)
    path = tmp_path_factory.mktemp("store") / "store"
    stimuli = [(f"train{i}", "train") for i in range(6)] + [(f"test{i}", "test") for i in range(2)]
    with StoreWriter(path, image_size=32, video_size=(8, 8), fmri_dtype="float32") as writer:
        writer.set_mask(mask)
        for i, (sid, split) in enumerate(stimuli):
            writer.add_stimulus(sid, split, np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"], duration=16.0)
            for s, x in responses.items():
                writer.add_response(s, sid, x[20 * i:20 * (i + 1)])
        windows = [Window(sid, split, 0.0, 0, 0, i) for i, (sid, split) in enumerate(stimuli)]
        writer.finish(windows, {"tr": 0.8, "fps": 1.0, "fmri_frames": 5, "video_frames": 2, "config": {}})
    config = path.parent / "config.yaml"
    config.write_text("name: tiny\nmodel:\n  glfa:\n    parcel_size: 8\n    kernel_size: 5\n"
                      "align:\n  steps: 60\n  batch_size: 16\n  learning_rate: 0.02\n")
    return path, config, responses, mask


def test_cli_align_fit_and_transform(tiny_store, tmp_path, capsys):
    from glfa.cli import main

    store, config, responses, mask = tiny_store
    out = tmp_path / "aligner"
    assert main(["align", "fit", str(store), "--subjects", "1,2", "-o", str(out), "-c", str(config), "--quiet"]) == 0
    assert "fitted on subjects 1,2 (120 time points" in capsys.readouterr().out
    aligner = GLFAAligner.load(out)
    assert aligner.subjects_ == ["1", "2"] and aligner.n_steps == 60 and len(aligner.loss_history_) == 60
    # a .npy array [T, H, W] of the never-seen subject 3
    np.save(tmp_path / "x.npy", responses["3"][:7])
    assert main(["align", "transform", str(out), str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), aligner.transform(responses["3"][:7]))
    # a subject's stored responses: one array per stimulus of the split
    assert main(["align", "transform", str(out), "--store", str(store), "--subject", "3", "--split", "test",
                 "-o", str(tmp_path / "y.npz")]) == 0
    with np.load(tmp_path / "y.npz") as npz:
        assert npz.files == ["test0", "test1"]
        np.testing.assert_array_equal(npz["test1"], aligner.transform(responses["3"][140:160]))
    # bad input: one line, exit status 2
    assert main(["align", "transform", str(out), "-o", str(tmp_path / "z.npy")]) == 2
    assert "either INPUT" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((3, 16, 16), np.float32))
    assert main(["align", "transform", str(out), str(tmp_path / "bad.npy"), "-o", str(tmp_path / "z.npy")]) == 2
    assert "32 x 32 the aligner was fitted on" in capsys.readouterr().err
    assert main(["align", "transform", str(tmp_path / "none"), str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "z.npy")]) == 2
    assert "no saved aligner" in capsys.readouterr().err
    assert not (tmp_path / "z.npy").exists()


def test_cli_evaluate_alignment(tiny_store, tmp_path, capsys):
    from glfa.cli import main

    store, config, responses, mask = tiny_store
    out = tmp_path / "eval"
    assert main(["evaluate", "alignment", str(store), "-c", str(config), "-o", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| Task | fSC 1/2 | fSC 1/3 | fSC 2/3 | ISC 1 | ISC 2 | ISC 3 |" in printed
    data = json.loads((out / "alignment.json").read_text())
    assert [r["task"] for r in data["rows"]] == ["identity", "2,3 -> 1", "1,3 -> 2", "1,2 -> 3"]
    assert data["config"]["align"]["steps"] == 60 and data["n_timepoints"] == 40
    assert (out / "alignment.md").read_text() in printed
    assert json.loads((out / "config.json").read_text())["name"] == "tiny"
    # the identity row is the metrics of the raw test responses
    test = {s: x[120:] for s, x in responses.items()}
    identity = data["rows"][0]
    assert identity["fsc"]["1/3"] == pytest.approx(fsc(test["1"], test["3"], mask), abs=1e-6)
    assert identity["isc"]["2"] == pytest.approx(isc(test, mask)["2"], abs=1e-6)
    # GLFA raises fSC and ISC of every held-out subject
    for row in data["rows"][1:]:
        h = row["held_out"]
        assert row["isc"][h] > identity["isc"][h]
        for pair in row["fsc"]:
            if h in pair.split("/"):
                assert row["fsc"][pair] > identity["fsc"][pair], (row["task"], pair)
    assert "**" in (out / "alignment.md").read_text()
    assert main(["evaluate", "alignment", str(store), "--subjects", "1,2", "-o", str(out)]) == 2
    assert "at least 3 subjects" in capsys.readouterr().err
