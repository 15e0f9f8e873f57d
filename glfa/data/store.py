"""The study store: a folder holding a prepared study, written once by ``glfa prepare``.

Layout of ``STORE/``::

    manifest.json   glfa version, format version, resolved config, source checksums,
                    subjects, counts, image geometry, content digests and identity,
                    "complete": true  (written last)
    study.h5        every array (HDF5, one chunk per frame, each chunk Fletcher-32 checksummed):
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
Every dataset carries HDF5's per-chunk Fletcher-32 checksum, so a flipped byte is caught on
read and reported as one :class:`~glfa.errors.StoreError` naming the dataset; :meth:`StudyStore.verify`
(``glfa verify STORE``) reads everything and also compares the content digests of the manifest.
The manifest's ``identity`` hashes the store's content (subjects, stimuli, windows, the fMRI and
video bytes, the source checksums), so a copied or moved store is recognised as the same study.
:meth:`StudyStore.open` refuses a folder without a complete manifest or one written by a newer
format or glfa version. Readers open the HDF5 file lazily, once per process, so a
:class:`StudyStore` can be pickled into DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from glfa import __version__
from glfa.data.captions import caption_path, read_captions
from glfa.data.windows import Window
from glfa.errors import DataError, StoreError
from glfa.io import check_output, remove_stale_temporaries, replace_dir, temporary_name, write_json_atomic

__all__ = ["FORMAT_VERSION", "MANIFEST", "H5_FILE", "StudyStore", "StoreWriter"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
H5_FILE = "study.h5"
CACHE_DIR = "cache"


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
    """An HDF5 string dataset (variable or fixed length) as a list of str."""
    return [str(s) for s in ds.asstr()[()]]


def _text(values: list[str]) -> np.ndarray:
    """UTF-8 strings as a fixed-length array (HDF5 cannot checksum variable-length data)."""
    import h5py

    encoded = [str(v).encode() for v in values]
    dtype = h5py.string_dtype("utf-8", max([1, *map(len, encoded)]))  # bytes tagged as UTF-8
    return np.array(encoded, dtype=dtype)


def _h5_reason(exc: BaseException) -> str:
    """HDF5's message on one line, without its API-call noise."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # no KeyError quotes
    text = " ".join(text.replace("synchronously ", "").split()) or type(exc).__name__
    if "filter returned failure" in text:
        return "a chunk fails its Fletcher-32 checksum"
    return text


def content_identity(subjects: list[str], stimuli: dict[str, dict[str, Any]],
                     responses: dict[str, dict[str, tuple[int, int]]], windows: list[Window],
                     digests: dict[str, str], source_checksums: dict[str, str]) -> str:
    """The sha256 that identifies a store by what it holds, wherever it lies.

    It covers the subjects, the stimulus and response tables, the windows, the digests of the
    fMRI, video and mask bytes and the checksums of the source files; paths, dates and
    captions (which ``glfa caption`` may add later) do not count.
    """
    doc = {
        "subjects": list(subjects),
        "stimuli": {sid: [s["split"], float(s["duration"]), int(s["video_start"]), int(s["video_length"])]
                    for sid, s in stimuli.items()},
        "responses": {subject: {sid: [int(a), int(n)] for sid, (a, n) in rows.items()}
                      for subject, rows in responses.items()},
        "windows": [[w.stimulus_id, w.split, float(w.onset), int(w.fmri_start), int(w.video_start)] for w in windows],
        "digests": dict(sorted(digests.items())),
        "source_checksums": dict(sorted(source_checksums.items())),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _non_finite(a: np.ndarray) -> np.ndarray:
    """Where ``a`` holds NaN or Inf (float16 by its exponent bits: 10 x faster than np.isfinite on half floats)."""
    if a.dtype == np.float16:
        return (a.view(np.uint16) & 0x7C00) == 0x7C00
    return ~np.isfinite(a)


class _CheckedDataset:
    """An HDF5 dataset whose failed reads (a Fletcher-32 mismatch, a damaged chunk) become one
    :class:`StoreError` naming the store and the dataset."""

    def __init__(self, dataset, name: str, store_path: Path):
        self._dataset = dataset
        self.name = name
        self._store_path = store_path

    @property
    def shape(self) -> tuple[int, ...]:
        return self._dataset.shape

    @property
    def dtype(self) -> np.dtype:
        return self._dataset.dtype

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, key) -> np.ndarray:
        try:
            return self._dataset[key]
        except (OSError, RuntimeError) as exc:
            raise _damaged(self._store_path, self.name, _h5_reason(exc)) from None


