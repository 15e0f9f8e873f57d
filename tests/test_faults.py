"""The fault battery: every fault a careless or hostile user found is one line here.

Each case reproduces one fault through the command line (the issue's repro lines are the recipe)
and checks what users rely on: exit status 2, a single line on stderr naming the file (and the
dataset or field), and nothing half-written left behind (no temporary, no partial output).
A new fault joins :data:`CASES` in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import yaml
from fixtures import dead_pid, write_decoding_store, write_generic_study

from glfa.cli import main
from glfa.data.store import StudyStore
from glfa.errors import OutputError
from glfa.evaluation import GenerationsFolder
from glfa.io import install_dir, temporary_name, write_bytes_atomic

pytestmark = pytest.mark.usefixtures("one_thread")

# What a half-written output leaves: temporaries of glfa.io, StoreWriter's partial stores, checkpoints' temporaries
LEFTOVER_MARKS = (".tmp-", ".partial-", ".old-", ".trash-")
# A folder that accepts no new file, even for root: the "read-only output folder" of the issue
READ_ONLY = Path("/proc")


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> SimpleNamespace:
    """A tiny store, a config, a pretrain run with checkpoints and a fitted aligner, built once."""
    root = tmp_path_factory.mktemp("faults")
    store = write_decoding_store(root / "store")
    train = {"checkpoint_every": 1, "log_every": 1, "num_workers": 0}
    config = {"name": "tiny", "output_dir": str(root / "runs"), "device": "cpu", "model": {"preset": "tiny"},
              "subjects": {"held_out": ["s3"]}, "pretrain": {**train, "steps": 2, "batch_size": 4},
              "align": {"steps": 2, "batch_size": 2}}
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run = root / "run"
    assert main(["train", "pretrain", "-c", str(config_path), "--store", str(store), "--out", str(run), "--quiet"]) == 0
    aligner = root / "aligner"
    assert main(["align", "fit", str(store), "-o", str(aligner), "-c", str(config_path), "--quiet"]) == 0
    return SimpleNamespace(root=root, store=store, config=config_path, run=run, aligner=aligner)


# ----------------------------------------------------------------------------- ways to damage a copy


def _copy_store(fx, tmp: Path) -> Path:
    return Path(shutil.copytree(fx.store, tmp / "store"))


def _flip(path: Path, offset: int, mask: int = 0x10) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def _flipped_chunk(fx, tmp: Path, dataset: str) -> Path:
    """A store copy with one bit flipped inside the first chunk of ``dataset`` (values may stay finite)."""
    store = _copy_store(fx, tmp)
    with h5py.File(store / "study.h5", "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    _flip(store / "study.h5", offset + 5)
    return store


def _deleted(fx, tmp: Path, dataset: str) -> Path:
    store = _copy_store(fx, tmp)
    with h5py.File(store / "study.h5", "r+") as f:
        del f[dataset]
    return store


def _broken_header(fx, tmp: Path, dataset: str) -> Path:
    """A store copy whose object header of ``dataset`` is overwritten."""
    store = _copy_store(fx, tmp)
    with h5py.File(store / "study.h5", "r") as f:
        address = h5py.h5o.get_info(f[dataset].id).addr
    with open(store / "study.h5", "r+b") as fh:
        fh.seek(address)
        fh.write(b"\xff" * 16)
    return store


def _nan_fmri(fx, tmp: Path) -> Path:
    """A store copy with NaN fMRI frames written through HDF5 (so every checksum still holds)."""
    store = _copy_store(fx, tmp)
    with h5py.File(store / "study.h5", "r+") as f:
        f["fmri/s0/frames"][:3] = np.nan
    return store


def _state(fx, tmp: Path, **changes) -> Path:
    """A copy of the pretrain run whose newest checkpoint's state.json has ``changes``."""
    run = Path(shutil.copytree(fx.run, tmp / "run"))
    root = run / "pretrain" / "checkpoints"
    state_path = root / (root / "latest").read_text().strip() / "state.json"
    state = json.loads(state_path.read_text())
    for key, value in changes.items():
        if key == "offset":
            state["data"]["offset"] = value
        else:
            state[key] = value
    state_path.write_text(json.dumps(state))
    return run


