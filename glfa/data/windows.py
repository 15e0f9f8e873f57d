"""Sliding windows that pair alpha*T seconds of fMRI with T seconds of video (paper section 3.3).

A window starts ``onset`` seconds into a stimulus clip. It takes ``m = windows.video_frames``
video frames from frame ``round(onset * fps)`` and ``n = windows.fmri_frames(tr)`` fMRI frames
from TR ``lag_to_trs(onset, tr)`` of the stimulus' stored response, which itself begins at
the TR answering the clip's first frame (onset + haemodynamic lag). Onsets are
``0, stride, 2 * stride, ...`` while ``onset + video_seconds <= clip duration``.

Worked example (Fudan WebVid): TR 0.8 s, 8 s clips, 4 s windows with 4 s stride, 3 fps:
onsets 0 and 4 s, fMRI starts 0 and 5 (n = 5 TRs), video starts 0 and 12 (m = 12 frames).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from glfa.config import WindowConfig
from glfa.data.preprocess import lag_to_trs

__all__ = ["Window", "window_onsets", "response_length", "make_windows"]

_EPS = 1e-6


@dataclass(frozen=True)
class Window:
    """One sample: a stretch of a stimulus, where its fMRI and video frames start, and its place in the store.

    Attributes
    ----------
    stimulus_id : str
    split : str
        ``train`` or ``test`` (the stimulus' split).
    onset : float
        Seconds from the start of the stimulus clip.
    fmri_start : int
        First fMRI frame, as an index into the stimulus' stored response.
    video_start : int
        First video frame, as an index into the stimulus' stored frames.
    index : int
        Position in the store's window table.
    """

    stimulus_id: str
    split: str
    onset: float
    fmri_start: int
    video_start: int
    index: int

    def to_dict(self) -> dict:
        """The window as plain data."""
        return asdict(self)


def window_onsets(duration: float, video_seconds: float, stride: float) -> list[float]:
    """Onsets ``0, stride, ...`` (seconds) of the windows that fit in a clip of ``duration`` seconds."""
    if not (video_seconds > 0 and stride > 0):
        raise ValueError(f"video_seconds and stride must be positive, got {video_seconds}, {stride}")
    onsets = []
    k = 0
    while k * stride + video_seconds <= duration + _EPS:
        onsets.append(round(k * stride, 9))
        k += 1
    return onsets


def response_length(duration: float, *, tr: float, windows: WindowConfig) -> int:
    """fMRI frames a stimulus' stored response needs so that every window of the clip fits (0 if none fits)."""
    onsets = window_onsets(duration, windows.video_seconds, windows.stride)
    if not onsets:
        return 0
    return lag_to_trs(onsets[-1], tr) + windows.fmri_frames(tr)


def make_windows(
    stimulus_id: str,
    split: str,
    duration: float,
    *,
    tr: float,
    windows: WindowConfig,
    n_video_frames: int | None = None,
    response_frames: int | None = None,
    first_index: int = 0,
) -> list[Window]:
    """The windows of one stimulus clip of ``duration`` seconds, numbered from ``first_index``.

    Parameters
    ----------
    n_video_frames : int, optional
        Stored video frames of the clip; windows whose ``m`` frames would run past them are left out.
    response_frames : int, optional
        Stored fMRI frames of the stimulus' response (the shortest over subjects); windows whose
        ``n`` frames would run past them are left out (the caller counts and reports them).
    """
    n = windows.fmri_frames(tr)
    m = windows.video_frames
    out: list[Window] = []
    for onset in window_onsets(duration, windows.video_seconds, windows.stride):
        fmri_start = lag_to_trs(onset, tr)
        video_start = int(round(onset * windows.fps + _EPS))
        if n_video_frames is not None and video_start + m > n_video_frames:
            continue
        if response_frames is not None and fmri_start + n > response_frames:
            continue
        out.append(Window(stimulus_id, split, float(onset), fmri_start, video_start, first_index + len(out)))
    return out
