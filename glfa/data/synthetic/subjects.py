"""How simulated subjects differ from the template brain, as real brains do.

One knob, ``difference`` (``simulation.subject_difference``), scales every difference; at 0
every subject is the template:

- a smooth deformation of the maps on the flat cortex: vertex ``v`` takes the template's tuning
  at ``xy_v + d(xy_v)``, ``d`` a smooth random vector field of RMS length
  ``difference * deformation_mm`` (mm);
- idiosyncratic parcel-level mixing: the flat map is cut into square parcels of
  :data:`PARCEL_MM`; each parcel's response gains a random mix of its neighbours' mean responses
  (``M = I + difference * MIXING * N``, ``N`` non-zero only between neighbouring parcels);
- idiosyncratic tuning: a share ``min(0.9, 0.6 * difference)`` of the variance of each vertex's
  semantic and motion tuning is the subject's own fine random field;
- a global gain and a smooth gain field, a haemodynamic delay, a noise level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glfa.data.synthetic.cortex import Geometry, smooth_fields

__all__ = ["PARCEL_MM", "OFFSETS", "Parcels", "Subject", "parcellate", "private_tuning", "draw_subject", "resample_params", "mix_parcels"]

#: Side of the square parcels of the idiosyncratic mixing (mm on the flat map).
PARCEL_MM = 12.0
#: Strength of the parcel mixing, the log-sd of the gains and noise level, the sd of the delay (s),
#: all at difference 1.
MIXING = 0.8
GAIN_LOG_SD = 0.2
GAIN_FIELD_LOG_SD = 0.15
DELAY_SD = 0.6
NOISE_LOG_SD = 0.25
#: Share of the variance of semantic and motion tuning that is the subject's own (not the
#: template's) per unit of difference, and its ceiling.
PRIVATE_SHARE = 0.6
PRIVATE_MAX = 0.9
#: Length scale (mm) of the deformation field and of the gain field.
DEFORMATION_LENGTH_MM = 15.0


@dataclass(frozen=True)
class Subject:
    """One simulated subject's departures from the template (arrays over V vertices)."""

    subject_id: str
    displacement: np.ndarray  # [V, 2] mm
    mixing: np.ndarray  # [P, P]
    gain: float
    gain_field: np.ndarray  # [V]
    delay: float  # seconds added to the haemodynamic response
    noise_factor: float

    def summary(self) -> dict:
        """Scalars describing the subject (for truth/subjects.json)."""
        return {
            "gain": round(self.gain, 6),
            "delay_seconds": round(self.delay, 6),
            "noise_factor": round(self.noise_factor, 6),
            "deformation_rms_mm": round(float(np.sqrt((self.displacement**2).sum(axis=1).mean())), 6),
            "mixing_off_diagonal_rms": round(float(np.sqrt(((self.mixing - np.eye(len(self.mixing))) ** 2).mean())), 6),
        }


#: The 8 offsets (in parcels) from a parcel to its neighbours.
OFFSETS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0))


@dataclass(frozen=True)
class Parcels:
    """Square parcels of :data:`PARCEL_MM` on each hemisphere's flat map.

    ``parcel`` [V]: each vertex's parcel; ``neighbours`` [P, 8]: the parcel at each of
    :data:`OFFSETS` (-1 where there is none); ``partner`` [8, V]: the vertex at the same place
    within that neighbouring parcel (the vertex nearest ``xy + offset * PARCEL_MM``).
    """

    parcel: np.ndarray
    neighbours: np.ndarray
    partner: np.ndarray

    @property
    def n_parcels(self) -> int:
        """Number of parcels, both hemispheres."""
        return int(self.neighbours.shape[0])

    def adjacency(self) -> np.ndarray:
        """``[P, P]`` bool: parcels that are neighbours."""
        adj = np.zeros((self.n_parcels, self.n_parcels), dtype=bool)
        p, o = np.nonzero(self.neighbours >= 0)
        adj[p, self.neighbours[p, o]] = True
        return adj


def parcellate(geometry: Geometry) -> Parcels:
    """Cut each hemisphere's flat map into squares of :data:`PARCEL_MM` (only squares holding vertices count)."""
    from scipy.spatial import cKDTree

    cell = np.floor(geometry.xy / PARCEL_MM).astype(np.int64)  # [V, 2]
    keys = np.column_stack([geometry.hemisphere.astype(np.int64), cell])
    unique, parcel = np.unique(keys, axis=0, return_inverse=True)
    parcel = parcel.ravel()
    index = {tuple(k): i for i, k in enumerate(unique.tolist())}
    neighbours = np.array(
        [[index.get((h, x + dx, y + dy), -1) for dx, dy in OFFSETS] for h, x, y in unique.tolist()], dtype=np.int64
    ).reshape(len(unique), len(OFFSETS))
    partner = np.empty((len(OFFSETS), geometry.n_vertices), dtype=np.int64)
    for hemi in (0, 1):
        on = np.nonzero(geometry.hemisphere == hemi)[0]
        tree = cKDTree(geometry.xy[on])
        for o, offset in enumerate(OFFSETS):
            _, nearest = tree.query(geometry.xy[on] + np.asarray(offset) * PARCEL_MM)
            partner[o, on] = on[nearest]
    return Parcels(parcel=parcel, neighbours=neighbours, partner=partner)


