"""Readers of the real layouts (generic, Wen 2017, Fudan) on tiny fixture studies, and prepare on each."""

from __future__ import annotations

import json
import shutil
import warnings

import h5py
import numpy as np
import pytest

from glfa.config import validate_config
from glfa.data.sources import get_source
from glfa.data.sources.fudan import PARTS, crop_box
from glfa.errors import ConfigError, DataError
from tests.fixtures import fudan_labels, write_fudan_study, write_generic_study, write_wen_study


def _config(**data):
    return validate_config({"data": data})


def _copy(study, tmp_path):
    dst = tmp_path / "study"
    shutil.copytree(study.root, dst)
    return dst


# ============================================================================ Fudan


@pytest.fixture(scope="module")
def webvid(tmp_path_factory):
    return write_fudan_study(tmp_path_factory.mktemp("webvid"), part="webvid", runs_per_condition=(1, 2))


@pytest.fixture(scope="module")
def fcvid(tmp_path_factory):
    return write_fudan_study(tmp_path_factory.mktemp("fcvid"), part="fcvid", subjects=(1, 2),
                             runs_per_condition=(1, 1), captions="json")


def test_fudan_webvid_reader(webvid):
    src = get_source("fudan", webvid.root, _config(allow_pickle=True))
    assert src.subjects() == ["1", "2"]
    stimuli = src.stimuli()
    assert {k: v.split for k, v in stimuli.items()} == {
        "1": "train", "2": "train", "3": "train", "4": "train", "101": "test", "102": "test"}
    assert stimuli["3"].captions == ("clip number 3",)
    assert stimuli["3"].video == webvid.root / "stimuli" / "3.mp4"
    # subject 1: one run per condition file; subject 2: each condition file cut in two runs
    runs1 = src.runs("1")
    assert [r.run_id for r in runs1] == ["run-1", "run-2", "run-3"]
    assert [p.stimulus_id for p in runs1[1].presentations] == ["1", "2", "3", "4"]
    runs2 = src.runs("2")
    assert [[p.stimulus_id for p in r.presentations] for r in runs2] == [
        ["101"], ["102"], ["1", "2"], ["3", "4"], ["102"], ["101"]]
    # onsets: 3 lead-in TRs then one 13-TR trial per clip, TR 0.8 s
    for j, p in enumerate(runs1[1].presentations):
        assert p.onset == pytest.approx((3 + 13 * j) * 0.8)
        assert p.duration == 8.0
    assert all(r.tr == 0.8 and r.kind == "image" for r in runs1 + runs2)
    rel = "processed-fmri/sub-0002/hdf5/sub-0002_task-video_run-4_space-fsLR_den-91k_bold.dtseries.h5"
    np.testing.assert_array_equal(runs2[3].load(), webvid.data[rel])
    assert runs2[3].files == [webvid.root / rel]


def test_fudan_fcvid_reader(fcvid):
    src = get_source("fudan", fcvid.root, _config(fudan_part="fcvid"))
    stimuli = src.stimuli()
    assert {k: v.split for k, v in stimuli.items()} == {"1": "train", "2": "train", "101": "test", "102": "test"}
    runs = src.runs("1")
    assert len(runs) == 4
    # 10 s clips back to back after the 2.4 s lead-in; test clips shown three times
    assert [(p.stimulus_id, p.onset, p.duration) for p in runs[1].presentations] == [
        ("101", pytest.approx(2.4), 10.0), ("102", pytest.approx(12.4), 10.0)]
    shown = [p.stimulus_id for r in runs for p in r.presentations]
    assert shown.count("101") == 3 and shown.count("1") == 1
    assert PARTS["webvid"].trial_seconds / 0.8 == pytest.approx(13)


