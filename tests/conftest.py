"""Shared pytest fixtures."""

import pytest
import torch
from fixtures import PLANTED_FRAMES, PLANTED_SIZE, planted_clips, sharpen


@pytest.fixture
def one_thread():
    """Run a test on one torch thread: tiny models are as fast on one, and far faster when the
    2 cores are shared with other jobs (more threads only contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[str, str]:
    """Tiny frame (ViT, 1000 classes) and video (VideoMAE, 400 classes) classifiers that tell clips apart."""
    from glfa import backbones as B

    root = tmp_path_factory.mktemp("classifiers")
    calibration = planted_clips(30, seed=9)  # not the test clips
    frame = B.load_frame_classifier(B.tiny_frame_classifier(root / "vit", image_size=PLANTED_SIZE), "cpu")
    video = B.load_video_classifier(B.tiny_video_classifier(root / "videomae", image_size=PLANTED_SIZE,
                                                            num_frames=PLANTED_FRAMES), "cpu")
    frames = calibration.reshape(-1, PLANTED_SIZE, PLANTED_SIZE, 3)
    return {"frame_classifier": sharpen(frame, frames, root / "vit-sharp"),
            "video_classifier": sharpen(video, calibration, root / "videomae-sharp"),
            "clip_model": str(B.tiny_clip(root / "clip", dim=32, image_size=PLANTED_SIZE))}