def draw_subject(
    subject_id: str, geometry: Geometry, parcels: Parcels, difference: float, deformation_mm: float,
    rng: np.random.Generator,
) -> Subject:
    """Draw one subject's deformation, mixing, gains, delay and noise level (all zero effect at ``difference`` 0)."""
    field = smooth_fields(rng, geometry.xy, 2, DEFORMATION_LENGTH_MM)  # [V, 2]
    rms = np.sqrt((field**2).sum(axis=1).mean())
    displacement = field / rms * (difference * deformation_mm)
    adjacency = parcels.adjacency()
    n_near = np.maximum(adjacency.sum(axis=1, keepdims=True), 1)
    mix = rng.normal(size=adjacency.shape) * adjacency / np.sqrt(n_near)
    mixing = np.eye(parcels.n_parcels) + difference * MIXING * mix
    gain = float(np.exp(difference * GAIN_LOG_SD * rng.normal()))
    gain_field = np.exp(difference * GAIN_FIELD_LOG_SD * smooth_fields(rng, geometry.xy, 1, DEFORMATION_LENGTH_MM)[:, 0])
    delay = float(np.clip(difference * DELAY_SD * rng.normal(), -2.0, 2.0))
    noise_factor = float(np.exp(difference * NOISE_LOG_SD * rng.normal()))
    return Subject(subject_id, displacement, mixing, gain, gain_field, delay, noise_factor)


def resample_params(geometry: Geometry, params: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """Template parameters [V, P] read at the displaced positions ``xy + displacement``, per hemisphere.

    Inverse-distance weighting of the 4 nearest template vertices of the same hemisphere (a
    position on a vertex takes that vertex's value). No displacement returns ``params``.
    """
    from scipy.spatial import cKDTree

    if not np.any(displacement):
        return params.copy()
    out = np.empty_like(params)
    for hemi in (0, 1):
        on = np.nonzero(geometry.hemisphere == hemi)[0]
        src = geometry.xy[on]
        dist, nearest = cKDTree(src).query(src + displacement[on], k=4)  # [n, 4] each
        weights = 1.0 / np.maximum(dist, 1e-9) ** 2
        weights /= weights.sum(axis=1, keepdims=True)
        out[on] = np.einsum("nk,nkp->np", weights, params[on][nearest])
    return out


def mix_parcels(responses: np.ndarray, parcels: Parcels, mixing: np.ndarray) -> np.ndarray:
    """Mix response patterns across neighbouring parcels: ``[f, V] -> [f, V]``.

    Vertex ``v`` of parcel ``p`` gains ``(M - I)[p, q]`` times the response of the vertex at the
    same place within each neighbouring parcel ``q`` (as GLFA's global parcel map mixes pixels
    at the same position of different parcels).
    """
    extra = mixing - np.eye(parcels.n_parcels)
    if not np.any(extra):
        return responses
    out = responses.copy()
    for o in range(len(OFFSETS)):
        q = parcels.neighbours[parcels.parcel, o]  # [V] neighbouring parcel, -1 if none
        coef = np.where(q >= 0, extra[parcels.parcel, np.maximum(q, 0)], 0.0).astype(responses.dtype)  # [V]
        out += responses[:, parcels.partner[o]] * coef
    return out


def private_tuning(
    geometry: Geometry, params: np.ndarray, columns: tuple[str, ...], difference: float, rng: np.random.Generator
) -> np.ndarray:
    """Replace a share of the semantic and motion tuning [V, P] by the subject's own smooth random field."""
    from glfa.data.synthetic.cortex import SEMANTIC_MM

    share = min(PRIVATE_MAX, PRIVATE_SHARE * difference)
    cols = [i for i, c in enumerate(columns) if c.startswith(("w_sem[", "w_mot["))]
    field = smooth_fields(rng, geometry.xy, len(cols), SEMANTIC_MM)  # drawn even at share 0: same streams
    if share == 0:
        return params
    out = params.copy()
    scale = np.sqrt((params[:, cols] ** 2).mean(axis=1, keepdims=True))  # [V, 1] tuning strength
    out[:, cols] = np.sqrt(1 - share) * params[:, cols] + np.sqrt(share) * scale * field
    return out