def test_fudan_masks_reproduce_reference_crop(webvid):
    src = get_source("fudan", webvid.root, _config(allow_pickle=True))
    labels = fudan_labels()
    np.testing.assert_array_equal(src.native_mask(), labels != 0)
    # visual cortex rows 8..14, cols 10..21 -> x 9..22, y max(8-10, 0)..min(14+10, 23)
    assert crop_box(labels == 1) == (9, 22, 0, 23)
    crop_h, crop_w, size = 24, 14, 16
    # nearest: source index floor(dst * in / out)
    rows = np.floor(np.arange(size) * crop_h / size).astype(int)
    cols = np.floor(np.arange(size) * crop_w / size).astype(int)
    expected_mask = (labels == 1)[0:24, 9:23][rows][:, cols]
    np.testing.assert_array_equal(src.image_mask(size), expected_mask)
    # bilinear with half-pixel centres, computed independently in numpy
    frames = src.runs("1")[0].load()[:3]
    crop = frames[:, 0:24, 9:23].astype(np.float64)

    def coords(n_in, n_out):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, x - lo

    y0, y1, fy = coords(crop_h, size)
    x0, x1, fx = coords(crop_w, size)
    top = crop[:, y0][:, :, x0] * (1 - fx) + crop[:, y0][:, :, x1] * fx
    bottom = crop[:, y1][:, :, x0] * (1 - fx) + crop[:, y1][:, :, x1] * fx
    expected = (top * (1 - fy)[:, None] + bottom * fy[:, None]) * expected_mask
    np.testing.assert_allclose(src.to_image_grid(frames, size), expected, rtol=1e-5, atol=1e-3)


def test_fudan_pickle_needs_opt_in(webvid, tmp_path, caplog):
    with pytest.raises(DataError, match="allow_pickle: true") as err:
        get_source("fudan", webvid.root, _config()).stimuli()
    assert "vid2name.npy" in str(err.value)
    with caplog.at_level("WARNING"):
        get_source("fudan", webvid.root, _config(allow_pickle=True)).stimuli()
    assert "pickled captions" in caplog.text
    root = _copy(webvid, tmp_path)
    (root / "stimuli" / "vid2name.npy").unlink()
    (root / "stimuli" / "captions.tsv").write_text("video_id\tcaption\n1\tone\n2\ttwo\n3\tthree\n4\tfour\n"
                                                   "101\tx\n102\ty\n")
    assert get_source("fudan", root, _config()).stimuli()["2"].captions == ("two",)


def test_fudan_missing_caption_error_or_counted_skip(webvid, tmp_path):
    root = _copy(webvid, tmp_path)
    (root / "stimuli" / "vid2name.npy").unlink()
    (root / "stimuli" / "captions.json").write_text(json.dumps({"1": "one", "2": "two", "4": "four",
                                                               "101": "x", "102": "y"}))
    with pytest.raises(DataError, match="no caption for video id 3") as err:
        get_source("fudan", root, _config()).stimuli()
    assert "captions.json" in str(err.value)
    src = get_source("fudan", root, _config(skip_bad_runs=True))
    assert "3" not in src.stimuli() and len(src.skipped) == 1
    assert [p.stimulus_id for p in src.runs("1")[1].presentations] == ["1", "2", "4"]


def test_fudan_bad_files(webvid, tmp_path):
    root = _copy(webvid, tmp_path)
    cfg = _config(allow_pickle=True)
    (root / "stimuli" / "condition" / "run2.txt").write_text("1\n2\nthree\n4\n")
    with pytest.raises(DataError, match="line 3") as err:
        get_source("fudan", root, cfg).runs("1")
    assert "run2.txt" in str(err.value)
    (root / "stimuli" / "condition" / "run2.txt").write_text("1\n2\n3\n4\n")
    run = root / "processed-fmri/sub-0001/hdf5/sub-0001_task-video_run-2_space-fsLR_den-91k_bold.dtseries.h5"
    with h5py.File(run, "w") as f:
        f.create_dataset("images", data=np.zeros((60, 24 * 32), np.float32))
    with pytest.raises(DataError, match="rank 3") as err:
        get_source("fudan", root, cfg).runs("1")
    assert str(run) in str(err.value)
    with h5py.File(run, "w") as f:  # 30 TRs, but the 4th clip ends at (3 + 39) * 0.8 + 8 = 41.6 s
        f.create_dataset("images", data=np.zeros((30, 24, 32), np.float32))
    with pytest.raises(DataError, match="30 TRs"):
        get_source("fudan", root, cfg).runs("1")
    run.unlink()
    with pytest.raises(DataError, match="expected runs 1..R"):
        get_source("fudan", root, cfg).runs("1")


