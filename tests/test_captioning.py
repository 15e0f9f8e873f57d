"""BLIP-2 captions per stored frame: the tiny model's path, the file format, resuming, the CLI."""

import json
from collections.abc import Mapping

import numpy as np
import pytest

from glfa import backbones as B
from glfa.captioning import caption_frames, caption_store, caption_videos
from glfa.data.captions import INDEX, caption_path, read_captions
from glfa.cli import main
from glfa.data.store import StoreWriter, StudyStore
from glfa.data.windows import Window
from glfa.errors import BackboneError, DataError, StoreError


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return B.tiny_blip2(tmp_path_factory.mktemp("blip2") / "blip2", image_size=32)


@pytest.fixture(scope="module")
def captioner(blip_dir):
    return B.load_captioner(blip_dir, device="cpu", max_new_tokens=4)


def _videos(seed=0):
    rng = np.random.default_rng(seed)
    return {"clip a": rng.integers(0, 256, (5, 24, 32, 3), dtype=np.uint8),
            "b": rng.integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)}


class Counting:
    """Wraps a captioner; counts frames; optionally fails on the call number ``fail_at`` (a kill)."""

    def __init__(self, model, fail_at=None):
        self.model, self.fail_at, self.calls, self.frames = model, fail_at, 0, 0
        self.path = model.path

    def caption(self, frames):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        self.frames += len(frames)
        return self.model.caption(frames)


def test_captioner_loads_and_captions_every_frame(captioner):
    from transformers import Blip2ForConditionalGeneration

    assert isinstance(captioner.model, Blip2ForConditionalGeneration)
    frames = _videos()["clip a"]
    captions = caption_frames(captioner, frames, batch_size=2)
    assert len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert captions == caption_frames(captioner, frames, batch_size=2)  # greedy: deterministic
    assert caption_frames(captioner, frames[:0]) == []
    with pytest.raises(DataError, match="expected frames"):
        caption_frames(captioner, frames[0])


def test_loading_errors(blip_dir, tmp_path):
    with pytest.raises(BackboneError, match="folder not found.*Blip2ForConditionalGeneration"):
        B.load_captioner(tmp_path / "nowhere")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(BackboneError, match="model_type is 'clip'.*blip-2"):
        B.load_captioner(tmp_path / "clip")


def test_caption_videos_format_and_skip(captioner, tmp_path):
    videos = _videos()
    out = tmp_path / "captions"
    model = Counting(captioner)
    written = caption_videos(videos, out, model, fps=3.0, batch_size=2, progress=False)
    assert set(written) == set(videos) and model.frames == 8
    assert written["clip a"] == caption_path(out, "clip a") == out / "clip_a.json"
    for sid, frames in videos.items():
        data = json.loads(written[sid].read_text())  # the Wen 2017 reader's format: a list of strings
        assert isinstance(data, list) and len(data) == len(frames) and all(isinstance(c, str) for c in data)
        assert data == caption_frames(captioner, frames, batch_size=2)
    index = json.loads((out / INDEX).read_text())
    assert index["fps"] == 3.0 and index["stimuli"] == {"clip a": 5, "b": 3}
    assert sorted(p.name for p in out.iterdir()) == ["b.json", "clip_a.json", INDEX]

    class Untouchable(Mapping):
        """Finished stimuli are skipped without reading their videos."""

        def __getitem__(self, key):
            raise AssertionError(f"read {key}")

        def __iter__(self):
            return iter(videos)

        def __len__(self):
            return len(videos)

    again = Counting(captioner)
    assert caption_videos(Untouchable(), out, again, fps=3.0, progress=False) == written and again.calls == 0


def test_resume_after_a_kill(captioner, tmp_path):
    videos = _videos(seed=1)
    reference = caption_videos(videos, tmp_path / "whole", captioner, batch_size=2, progress=False)
    out = tmp_path / "resumed"
    killed = Counting(captioner, fail_at=5)  # "clip a" takes 3 calls; the kill hits "b"'s second batch
    with pytest.raises(KeyboardInterrupt):
        caption_videos(videos, out, killed, batch_size=2, progress=False)
    assert caption_path(out, "clip a").is_file() and not caption_path(out, "b").is_file()
    partial = out / "b.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 2  # header + the first batch
    with open(partial, "a") as f:
        f.write('{"start": 2, "capt')  # a line torn by the kill
    resumed = Counting(captioner)
    caption_videos(videos, out, resumed, batch_size=2, progress=False)
    assert resumed.frames == 1  # only "b"'s last frame was left
    assert not partial.exists()
    for sid in videos:
        assert read_captions(caption_path(out, sid)) == read_captions(reference[sid])


def test_read_captions_rejects_bad_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"not": "a list"}')
    with pytest.raises(DataError, match="list of strings"):
        read_captions(bad)
    bad.write_text("[1, 2")
    with pytest.raises(DataError, match="cannot read"):
        read_captions(bad)


def _store(path):
    rng = np.random.default_rng(0)
    with StoreWriter(path, image_size=8, video_size=(16, 16)) as w:
        w.set_mask(np.ones((8, 8), bool))
        for sid, n in (("s1", 4), ("s2", 3)):
            w.add_stimulus(sid, "train", rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8), [""] * n, duration=n)
            w.add_response("sub1", sid, rng.normal(size=(4, 8, 8)).astype(np.float32))
        w.finish([Window("s1", "train", 0.0, 0, 0, 0)],
                 {"tr": 1.0, "fps": 2.0, "fmri_frames": 2, "video_frames": 2, "config": {"name": "caption-test"}})
    return path


def test_caption_store_and_cli(blip_dir, captioner, tmp_path, capsys):
    store = _store(tmp_path / "store")
    out = caption_store(store, captioner, batch_size=3, progress=False)
    assert out == store / "cache" / "captions"
    assert [len(read_captions(out / f"{s}.json")) for s in ("s1", "s2")] == [4, 3]
    assert json.loads((out / INDEX).read_text())["fps"] == 2.0

    opened = StudyStore.open(store)  # the store reads the new captions for its uncaptioned stimuli
    assert opened.caption_source == "cache/captions"
    assert opened.video_captions("s1") == read_captions(out / "s1.json")
    assert opened.captions(opened.windows()[0]) == read_captions(out / "s1.json")[:2]
    (out / "s2.json").write_text(json.dumps(["only one"]))
    with pytest.raises(StoreError, match="holds 1 captions but stimulus 's2' has 3"):
        StudyStore.open(store)
    (out / "s2.json").unlink()
    assert StudyStore.open(store).video_captions("s2") == [""] * 3

    other = tmp_path / "elsewhere"
    assert main(["caption", str(store), "--model", str(blip_dir), "--batch-size", "2", "--out", str(other),
                 "--device", "cpu", "--max-new-tokens", "4"]) == 0
    assert read_captions(other / "s1.json") == read_captions(out / "s1.json")
    assert "captions of 2 stimuli" in capsys.readouterr().out

    assert main(["caption", str(store), "--model", str(tmp_path / "no-model")]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["caption", str(tmp_path / "no-store"), "--model", str(blip_dir)]) == 2
