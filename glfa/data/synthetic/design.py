"""Experimental design of the synthetic study and the haemodynamic sampling of responses.

Runs hold ``clips_per_run`` clips, each followed by a grey blank of ``blank_seconds``, after a
lead-in of :data:`LEAD_IN_SECONDS` and before a tail of :data:`TAIL_SECONDS` (the haemodynamic
response outlasts the last clip). Training clips are shown once, in a random order; the test
clips are shown ``test_repeats`` times, each repetition a fresh random order in its own runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["LEAD_IN_SECONDS", "TAIL_SECONDS", "RunDesign", "make_design", "double_gamma_hrf", "sampling_matrix"]

LEAD_IN_SECONDS = 4.0
TAIL_SECONDS = 12.0
#: Time step (seconds, at most) of the fine grid on which neural responses are convolved.
GRID_STEP = 0.1
#: Length of the haemodynamic response kernel (seconds).
HRF_SECONDS = 32.0


@dataclass
class RunDesign:
    """One run: its number, split, the clips shown (indices) and their onsets (seconds), its length in TRs."""

    run: int
    split: str
    clips: list[int] = field(default_factory=list)
    onsets: list[float] = field(default_factory=list)
    n_trs: int = 0


def make_design(
    train: list[int], test: list[int], *, test_repeats: int, clips_per_run: int, clip_seconds: float,
    blank_seconds: float, tr: float, rng: np.random.Generator,
) -> list[RunDesign]:
    """Training runs (each training clip once) then test runs (every test clip ``test_repeats`` times)."""
    blocks = [("train", list(rng.permutation(train)))] if train else []
    blocks += [("test", list(rng.permutation(test))) for _ in range(test_repeats) if test]
    runs: list[RunDesign] = []
    for split, order in blocks:
        for start in range(0, len(order), clips_per_run):
            chunk = [int(c) for c in order[start:start + clips_per_run]]
            onsets = [LEAD_IN_SECONDS + k * (clip_seconds + blank_seconds) for k in range(len(chunk))]
            end = onsets[-1] + clip_seconds + blank_seconds + TAIL_SECONDS
            runs.append(RunDesign(len(runs) + 1, split, chunk, onsets, int(math.ceil(end / tr - 1e-9))))
    return runs


def double_gamma_hrf(t: np.ndarray) -> np.ndarray:
    """The canonical double-gamma haemodynamic response (peak near 5 s, undershoot near 15 s); 0 for t < 0.

    Normalised to unit area, so a sustained neural response of 1 gives a BOLD plateau of 1.
    """
    t = np.asarray(t, dtype=np.float64)
    pos = np.maximum(t, 1e-12)

    def gamma_pdf(shape: float) -> np.ndarray:  # unit-scale gamma density
        return np.exp((shape - 1) * np.log(pos) - pos - math.lgamma(shape))

    h = gamma_pdf(6.0) - gamma_pdf(16.0) / 6.0
    return np.where(t > 0, h, 0.0) / (5.0 / 6.0)


def sampling_matrix(
    run: RunDesign, frames_per_clip: int, fps: float, clip_seconds: float, tr: float, delay: float
) -> np.ndarray:
    """``[n_trs, n_clips_in_run * frames_per_clip]``: BOLD at each TR from the run's clip frames.

    The neural response is the frame on screen at each point of a fine grid (0 during blanks),
    convolved with the double-gamma response shifted by ``delay`` seconds and read at ``i * tr``.
    Frame ``k`` of the ``j``-th clip of the run is column ``j * frames_per_clip + k``.
    """
    import scipy.sparse as sp

    steps = max(1, int(math.ceil(tr / GRID_STEP - 1e-9)))
    dt = tr / steps
    grid = np.arange(run.n_trs * steps) * dt  # [g] seconds
    column = np.full(grid.size, -1, dtype=np.int64)  # frame on screen, -1 = blank
    for j, onset in enumerate(run.onsets):
        on = (grid >= onset - 1e-9) & (grid < onset + clip_seconds - 1e-9)
        frame = np.minimum(np.floor((grid[on] - onset) * fps + 1e-9).astype(np.int64), frames_per_clip - 1)
        column[on] = j * frames_per_clip + frame
    times = np.arange(run.n_trs) * tr  # [n_trs]
    lag = times[:, None] - grid[None, :] - delay  # [n_trs, g]
    kernel = np.where(lag < HRF_SECONDS, double_gamma_hrf(lag), 0.0) * dt
    shown = np.nonzero(column >= 0)[0]
    onehot = sp.csr_matrix(
        (np.ones(shown.size), (np.arange(shown.size), column[shown])), shape=(shown.size, len(run.clips) * frames_per_clip)
    )  # [g', F]
    return np.asarray((onehot.T @ kernel[:, shown].T).T)