def test_fudan_missing_things(tmp_path):
    (tmp_path / "processed-fmri").mkdir()
    with pytest.raises(DataError, match="no subjects found"):
        get_source("fudan", tmp_path, _config()).subjects()
    with pytest.raises(DataError, match="study folder not found"):
        get_source("fudan", tmp_path / "nowhere", _config())


# ============================================================================ Wen 2017


@pytest.fixture(scope="module")
def wen(tmp_path_factory):
    return write_wen_study(tmp_path_factory.mktemp("wen"))


def test_wen_reader(wen):
    src = get_source("wen2017", wen.root, _config())
    assert src.subjects() == ["1", "2"]
    stimuli = src.stimuli()
    assert list(stimuli) == ["seg1", "seg2", "test1", "test2"]
    assert [s.split for s in stimuli.values()] == ["train", "train", "test", "test"]
    assert stimuli["seg1"].captions[:2] == ("seg1 frame 0", "seg1 frame 1") and len(stimuli["seg1"].captions) == 48
    assert stimuli["test2"].captions == ("a scene from test2",)
    runs = src.runs("2")
    assert [r.run_id for r in runs] == ["seg1_1", "seg1_2", "seg2_1", "seg2_2", "test1_1", "test1_2",
                                        "test2_1", "test2_2"]
    for run in runs:  # one volume before the movie: onset 1 TR; the movie lasts 6 TRs (12 s video)
        assert run.tr == 2.0 and run.kind == "surface"
        [p] = run.presentations
        assert (p.stimulus_id, p.onset, p.duration) == (run.run_id.split("_")[0], 2.0, 12.0)
    seg = runs[0].load()
    np.testing.assert_array_equal(seg, wen.data["subject2/fmri/seg1/cifti/seg1_1_Atlas.dtseries.nii"])
    test2 = runs[-1].load()  # a 12-volume run (like the release's 246) loses its extra first volume
    written = wen.data["subject2/fmri/test2/cifti/test2_2_Atlas.dtseries.nii"]
    assert written.shape[0] == 12 and test2.shape == (11, written.shape[1])
    np.testing.assert_array_equal(test2, written[1:])


def test_wen_without_captions_and_bad_input(wen, tmp_path):
    root = _copy(wen, tmp_path)
    shutil.rmtree(root / "captions")
    assert get_source("wen2017", root, _config()).stimuli()["seg2"].captions == ()
    (root / "stimuli" / "seg2.mp4").unlink()
    with pytest.raises(DataError, match="stimuli/seg2.mp4"):
        get_source("wen2017", root, _config()).stimuli()
    with pytest.raises(DataError, match="no subjects found"):
        get_source("wen2017", tmp_path, _config()).subjects()


def test_wen_short_run_and_different_tr(wen, tmp_path):
    from glfa.surface.atlas import visual_roi
    from glfa.surface.cifti import write_dtseries

    root = _copy(wen, tmp_path)
    roi = visual_roi("paper")
    path = root / "subject1/fmri/seg2/cifti/seg2_2_Atlas.dtseries.nii"
    write_dtseries(path, np.ones((9, roi.n_vertices), np.float32), roi.left, roi.right, 2.0)
    with pytest.raises(DataError, match="expected at least 11") as err:
        get_source("wen2017", root, _config()).runs("1")
    assert str(path) in str(err.value)
    src = get_source("wen2017", root, _config(skip_bad_runs=True))
    assert len(src.runs("1")) == 7 and len(src.skipped) == 1
    write_dtseries(path, np.ones((11, roi.n_vertices), np.float32), roi.left, roi.right, 1.5)
    src = get_source("wen2017", root, _config(subjects=["1"]))
    with pytest.raises(DataError, match="differs from 2 s"):
        src.runs("1")
    with pytest.raises(DataError, match="data.tr is 1.5 s"):
        get_source("wen2017", root, _config(tr=1.5)).runs("2")


