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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny images: one thread is as fast, and far faster when the cores are shared with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _patches(x: np.ndarray, k: int) -> np.ndarray:
    """Interior k x k patches of images [T, H, W] -> [T * (H-k+1) * (W-k+1), k*k] (float64, row-major offsets)."""
    r = k // 2
    h, w = x.shape[1:]
    cols = [x[:, a:a + h - 2 * r, b:b + w - 2 * r] for a in range(k) for b in range(k)]
    return np.stack(cols, axis=-1).reshape(-1, k * k).astype(np.float64)


def _optimal_shared_kernel(x1: np.ndarray, x2: np.ndarray, k: int, lam: float) -> np.ndarray:
    """The single k x k kernel (summing to one) minimising L_GLFA on interior pixels, by least squares."""
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
    aligner = GLFAAligner(**SMALL, n_steps=150, batch_size=16, learning_rate=2e-2, seed=0,
                          mask=np.ones((24, 24), bool))
    aligner.fit({"1": x1, "2": x2})
    return x1, x2, aligner


def test_recovers_planted_shift(shifted_pair):
    x1, x2, aligner = shifted_pair
    k = 5
    kernel = aligner.model_.local.normalized_kernel().detach().numpy().reshape(k, k, 24, 24)
    learned = kernel[:, :, 3:-3, 3:-3].mean(axis=(2, 3))  # mean interior kernel [k, k]
    optimum = _optimal_shared_kernel(x1, x2, k, aligner.consistency_weight)
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
    assert len(history) == 150
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
