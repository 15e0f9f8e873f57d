"""torch Datasets over a study store.

:class:`StimulusWindowDataset` yields one stimulus window with every selected subject's fMRI
for it (the pairs GLFA trains on); :class:`SubjectWindowDataset` yields one subject's window.
Both pickle the store's path, never an open HDF5 handle: each DataLoader worker opens the
file itself on first read, so any number of workers is safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from glfa.data.store import StudyStore
from glfa.data.windows import Window
from glfa.errors import StoreError

__all__ = ["StimulusWindowDataset", "SubjectWindowDataset", "collate_windows"]


def _resolve(store: StudyStore | str | Path, subjects: list[str] | None, split: str | None):
    """(store, subjects) with the subjects checked against the store."""
    if not isinstance(store, StudyStore):
        store = StudyStore.open(store)
    if subjects is None:
        subjects = store.subjects
    subjects = list(subjects)
    if not subjects:
        raise StoreError("no subject selected", path=store.path)
    unknown = [s for s in subjects if s not in store.subjects]
    if unknown:
        raise StoreError(f"subject(s) {unknown} are not in the store; it holds {store.subjects}", path=store.path)
    if split not in (None, "train", "test"):
        raise StoreError(f"unknown split {split!r}; expected 'train', 'test' or None", path=store.path)
    return store, subjects


def _as_tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """``a`` as a ``dtype`` tensor (torch converts float16 several times faster than numpy)."""
    return torch.from_numpy(a).to(dtype)


class _WindowDataset(Dataset):
    """Shared item assembly: frames and captions of a window, optionally without video."""

    def __init__(self, store: StudyStore | str | Path, subjects: list[str] | None, split: str | None,
                 with_video: bool, dtype: torch.dtype):
        self.store, self.subjects = _resolve(store, subjects, split)
        self.split = split
        self.with_video = with_video
        self.dtype = dtype

    def _common(self, window: Window) -> dict[str, Any]:
        item: dict[str, Any] = {
            "captions": self.store.captions(window),
            "stimulus_id": window.stimulus_id,
            "onset": window.onset,
            "window": window.index,
        }
        if self.with_video:
            item["frames"] = torch.from_numpy(np.ascontiguousarray(self.store.frames(window)))  # [m, h, w, 3]
        return item


class StimulusWindowDataset(_WindowDataset):
    """One stimulus window per item, with every selected subject's fMRI for it.

    Only windows whose stimulus every selected subject has are kept. Items:
    ``{"fmri": float32 [S, n, H, W], "subjects": list[str], "frames": uint8 [m, h, w, 3]
    (when with_video), "captions": list[str] (m), "stimulus_id": str, "onset": float, "window": int}``.

    Parameters
    ----------
    store : StudyStore or path
    subjects : list of str, optional
        Subjects to include (default: all of the store's).
    split : {"train", "test", None}
        Windows of this split (None: both).
    with_video : bool
        Read the video frames (False skips the ``frames`` key).
    dtype : torch.dtype
        dtype of the ``fmri`` tensors (float32). ``torch.float16`` (the store's default dtype, so
        nothing is lost) halves the bytes DataLoader workers send: convert on the device.
    """

    def __init__(self, store: StudyStore | str | Path, subjects: list[str] | None = None,
                 split: str | None = None, with_video: bool = True, dtype: torch.dtype = torch.float32):
        super().__init__(store, subjects, split, with_video, dtype)
        self.windows = [w for w in self.store.windows(split)
                        if all(self.store.has(s, w.stimulus_id) for s in self.subjects)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        w = self.windows[i]
        size = self.store.image_size
        stored = np.empty((len(self.subjects), self.store.fmri_frames, size, size), self.store.fmri_dtype)
        for k, s in enumerate(self.subjects):
            self.store.fmri(s, w, out=stored[k])  # [S, n, H, W] in the stored dtype
        item = {"fmri": _as_tensor(stored, self.dtype), "subjects": list(self.subjects)}
        item.update(self._common(w))
        return item


class SubjectWindowDataset(_WindowDataset):
    """One (subject, window) per item, over the selected subjects' stored responses.

    Items: ``{"fmri": float32 [n, H, W], "subject": str, "frames", "captions", "stimulus_id",
    "onset", "window"}`` (as :class:`StimulusWindowDataset`).
    """

    def __init__(self, store: StudyStore | str | Path, subjects: list[str] | None = None,
                 split: str | None = None, with_video: bool = True, dtype: torch.dtype = torch.float32):
        super().__init__(store, subjects, split, with_video, dtype)
        self.items = [(s, w) for s in self.subjects for w in self.store.windows(split)
                      if self.store.has(s, w.stimulus_id)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        subject, w = self.items[i]
        size = self.store.image_size
        stored = np.empty((self.store.fmri_frames, size, size), self.store.fmri_dtype)
        item = {"fmri": _as_tensor(self.store.fmri(subject, w, out=stored), self.dtype), "subject": subject}
        item.update(self._common(w))
        return item


def collate_windows(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items: tensors are stacked (``fmri`` [B, ...], ``frames`` [B, m, h, w, 3]), the rest become lists.

    Inside a DataLoader worker, torch's ``default_collate`` stacks straight into shared memory,
    which saves the copy the loader would otherwise make to send the batch.
    """
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            batch[key] = default_collate(values)
        elif key in ("onset",):
            batch[key] = torch.tensor(values, dtype=torch.float64)
        elif key in ("window",):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    return batch