# ============================================================================ generic


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    return write_generic_study(tmp_path_factory.mktemp("generic"))


def test_generic_reader(generic):
    src = get_source(None, generic.root, _config())
    assert src.layout == "generic" and src.subjects() == ["01", "02"]
    stimuli = src.stimuli()
    assert {k: (v.split, v.captions) for k, v in stimuli.items()} == {
        "a": ("train", ("a red square",)), "sub_t": ("test", ("a test clip",)), "b": ("train", ("a blue circle",))}
    assert stimuli["sub_t"].video == generic.root / "stimuli" / "sub" / "t.mp4"
    [run] = src.runs("02")
    assert run.run_id == "task-movie_run-1" and run.tr == pytest.approx(0.8)
    assert [(p.stimulus_id, p.onset, p.duration) for p in run.presentations] == [
        ("a", 0.0, 4.0), ("sub_t", 5.6, 4.0), ("b", 11.2, 4.0), ("sub_t", 16.8, 4.0)]
    np.testing.assert_array_equal(run.load(), generic.data["sub-02/func/sub-02_task-movie_run-1_bold.dtseries.nii"])
    assert get_source("generic", generic.root, _config(subjects=["02"])).subjects() == ["02"]
    with pytest.raises(ConfigError, match="data.subjects"):
        get_source("generic", generic.root, _config(subjects=["07"])).subjects()


def _events(root, subject="01"):
    return root / f"sub-{subject}" / "func" / f"sub-{subject}_task-movie_run-1_events.tsv"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("\tcaption\t", "\tcapt\t"), "missing column"),
        (lambda t: t.replace("a blue circle", ""), "missing caption"),
        (lambda t: t.replace("b.mp4", "zzz.mp4"), "'zzz.mp4' not found"),
        (lambda t: t.replace("16.8\t", "60\t"), "ends at 64 s"),
        (lambda t: t.replace("4\tb.mp4\ta blue circle\ttrain", "4\tb.mp4\ta blue circle\ttest"), "one split"),
        (lambda t: t.replace("a red square", "another caption"), None),
    ],
)
def test_generic_bad_events(generic, tmp_path, edit, message):
    root = _copy(generic, tmp_path)
    path = _events(root, "02")
    path.write_text(edit(path.read_text()))
    if message is None:  # a caption that differs between subjects
        with pytest.raises(DataError, match="one caption per stimulus"):
            get_source("generic", root, _config()).stimuli()
        return
    with pytest.raises(DataError, match=message) as err:
        get_source("generic", root, _config()).stimuli()
    assert str(path) in str(err.value)
    src = get_source("generic", root, _config(skip_bad_runs=True))  # counted skip: subject 02 has no other run
    assert src.subjects() == ["01"] and len(src.skipped) == 2


def test_generic_missing_files(generic, tmp_path):
    root = _copy(generic, tmp_path)
    bold = root / "sub-02/func/sub-02_task-movie_run-1_bold.dtseries.nii"
    bold.unlink()
    with pytest.raises(DataError, match="events file without its dtseries") as err:
        get_source("generic", root, _config()).subjects()
    assert "sub-02_task-movie_run-1_events.tsv" in str(err.value)
    shutil.rmtree(root / "sub-01")
    shutil.rmtree(root / "sub-02")
    with pytest.raises(DataError, match="no subjects found"):
        get_source("generic", root, _config()).subjects()
    with pytest.raises(ConfigError, match="unknown layout"):
        get_source("bids", root, _config())


def test_generic_different_tr(generic, tmp_path):
    from glfa.surface.atlas import visual_roi
    from glfa.surface.cifti import write_dtseries

    root = _copy(generic, tmp_path)
    roi = visual_roi("paper")
    bold = root / "sub-02/func/sub-02_task-movie_run-1_bold.dtseries.nii"
    write_dtseries(bold, np.ones((40, roi.n_vertices), np.float32), roi.left, roi.right, 1.0)
    with pytest.raises(DataError, match="differs from 0.8 s") as err:
        get_source("generic", root, _config()).stimuli()
    assert str(bold) in str(err.value)


