"""CIFTI-2 dense time series (``.dtseries.nii``) in and out, through nibabel's axes.

Columns are located through the file's BrainModelAxis (structure name and vertex indices),
never by assuming the 91,282 grayordinates of the HCP standard: a file may hold the full
91k grayordinates, only the cortex, or only the ROI vertices, in any order. Only the
``CIFTI_STRUCTURE_CORTEX_LEFT`` / ``CIFTI_STRUCTURE_CORTEX_RIGHT`` surface models are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from glfa.errors import DataError
from glfa.io import atomic_path
from glfa.surface.atlas import MESH_VERTICES

if TYPE_CHECKING:
    from glfa.surface.flatmap import FlatMapProjector

LEFT = "CIFTI_STRUCTURE_CORTEX_LEFT"
RIGHT = "CIFTI_STRUCTURE_CORTEX_RIGHT"


@dataclass(frozen=True)
class SurfaceSeries:
    """Cortical surface time series read from a CIFTI file.

    Attributes
    ----------
    data : ndarray [T, Vfile] float32
        The file's CORTEX_LEFT columns, then its CORTEX_RIGHT columns.
    tr : float
        Repetition time in seconds (the series axis step).
    left, right : ndarray of int64
        32k mesh vertex index of each left / right column, in the file's order.
    """

    data: np.ndarray
    tr: float
    left: np.ndarray
    right: np.ndarray


def read_dtseries(path: str | Path) -> SurfaceSeries:
    """Read the cortical surface columns and the TR of a CIFTI-2 dtseries file."""
    import nibabel as nib
    from nibabel.cifti2 import cifti2_axes

    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", path=path)
    try:
        img = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for unreadable files
        raise DataError(f"not a readable CIFTI-2 file ({type(exc).__name__}: {exc})", path=path) from exc
    if not isinstance(img, nib.Cifti2Image):
        raise DataError(f"expected a CIFTI-2 dtseries file, got {type(img).__name__}", path=path)
    try:
        series, models = img.header.get_axis(0), img.header.get_axis(1)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"CIFTI header without usable axes ({exc})", path=path) from exc
    if not isinstance(series, cifti2_axes.SeriesAxis):
        raise DataError(f"expected a series (time) axis first, got {type(series).__name__}", path=path, field="axis 0")
    if not isinstance(models, cifti2_axes.BrainModelAxis):
        raise DataError(f"expected a brain-model axis second, got {type(models).__name__}", path=path, field="axis 1")
    if series.unit != "SECOND":
        raise DataError(f"expected a time series in seconds, got unit {series.unit}", path=path, field="SeriesUnit")
    tr = float(series.step)  # nibabel applies SeriesExponent: a millisecond step (exponent -3) is in seconds
    if not np.isfinite(tr) or tr <= 0:
        raise DataError(f"expected a positive series step (TR), got {tr}", path=path, field="SeriesStep")

    slices: dict[str, slice] = {}
    vertices: dict[str, np.ndarray] = {LEFT: np.zeros(0, np.int64), RIGHT: np.zeros(0, np.int64)}
    for name, where, model in models.iter_structures():
        if name in vertices:
            if name in slices:
                raise DataError(f"{name} appears twice in the brain-model axis", path=path, field="BrainModelAxis")
            slices[name] = where
            vertices[name] = np.asarray(model.vertex, dtype=np.int64)
    if not slices:
        found = sorted({str(n) for n in models.name})
        raise DataError(f"no {LEFT} / {RIGHT} surface model (found {found})", path=path, field="BrainModelAxis")
    try:
        parts = [np.asarray(img.dataobj[:, slices[n]], dtype=np.float32) for n in (LEFT, RIGHT) if n in slices]
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data block
        raise DataError(f"cannot read the data block ({exc})", path=path) from exc
    data = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    return SurfaceSeries(data=np.ascontiguousarray(data), tr=tr, left=vertices[LEFT], right=vertices[RIGHT])


def _columns(file_vertices: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Column of each ``wanted`` mesh vertex in ``file_vertices`` (-1 where the file lacks it)."""
    lookup = np.full(MESH_VERTICES, -1, dtype=np.int64)
    ok = (file_vertices >= 0) & (file_vertices < MESH_VERTICES)
    lookup[file_vertices[ok]] = np.nonzero(ok)[0]
    return lookup[wanted]


