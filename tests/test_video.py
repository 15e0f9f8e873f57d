"""glfa.data.video: mp4/gif writing, decoding, resampling, bad files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from glfa.data.video import read_video, resample_times, resample_video, write_gif, write_video
from glfa.errors import DataError


def _smooth_clip(f: int = 10, h: int = 48, w: int = 64) -> np.ndarray:
    """A moving colour gradient: smooth, so H.264 keeps it within a few grey levels."""
    t = np.arange(f)[:, None, None]
    y = np.arange(h)[None, :, None]
    x = np.arange(w)[None, None, :]
    shape = (f, h, w)
    r = np.broadcast_to(128 + 100 * np.sin(2 * np.pi * (x + 2 * t) / w), shape)
    g = np.broadcast_to(128 + 100 * np.cos(2 * np.pi * (y - t) / h), shape)
    b = np.broadcast_to(60 + 2.0 * x + 5 * t, shape)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def test_mp4_round_trip(tmp_path):
    frames = _smooth_clip()
    path = write_video(tmp_path / "clip.mp4", frames, fps=3.0)
    back, fps = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert fps == pytest.approx(3.0)
    err = np.abs(back.astype(float) - frames.astype(float))
    assert err.mean() < 3.0, err.mean()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_mp4_is_reproducible(tmp_path):
    frames = _smooth_clip()
    digests = {hashlib.sha256(write_video(tmp_path / f"{i}.mp4", frames, fps=8).read_bytes()).digest() for i in range(6)}
    assert len(digests) == 1  # (x264's mbtree rate control made about one write in two differ)


def test_mp4_odd_size_is_padded(tmp_path):
    frames = _smooth_clip(4, 33, 45)
    back, _ = read_video(write_video(tmp_path / "odd.mp4", frames, fps=5))
    assert back.shape == (4, 34, 46, 3)
    assert np.abs(back[:, :33, :45].astype(float) - frames).mean() < 4.0


def test_fractional_fps(tmp_path):
    _, fps = read_video(write_video(tmp_path / "ntsc.mp4", _smooth_clip(6), fps=30000 / 1001))
    assert fps == pytest.approx(29.97, abs=1e-2)


def test_corrupt_and_missing_files_raise_data_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(DataError, match="bad.mp4"):
        read_video(bad)
    good = write_video(tmp_path / "cut.mp4", _smooth_clip(), fps=3)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: 200])
    with pytest.raises(DataError, match="truncated.mp4"):
        read_video(truncated)
    with pytest.raises(DataError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")


def test_bad_frames_rejected(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32), fps=3)
    with pytest.raises(ValueError, match="shape"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.uint8), fps=3)
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize(
    ("n", "src", "dst", "expected"),
    [
        (24, 8.0, 3.0, [0, 3, 5, 8, 11, 13, 16, 19, 21]),  # t = i/3 -> round(8 t)
        (4, 2.0, 4.0, [0, 1, 1, 2, 2, 3, 3, 3]),           # t = i/4 -> round(2 t), clamped
        (5, 5.0, 5.0, [0, 1, 2, 3, 4]),
    ],
)
def test_resample_times_by_hand(n, src, dst, expected):
    idx = resample_times(n, src, dst)
    expect = np.minimum(np.floor(np.arange(len(expected)) / dst * src + 0.5), n - 1)
    assert idx.tolist() == expected == expect.astype(int).tolist()


def test_resample_video_count_and_content():
    frames = np.zeros((24, 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(24)[:, None, None] * 10  # frame index written in red
    out = resample_video(frames, 8.0, 3.0, 16, 16)
    assert out.shape == (9, 16, 16, 3) and out.dtype == np.uint8
    assert (out[:, 8, 8, 0] // 10).tolist() == resample_times(24, 8.0, 3.0).tolist()
    same = resample_video(frames, 8.0, 8.0, 32, 32)
    np.testing.assert_array_equal(same, frames)


def test_resample_video_antialiases():
    stripes = np.zeros((1, 64, 64, 3), np.uint8)
    stripes[:, :, ::2] = 255  # one-pixel stripes: aliasing would keep them at 0 / 255
    out = resample_video(stripes, 1.0, 1.0, 16, 16)
    assert np.abs(out[:, :, 1:-1].astype(float) - 127.5).max() < 3  # borders see the edge


def test_gif_round_trip(tmp_path):
    frames = _smooth_clip(5, 20, 24)
    path = write_gif(tmp_path / "clip.gif", frames, fps=4)
    with Image.open(path) as im:
        assert im.n_frames == 5 and im.size == (24, 20)
        assert im.info["duration"] == 250
        im.seek(2)
        back = np.asarray(im.convert("RGB")).astype(float)
    assert np.abs(back - frames[2]).mean() < 12  # palette quantisation
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("dst_fps", [3.0, 8.0, 30.0])
def test_read_resampled_while_decoding_equals_read_then_resample(tmp_path, dst_fps):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, size=(25, 32, 48, 3), dtype=np.uint8)
    path = write_video(tmp_path / "clip.mp4", frames, 10.0)
    decoded, src_fps = read_video(path)
    expected = resample_video(decoded, src_fps, dst_fps, 16, 24)
    streamed, fps = read_video(path, fps=dst_fps, height=16, width=24)
    assert fps == dst_fps
    np.testing.assert_array_equal(streamed, expected)
