"""The synthetic study: layout, planted truth, subject differences, decodability, reproducibility."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from glfa.cli import main
from glfa.config import validate_config
from glfa.data.synthetic import simulate_study
from glfa.data.synthetic.design import double_gamma_hrf, make_design, sampling_matrix
from glfa.data.synthetic.subjects import OFFSETS, mix_parcels, parcellate
from glfa.data.synthetic.cortex import cortex_geometry
from glfa.data.video import read_video
from glfa.errors import ConfigError, DataError
from glfa.metrics.alignment import fsc_matrix
from glfa.metrics.alignment import isc as isc_of
from glfa.surface.cifti import read_dtseries

#: A tiny study: 2 runs of 6 clips per subject.
TINY = dict(n_subjects=3, n_categories=3, train_clips_per_category=1, test_clips_per_category=1, test_repeats=1,
            clip_seconds=4.0, blank_seconds=1.0, clips_per_run=6, frame_size=32)
#: A small study for decoding: 6 categories, 4 training and 2 test clips each, test shown twice;
#: default subject differences, less noise than the default (so that within-subject decoding is
#: limited by the data's size rather than its noise).
SMALL = dict(n_subjects=3, n_categories=6, train_clips_per_category=4, test_clips_per_category=2, test_repeats=2,
             clip_seconds=6.0, blank_seconds=2.0, clips_per_run=12, frame_size=32, snr=2.0)
LAG = 4.0  # seconds of haemodynamic lag used to read responses


def _config(**sim):
    return validate_config({"simulation": sim})


def _runs(root: Path, sid: str):
    """[(bold [T, V], events rows)] of one subject, in run order."""
    func = root / f"sub-{sid}" / "func"
    bolds = sorted(func.glob("*_bold.dtseries.nii"), key=lambda p: int(p.name.split("_run-")[1].split("_")[0]))
    out = []
    for bold in bolds:
        with open(str(bold).replace("_bold.dtseries.nii", "_events.tsv"), newline="") as fh:
            events = list(csv.DictReader(fh, delimiter="\t"))
        out.append((read_dtseries(bold), events))
    return out


def _bold(root: Path, sid: str) -> np.ndarray:
    return np.concatenate([series.data for series, _ in _runs(root, sid)])


def _windows(root: Path, sid: str, tr: float, n_windows: int):
    """Per presentation, ``n_windows`` consecutive windows of z-scored BOLD: (X [n, V], category [n], split [n])."""
    clips = {c["clip_id"]: c for c in json.loads((root / "truth" / "clips.json").read_text())["clips"]}
    xs, ys, splits = [], [], []
    for series, events in _runs(root, sid):
        z = (series.data - series.data.mean(0)) / (series.data.std(0) + 1e-6)
        for ev in events:
            start, duration = float(ev["onset"]) + LAG, float(ev["duration"])
            for w in range(n_windows):
                a = int(round((start + w * duration / n_windows) / tr))
                b = int(round((start + (w + 1) * duration / n_windows) / tr))
                xs.append(z[a:b].mean(0))
                ys.append(clips[ev["stim_file"][:-4]]["category"])
                splits.append(ev["split"])
    return np.array(xs), np.array(ys), np.array(splits)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return simulate_study(tmp_path_factory.mktemp("tiny") / "study", _config(**TINY))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return simulate_study(tmp_path_factory.mktemp("small") / "study", _config(**SMALL))


def test_layout(tiny):
    study = json.loads((tiny / "study.json").read_text())
    assert study["subjects"] == ["01", "02", "03"] and study["seed"] == 0
    clips = json.loads((tiny / "truth" / "clips.json").read_text())["clips"]
    assert len(clips) == 6 and {c["split"] for c in clips} == {"train", "test"}
    frames, fps = read_video(tiny / "stimuli" / f"{clips[0]['clip_id']}.mp4")
    assert frames.shape == (12, 32, 32, 3) and fps == pytest.approx(3.0)
    runs = _runs(tiny, "01")
    assert len(runs) == len(study["runs"]) == 1 + 1  # 3 training clips in one run, 3 test clips in another
    series, events = runs[0]
    assert series.tr == pytest.approx(0.8)
    assert series.data.shape == (study["runs"][0]["n_trs"], study["n_vertices"])
    assert series.left.size + series.right.size == 8405  # the paper's visual ROI
    assert list(events[0]) == ["onset", "duration", "stim_file", "caption", "split"]
    assert float(events[0]["onset"]) == 4.0 and float(events[1]["onset"]) == 9.0  # lead-in, clip + blank
    assert all(ev["caption"].count(", the camera ") == 1 for ev in events)
    assert not list(tiny.parent.glob(".*partial*"))


def test_clips_are_distinct_and_test_clips_repeat(small):
    clips = json.loads((small / "truth" / "clips.json").read_text())["clips"]
    keys = {(c["category"], tuple(np.round(c["centre"], 3)), c["motion"]) for c in clips}
    assert len(keys) == len(clips)
    shown: dict[str, int] = {}
    for _, events in _runs(small, "01"):
        for ev in events:
            shown[ev["stim_file"]] = shown.get(ev["stim_file"], 0) + 1
            assert ev["split"] == ("test" if "_test" in ev["stim_file"] else "train")
    assert sorted(set(shown.values())) == [1, 2] and len(shown) == len(clips)


def test_identical_brains_without_differences(tmp_path):
    root = simulate_study(tmp_path / "same", _config(**TINY, subject_difference=0.0, snr=1e4))
    truth = [np.load(root / "truth" / f"sub-{s}.npz") for s in ("01", "02", "03")]
    for key in truth[0].files:
        if key.startswith("bold_"):
            np.testing.assert_array_equal(truth[0][key], truth[1][key])
            np.testing.assert_array_equal(truth[0][key], truth[2][key])
    a, b = _bold(root, "01"), _bold(root, "02")
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9999


def test_similarity_falls_as_differences_grow(tmp_path):
    fsc, isc = [], []
    for level in (0.0, 1.0, 2.0):
        root = simulate_study(tmp_path / f"d{level}", _config(**TINY, subject_difference=level, snr=3.0))
        series = {s: _bold(root, s) for s in ("01", "02", "03")}  # [T, V] each
        matrix = fsc_matrix(series)
        fsc.append(np.mean(matrix[np.triu_indices(3, k=1)]))
        isc.append(np.mean(list(isc_of(series).values())))
    assert all(x > y for x, y in zip(fsc, fsc[1:])), fsc
    assert all(x > y for x, y in zip(isc, isc[1:])), isc
    assert fsc[-1] < fsc[0] - 0.2 and isc[-1] < isc[0] - 0.2, (fsc, isc)


def test_planted_truth_is_recorded(tiny):
    subjects = json.loads((tiny / "truth" / "subjects.json").read_text())
    config = _config(**TINY)
    for sid, info in subjects.items():
        truth = np.load(tiny / "truth" / f"sub-{sid}.npz")
        rms = np.sqrt((truth["displacement"].astype(float) ** 2).sum(1).mean())
        assert rms == pytest.approx(config.simulation.deformation_mm, rel=1e-3)
        assert info["deformation_rms_mm"] == pytest.approx(rms, rel=1e-3)
        assert truth["mixing"].shape[0] == truth["mixing"].shape[1]
    template = np.load(tiny / "truth" / "template.npz")
    assert template["flat_xy_mm"].shape == (8405, 2) and template["category_embedding"].shape[0] == 3


def test_category_is_decodable_within_but_less_across_subjects(small):
    from sklearn.linear_model import RidgeClassifier

    tr = 0.8
    data = {s: _windows(small, s, tr, n_windows=2) for s in ("01", "02", "03")}
    within, across = [], []
    for s, (x, y, split) in data.items():
        test = split == "test"
        model = RidgeClassifier(alpha=1e3).fit(x[~test], y[~test])
        within.append((model.predict(x[test]) == y[test]).mean())
        others = [o for o in data if o != s]
        ox = np.concatenate([data[o][0][data[o][2] == "train"] for o in others])
        oy = np.concatenate([data[o][1][data[o][2] == "train"] for o in others])
        across.append((RidgeClassifier(alpha=1e3).fit(ox, oy).predict(x[test]) == y[test]).mean())
    chance = 1 / SMALL["n_categories"]
    assert min(within) > chance + 0.35, within
    assert np.mean(across) < np.mean(within) - 0.1, (within, across)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    config = _config(**{**TINY, "n_subjects": 2})
    a = simulate_study(tmp_path / "a", config, seed=7)
    b = simulate_study(tmp_path / "b", config, seed=7)
    c = simulate_study(tmp_path / "c", config, seed=8)

    def digest(root: Path) -> dict[str, str]:
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    da, db, dc = digest(a), digest(b), digest(c)
    assert da == db
    assert set(da) == set(dc)
    assert sum(da[k] != dc.get(k) for k in da) > len(da) // 2


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        simulate_study(tmp_path / "out", _config(**TINY))
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_too_many_categories_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="n_categories"):
        simulate_study(tmp_path / "x", _config(**{**TINY, "n_categories": 40}))
    assert not (tmp_path / "x").exists()


def test_cli_simulate(tmp_path, capsys):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("simulation:\n" + "".join(f"  {k}: {v}\n" for k, v in {**TINY, "n_subjects": 2}.items()))
    assert main(["simulate", str(tmp_path / "study"), "-c", str(cfg), "--seed", "3"]) == 0
    assert "synthetic study written to" in capsys.readouterr().out
    assert json.loads((tmp_path / "study" / "study.json").read_text())["seed"] == 3
    assert main(["simulate", str(tmp_path / "study"), "-c", str(cfg)]) == 2  # exists: one clear line
    assert "not empty" in capsys.readouterr().err


def test_hrf_and_sampling_by_hand():
    t = np.arange(0, 32, 0.01)
    h = double_gamma_hrf(t)
    assert 4.5 < t[np.argmax(h)] < 5.5 and h.sum() * 0.01 == pytest.approx(1.0, abs=1e-3)
    assert double_gamma_hrf(np.array([-1.0, 0.0]))[0] == 0.0
    rng = np.random.default_rng(0)
    (run,) = make_design([0], [], test_repeats=1, clips_per_run=1, clip_seconds=20.0, blank_seconds=0.0, tr=1.0, rng=rng)
    w = sampling_matrix(run, frames_per_clip=20, fps=1.0, clip_seconds=20.0, tr=1.0, delay=0.0)
    bold = w.sum(axis=1)  # a sustained response of 1 from 4 s to 24 s
    from scipy.stats import gamma

    def area(t):  # integral of the unit-area double gamma from 0 to t
        t = np.clip(t, 0, None)
        return (gamma.cdf(t, 6) - gamma.cdf(t, 16) / 6) / (5 / 6)

    times = np.arange(run.n_trs, dtype=float)
    expected = area(times - 4.0) - area(times - 24.0)
    np.testing.assert_allclose(bold, expected, atol=0.02)
    assert bold[:5].max() == 0.0
    late = sampling_matrix(run, frames_per_clip=20, fps=1.0, clip_seconds=20.0, tr=1.0, delay=2.0).sum(axis=1)
    np.testing.assert_allclose(late[8:30], bold[6:28], atol=1e-9)  # a 2 s delay shifts by 2 TRs


def test_parcel_mixing_moves_patterns_between_neighbours():
    geometry = cortex_geometry("paper")
    parcels = parcellate(geometry)
    x = np.zeros((1, geometry.n_vertices), np.float32)
    p = parcels.parcel[0]
    o = next(i for i in range(len(OFFSETS)) if parcels.neighbours[p, i] >= 0)
    q = parcels.neighbours[p, o]
    source = parcels.partner[o, 0]
    x[0, source] = 1.0
    mixing = np.eye(parcels.n_parcels)
    mixing[p, q] = 0.5
    y = mix_parcels(x, parcels, mixing)
    assert y[0, 0] == pytest.approx(0.5 + x[0, 0]) and y[0, source] == 1.0
    assert mix_parcels(x, parcels, np.eye(parcels.n_parcels)) is x