def _file(path: Path, text: str = "not a folder\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _npy(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _config_text(tmp: Path, text: str) -> Path:
    return _file(tmp / "config.yaml", text)


def _nan_study(tmp: Path) -> Path:
    """A generic study whose subject-01 dtseries holds NaN at TR 4 of the 7th ROI column."""
    from glfa.surface.cifti import read_dtseries, write_dtseries

    study = write_generic_study(tmp / "study", subjects=("01",), rois="paper").root
    bold = study / "sub-01" / "func" / "sub-01_task-movie_run-1_bold.dtseries.nii"
    series = read_dtseries(bold)
    data = series.data.copy()
    data[4, 6] = np.nan
    write_dtseries(bold, data, series.left, series.right, series.tr)
    return study


# ----------------------------------------------------------------------------- the battery
# id: (argv builder (fx, tmp) -> (argv, the texts the one line must hold, the output that must not appear))


def _train(fx, tmp, *extra):
    return ["train", "pretrain", "-c", str(fx.config), "--store", str(fx.store), "--quiet", *extra]


CASES = {
    # 2: flipped bytes are caught on read, named by dataset
    "verify-flipped-fmri": lambda fx, tmp: (["verify", str(_flipped_chunk(fx, tmp, "fmri/s1/frames")), "--quiet"],
                                            ["study.h5 is damaged", "fmri/s1/frames", "Fletcher-32"], None),
    "align-fit-flipped-fmri": lambda fx, tmp: (
        ["align", "fit", str(_flipped_chunk(fx, tmp, "fmri/s1/frames")), "-o", str(tmp / "al"), "-c", str(fx.config),
         "--quiet"], ["fmri/s1/frames", "Fletcher-32"], tmp / "al"),
    # 3: damaged stores
    "flipped-captions": lambda fx, tmp: (["verify", str(_flipped_chunk(fx, tmp, "video/captions"))],
                                         ["video/captions", "Fletcher-32"], None),
    "deleted-fmri-frames": lambda fx, tmp: (
        ["align", "fit", str(_deleted(fx, tmp, "fmri/s0/frames")), "-o", str(tmp / "al"), "-c", str(fx.config),
         "--quiet"], ["fmri/s0/frames", "missing"], tmp / "al"),
    "broken-object-header": lambda fx, tmp: (["verify", str(_broken_header(fx, tmp, "windows/onset"))],
                                             ["study.h5 is damaged", "windows/onset"], None),
    "broken-fmri-header": lambda fx, tmp: (["verify", str(_broken_header(fx, tmp, "fmri/s1/frames")), "--quiet"],
                                           ["study.h5 is damaged (Unable to open object", "fmri/s1/frames"], None),
    "nan-fmri-pretrain": lambda fx, tmp: (
        ["train", "pretrain", "-c", str(fx.config), "--store", str(_nan_fmri(fx, tmp)), "--out", str(tmp / "r"),
         "--quiet"], ["fmri/s0/frames", "non-finite"], None),
    "nan-fmri-align": lambda fx, tmp: (
        ["evaluate", "alignment", str(_nan_fmri(fx, tmp)), "-c", str(fx.config), "-o", str(tmp / "ev"), "--quiet"],
        ["store", "fmri/s0/frames", "non-finite"], tmp / "ev" / "alignment.json"),
    # 4: checkpoint state.json of the wrong types
    "state-step-text": lambda fx, tmp: (_train(fx, tmp, "--out", str(_state(fx, tmp, step="ten")), "--resume"),
                                        ["state.json", "step", "'ten'"], None),
    "state-offset-text": lambda fx, tmp: (_train(fx, tmp, "--out", str(_state(fx, tmp, offset="8")), "--resume"),
                                          ["state.json", "data", "offset"], None),
    "state-rng-number": lambda fx, tmp: (_train(fx, tmp, "--out", str(_state(fx, tmp, rng=5)), "--resume"),
                                         ["state.json", "rng", "5"], None),
    # 5: output locations that cannot be written, refused before the work
    "train-out-is-a-file": lambda fx, tmp: (_train(fx, tmp, "--out", str(_file(tmp / "f"))), ["f: --out", "is a file"],
                                            None),
    "evaluate-alignment-o-is-a-file": lambda fx, tmp: (
        ["evaluate", "alignment", str(fx.store), "-c", str(fx.config), "-o", str(_file(tmp / "f")), "--quiet"],
        ["f: --output", "is a file"], None),
    "evaluation-is-a-file": lambda fx, tmp: (["evaluate", str(_file(tmp / "run" / "evaluation").parent)],
                                             ["evaluation", "is a file"], None),
    "report-is-a-folder": lambda fx, tmp: (["report", str(tmp), "--out", str(_folder(tmp / "r.html"))],
                                           ["r.html: --out", "is a folder"], None),
    "train-read-only": lambda fx, tmp: (_train(fx, tmp, "--out", str(READ_ONLY / "run")),
                                        ["--out", "cannot be written"], None),
    "prepare-read-only": lambda fx, tmp: (["prepare", str(tmp), str(READ_ONLY / "store"), "--quiet"],
                                          ["store", "cannot be written"], None),
    "align-fit-read-only": lambda fx, tmp: (
        ["align", "fit", str(fx.store), "-o", str(READ_ONLY / "al"), "-c", str(fx.config), "--quiet"],
        ["--output", "cannot be written"], None),
    "align-transform-read-only": lambda fx, tmp: (
        ["align", "transform", str(fx.aligner), "--store", str(fx.store), "--subject", "s3", "-o",
         str(READ_ONLY / "a.npz")], ["--output", "cannot be written"], None),
    "align-transform-o-is-a-folder": lambda fx, tmp: (
        ["align", "transform", str(fx.aligner), "--store", str(fx.store), "--subject", "s3", "-o",
         str(_folder(tmp / "out.npz"))], ["out.npz", "is a folder"], None),
    # 6, 7: messages
    "yaml-syntax": lambda fx, tmp: (["simulate", str(tmp / "o"), "-c", str(_config_text(tmp, "data:\n  tr: [1,\n"))],
                                    ["config.yaml", "line 3, column 1"], tmp / "o"),
    "config-is-a-folder": lambda fx, tmp: (["simulate", str(tmp / "o"), "-c", str(tmp)], ["is a folder"], tmp / "o"),
    "config-empty": lambda fx, tmp: (["simulate", str(tmp / "o"), "-c", str(_config_text(tmp, "\n"))],
                                     ["config.yaml", "is empty"], tmp / "o"),
    "prepare-onto-a-file": lambda fx, tmp: (["prepare", str(tmp), str(_file(tmp / "s")), "--quiet"],
                                            ["s: store", "is a file"], None),
    "align-transform-names-input": lambda fx, tmp: (
        ["align", "transform", str(fx.aligner), str(_npy(tmp / "x.npy", np.ones((2, 5, 5)))), "-o", str(tmp / "y.npy")],
        ["x.npy", "do not match"], tmp / "y.npy"),
    "prepare-nan-names-grayordinate": lambda fx, tmp: (
        ["prepare", str(_nan_study(tmp)), str(tmp / "s"), "--quiet", "-c", str(_config_text(tmp, yaml.safe_dump(
            {"model": {"preset": "tiny"}, "data": {"image_size": 32, "tr": 0.8}})))],
        ["sub-01_task-movie_run-1_bold.dtseries.nii", "TR 4 of the file's", "CIFTI_STRUCTURE_CORTEX_LEFT vertex"],
        tmp / "s"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fault_is_one_line_exit_2_and_leaves_nothing(case, fx, tmp_path, capsys, monkeypatch):
    tmp = tmp_path / "t"
    tmp.mkdir()
    argv, texts, absent = CASES[case](fx, tmp)
    capsys.readouterr()
    # the fMRI is checked before any video is decoded (issue item 8)
    monkeypatch.setattr("glfa.data.video.read_video", lambda *a, **k: pytest.fail("video decoded first"))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("glfa: error: "), err
    for text in texts:
        assert text in lines[0], lines[0]
    leftovers = [p for p in tmp_path.rglob("*") if any(mark in p.name for mark in LEFTOVER_MARKS)]
    assert not leftovers
    if absent is not None:
        assert not absent.exists()


# ----------------------------------------------------------------------------- beyond one line


def test_a_copied_store_is_the_same_study(fx, tmp_path):
    """Issue item 1: the protocol follows the store's content, not its path."""
    copy = StudyStore.open(shutil.copytree(fx.store, tmp_path / "S2"))
    other = StudyStore.open(write_decoding_store(tmp_path / "other", seed=1))
    store = StudyStore.open(fx.store)
    assert copy.identity == store.identity != other.identity
    model = {"store": str(store.path), "store_identity": store.identity, "train_subjects": ["s1", "s2"]}

    def protocol(decoded: StudyStore) -> str:
        index = {"store": str(decoded.path), "store_identity": decoded.identity, "subject": "s3", "split": "test"}
        return GenerationsFolder(path=tmp_path, index=index, model_dir=tmp_path, model=model, shape=()).protocol()[0]

    assert protocol(copy) == protocol(store) == "cross-subject"
    assert protocol(other) == "cross-dataset"


def test_verify_reads_a_sound_store(fx, capsys):
    assert main(["verify", str(fx.store), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Fletcher-32" in out and "identity" in out
    report = StudyStore.open(fx.store).verify()
    assert report["checksummed"] and report["digests"] == 5  # video, mask, 3 subjects' fMRI


def test_verify_finds_tables_changed_behind_the_checksums(fx, tmp_path):
    """A value rewritten through HDF5 keeps every checksum valid; the content identity still catches it."""
    store = Path(shutil.copytree(fx.store, tmp_path / "store"))
    with h5py.File(store / "study.h5", "r+") as f:
        f["windows/onset"][0] = 99.0
    with pytest.raises(Exception, match="identity"):
        StudyStore.open(store).verify()


def test_warnings_and_the_chosen_preset_are_one_clean_line_each(fx, tmp_path, capsys):
    config = _config_text(tmp_path, "align:\n  steps: 2\n")  # a truncated config: no model section
    assert main(["align", "fit", str(fx.store), "-o", str(tmp_path / "al"), "-c", str(config), "--quiet"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("glfa: warning: ") and "model.preset" in err[0] and "'full'" in err[0]


def test_a_living_runs_temporary_is_kept_and_a_dead_ones_removed(tmp_path):
    """Issue 12: a second `glfa generate` must not delete the first one's folder under construction."""
    out = tmp_path / "generations" / "glfa" / "s3-test"
    out.parent.mkdir(parents=True)
    living = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = out.with_name(f".{out.name}.tmp-{living.pid}-abcd")
        dead = out.with_name(f".{out.name}.tmp-{dead_pid()}-abcd")
        for folder in (alive, dead):
            (folder / "decoded").mkdir(parents=True)
        with install_dir(out) as tmp:
            (tmp / "index.json").write_text("{}")
        assert alive.is_dir() and not dead.exists()
        assert sorted(p.name for p in out.parent.iterdir()) == sorted([alive.name, out.name])
        assert (out / "index.json").is_file()
    finally:
        living.kill()
        living.wait()


def test_a_failed_rename_leaves_no_temporary(tmp_path):
    """Issue 12: the atomic writer whose rename fails raises one OutputError and removes its temporary."""
    target = tmp_path / "report.html"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(OutputError, match="report.html: cannot be written"):
        write_bytes_atomic(target, b"<html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    assert temporary_name(target).name.startswith(f".report.html.tmp-{os.getpid()}-")


def test_the_half_float_check_finds_exactly_the_non_finite_values():
    """The store's fast NaN/Inf test on float16 frames (exponent bits) agrees with np.isfinite on every value."""
    from glfa.data.store import _non_finite

    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    np.testing.assert_array_equal(_non_finite(every), ~np.isfinite(every))
    np.testing.assert_array_equal(_non_finite(every.astype(np.float32)), ~np.isfinite(every))
