"""Window onsets against hand-computed values for the two real layouts."""

from glfa.config import WindowConfig
from glfa.data.preprocess import lag_to_trs
from glfa.data.windows import Window, make_windows, response_length, window_onsets


def test_fudan_like_trial():
    # TR 0.8 s, 8 s clip, 4 s fMRI (5 TRs) paired with 4 s of video at 3 fps (12 frames), stride 4 s
    win = WindowConfig(fmri_seconds=4.0, video_seconds=4.0, stride_seconds=4.0, fps=3)
    assert win.fmri_frames(0.8) == 5 and win.video_frames == 12
    ws = make_windows("clip", "train", 8.0, tr=0.8, windows=win, n_video_frames=24, first_index=7)
    assert ws == [Window("clip", "train", 0.0, 0, 0, 7), Window("clip", "train", 4.0, 5, 12, 8)]
    assert response_length(8.0, tr=0.8, windows=win) == 10
    # the clip of trial k starts after 3 blank TRs at 2.4 + 10.4 k s; drop 3 TRs, lag 4 s:
    # its response starts at kept TR 13 k + 5 and the two samples read TRs 13k+5..13k+9 and 13k+10..13k+14
    for k in range(4):
        start = lag_to_trs(2.4 + 10.4 * k + 4.0, 0.8) - 3
        assert start == 13 * k + 5
        assert [start + w.fmri_start for w in ws] == [13 * k + 5, 13 * k + 10]


def test_wen_like_continuous_segment():
    # TR 2 s, an 8-minute segment; 4 s of fMRI (2 TRs) with 2 s of video at 8 fps (16 frames), stride 2 s
    win = WindowConfig(fmri_seconds=4.0, video_seconds=2.0, stride_seconds=2.0, fps=8)
    ws = make_windows("seg1", "train", 480.0, tr=2.0, windows=win, n_video_frames=3840)
    assert len(ws) == 240
    assert [(w.onset, w.fmri_start, w.video_start) for w in ws[:3]] == [(0.0, 0, 0), (2.0, 1, 16), (4.0, 2, 32)]
    assert (ws[-1].onset, ws[-1].fmri_start, ws[-1].video_start) == (478.0, 239, 3824)
    assert [w.index for w in ws] == list(range(240))
    assert response_length(480.0, tr=2.0, windows=win) == 241
    # 240 TRs with a 6 s (3 TR) lag leave 237 TRs of response: windows up to fMRI start 235 fit
    kept = make_windows("seg1", "train", 480.0, tr=2.0, windows=win, n_video_frames=3840, response_frames=237)
    assert len(kept) == 236 and kept[-1].fmri_start == 235 and kept[-1].onset == 470.0


def test_onsets_stride_and_fit():
    assert window_onsets(10.0, 4.0, 3.0) == [0.0, 3.0, 6.0]
    assert window_onsets(3.9, 4.0, 1.0) == []
    assert window_onsets(2.4000001, 0.8, 0.8) == [0.0, 0.8, 1.6]
    win = WindowConfig(fmri_seconds=1.6, video_seconds=0.8, stride_seconds=0.8, fps=5)
    assert response_length(3.0, tr=0.8, windows=win) == lag_to_trs(1.6, 0.8) + 2


def test_windows_that_run_past_the_video_are_left_out():
    win = WindowConfig(fmri_seconds=2.0, video_seconds=2.0, fps=4)
    ws = make_windows("a", "test", 6.0, tr=1.0, windows=win, n_video_frames=24)
    assert [w.video_start for w in ws] == [0, 8, 16] and [w.fmri_start for w in ws] == [0, 2, 4]
    ws = make_windows("a", "test", 6.0, tr=1.0, windows=win, n_video_frames=23)
    assert [w.video_start for w in ws] == [0, 8]
    assert ws[0].to_dict() == {"stimulus_id": "a", "split": "test", "onset": 0.0, "fmri_start": 0,
                               "video_start": 0, "index": 0}
