"""Datasets over a store with planted values, in the main process and in 2 DataLoader workers."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from glfa.data.datasets import StimulusWindowDataset, SubjectWindowDataset, collate_windows
from glfa.data.store import StoreWriter, StudyStore
from glfa.data.windows import Window
from glfa.errors import StoreError

SIZE = 16
N, M = 3, 2  # fMRI frames and video frames per window
STIMULI = {"a": "train", "b": "train", "c": "test"}
SEEN = {"s1": ("a", "b", "c"), "s2": ("a", "c"), "s3": ("a", "b", "c")}


def _fmri_value(subject, sid, t):
    return 100 * int(subject[1]) + 10 * list(STIMULI).index(sid) + t


def _frame_value(sid, f):
    return 20 * list(STIMULI).index(sid) + f


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ds") / "store"
    with StoreWriter(path, image_size=SIZE, video_size=(4, 6)) as w:
        w.set_mask(np.ones((SIZE, SIZE), bool))
        windows = []
        for sid, split in STIMULI.items():
            frames = np.stack([np.full((4, 6, 3), _frame_value(sid, f), np.uint8) for f in range(6)])
            w.add_stimulus(sid, split, frames, [f"{sid}{f}" for f in range(6)], duration=3.0)
            for k in range(3):
                windows.append(Window(sid, split, float(k), k, 2 * k, len(windows)))
        for subject, seen in SEEN.items():
            for sid in seen:
                resp = np.stack([np.full((SIZE, SIZE), _fmri_value(subject, sid, t), np.float32) for t in range(5)])
                w.add_response(subject, sid, resp)
        w.finish(windows, {"tr": 1.0, "fps": 2.0, "fmri_frames": N, "video_frames": M, "config": {}})
    return StudyStore.open(path)


def _check_stimulus_item(item, subjects):
    sid, k = item["stimulus_id"], int(item["onset"])
    assert item["fmri"].dtype == torch.float32 and item["fmri"].shape == (len(subjects), N, SIZE, SIZE)
    for i, s in enumerate(subjects):
        assert item["fmri"][i, :, 0, 0].tolist() == [_fmri_value(s, sid, k + t) for t in range(N)]
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (M, 4, 6, 3)
    assert item["frames"][:, 0, 0, 0].tolist() == [_frame_value(sid, 2 * k + f) for f in range(M)]
    assert item["captions"] == [f"{sid}{2 * k + f}" for f in range(M)]


def test_stimulus_windows_keep_only_stimuli_every_subject_has(store):
    ds = StimulusWindowDataset(store, ["s1", "s2", "s3"], "train")
    assert [w.stimulus_id for w in ds.windows] == ["a"] * 3  # s2 never saw b
    ds = StimulusWindowDataset(store, ["s3", "s1"], "train")
    assert len(ds) == 6
    for i in range(len(ds)):
        item = ds[i]
        assert item["subjects"] == ["s3", "s1"] and item["window"] == ds.windows[i].index
        _check_stimulus_item(item, ["s3", "s1"])
    assert len(StimulusWindowDataset(store.path, None, "test")) == 3
    assert len(StimulusWindowDataset(store, None, None)) == 6


def test_without_video(store):
    item = StimulusWindowDataset(store, ["s1"], "test", with_video=False)[0]
    assert "frames" not in item and item["captions"] == ["c0", "c1"]


def test_float16_items_hold_the_stored_values(store):
    import torch

    full = StimulusWindowDataset(store, ["s1", "s2"], "train")[1]["fmri"]
    half = StimulusWindowDataset(store, ["s1", "s2"], "train", dtype=torch.float16)[1]["fmri"]
    assert full.dtype == torch.float32 and half.dtype == torch.float16
    assert torch.equal(half.float(), full)  # the store keeps float16: nothing is lost
    one = SubjectWindowDataset(store, ["s1"], "train", dtype=torch.float16)[0]["fmri"]
    assert one.dtype == torch.float16


def test_subject_windows(store):
    ds = SubjectWindowDataset(store, ["s1", "s2"], "train")
    assert len(ds) == 6 + 3
    item = ds[7]
    assert item["subject"] == "s2" and item["stimulus_id"] == "a"
    assert item["fmri"].shape == (N, SIZE, SIZE)
    assert item["fmri"][:, 0, 0].tolist() == [_fmri_value("s2", "a", 1 + t) for t in range(N)]


def test_bad_selection(store):
    with pytest.raises(StoreError, match="s9"):
        StimulusWindowDataset(store, ["s1", "s9"], "train")
    with pytest.raises(StoreError, match="unknown split"):
        SubjectWindowDataset(store, None, "val")


def test_two_workers_give_the_same_batches(store):
    ds = StimulusWindowDataset(store, ["s1", "s3"], None)
    store.fmri("s1", ds.windows[0])  # the parent process has the file open before the workers fork
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_windows, shuffle=False)
    batches = list(loader)
    assert sum(len(b["stimulus_id"]) for b in batches) == len(ds)
    b = batches[0]
    assert b["fmri"].shape == (4, 2, N, SIZE, SIZE) and b["frames"].shape == (4, M, 4, 6, 3)
    assert b["window"].tolist() == [w.index for w in ds.windows[:4]]
    assert b["onset"].dtype == torch.float64 and len(b["captions"]) == 4 and len(b["subjects"]) == 4
    for batch in batches:
        for j in range(len(batch["stimulus_id"])):
            _check_stimulus_item({k: v[j] for k, v in batch.items()}, ["s1", "s3"])
    subject_batches = list(DataLoader(SubjectWindowDataset(store, ["s2"], "test"), batch_size=2, num_workers=2,
                                      collate_fn=collate_windows))
    assert [s for b in subject_batches for s in b["subject"]] == ["s2"] * 3
