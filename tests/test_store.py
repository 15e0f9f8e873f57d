"""Study store: round trip, atomic writes, refusal of incomplete and newer stores."""

import json
import pickle

import numpy as np
import pytest

from glfa import __version__
from glfa.data.store import FORMAT_VERSION, StoreWriter, StudyStore
from glfa.data.windows import Window
from glfa.errors import StoreError

SIZE = 16


def _write(path, *, compression=None, fmri_dtype="float16", overwrite=False, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    truth = {"video": {}, "fmri": {}}
    with StoreWriter(path, image_size=SIZE, video_size=(8, 12), fmri_dtype=fmri_dtype, compression=compression,
                     overwrite=overwrite) as w:
        mask = np.zeros((SIZE, SIZE), bool)
        mask[3:12, 2:14] = True
        w.set_mask(mask)
        for sid, n_frames, split in (("a", 6, "train"), ("b", 4, "test")):
            frames = rng.integers(0, 256, (n_frames, 8, 12, 3), dtype=np.uint8)
            caps = [f"{sid} caption {i}" for i in range(n_frames)]
            w.add_stimulus(sid, split, frames, caps, duration=n_frames / 2)
            truth["video"][sid] = (frames, caps)
        for subject, stims in (("s1", ("a", "b")), ("s2", ("b",))):
            for sid in stims:
                resp = (rng.normal(size=(5, SIZE, SIZE)) * mask).astype(np.float32)
                w.add_response(subject, sid, resp)
                truth["fmri"][subject, sid] = resp
        windows = [Window("a", "train", 0.0, 0, 0, 0), Window("a", "train", 1.0, 2, 2, 1),
                   Window("b", "test", 0.0, 1, 1, 2)]
        w.finish(windows, {"tr": 1.0, "fps": 2.0, "fmri_frames": 3, "video_frames": 3,
                           "config": {"name": "store-test"}, "counts": {"extra": 1}})
    return truth, mask, windows


def test_round_trip(tmp_path):
    truth, mask, windows = _write(tmp_path / "store")
    store = StudyStore.open(tmp_path / "store")
    assert store.subjects == ["s1", "s2"] and store.stimuli == ["a", "b"]
    assert store.tr == 1.0 and store.fps == 2.0 and store.image_size == SIZE
    assert store.fmri_frames == 3 and store.video_frames == 3 and store.projector is None
    np.testing.assert_array_equal(store.mask, mask)
    assert store.windows() == windows and store.windows("test") == windows[2:]
    assert store.has("s1", "a") and not store.has("s2", "a")
    for (subject, sid), resp in truth["fmri"].items():
        got = store.response(subject, sid)
        assert got.dtype == np.float32 and got.shape == resp.shape
        np.testing.assert_allclose(got, resp, atol=2e-3, rtol=1e-3)  # float16 storage
    np.testing.assert_allclose(store.fmri("s1", windows[1]), truth["fmri"]["s1", "a"][2:5], atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(store.fmri("s2", windows[2]), truth["fmri"]["s2", "b"][1:4], atol=2e-3, rtol=1e-3)
    frames, caps = truth["video"]["a"]
    np.testing.assert_array_equal(store.video("a"), frames)
    np.testing.assert_array_equal(store.frames(windows[1]), frames[2:5])
    assert store.captions(windows[1]) == caps[2:5]
    np.testing.assert_array_equal(store.frames(windows[2]), truth["video"]["b"][0][1:4])
    m = store.manifest
    assert m["complete"] is True and m["format_version"] == FORMAT_VERSION and m["glfa_version"] == __version__
    assert m["counts"]["extra"] == 1 and m["counts"]["windows"] == {"train": 2, "test": 1}
    assert m["counts"]["fmri_frames"] == {"s1": 10, "s2": 5}
    assert store.cache_dir.is_dir() and store.cache_dir.parent == store.path
    with pytest.raises(StoreError, match="no response"):
        store.fmri("s2", windows[0])
    with pytest.raises(StoreError, match="unknown subject"):
        store.response("s9", "a")


def test_float32_and_compression_round_trip_exactly(tmp_path):
    truth, _, _ = _write(tmp_path / "store", compression="lzf", fmri_dtype="float32")
    store = StudyStore.open(tmp_path / "store")
    for (subject, sid), resp in truth["fmri"].items():
        np.testing.assert_array_equal(store.response(subject, sid), resp)


def test_pickled_store_reopens_its_file(tmp_path):
    truth, _, windows = _write(tmp_path / "store")
    store = StudyStore.open(tmp_path / "store")
    store.fmri("s1", windows[0])
    clone = pickle.loads(pickle.dumps(store))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone.fmri("s1", windows[0]), store.fmri("s1", windows[0]))


def test_interrupted_writer_leaves_nothing(tmp_path):
    target = tmp_path / "store"
    with pytest.raises(RuntimeError, match="crash"):
        with StoreWriter(target, image_size=SIZE, video_size=(8, 12)) as w:
            w.set_mask(np.ones((SIZE, SIZE), bool))
            w.add_stimulus("a", "train", np.zeros((2, 8, 12, 3), np.uint8), ["x", "y"], 1.0)
            raise RuntimeError("crash halfway")
    assert list(tmp_path.iterdir()) == []


def test_half_written_store_is_refused(tmp_path):
    target = tmp_path / "store"
    _write(target)
    (target / "manifest.json").unlink()  # as if the process died before the manifest was written
    with pytest.raises(StoreError, match="incomplete store.*interrupted.*--overwrite"):
        StudyStore.open(target)
    (target / "manifest.json").write_text(json.dumps({"complete": False, "format_version": 1}))
    with pytest.raises(StoreError, match="incomplete store"):
        StudyStore.open(target)
    (target / "manifest.json").write_text('{"complete": tr')
    with pytest.raises(StoreError, match="incomplete store"):
        StudyStore.open(target)
    with pytest.raises(StoreError, match="no study store"):
        StudyStore.open(tmp_path / "nothing")


def test_stale_partial_folder_is_refused_and_cleaned(tmp_path):
    partial = tmp_path / ".store.partial-999999999-abc"
    partial.mkdir()
    (partial / "study.h5").write_bytes(b"")
    with pytest.raises(StoreError, match="incomplete"):
        StudyStore.open(partial)
    _write(tmp_path / "store")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("key, value, match", [
    ("format_version", FORMAT_VERSION + 1, "store format .* is newer"),
    ("glfa_version", "99.0.0", "written by glfa 99.0.0, newer"),
])
def test_newer_version_is_refused(tmp_path, key, value, match):
    target = tmp_path / "store"
    _write(target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest[key] = value
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=match):
        StudyStore.open(target)


def test_overwrite_rules(tmp_path):
    target = tmp_path / "store"
    _write(target, rng_seed=0)
    with pytest.raises(StoreError, match="already exists.*--overwrite"):
        _write(target)
    truth, _, _ = _write(target, overwrite=True, rng_seed=5)
    np.testing.assert_allclose(StudyStore.open(target).response("s2", "b"), truth["fmri"]["s2", "b"], atol=2e-3,
                               rtol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    other = tmp_path / "mydata"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a study store"):
        _write(other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"
