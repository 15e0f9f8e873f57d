"""glfa prepare on small in-test studies: values against independent computations, and bad input."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from glfa.config import validate_config
from glfa.data.prepare import PrepareWarning, build_store, prepare_study
from glfa.data.sources.base import Presentation, Run, Stimulus, StudySource
from glfa.data.store import StudyStore
from glfa.data.video import write_video
from glfa.errors import ConfigError, DataError, StoreError

SIZE = 16


class FakeSource(StudySource):
    """A reader over arrays saved as .npy, image kind (native grid = study grid) or surface kind."""

    layout = "fake"

    def __init__(self, root, stimuli, runs, native=None):
        super().__init__(root)
        self._stimuli, self._runs, self._native = stimuli, runs, native

    def subjects(self):
        return sorted(self._runs)

    def stimuli(self):
        return self._stimuli

    def runs(self, subject):
        return self._runs[subject]

    def native_mask(self):
        return self._native

    def image_mask(self, size):
        assert size == self._native.shape[0]
        return self._native

    def to_image_grid(self, frames, size):
        return frames * self._native


def _native():
    mask = np.zeros((SIZE, SIZE), bool)
    mask[2:14, 3:12] = True
    mask[5, 5] = False
    return mask


def _video(root, sid, seconds, fps):
    frames = np.zeros((int(round(seconds * fps)), SIZE, SIZE, 3), np.uint8)
    frames[:] = (np.arange(len(frames)) * 9 % 256).astype(np.uint8)[:, None, None, None]  # frame i is grey 9 i
    path = root / "stimuli" / f"{sid}.mp4"
    write_video(path, frames, fps)
    return path, frames


def _run(root, subject, run_id, data, tr, presentations, kind="image"):
    path = root / f"sub-{subject}_run-{run_id}.npy"
    np.save(path, data)
    return Run(subject, run_id, tr, kind, lambda: np.load(path), presentations, [path])


def _fudan_like(root, *, subjects=("1", "2"), tr=0.8, run_trs=(44, 31), nan_at=None, constant_pixel=False):
    """TR 0.8 s; trials = 3 blank TRs + an 8 s clip (13 TRs); run 1: c0 c1 t0, run 2: c2 t0 (t0 repeated)."""
    root.mkdir(parents=True, exist_ok=True)
    native = _native()
    stimuli, videos = {}, {}
    for sid, split in (("c0", "train"), ("c1", "train"), ("c2", "train"), ("t0", "test")):
        path, frames = _video(root, sid, 8.0, 3)
        stimuli[sid] = Stimulus(sid, path, split, (f"a clip called {sid}",))
        videos[sid] = frames
    rng = np.random.default_rng(0)
    runs, raw = {}, {}
    for s_i, subject in enumerate(subjects):
        runs[subject] = []
        for r_i, (order, n_trs) in enumerate(zip((("c0", "c1", "t0"), ("c2", "t0")), run_trs)):
            data = rng.normal(size=(n_trs, SIZE, SIZE)).astype(np.float32) * 3 + 100
            if constant_pixel:
                data[:, 4, 4] = 42.0
            if nan_at is not None and (s_i, r_i) == nan_at[:2]:
                data[nan_at[2], 6, 6] = np.nan
            pres = [Presentation(sid, 2.4 + 10.4 * k, 8.0) for k, sid in enumerate(order)]
            runs[subject].append(_run(root, subject, str(r_i + 1), data, tr[s_i] if isinstance(tr, tuple) else tr,
                                      pres))
            raw[subject, r_i] = (data, order)
    return FakeSource(root, stimuli, runs, native), raw, videos


def _fudan_config(**data):
    base = {"image_size": SIZE, "tr": 0.8, "fmri_dtype": "float32",
            "preprocess": {"drop_initial_trs": 3, "hrf_lag_seconds": 4.0, "zscore": True},
            "windows": {"fmri_seconds": 4.0, "video_seconds": 4.0, "stride_seconds": 4.0, "fps": 3,
                        "video_height": SIZE, "video_width": SIZE}}
    for k, v in data.items():
        if isinstance(v, dict):
            base[k] = {**base.get(k, {}), **v}
        else:
            base[k] = v
    return validate_config({"data": base}, source="test.yaml")


def test_fudan_like_store_matches_independent_preprocessing(tmp_path):
    source, raw, videos = _fudan_like(tmp_path / "study")
    store = StudyStore.open(build_store(source, tmp_path / "store", _fudan_config(), progress=False))
    native = _native()
    expected = {}
    for (subject, r_i), (data, order) in raw.items():
        z = scipy.stats.zscore(data[3:, native], axis=0, ddof=0)  # drop 3 TRs, z-score each cortex pixel
        for k, sid in enumerate(order):
            expected.setdefault((subject, sid), []).append(z[13 * k + 5:13 * k + 15])  # onset + 4 s lag - 3 TRs
    for (subject, sid), segs in expected.items():
        img = np.zeros((10, SIZE, SIZE), np.float32)
        img[:, native] = np.mean(segs, axis=0)
        np.testing.assert_allclose(store.response(subject, sid), img, atol=1e-5)
    assert len(expected["1", "t0"]) == 2  # the test clip's two showings were averaged
    windows = [w for w in store.windows() if w.stimulus_id == "c1"]
    assert [(w.onset, w.fmri_start, w.video_start) for w in windows] == [(0.0, 0, 0), (4.0, 5, 12)]
    assert [w.split for w in store.windows("test")] == ["test", "test"]
    assert len(store.windows()) == 8 and store.fmri_frames == 5 and store.video_frames == 12
    np.testing.assert_allclose(store.fmri("2", windows[1]), store.response("2", "c1")[5:10])
    frames = store.frames(windows[1])
    assert frames.shape == (12, SIZE, SIZE, 3)
    np.testing.assert_allclose(frames.mean(axis=(1, 2, 3)), videos["c1"][12:24].mean(axis=(1, 2, 3)), atol=3)
    assert store.captions(windows[1]) == ["a clip called c1"] * 12
    np.testing.assert_array_equal(store.mask, native)
    m = store.manifest
    assert m["kind"] == "image" and m["tr"] == 0.8 and m["layout"] == "fake"
    assert len(m["source_checksums"]) == 4 + 4  # 4 videos + 2 runs x 2 subjects
    assert all(len(h) == 64 for h in m["source_checksums"].values())
    assert store.config.data.preprocess.drop_initial_trs == 3


def test_wen_like_surface_study_with_repeats_and_run_end(tmp_path):
    from glfa.surface.flatmap import FlatMapProjector

    root = tmp_path / "study"
    projector = FlatMapProjector(rois="paper", height=SIZE, width=SIZE)
    path, _ = _video(root, "seg1", 20.0, 2)
    stimuli = {"seg1": Stimulus("seg1", path, "train", ("a street",))}
    rng = np.random.default_rng(3)
    t = np.arange(10.0)[:, None]
    runs, raw = {"1": []}, []
    for r in range(2):
        data = (rng.normal(size=(10, projector.n_vertices)) + 5 * t - 0.4 * t**2 + 50).astype(np.float32)
        raw.append(data)
        runs["1"].append(_run(root, "1", f"rep{r}", data, 2.0, [Presentation("seg1", 0.0, 20.0)], kind="surface"))
    config = validate_config({"data": {
        "image_size": SIZE, "fmri_dtype": "float32",
        "preprocess": {"detrend_order": 2, "hrf_lag_seconds": 4.0},
        "windows": {"fmri_seconds": 4.0, "video_seconds": 2.0, "stride_seconds": 2.0, "fps": 2,
                    "video_height": SIZE, "video_width": SIZE}}})
    with pytest.warns(PrepareWarning, match="3 window"):
        out = build_store(FakeSource(root, stimuli, runs), tmp_path / "store", config, progress=False)
    store = StudyStore.open(out)
    # 10 TRs, lag 2 TRs -> 8 TRs of response; windows of 2 TRs start at 0..6: 7 of the clip's 10 fit
    segs = [scipy.stats.zscore(_poly_residual(d, 2), axis=0)[2:10] for d in raw]
    expected = projector.to_image(np.mean(segs, axis=0).astype(np.float32))
    np.testing.assert_allclose(store.response("1", "seg1"), expected, atol=1e-4)
    assert [w.fmri_start for w in store.windows()] == list(range(7))
    assert store.manifest["counts"]["windows_dropped_at_run_end"] == 3
    assert store.manifest["kind"] == "surface"
    np.testing.assert_array_equal(store.projector.mask, projector.mask)
    np.testing.assert_array_equal(store.mask, projector.mask)


def _poly_residual(x, order):
    """x minus its least-squares polynomial fit in time (numpy polyfit, per column)."""
    t = np.arange(len(x), dtype=np.float64)
    coef = np.polyfit(t, x.astype(np.float64), order)  # [order + 1, V]
    return x - np.vander(t, order + 1) @ coef


def test_constant_pixels_are_counted_in_a_warning(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", subjects=("1",), constant_pixel=True)
    with pytest.warns(PrepareWarning, match="1 constant vertices"):
        out = build_store(source, tmp_path / "store", _fudan_config(), progress=False)
    assert StudyStore.open(out).manifest["counts"]["constant_vertices"] == {"1": 2}


def test_nan_frame_names_the_file(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", nan_at=(1, 0, 7))
    with pytest.raises(DataError, match=r"sub-2_run-1\.npy.*TR 7") as info:
        build_store(source, tmp_path / "store", _fudan_config(), progress=False)
    assert info.value.path.endswith("sub-2_run-1.npy")
    assert not (tmp_path / "store").exists()


def test_skip_bad_runs_counts_the_skipped_run(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", nan_at=(1, 1, 7))
    with pytest.warns(PrepareWarning, match="skipped run 2"):
        out = build_store(source, tmp_path / "store", _fudan_config(skip_bad_runs=True), progress=False)
    store = StudyStore.open(out)
    assert [r["run"] for r in store.manifest["counts"]["skipped_runs"]] == ["2"]
    assert store.has("2", "t0") and not store.has("2", "c2")  # t0 kept from run 1 alone


def test_run_shorter_than_its_events(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", run_trs=(44, 22))
    with pytest.raises(DataError, match=r"sub-1_run-2\.npy.*run shorter than its events.*'t0'"):
        build_store(source, tmp_path / "store", _fudan_config(), progress=False)


def test_different_trs_across_subjects(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", tr=(0.8, 0.7))
    with pytest.raises(DataError, match=r"sub-2_run-1\.npy.*TR 0.7 s differs"):
        build_store(source, tmp_path / "store", _fudan_config(tr=None), progress=False)
    with pytest.raises(DataError, match=r"sub-1_run-1\.npy.*TR 0.8 s differs from the TR 2 s of data.tr"):
        build_store(source, tmp_path / "store", _fudan_config(tr=2.0), progress=False)


def test_surface_runs_with_another_vertex_set(tmp_path):
    root = tmp_path / "study"
    path, _ = _video(root, "a", 4.0, 3)
    run = _run(root, "1", "1", np.zeros((20, 100), np.float32), 0.8, [Presentation("a", 0.0, 4.0)], kind="surface")
    source = FakeSource(root, {"a": Stimulus("a", path, "train", ("x",))}, {"1": [run]})
    with pytest.raises(DataError, match=r"sub-1_run-1\.npy.*\[T, 8405\]"):
        build_store(source, tmp_path / "store", _fudan_config(), progress=False)


def test_bad_video_and_missing_caption(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", subjects=("1",))
    bad = tmp_path / "study" / "stimuli" / "c1.mp4"
    bad.write_bytes(b"not a video at all")
    with pytest.raises(DataError, match=r"c1\.mp4"):
        build_store(source, tmp_path / "store", _fudan_config(), progress=False)
    source, _, _ = _fudan_like(tmp_path / "study2", subjects=("1",))
    stim = source._stimuli["c2"]
    source._stimuli["c2"] = Stimulus("c2", stim.video, "train", ("  ",))
    with pytest.raises(DataError, match=r"c2\.mp4: captions: .*missing"):
        build_store(source, tmp_path / "store", _fudan_config(), progress=False)


def test_window_longer_than_a_run_is_a_config_error(tmp_path):
    source, _, _ = _fudan_like(tmp_path / "study", subjects=("1",))
    with pytest.raises(ConfigError, match=r"test\.yaml: data\.windows\.fmri_seconds"):
        build_store(source, tmp_path / "store", _fudan_config(windows={"fmri_seconds": 40.0}), progress=False)


@pytest.mark.parametrize("crash", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_interrupted_prepare_leaves_nothing(tmp_path, crash):
    source, _, _ = _fudan_like(tmp_path / "study")
    source._runs["2"][1].load = lambda: (_ for _ in ()).throw(crash)
    with pytest.raises(type(crash)):
        build_store(source, tmp_path / "out" / "store", _fudan_config(), progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_overwrite_and_prepare_study_entry_point(tmp_path, monkeypatch):
    import glfa.data.sources as sources

    source, _, _ = _fudan_like(tmp_path / "study", subjects=("1",))
    calls = []

    def fake_get_source(layout, root, config):
        calls.append((layout, Path(root)))
        return source

    monkeypatch.setattr(sources, "get_source", fake_get_source)
    config = _fudan_config()
    out = prepare_study(tmp_path / "study", tmp_path / "store", config, layout="fudan", progress=False)
    assert calls == [("fudan", tmp_path / "study")]
    with pytest.raises(StoreError, match="already exists.*--overwrite"):
        prepare_study(tmp_path / "study", tmp_path / "store", config, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_study(tmp_path / "study", tmp_path / "store", config, overwrite=True, progress=False)
    assert calls[-1][0] == "generic"  # config.data.layout when no layout is given
    assert StudyStore.open(out).subjects == ["1"]
    with pytest.raises(DataError, match="study folder not found"):
        prepare_study(tmp_path / "nowhere", tmp_path / "s2", config, progress=False)


@pytest.mark.parametrize("shown, onsets", [(7.99, [0.0, 4.0]), (4.0, [0.0])])
def test_clip_duration_is_the_time_it_was_shown(tmp_path, shown, onsets):
    source, _, _ = _fudan_like(tmp_path / "study", subjects=("1",))
    for run in source._runs["1"]:
        run.presentations = [Presentation(p.stimulus_id, p.onset, shown if p.stimulus_id == "c0" else p.duration)
                             for p in run.presentations]
    store = StudyStore.open(build_store(source, tmp_path / "store", _fudan_config(), progress=False))
    assert [w.onset for w in store.windows() if w.stimulus_id == "c0"] == onsets
    assert store.response("1", "c0").shape[0] == 5 * len(onsets)