# ============================================================================ prepare end to end


def _prepare(study, tmp_path, **data):
    from glfa.data.prepare import prepare_study
    from glfa.data.store import StudyStore

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = prepare_study(study.root, tmp_path / "store", _config(**data), progress=False)
    return StudyStore.open(path)


def _zscore(x):
    x = x.astype(np.float64)
    std = x.std(axis=0)
    return np.where(std > 0, (x - x.mean(axis=0)) / np.where(std > 0, std, 1), 0.0)


def test_prepare_fudan_webvid_windows(webvid, tmp_path):
    size = 16
    store = _prepare(webvid, tmp_path, layout="fudan", allow_pickle=True, image_size=size,
                     preprocess={"drop_initial_trs": 3, "hrf_lag_seconds": 4.0},
                     windows={"fmri_seconds": 4.0, "video_seconds": 4.0, "stride_seconds": 4.0, "fps": 3,
                              "video_height": 32, "video_width": 32})
    windows = store.windows()
    assert [(w.stimulus_id, w.onset, w.fmri_start, w.video_start) for w in windows if w.stimulus_id == "3"] == [
        ("3", 0.0, 0, 0), ("3", 4.0, 5, 12)]
    src = get_source("fudan", webvid.root, _config(allow_pickle=True))
    labels = fudan_labels()

    def run_images(subject, r):  # z-score the cortex pixels after the 3-TR drop, then the grid
        sub = f"sub-{int(subject):04d}"
        x = webvid.data[f"processed-fmri/{sub}/hdf5/{sub}_task-video_run-{r}_space-fsLR_den-91k_bold.dtseries.h5"]
        full = np.zeros_like(x[3:], dtype=np.float32)
        full[:, labels != 0] = _zscore(x[3:][:, labels != 0])
        return src.to_image_grid(full, size)

    # clip "3" is trial j=2 of run 2 (subject 1) and trial j=0 of run 4 (subject 2): its response starts
    # at TR 3 + 13 j + 5 of the file, i.e. 13 j + 5 after the drop; the second window 5 TRs later
    w = [w for w in windows if w.stimulus_id == "3"][1]
    np.testing.assert_allclose(store.fmri("1", w), run_images("1", 2)[13 * 2 + 5 + 5:][:5], atol=2e-2)
    np.testing.assert_allclose(store.fmri("2", w), run_images("2", 4)[0 + 5 + 5:][:5], atol=2e-2)
    # test clip "101": subject 2 saw it in run 1 (j=0) and run 6 (j=0): the two are averaged
    w = [w for w in windows if w.stimulus_id == "101"][0]
    expected = (run_images("2", 1)[5:10] + run_images("2", 6)[5:10]) / 2
    np.testing.assert_allclose(store.fmri("2", w), expected, atol=2e-2)
    assert store.captions(w) == ["clip number 101"] * 12


def test_prepare_fudan_fcvid_half_tr_onsets(fcvid, tmp_path):
    store = _prepare(fcvid, tmp_path, layout="fudan", fudan_part="fcvid", image_size=16,
                     preprocess={"drop_initial_trs": 3, "hrf_lag_seconds": 4.0},
                     windows={"fmri_seconds": 4.0, "video_seconds": 4.0, "stride_seconds": 2.0, "fps": 5,
                              "video_height": 32, "video_width": 32})
    src = get_source("fudan", fcvid.root, _config(fudan_part="fcvid"))
    labels = fudan_labels()
    x = fcvid.data["processed-fmri/sub-0001/hdf5/sub-0001_task-video_run-1_space-fsLR_den-91k_bold.dtseries.h5"]
    full = np.zeros_like(x[3:])
    full[:, labels != 0] = _zscore(x[3:][:, labels != 0])
    images = src.to_image_grid(full, 16)
    # clip "2" is j=1 of run 1: onset 2.4 + 10 = 12.4 s; + 4 s lag = 16.4 s = TR 20.5 -> 21 (halves up);
    # 21 - 3 dropped = 18. Window onsets 0, 2, 4, 6 s -> fMRI starts 0, 2 (2.5 -> 3), 5, 7 (7.5 -> 8)
    ws = [w for w in store.windows() if w.stimulus_id == "2"]
    assert [(w.onset, w.fmri_start, w.video_start) for w in ws] == [(0.0, 0, 0), (2.0, 3, 10), (4.0, 5, 20),
                                                                     (6.0, 8, 30)]
    np.testing.assert_allclose(store.fmri("1", ws[1]), images[18 + 3:18 + 3 + 5], atol=2e-2)