def _damaged(path: Path, name: str, why: str) -> StoreError:
    return StoreError(f"{H5_FILE} is damaged ({why}); check the store with `glfa verify STORE`, then rerun "
                      "glfa prepare with --overwrite", path=path, field=name)


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
                raise StoreError(f"cannot read {H5_FILE} ({_h5_reason(exc)}); the store is damaged: rerun glfa "
                                 "prepare with --overwrite", path=self._path) from None
            self._h5_pid = pid
            self._datasets = {}
        return self._h5

    def _dataset(self, name: str) -> _CheckedDataset:
        """An HDF5 dataset of the open file, looked up once per process."""
        f = self._file()
        ds = self._datasets.get(name)
        if ds is None:
            try:
                ds = self._datasets[name] = _CheckedDataset(f[name], name, self._path)
            except (KeyError, OSError, RuntimeError) as exc:
                why = "it is missing" if isinstance(exc, KeyError) and name not in f else _h5_reason(exc)
                raise _damaged(self._path, name, why) from None
        return ds

    def _table(self, name: str, strings: bool = False):
        """A whole small dataset (a list of str when ``strings``), read with its errors named."""
        try:
            ds = self._dataset(name)._dataset
            return _strings(ds) if strings else ds[()]
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise _damaged(self._path, name, _h5_reason(exc)) from None

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
        self._subjects = self._table("subjects", strings=True)
        ids = self._table("stimuli/id", strings=True)
        splits = self._table("stimuli/split", strings=True)
        columns = [self._table(f"stimuli/{k}") for k in ("duration", "video_start", "video_length")]
        self._stimuli = {
            s: {"split": sp, "duration": float(d), "video_start": int(a), "video_length": int(b)}
            for s, sp, d, a, b in zip(ids, splits, *columns)
        }
        self._captions = self._table("video/captions", strings=True)
        self._caption_source = "store"
        self._responses: dict[str, dict[str, tuple[int, int]]] = {}
        for i, subject in enumerate(self._subjects):
            g = f"fmri/s{i}"
            self._responses[subject] = {
                s: (int(a), int(b)) for s, a, b in zip(self._table(f"{g}/stimulus", strings=True),
                                                      self._table(f"{g}/start"), self._table(f"{g}/length"))
            }
        self._windows = [
            Window(s, sp, float(o), int(fs), int(vs), i)
            for i, (s, sp, o, fs, vs) in enumerate(zip(
                self._table("windows/stimulus", strings=True), self._table("windows/split", strings=True),
                self._table("windows/onset"), self._table("windows/fmri_start"), self._table("windows/video_start"),
            ))
        ]
        self._mask = self._table("mask").astype(bool)
        f = self._file()
        self._projector_arrays = (
            {k: self._table(f"projector/{k}") for k in f["projector"]} if "projector" in f else None
        )

    def _overlay_cached_captions(self) -> None:
        """Fill stimuli stored without captions from ``glfa caption``'s output in ``STORE/cache/captions``.

        A stimulus whose frames all have empty captions takes ``cache/captions/<id>.json`` when that
        file exists and holds one caption per stored frame; a file of another length is an error.
        """
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
        return hashlib.sha256("\n".join(self._captions).encode()).hexdigest()[:16]

    @property
    def path(self) -> Path:
        """The store folder."""
        return self._path

    @property
    def identity(self) -> str | None:
        """The sha256 of the store's content (:func:`content_identity`); None for a store written before it existed.

        Two stores with the same identity hold the same study, wherever they lie.
        """
        return self._manifest.get("identity")

    def _dataset_names(self, group: str = "") -> list[str]:
        """Every dataset of ``study.h5`` under ``group``, each object opened and its damage named."""
        import h5py

        names = []
        try:
            keys = list(self._file()[group or "/"])
        except (KeyError, OSError, RuntimeError) as exc:
            raise _damaged(self._path, group or "/", _h5_reason(exc)) from None
        for key in keys:
            name = f"{group}/{key}" if group else key
            try:
                obj = self._file()[name]
            except (KeyError, OSError, RuntimeError) as exc:
                raise _damaged(self._path, name, _h5_reason(exc)) from None
            names.extend(self._dataset_names(name) if isinstance(obj, h5py.Group) else [name])
        return names

    def verify(self, progress: bool = False) -> dict[str, Any]:
        """Read every dataset of ``study.h5`` and check it; returns what was checked.

        Every chunk's Fletcher-32 checksum is checked as it is read; the fMRI must be finite;
        the fMRI, video and mask bytes must match the digests of the manifest and the content
        its identity. The first problem raises a :class:`StoreError` naming the dataset.
        """
        from tqdm.auto import tqdm

        f = self._file()
        names = self._dataset_names()
        recorded = self._manifest.get("digests", {})
        digests, checked_bytes = {}, 0
        fmri = {f"fmri/s{i}/frames" for i in range(len(self._subjects))}
        for name in tqdm(names, desc="glfa verify", unit="dataset", disable=not progress):
            ds = self._dataset(name)
            digest = hashlib.sha256()
            rows = max(1, (64 << 20) // max(1, ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))))
            for a in range(0, max(1, len(ds)) if ds.shape else 1, rows):
                block = ds[a:a + rows] if ds.shape else ds[()]
                bad = _non_finite(block) if name in fmri else None
                if bad is not None and bad.any():
                    frame = a + int(np.argwhere(bad)[0][0])
                    raise _damaged(self._path, name, f"non-finite values in frame {frame}")
                digest.update(np.ascontiguousarray(block).tobytes())
                checked_bytes += block.nbytes
            if name in recorded:
                digests[name] = digest.hexdigest()
                if digests[name] != recorded[name]:
                    raise _damaged(self._path, name, "its bytes differ from the digest in the manifest")
        missing = sorted(set(recorded) - set(digests))
        if missing:
            raise _damaged(self._path, missing[0], "it is missing")
        if self.identity is not None:
            identity = content_identity(self._subjects, self._stimuli, self._responses, self._windows, digests,
                                        self._manifest.get("source_checksums", {}))
            if identity != self.identity:
                raise StoreError(f"the content differs from the identity in {MANIFEST} (its tables were changed); "
                                 "rerun glfa prepare with --overwrite", path=self._path, field="identity")
        return {"datasets": len(names), "bytes": checked_bytes, "digests": len(digests),
                "identity": self.identity, "checksummed": all(f[n].fletcher32 for n in names)}

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
    def geometry(self) -> str | None:
        """The flat-image geometry (``"fmri-pte"``, ``"barycentric"``); None when unknown.

        Surface stores written before the geometry was recorded are barycentric (the only one then);
        image stores are what their reader declares (``fmri-pte`` for the Fudan release).
        """
        if "geometry" in self._manifest:
            return self._manifest["geometry"]
        return "barycentric" if self._manifest.get("kind") == "surface" else None

    def check_geometry(self, geometry: str | None, model: str | Path) -> None:
        """Refuse a model made on images of another geometry (DataError naming both); unknown on either side passes."""
        if geometry is None or self.geometry is None or geometry == self.geometry:
            return
        raise DataError(f"the model was trained on '{geometry}' flat images but the store {self._path} holds "
                        f"'{self.geometry}' images; prepare a store with data.geometry: {geometry} for it",
                        path=model, field="geometry")

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

    def _finite(self, subject: str, stored: np.ndarray, first: int, stimulus_id: str) -> np.ndarray:
        """``stored`` (frames ``first..`` of the subject's fMRI) when every value is finite, else a StoreError.

        ``prepare`` stores only finite fMRI, so a NaN or Inf here is damage to the file.
        """
        bad = _non_finite(stored)
        if bad.any():
            frame = first + int(np.argwhere(bad)[0][0])
            name = f"fmri/s{self._subjects.index(subject)}/frames"
            raise _damaged(self._path, name, f"non-finite values in frame {frame}, subject {subject!r}'s "
                           f"response to {stimulus_id!r}; prepare stores only finite fMRI")
        return stored

    def response_length(self, subject: str, stimulus_id: str) -> int:
        """How many fMRI frames ``subject``'s stored response to a stimulus holds (read from the tables only)."""
        return self._offset(subject, stimulus_id)[1]

    def response(self, subject: str, stimulus_id: str) -> np.ndarray:
        """The whole stored response of ``subject`` to a stimulus, float32 ``[T_s, H, W]``."""
        start, length = self._offset(subject, stimulus_id)
        stored = self._finite(subject, self._fmri_ds(subject)[start:start + length], start, stimulus_id)
        return stored.astype(np.float32)

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
        stored = self._finite(subject, self._fmri_ds(subject)[a:a + n], a, window.stimulus_id)  # [n, H, W] stored dtype
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

    def frame_rows(self, windows: list[Window]) -> np.ndarray:
        """``[N, m]`` int: the rows of the store's frame table that each window's video frames occupy."""
        starts = np.array([self.frame_index(w) for w in windows], dtype=np.int64).reshape(-1, 1)
        return starts + np.arange(self.video_frames)

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
        remove_stale_temporaries(self.path)
        self.tmp = temporary_name(self.path)
        self.tmp.mkdir()
        (self.tmp / CACHE_DIR).mkdir()
        self._h5 = h5py.File(self.tmp / H5_FILE, "w")
        self._subjects: list[str] = []
        self._responses: dict[str, list[tuple[str, int, int]]] = {}
        self._stimuli: dict[str, dict[str, Any]] = {}
        self._n_video = 0
        h, w = self.video_size
        self._frames = self._h5.create_dataset(
            "video/frames", shape=(0, h, w, 3), maxshape=(None, h, w, 3), dtype=np.uint8, chunks=(1, h, w, 3),
            fletcher32=True,
        )
        self._captions: list[str] = []
        self._digests: dict[str, Any] = {"video/frames": hashlib.sha256()}  # dataset -> sha256 of its bytes
        self._done = False

    def _put(self, name: str, data) -> None:
        """A small dataset, Fletcher-32 checksummed (strings stored fixed-length: see :func:`_text`)."""
        data = np.asarray(data)
        if data.dtype.kind in "OUS":
            data = _text(list(data))
        if data.size == 0:  # empty: a resizable shape lets it be chunked, and only chunks carry a checksum
            self._h5.create_dataset(name, shape=data.shape, maxshape=(None,) * data.ndim, dtype=data.dtype,
                                    fletcher32=True)
        else:
            self._h5.create_dataset(name, data=data, fletcher32=True)

    def _check_target(self) -> None:
        check_output(self.path, "dir")
        if not self.path.exists() or not any(self.path.iterdir()):
            return
        if not _is_replaceable_store(self.path):
            raise StoreError("exists and is not a study store (no manifest.json or study.h5); "
                             "refusing to replace it", path=self.path)
        if not self.overwrite:
            raise StoreError("a store already exists here; pass --overwrite (overwrite=True) to rebuild it",
                             path=self.path)

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
        self._digests["video/frames"].update(np.ascontiguousarray(frames).tobytes())
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
                compression_opts=1 if self.compression == "gzip" else None, fletcher32=True,
            )
            self._digests[f"fmri/s{i}/frames"] = hashlib.sha256()
        if any(s == stimulus_id for s, _, _ in self._responses[subject]):
            raise ValueError(f"response of {subject!r} to {stimulus_id!r} added twice")
        name = f"fmri/s{self._subjects.index(subject)}/frames"
        ds = self._h5[name]
        start = ds.shape[0]
        ds.resize(start + len(response), axis=0)
        stored = np.ascontiguousarray(response.astype(self.fmri_dtype))
        ds[start:] = stored
        self._digests[name].update(stored.tobytes())
        self._responses[subject].append((stimulus_id, start, len(response)))

    def set_mask(self, mask: np.ndarray) -> None:
        """The ``[H, W]`` bool cortex mask."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (self.image_size, self.image_size):
            raise ValueError(f"mask: expected [{self.image_size}, {self.image_size}], got {mask.shape}")
        self._put("mask", mask)
        self._digests["mask"] = hashlib.sha256(mask.tobytes())

    def set_projector(self, arrays: dict[str, np.ndarray]) -> None:
        """The projector's arrays (``FlatMapProjector.to_arrays()``)."""
        for key, value in arrays.items():
            self._put(f"projector/{key}", value)

    # ------------------------------------------------------------------ finishing

    def _write_tables(self, windows: list[Window]) -> None:
        put = self._put
        put("subjects", self._subjects)
        ids = list(self._stimuli)
        put("stimuli/id", ids)
        put("stimuli/split", [self._stimuli[s]["split"] for s in ids])
        for key, dtype in (("duration", np.float64), ("video_start", np.int64), ("video_length", np.int64)):
            put(f"stimuli/{key}", np.array([self._stimuli[s][key] for s in ids], dtype=dtype))
        put("video/captions", self._captions)
        for i, subject in enumerate(self._subjects):
            rows = self._responses[subject]
            put(f"fmri/s{i}/stimulus", [r[0] for r in rows])
            put(f"fmri/s{i}/start", np.array([r[1] for r in rows], dtype=np.int64))
            put(f"fmri/s{i}/length", np.array([r[2] for r in rows], dtype=np.int64))
        put("windows/stimulus", [w.stimulus_id for w in windows])
        put("windows/split", [w.split for w in windows])
        put("windows/onset", np.array([w.onset for w in windows], dtype=np.float64))
        put("windows/fmri_start", np.array([w.fmri_start for w in windows], dtype=np.int64))
        put("windows/video_start", np.array([w.video_start for w in windows], dtype=np.int64))
        if "mask" not in self._h5:
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
            digests = {name: h.hexdigest() for name, h in self._digests.items()}
            full["digests"] = digests
            responses = {s: {sid: (a, n) for sid, a, n in rows} for s, rows in self._responses.items()}
            full["identity"] = content_identity(self._subjects, self._stimuli, responses, windows, digests,
                                                full.get("source_checksums", {}))
            full["complete"] = True
            write_json_atomic(self.tmp / MANIFEST, full)
            self._check_target()
            replace_dir(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.path
