"""The study store: a folder holding a prepared study, written once by ``glfa prepare``.

Layout of ``STORE/``::

    manifest.json   glfa version, format version, resolved config, source checksums,
                    subjects, counts, "complete": true  (written last)
    study.h5        every array (HDF5, one chunk per frame):
        subjects                      [S] subject ids (group s{i} holds subject i)
        stimuli/{id,split,duration,video_start,video_length}
        video/frames                  [F, h, w, 3] uint8, all stimuli one after the other
        video/captions                [F] one caption per stored frame
        fmri/s{i}/frames              [T_i, H, W] float16 (data.fmri_dtype), all responses of subject i
        fmri/s{i}/{stimulus,start,length}   where each stimulus' response lies in frames
        windows/{stimulus,split,onset,fmri_start,video_start}
        mask                          [H, W] bool, the cortex pixels
        projector/*                   FlatMapProjector.to_arrays() (surface sources only)
    cache/          free for later feature caches (embeddings, latents)

:class:`StoreWriter` builds the store in a hidden folder beside the target and renames it into
place at the very end, so an interrupted ``prepare`` never leaves a store at the target.
:meth:`StudyStore.open` refuses a folder without a complete manifest or one written by a newer
format or glfa version. Readers open the HDF5 file lazily, once per process, so a
:class:`StudyStore` can be pickled into DataLoader workers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from glfa import __version__
from glfa.data.windows import Window
from glfa.errors import StoreError

__all__ = ["FORMAT_VERSION", "MANIFEST", "H5_FILE", "StudyStore", "StoreWriter"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
H5_FILE = "study.h5"
CACHE_DIR = "cache"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)-\w+$")


def _version_tuple(version: str) -> tuple[int, ...]:
    """'1.2.3rc1' -> (1, 2, 3): the leading integers of a dotted version."""
    parts = []
    for piece in str(version).split("."):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _strings(ds) -> list[str]:
    """An HDF5 string dataset as a list of str."""
    return [str(s) for s in ds.asstr()[()]]


def _incomplete(path: Path, why: str) -> StoreError:
    return StoreError(
        f"incomplete store ({why}): it was interrupted while being written; "
        "rerun glfa prepare with --overwrite",
        path=path,
    )


class StudyStore:
    """Read access to a prepared study store (open it with :meth:`StudyStore.open`).

    Small tables (windows, offsets, captions, mask) are read at open; fMRI and video frames
    are read on demand from ``study.h5``, opened lazily once per process.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self._path = Path(path)
        self._manifest = manifest
        self._h5 = None
        self._h5_pid: int | None = None
        self._datasets: dict[str, Any] = {}
        self._config = None
        self._load_tables()
        self._overlay_cached_captions()

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | Path) -> StudyStore:
        """Open the store folder ``path``; StoreError if it is missing, incomplete or from a newer version."""
        path = Path(path)
        if not path.is_dir():
            raise StoreError("no study store here (expected a folder written by glfa prepare)", path=path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise _incomplete(path, f"no {MANIFEST}")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise _incomplete(path, f"{MANIFEST} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("complete") is not True:
            raise _incomplete(path, f'{MANIFEST} lacks "complete": true')
        fmt = manifest.get("format_version")
        if not isinstance(fmt, int):
            raise StoreError(f"{MANIFEST} has no integer format_version", path=path)
        if fmt > FORMAT_VERSION:
            raise StoreError(
                f"store format {fmt} is newer than this glfa reads (format {FORMAT_VERSION}, glfa {__version__}); "
                "upgrade glfa or rerun glfa prepare with --overwrite",
                path=path,
            )
        written_by = str(manifest.get("glfa_version", ""))
        if _version_tuple(written_by) > _version_tuple(__version__):
            raise StoreError(
                f"store written by glfa {written_by}, newer than this glfa {__version__}; "
                "upgrade glfa or rerun glfa prepare with --overwrite",
                path=path,
            )
        if not (path / H5_FILE).is_file():
            raise _incomplete(path, f"{H5_FILE} is missing")
        return cls(path, manifest)

    def _file(self):
        """The HDF5 file, opened read-only once per process (after fork a worker opens its own)."""
        import h5py

        pid = os.getpid()
        if self._h5 is None or self._h5_pid != pid:
            try:
                # no chunk cache: every read covers whole chunks (frames), which HDF5 then reads
                # straight into the output buffer (about 10 times faster than through the cache)
                self._h5 = h5py.File(self._path / H5_FILE, "r", rdcc_nbytes=0)
            except OSError as exc:
                raise StoreError(f"cannot read {H5_FILE} ({exc})", path=self._path) from None
            self._h5_pid = pid
            self._datasets = {}
        return self._h5

    def _dataset(self, name: str):
        """An HDF5 dataset of the open file, looked up once per process."""
        f = self._file()
        ds = self._datasets.get(name)
        if ds is None:
            ds = self._datasets[name] = f[name]
        return ds

    def close(self) -> None:
        """Close the HDF5 file (it reopens on the next read)."""
        if self._h5 is not None and self._h5_pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._h5_pid = None
        self._datasets = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_h5_pid"] = None
        state["_datasets"] = {}
        return state

    def __repr__(self) -> str:
        return (f"StudyStore({str(self._path)!r}, subjects={self.subjects}, stimuli={len(self._stimuli)}, "
                f"windows={len(self._windows)})")

    def _load_tables(self) -> None:
        f = self._file()
        try:
            self._subjects = _strings(f["subjects"])
            ids = _strings(f["stimuli/id"])
            splits = _strings(f["stimuli/split"])
            durations = f["stimuli/duration"][()]
            vstart = f["stimuli/video_start"][()]
            vlen = f["stimuli/video_length"][()]
            self._stimuli = {
                s: {"split": sp, "duration": float(d), "video_start": int(a), "video_length": int(b)}
                for s, sp, d, a, b in zip(ids, splits, durations, vstart, vlen)
            }
            self._captions = _strings(f["video/captions"])
            self._caption_source = "store"
            self._responses: dict[str, dict[str, tuple[int, int]]] = {}
            for i, subject in enumerate(self._subjects):
                g = f[f"fmri/s{i}"]
                self._responses[subject] = {
                    s: (int(a), int(b)) for s, a, b in zip(_strings(g["stimulus"]), g["start"][()], g["length"][()])
                }
            w = f["windows"]
            self._windows = [
                Window(s, sp, float(o), int(fs), int(vs), i)
                for i, (s, sp, o, fs, vs) in enumerate(zip(
                    _strings(w["stimulus"]), _strings(w["split"]), w["onset"][()], w["fmri_start"][()],
                    w["video_start"][()],
                ))
            ]
            self._mask = f["mask"][()].astype(bool)
            self._projector_arrays = (
                {k: v[()] for k, v in f["projector"].items()} if "projector" in f else None
            )
        except KeyError as exc:
            raise StoreError(f"{H5_FILE} lacks {exc}; the store is corrupt, rerun glfa prepare with --overwrite",
                             path=self._path) from None

    def _overlay_cached_captions(self) -> None:
        """Fill stimuli stored without captions from ``glfa caption``'s output in ``STORE/cache/captions``.

        A stimulus whose frames all have empty captions takes ``cache/captions/<id>.json`` when that
        file exists and holds one caption per stored frame; a file of another length is an error.
        """
        from glfa.captioning import caption_path, read_captions

        folder = self._path / CACHE_DIR / "captions"
        if not folder.is_dir():
            return
        for stimulus_id, s in self._stimuli.items():
            a, n = s["video_start"], s["video_length"]
            path = caption_path(folder, stimulus_id)
            if any(self._captions[a:a + n]) or not path.is_file():
                continue
            captions = read_captions(path)
            if len(captions) != n:
                raise StoreError(f"{path.name} holds {len(captions)} captions but stimulus {stimulus_id!r} has {n} "
                                 "stored frames; rerun glfa caption", path=path)
            self._captions[a:a + n] = captions
            self._caption_source = "cache/captions"

    # ------------------------------------------------------------------ properties

    @property
    def caption_source(self) -> str:
        """Where the captions come from: ``store`` (prepared with the study) or ``cache/captions`` (glfa caption)."""
        return self._caption_source

    @property
    def captions_digest(self) -> str:
        """A short hash of every frame's caption (part of the keys of caches built from captions)."""
        import hashlib

        return hashlib.sha256("\n".join(self._captions).encode()).hexdigest()[:16]

    @property
    def path(self) -> Path:
        """The store folder."""
        return self._path

    @property
    def cache_dir(self) -> Path:
        """``STORE/cache``: a folder for later feature caches (created on first use)."""
        d = self._path / CACHE_DIR
        d.mkdir(exist_ok=True)
        return d

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest (a copy)."""
        return json.loads(json.dumps(self._manifest))

    @property
    def config(self):
        """The resolved :class:`~glfa.config.GlfaConfig` the store was prepared with."""
        if self._config is None:
            from glfa.config import validate_config

            self._config = validate_config(self._manifest["config"], source=str(self._path / MANIFEST))
        return self._config

    @property
    def subjects(self) -> list[str]:
        """Subject ids."""
        return list(self._subjects)

    @property
    def stimuli(self) -> list[str]:
        """Stimulus ids, in store order."""
        return list(self._stimuli)

    @property
    def tr(self) -> float:
        """Repetition time (seconds)."""
        return float(self._manifest["tr"])

    @property
    def fps(self) -> float:
        """Frame rate of the stored video."""
        return float(self._manifest["fps"])

    @property
    def image_size(self) -> int:
        """Side of the square flat cortical images."""
        return int(self._manifest["image_size"])

    @property
    def fmri_frames(self) -> int:
        """n: fMRI frames per window."""
        return int(self._manifest["fmri_frames"])

    @property
    def video_frames(self) -> int:
        """m: video frames per window."""
        return int(self._manifest["video_frames"])

    @property
    def fmri_dtype(self) -> np.dtype:
        """The dtype the fMRI frames are stored in (``data.fmri_dtype``)."""
        return np.dtype(self._manifest.get("fmri_dtype", "float16"))

    @property
    def mask(self) -> np.ndarray:
        """``[H, W]`` bool: the cortex pixels of the images."""
        return self._mask.copy()

    @property
    def projector(self):
        """The :class:`~glfa.surface.flatmap.FlatMapProjector` of a surface study, else None."""
        if self._projector_arrays is None:
            return None
        from glfa.surface.flatmap import FlatMapProjector

        return FlatMapProjector.from_arrays(self._projector_arrays)

    # ------------------------------------------------------------------ queries

    def split_of(self, stimulus_id: str) -> str:
        """The split (``train``/``test``) of a stimulus."""
        return self._stimulus(stimulus_id)["split"]

    def windows(self, split: str | None = None) -> list[Window]:
        """The windows of ``split`` (all when None), in store order."""
        if split is None:
            return list(self._windows)
        if split not in ("train", "test"):
            raise StoreError(f"unknown split {split!r}; expected 'train' or 'test'", path=self._path)
        return [w for w in self._windows if w.split == split]

    def has(self, subject: str, stimulus_id: str) -> bool:
        """Whether ``subject`` has a stored response to ``stimulus_id``."""
        return stimulus_id in self._responses.get(subject, {})

    def _stimulus(self, stimulus_id: str) -> dict[str, Any]:
        try:
            return self._stimuli[stimulus_id]
        except KeyError:
            raise StoreError(f"unknown stimulus {stimulus_id!r}", path=self._path) from None

    def _offset(self, subject: str, stimulus_id: str) -> tuple[int, int]:
        if subject not in self._responses:
            raise StoreError(f"unknown subject {subject!r}; the store holds {self._subjects}", path=self._path)
        try:
            return self._responses[subject][stimulus_id]
        except KeyError:
            raise StoreError(f"subject {subject!r} has no response to stimulus {stimulus_id!r}",
                             path=self._path) from None

    def _fmri_ds(self, subject: str):
        return self._dataset(f"fmri/s{self._subjects.index(subject)}/frames")

    def response_length(self, subject: str, stimulus_id: str) -> int:
        """How many fMRI frames ``subject``'s stored response to a stimulus holds (read from the tables only)."""
        return self._offset(subject, stimulus_id)[1]

    def response(self, subject: str, stimulus_id: str) -> np.ndarray:
        """The whole stored response of ``subject`` to a stimulus, float32 ``[T_s, H, W]``."""
        start, length = self._offset(subject, stimulus_id)
        return self._fmri_ds(subject)[start:start + length].astype(np.float32)

    def fmri(self, subject: str, window: Window, out: np.ndarray | None = None) -> np.ndarray:
        """``subject``'s fMRI frames of one window, float32 ``[n, H, W]``.

        With ``out`` (an ``[n, H, W]`` array of any float dtype, e.g. :attr:`fmri_dtype` to skip
        the conversion) the frames are written into it and ``out`` is returned.
        """
        start, length = self._offset(subject, window.stimulus_id)
        n = self.fmri_frames
        if window.fmri_start + n > length:
            raise StoreError(f"window {window.index} needs fMRI frames {window.fmri_start}..{window.fmri_start + n} "
                             f"but the response to {window.stimulus_id!r} holds {length}", path=self._path)
        a = start + window.fmri_start
        stored = self._fmri_ds(subject)[a:a + n]  # [n, H, W] in the stored dtype
        if out is None:
            return stored.astype(np.float32)
        np.copyto(out, stored)
        return out

    def video(self, stimulus_id: str) -> np.ndarray:
        """Every stored frame of a stimulus, uint8 ``[F, h, w, 3]``."""
        s = self._stimulus(stimulus_id)
        a = s["video_start"]
        return self._dataset("video/frames")[a:a + s["video_length"]]

    def frames(self, window: Window) -> np.ndarray:
        """The video frames of one window, uint8 ``[m, h, w, 3]``."""
        a = self._stimulus(window.stimulus_id)["video_start"] + window.video_start
        return self._dataset("video/frames")[a:a + self.video_frames]

    def frame_index(self, window: Window) -> int:
        """Position of the window's first video frame in the store's frame table (``video/frames``)."""
        return int(self._stimulus(window.stimulus_id)["video_start"] + window.video_start)

    @property
    def num_video_frames(self) -> int:
        """Rows of the store's frame table: every stored frame of every stimulus."""
        return int(self.frame_table().shape[0])

    def frame_table(self):
        """The HDF5 dataset of every stored frame, ``[F, h, w, 3]`` uint8 (rows as :meth:`frame_index` counts)."""
        return self._dataset("video/frames")

    @property
    def all_captions(self) -> list[str]:
        """One caption per row of :meth:`frame_table` (a copy)."""
        return list(self._captions)

    def captions(self, window: Window) -> list[str]:
        """The captions of one window's frames (``m`` strings)."""
        a = self._stimulus(window.stimulus_id)["video_start"] + window.video_start
        return self._captions[a:a + self.video_frames]

    def video_captions(self, stimulus_id: str) -> list[str]:
        """One caption per stored frame of a stimulus."""
        s = self._stimulus(stimulus_id)
        return self._captions[s["video_start"]:s["video_start"] + s["video_length"]]


def _is_replaceable_store(path: Path) -> bool:
    """Whether ``path`` is a folder that ``--overwrite`` may replace: empty, or holding a (partial) store."""
    if not path.is_dir():
        return False
    entries = {p.name for p in path.iterdir()}
    return not entries or MANIFEST in entries or H5_FILE in entries


def _remove_stale_partials(target: Path) -> None:
    """Delete hidden partial stores beside ``target`` left by prepare runs that no longer exist."""
    if not target.parent.is_dir():
        return
    for p in target.parent.iterdir():
        m = _PARTIAL.match(p.name)
        if not m or m.group("name") != target.name:
            continue
        pid = int(m.group("pid"))
        alive = True
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, OverflowError):
            alive = False
        except PermissionError:
            alive = True
        if not alive or pid == os.getpid():
            shutil.rmtree(p, ignore_errors=True)


class StoreWriter:
    """Writes a study store atomically: everything goes to a hidden folder beside the target,
    which :meth:`finish` renames into place after writing the manifest last.

    Use as a context manager: an exception inside the block removes the partial folder.

    Parameters
    ----------
    path : path
        The store folder to create.
    image_size : int
        Side of the square fMRI images.
    video_size : (int, int)
        (height, width) of the stored video frames.
    fmri_dtype : str
        ``float16`` or ``float32``.
    compression : str or None
        HDF5 chunk filter for the fMRI frames: None, ``lzf`` or ``gzip`` (level 1).
    overwrite : bool
        Replace an existing store at ``path``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        image_size: int,
        video_size: tuple[int, int],
        fmri_dtype: str = "float16",
        compression: str | None = None,
        overwrite: bool = False,
    ):
        import h5py

        self.path = Path(path).absolute()
        self.image_size = int(image_size)
        self.video_size = (int(video_size[0]), int(video_size[1]))
        self.fmri_dtype = np.dtype(fmri_dtype)
        if compression not in (None, "lzf", "gzip"):
            raise ValueError(f"compression must be None, 'lzf' or 'gzip', got {compression!r}")
        self.compression = compression
        self.overwrite = overwrite
        self._check_target()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(self.path)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-{os.getpid()}-", dir=self.path.parent))
        (self.tmp / CACHE_DIR).mkdir()
        self._h5 = h5py.File(self.tmp / H5_FILE, "w")
        self._subjects: list[str] = []
        self._responses: dict[str, list[tuple[str, int, int]]] = {}
        self._stimuli: dict[str, dict[str, Any]] = {}
        self._n_video = 0
        h, w = self.video_size
        self._frames = self._h5.create_dataset(
            "video/frames", shape=(0, h, w, 3), maxshape=(None, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3)
        )
        self._captions: list[str] = []
        self._done = False

    def _check_target(self) -> None:
        if not self.path.exists():
            return
        if not self.overwrite:
            raise StoreError("a store already exists here; pass --overwrite (overwrite=True) to rebuild it",
                             path=self.path)
        if not _is_replaceable_store(self.path):
            raise StoreError("exists and is not a study store (no manifest.json or study.h5); "
                             "refusing to replace it", path=self.path)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()

    def abort(self) -> None:
        """Drop the partial store (nothing is left at the target)."""
        try:
            self._h5.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._done = True

    # ------------------------------------------------------------------ content

    def add_stimulus(self, stimulus_id: str, split: str, frames: np.ndarray, captions: list[str],
                     duration: float) -> None:
        """Append one stimulus' video (uint8 ``[F, h, w, 3]``) and its ``F`` captions."""
        if stimulus_id in self._stimuli:
            raise ValueError(f"stimulus {stimulus_id!r} added twice")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != (*self.video_size, 3):
            raise ValueError(f"stimulus {stimulus_id!r}: expected uint8 frames [F, {self.video_size[0]}, "
                             f"{self.video_size[1]}, 3], got {frames.dtype} {frames.shape}")
        if len(captions) != len(frames):
            raise ValueError(f"stimulus {stimulus_id!r}: {len(captions)} captions for {len(frames)} frames")
        start = self._n_video
        self._frames.resize(start + len(frames), axis=0)
        self._frames[start:] = frames
        self._n_video += len(frames)
        self._captions.extend(str(c) for c in captions)
        self._stimuli[stimulus_id] = {"split": split, "duration": float(duration), "video_start": start,
                                      "video_length": len(frames)}

    def add_response(self, subject: str, stimulus_id: str, response: np.ndarray) -> None:
        """Append ``subject``'s response to a stimulus, ``[T_s, H, W]`` (cast to the store's fMRI dtype)."""
        size = self.image_size
        response = np.asarray(response)
        if response.ndim != 3 or response.shape[1:] != (size, size):
            raise ValueError(f"response of {subject!r} to {stimulus_id!r}: expected [T, {size}, {size}], "
                             f"got {response.shape}")
        if subject not in self._responses:
            i = len(self._subjects)
            self._subjects.append(subject)
            self._responses[subject] = []
            self._h5.create_dataset(
                f"fmri/s{i}/frames", shape=(0, size, size), maxshape=(None, size, size), dtype=self.fmri_dtype,
                chunks=(1, size, size), compression=self.compression,
                compression_opts=1 if self.compression == "gzip" else None,
            )
        if any(s == stimulus_id for s, _, _ in self._responses[subject]):
            raise ValueError(f"response of {subject!r} to {stimulus_id!r} added twice")
        ds = self._h5[f"fmri/s{self._subjects.index(subject)}/frames"]
        start = ds.shape[0]
        ds.resize(start + len(response), axis=0)
        ds[start:] = response.astype(self.fmri_dtype)
        self._responses[subject].append((stimulus_id, start, len(response)))

    def set_mask(self, mask: np.ndarray) -> None:
        """The ``[H, W]`` bool cortex mask."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.image_size, self.image_size):
            raise ValueError(f"mask: expected [{self.image_size}, {self.image_size}], got {mask.shape}")
        self._h5.create_dataset("mask", data=mask)

    def set_projector(self, arrays: dict[str, np.ndarray]) -> None:
        """The projector's arrays (``FlatMapProjector.to_arrays()``)."""
        g = self._h5.create_group("projector")
        for key, value in arrays.items():
            g.create_dataset(key, data=np.asarray(value))

    # ------------------------------------------------------------------ finishing

    def _write_tables(self, windows: list[Window]) -> None:
        import h5py

        f = self._h5
        text = h5py.string_dtype()
        f.create_dataset("subjects", data=np.array(self._subjects, dtype=object), dtype=text)
        ids = list(self._stimuli)
        f.create_dataset("stimuli/id", data=np.array(ids, dtype=object), dtype=text)
        f.create_dataset("stimuli/split", data=np.array([self._stimuli[s]["split"] for s in ids], dtype=object),
                         dtype=text)
        for key, dtype in (("duration", np.float64), ("video_start", np.int64), ("video_length", np.int64)):
            f.create_dataset(f"stimuli/{key}", data=np.array([self._stimuli[s][key] for s in ids], dtype=dtype))
        f.create_dataset("video/captions", data=np.array(self._captions, dtype=object), dtype=text)
        for i, subject in enumerate(self._subjects):
            rows = self._responses[subject]
            g = f[f"fmri/s{i}"]
            g.create_dataset("stimulus", data=np.array([r[0] for r in rows], dtype=object), dtype=text)
            g.create_dataset("start", data=np.array([r[1] for r in rows], dtype=np.int64))
            g.create_dataset("length", data=np.array([r[2] for r in rows], dtype=np.int64))
        g = f.create_group("windows")
        g.create_dataset("stimulus", data=np.array([w.stimulus_id for w in windows], dtype=object), dtype=text)
        g.create_dataset("split", data=np.array([w.split for w in windows], dtype=object), dtype=text)
        g.create_dataset("onset", data=np.array([w.onset for w in windows], dtype=np.float64))
        g.create_dataset("fmri_start", data=np.array([w.fmri_start for w in windows], dtype=np.int64))
        g.create_dataset("video_start", data=np.array([w.video_start for w in windows], dtype=np.int64))
        if "mask" not in f:
            raise ValueError("set_mask() was not called")

    def finish(self, windows: list[Window], manifest: dict[str, Any]) -> Path:
        """Write the tables, then the manifest (last), then rename the store into place; returns its path."""
        for i, w in enumerate(windows):
            if w.index != i:
                raise ValueError(f"window {i} has index {w.index}; windows must be numbered 0..{len(windows) - 1}")
            if w.stimulus_id not in self._stimuli:
                raise ValueError(f"window {i} names unknown stimulus {w.stimulus_id!r}")
        try:
            self._write_tables(windows)
            self._h5.close()
            full = dict(manifest)
            full.update({
                "format_version": FORMAT_VERSION,
                "glfa_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "subjects": list(self._subjects),
                "image_size": self.image_size,
                "video_height": self.video_size[0],
                "video_width": self.video_size[1],
                "fmri_dtype": str(self.fmri_dtype),
                "compression": self.compression,
            })
            counts = dict(full.get("counts", {}))
            counts.update({
                "stimuli": len(self._stimuli),
                "video_frames": self._n_video,
                "windows": {s: sum(w.split == s for w in windows) for s in ("train", "test")},
                "responses": {s: len(r) for s, r in self._responses.items()},
                "fmri_frames": {s: int(sum(r[2] for r in rows)) for s, rows in self._responses.items()},
            })
            full["counts"] = counts
            full["complete"] = True
            tmp_manifest = self.tmp / (MANIFEST + ".tmp")
            tmp_manifest.write_text(json.dumps(full, indent=2, sort_keys=True))
            os.replace(tmp_manifest, self.tmp / MANIFEST)
            self._install()
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path

    def _install(self) -> None:
        """Rename the finished folder onto the target (replacing an old store when overwriting)."""
        self._check_target()
        if not self.path.exists():
            os.rename(self.tmp, self.path)
            return
        trash = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
        os.rename(self.path, trash / "store")
        os.rename(self.tmp, self.path)
        shutil.rmtree(trash, ignore_errors=True)