def test_prepare_wen_windows(wen, tmp_path):
    store = _prepare(wen, tmp_path, layout="wen2017", image_size=32,
                     preprocess={"drop_initial_trs": 1, "detrend_order": 2, "hrf_lag_seconds": 6.0},
                     windows={"fmri_seconds": 4.0, "video_seconds": 2.0, "stride_seconds": 2.0, "fps": 4,
                              "video_height": 32, "video_width": 32})
    ws = [w for w in store.windows() if w.stimulus_id == "test2"]
    # 12 s movie, 2 s windows every 2 s -> 6 windows; n = 2 TRs; fMRI start = onset / 2 s
    assert [(w.onset, w.fmri_start, w.video_start) for w in ws] == [(2.0 * k, k, 8 * k) for k in range(6)]
    # response = TR round((2 s onset + 6 s lag) / 2) = 4 of the trimmed run, 3 after the 1-TR drop;
    # test2 files hold one extra leading volume, so the window k starts at file TR 5 + k
    proj = store.projector

    def response(r):
        x = wen.data[f"subject1/fmri/test2/cifti/test2_{r}_Atlas.dtseries.nii"][2:].astype(np.float64)
        t = np.arange(len(x))
        trend = np.polynomial.polynomial.polyvander(t, 2)
        x = x - trend @ np.linalg.lstsq(trend, x, rcond=None)[0]
        return _zscore(x)

    mean = (response(1) + response(2)) / 2
    for k in (0, 5):
        expected = proj.to_image(mean[3 + k:3 + k + 2].astype(np.float32))
        np.testing.assert_allclose(store.fmri("1", ws[k]), expected, atol=2e-2)
    assert store.captions([w for w in store.windows() if w.stimulus_id == "seg1"][1])[:2] == [
        "seg1 frame 8", "seg1 frame 9"]


def test_prepare_wen_without_captions_counts_them(wen, tmp_path):
    from glfa.data.prepare import PrepareWarning, prepare_study
    from glfa.data.store import StudyStore

    root = _copy(wen, tmp_path)
    shutil.rmtree(root / "captions")
    config = _config(layout="wen2017", image_size=32, preprocess={"drop_initial_trs": 1, "hrf_lag_seconds": 6.0},
                     windows={"fmri_seconds": 4.0, "video_seconds": 2.0, "stride_seconds": 2.0, "fps": 4,
                              "video_height": 32, "video_width": 32})
    with pytest.warns(PrepareWarning, match="have no captions.*glfa caption"):
        path = prepare_study(root, tmp_path / "store", config, progress=False)
    store = StudyStore.open(path)
    assert sorted(store.manifest["counts"]["uncaptioned_stimuli"]) == sorted(store.stimuli)
    assert set(store.captions(store.windows()[0])) == {""}


def test_prepare_generic(generic, tmp_path):
    store = _prepare(generic, tmp_path, layout="generic", image_size=32,
                     preprocess={"hrf_lag_seconds": 4.0},
                     windows={"fmri_seconds": 1.6, "video_seconds": 2.0, "stride_seconds": 2.0, "fps": 3,
                              "video_height": 32, "video_width": 32})
    assert store.subjects == ["01", "02"] and sorted(store.stimuli) == ["a", "b", "sub_t"]
    ws = store.windows()
    assert {w.split for w in ws if w.stimulus_id == "sub_t"} == {"test"}
    assert [(w.onset, w.fmri_start) for w in ws if w.stimulus_id == "b"] == [(0.0, 0), (2.0, 3)]  # 2 s / 0.8 s = 2.5 -> 3