def series_on(series: SurfaceSeries, projector: FlatMapProjector, path: str | Path) -> np.ndarray:
    """The series' columns for the projector's vertices, in its order (left then right): [T, V] float32."""
    cols_l = _columns(series.left, projector.left)
    cols_r = _columns(series.right, projector.right)
    miss_l, miss_r = int((cols_l < 0).sum()), int((cols_r < 0).sum())
    if miss_l or miss_r:
        # the fmri-pte images blend in the cortex around the ROI: a file of the ROI alone lacks it
        what, hint = ("ROI vertices", "") if projector.geometry == "barycentric" else (
            "vertices the fmri-pte images read", "; data.geometry fmri-pte needs the cortex around the ROI too "
            "(a full 59k or 91k file), barycentric the ROI alone")
        raise DataError(
            f"{miss_l + miss_r} of the {projector.n_vertices} {what} are missing "
            f"({miss_l} left, {miss_r} right); the file has {series.left.size} left and "
            f"{series.right.size} right cortex vertices{hint}",
            path=path,
            field="BrainModelAxis",
        )
    cols = np.concatenate([cols_l, cols_r + series.left.size])
    return np.ascontiguousarray(series.data[:, cols], dtype=np.float32)  # [T, V]


def _check_vertices(name: str, v: np.ndarray, path: Path) -> np.ndarray:
    v = np.asarray(v)
    if v.size == 0:
        v = v.astype(np.int64)
    if v.ndim != 1 or not np.issubdtype(v.dtype, np.integer):
        raise DataError(f"expected a 1-D integer array of vertex indices, got {v.dtype} {v.shape}", path=path, field=name)
    if v.size and (v.min() < 0 or v.max() >= MESH_VERTICES):
        raise DataError(f"vertex indices must lie in [0, {MESH_VERTICES})", path=path, field=name)
    if np.unique(v).size != v.size:
        raise DataError("vertex indices repeat", path=path, field=name)
    return v.astype(np.int64)


def write_dtseries(path: str | Path, data: np.ndarray, left: np.ndarray, right: np.ndarray, tr: float) -> Path:
    """Write ``data`` [T, V] (left columns, then right) as a CIFTI-2 dtseries on 32k_fs_LR, atomically."""
    import nibabel as nib
    from nibabel.cifti2 import cifti2_axes

    path = Path(path)
    left = _check_vertices("left", left, path)
    right = _check_vertices("right", right, path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 2 or data.shape[1] != left.size + right.size:
        raise DataError(
            f"expected data [T, {left.size + right.size}] (left + right vertices), got shape {data.shape}",
            path=path,
            field="data",
        )
    if not (np.isfinite(tr) and tr > 0):
        raise DataError(f"expected a positive TR in seconds, got {tr}", path=path, field="tr")
    models = [
        cifti2_axes.BrainModelAxis.from_surface(v, MESH_VERTICES, name=n)
        for v, n in ((left, LEFT), (right, RIGHT))
        if v.size
    ]
    if not models:
        raise DataError("expected at least one vertex", path=path, field="left/right")
    brain = models[0] if len(models) == 1 else models[0] + models[1]
    series = cifti2_axes.SeriesAxis(start=0.0, step=float(tr), size=data.shape[0], unit="SECOND")
    img = nib.Cifti2Image(data, header=(series, brain))
    img.nifti_header.set_intent("NIFTI_INTENT_CONNECTIVITY_DENSE_SERIES")
    with atomic_path(path, ".dtseries.nii") as tmp:  # nibabel picks the format by the extension
        nib.save(img, tmp)
    return path
