"""Decode, resample and write video clips.

Frames are always ``uint8`` arrays ``[f, h, w, 3]`` (RGB). Files are mp4 (H.264, yuv420p,
through PyAV) or animated GIF. Writes are atomic (:func:`glfa.io.atomic_path`) and
reproducible: frames are converted to yuv420p in numpy, the encoder runs single-threaded
without macroblock-tree rate control, with explicit timestamps and no dates in the metadata,
so the same frames give byte-identical files.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from glfa.errors import DataError
from glfa.io import atomic_path

__all__ = ["write_video", "read_video", "resample_video", "write_gif"]


def _check_frames(frames: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """Validate ``[f, h, w, 3]`` uint8 frames (ValueError otherwise)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path or 'frames'}: expected frames of shape [f, h, w, 3] with f >= 1, got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{path or 'frames'}: expected uint8 frames, got {frames.dtype}")
    return frames


def _rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """RGB ``[h, w, 3]`` uint8 (even h, w) -> planar yuv420p ``[h * 3 // 2, w]`` (BT.601, limited range).

    Done here in numpy rather than by libswscale, whose SIMD paths depend on the input buffer's
    memory alignment and so do not always give the same bytes for the same frame.
    """
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = y.shape

    def half(c: np.ndarray) -> np.ndarray:  # 2 x 2 mean
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y.ravel(), half(u).ravel(), half(v).ravel()]
    out = np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8)
    return out.reshape(h * 3 // 2, w)


def write_video(path: str | Path, frames: np.ndarray, fps: float, *, crf: int = 18) -> Path:
    """Write ``frames`` (uint8 ``[f, h, w, 3]``) as an H.264 mp4 at ``fps``; atomic and reproducible.

    Odd heights or widths are padded by one replicated row/column (yuv420p needs even sizes),
    so such a clip reads back one pixel larger.
    """
    import av

    path = Path(path)
    frames = _check_frames(frames, path)
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path, ".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(
                "libx264", rate=rate,
                # One thread and no macroblock-tree rate control: x264's mbtree SIMD path does not
                # give the same bytes on every run; without it the output is reproducible.
                options={"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "no-mbtree=1"},
            )
            stream.width = frames.shape[2]
            stream.height = frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            stream.codec_context.time_base = 1 / rate
            for i, frame in enumerate(frames):
                picture = av.VideoFrame.from_ndarray(_rgb_to_yuv420p(frame), format="yuv420p")
                picture.pts = i  # explicit timestamps: x264's rate control reads them
                picture.time_base = 1 / rate
                container.mux(stream.encode(picture))
            container.mux(stream.encode(None))
    return path


def read_video(
    path: str | Path, *, fps: float | None = None, height: int | None = None, width: int | None = None
) -> tuple[np.ndarray, float]:
    """Decode a video file -> (frames uint8 ``[f, h, w, 3]``, fps); DataError naming the file if it cannot.

    With ``fps`` (and ``height``, ``width``) the video is resampled while it is decoded, exactly as
    :func:`resample_video` would, keeping only the frames it needs: an 8-minute 30 fps movie is never
    held in memory whole.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise DataError("video file not found", path=path)
    kept: list[np.ndarray] = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise DataError("no video stream in the file", path=path)
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or stream.guessed_rate
            if not rate:
                raise DataError("the video has no frame rate", path=path)
            src_fps = float(rate)
            n_source = 0
            for n_source, frame in enumerate(container.decode(stream), start=1):
                image = frame.to_ndarray(format="rgb24")
                if fps is None:
                    kept.append(image)
                    continue
                # output j shows source frame round(j * src / dst): emit every j that lands here
                while _source_index(len(kept), src_fps, fps) == n_source - 1:
                    kept.append(image)
    except DataError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise DataError(f"cannot decode the video ({exc.__class__.__name__}: {exc})", path=path) from None
    if not n_source:
        raise DataError("the video holds no decodable frame", path=path)
    if fps is None:
        return np.stack(kept), src_fps
    n_out = len(resample_times(n_source, src_fps, fps))
    kept = kept[:n_out] + [image] * (n_out - len(kept))  # outputs past the last frame show the last frame
    frames = np.stack(kept)
    if height is not None and width is not None:
        frames = resize_frames(frames, height, width)
    return frames, float(fps)


def _source_index(j, src_fps: float, dst_fps: float):
    """The source frame nearest output time ``j / dst_fps`` (before clamping to the clip); ``j`` int or array."""
    return np.floor(np.asarray(j) / dst_fps * src_fps + 0.5 + 1e-9).astype(np.int64)


def resample_times(n_frames: int, src_fps: float, dst_fps: float) -> np.ndarray:
    """Source frame index shown at each output time ``t_i = i / dst_fps`` (nearest frame), ``[f_out]``.

    The clip lasts ``n_frames / src_fps`` seconds; output times run over ``[0, duration)``.
    """
    if n_frames < 1 or not src_fps > 0 or not dst_fps > 0:
        raise ValueError(f"need n_frames >= 1 and positive rates, got {n_frames}, {src_fps}, {dst_fps}")
    n_out = max(1, int(np.ceil(n_frames * dst_fps / src_fps - 1e-9)))
    return np.minimum(_source_index(np.arange(n_out), src_fps, dst_fps), n_frames - 1)


def resample_video(
    frames: np.ndarray, src_fps: float, dst_fps: float, height: int, width: int
) -> np.ndarray:
    """Resample uint8 ``[f, h, w, 3]`` frames in time (nearest frame) and space (antialiased bilinear)."""
    frames = _check_frames(frames)
    frames = frames[resample_times(frames.shape[0], src_fps, dst_fps)]  # [f_out, h, w, 3]
    return resize_frames(frames, height, width)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 ``[f, h, w, 3]`` frames to ``height x width`` (antialiased bilinear, torch)."""
    import torch
    import torch.nn.functional as F

    if frames.shape[1:3] == (height, width):
        return np.ascontiguousarray(frames)
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    chunk = max(1, int(2**24 // (frames.shape[1] * frames.shape[2] * 3)))
    for start in range(0, frames.shape[0], chunk):
        x = torch.from_numpy(np.ascontiguousarray(frames[start:start + chunk])).permute(0, 3, 1, 2).float()
        y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def write_gif(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write ``frames`` (uint8 ``[f, h, w, 3]``) as a looping animated GIF at ``fps``; atomic."""
    from PIL import Image

    path = Path(path)
    frames = _check_frames(frames, path)
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    images = [Image.fromarray(frame) for frame in frames]
    with atomic_path(path, ".gif") as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:],
            duration=int(round(1000 / fps)), loop=0, optimize=False,
        )
    return path
