"""Feature caches: CLIP embeddings of frames and captions, VAE latents of windows; resumable, computed once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from glfa.backbones import load_clip, load_video_generator, tiny_clip, tiny_video_generator
from glfa.config import validate_config
from glfa.data import features as F
from glfa.data.store import StudyStore
from glfa.errors import StoreError
from fixtures import write_decoding_store, write_uncaptioned_store

pytestmark = pytest.mark.usefixtures("one_thread")

VIEWS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> StudyStore:
    return StudyStore.open(write_decoding_store(tmp_path_factory.mktemp("features") / "store"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "clip", dim=32, image_size=16)


class Counting:
    """A CLIP wrapper counting the rows it embeds; raises once ``fail_after`` image calls were made."""

    def __init__(self, clip, fail_after: int | None = None):
        self.clip, self.fail_after = clip, fail_after
        self.path, self.dim, self.dtype = clip.path, clip.dim, clip.dtype
        self.image_calls = self.image_rows = self.text_rows = 0

    def embed_images(self, frames):
        if self.fail_after is not None and self.image_calls >= self.fail_after:
            raise KeyboardInterrupt("killed")
        self.image_calls += 1
        self.image_rows += len(frames)
        return self.clip.embed_images(frames)

    def embed_texts(self, texts):
        self.text_rows += len(texts)
        return self.clip.embed_texts(texts)


def _config(seed: int, **contrastive):
    section = {"augment_views": VIEWS, "crop_scale": 0.5, "word_swap_prob": 0.5, "synonym_prob": 0.5, "seed": seed}
    return validate_config({"model": {"preset": "tiny"}, "contrastive": {**section, **contrastive}})


def test_clip_features_equal_a_direct_computation(store, clip_dir):
    clip = load_clip(clip_dir, device="cpu")
    config = _config(seed=1)
    feats = F.clip_features(store, clip, config=config, progress=False, chunk_rows=5)
    n = store.num_video_frames
    assert feats.image.shape == feats.text.shape == (n, VIEWS, 32) and feats.image.dtype == torch.float16
    assert feats.folder.parent == store.path / "cache" / "features" and (feats.folder / "meta.json").is_file()
    # view 0: the stored frames and captions themselves, stimulus by stimulus
    plain = torch.cat([clip.embed_images(store.video(s)) for s in store.stimuli])  # [F, D]
    captions = [c for s in store.stimuli for c in store.video_captions(s)]
    torch.testing.assert_close(feats.image[:, 0].float(), plain, atol=2e-3, rtol=0)
    torch.testing.assert_close(feats.text[:, 0].float(), clip.embed_texts(captions), atol=2e-3, rtol=0)
    # other views: crops and augmented captions of the same row, deterministic per (row, view)
    rows = [r for s in store.stimuli for r in range(len(store.video_captions(s)))]
    frames = np.concatenate([store.video(s) for s in store.stimuli])
    crops = torch.stack([F.frame_view(frames[r], r, v, crop_scale=0.5, seed=1) for r in range(n) for v in (1, 2)])
    assert len(rows) == n and not torch.equal(crops[0], torch.from_numpy(frames[0]))
    torch.testing.assert_close(feats.image[:, 1:].float().reshape(-1, 32), clip.embed_images(crops), atol=2e-3, rtol=0)
    texts = [F.caption_view(captions[r], r, v, swap_prob=0.5, synonym_prob=0.5, seed=1) for r in range(n) for v in (1, 2)]
    assert sum(t != captions[i // 2] for i, t in enumerate(texts)) > n // 2  # most captions changed
    torch.testing.assert_close(feats.text[:, 1:].float().reshape(-1, 32), clip.embed_texts(texts), atol=2e-3, rtol=0)
    # the chunking does not change a value
    other = F.clip_features(store, clip, config=config, progress=False, chunk_rows=7)
    assert other.folder != feats.folder
    assert torch.equal(other.image, feats.image) and torch.equal(other.text, feats.text)


def test_each_distinct_caption_is_embedded_once(store, clip_dir):
    clip = Counting(load_clip(clip_dir, device="cpu"))
    feats = F.clip_features(store, clip, config=_config(seed=2, augment_views=1), progress=False, chunk_rows=100)
    assert clip.image_rows == store.num_video_frames
    assert clip.text_rows == len(set(store.stimuli)) == 6  # one caption per clip, 36 frames
    assert feats.views == 1 and feats.dim == 32


def test_an_interrupted_build_resumes_from_its_chunks(store, clip_dir):
    config = _config(seed=3)
    n = store.num_video_frames  # 36 rows: chunks of 8 -> 5 chunks
    victim = Counting(load_clip(clip_dir, device="cpu"), fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        F.clip_features(store, victim, config=config, progress=False, chunk_rows=8, batch_rows=8)
    folder = next(p for p in (store.path / "cache" / "features").iterdir()
                  if (p / "chunk-00001.npz").is_file() and not (p / "meta.json").exists())
    assert sorted(p.name for p in folder.glob("chunk-*")) == ["chunk-00000.npz", "chunk-00001.npz"]
    resumed = Counting(load_clip(clip_dir, device="cpu"))
    feats = F.clip_features(store, resumed, config=config, progress=False, chunk_rows=8, batch_rows=8)
    assert feats.folder == folder and resumed.image_rows == (n - 16) * VIEWS  # the 2 chunks done are not redone
    whole = F.clip_features(store, load_clip(clip_dir, device="cpu"), config=config, progress=False, chunk_rows=9,
                            batch_rows=8)
    assert torch.equal(whole.image, feats.image) and torch.equal(whole.text, feats.text)


def test_a_second_call_reads_the_cache_without_the_model(store, clip_dir, monkeypatch):
    config = _config(seed=4)
    first = F.clip_features(store, clip_dir, config=config, progress=False, device="cpu")  # loaded by name
    counting = Counting(load_clip(clip_dir, device="cpu"))
    again = F.clip_features(store, counting, config=config, progress=False)
    assert counting.image_rows == counting.text_rows == 0 and again.key == first.key
    monkeypatch.setattr("glfa.backbones.load_clip", lambda *a, **k: pytest.fail("CLIP loaded for a complete cache"))
    table = F._frame_table

    class Unreadable:
        def __getitem__(self, rows):
            pytest.fail("frames read for a complete cache")

    monkeypatch.setattr(F, "_frame_table", lambda s: (Unreadable(), table(s)[1]))
    named = F.clip_features(store, clip_dir, config=config, progress=False, build=False)
    assert torch.equal(named.image, first.image) and torch.equal(named.text, first.text)
    # what changes values changes the key: another crop scale is another cache, refused without building
    with pytest.raises(StoreError, match="glfa train contrastive"):
        F.clip_features(store, clip_dir, config=_config(seed=4, crop_scale=0.9), progress=False, build=False)


def test_a_corrupt_chunk_is_computed_again(store, clip_dir):
    config = _config(seed=5)
    good = F.clip_features(store, load_clip(clip_dir, device="cpu"), config=config, progress=False, chunk_rows=8,
                           batch_rows=8)
    wrong = {"image": np.zeros((8, VIEWS, 31), np.float16), "text": np.zeros((8, VIEWS, 32), np.float16)}
    np.savez(good.folder / "chunk-00001.npz", **wrong)  # wrong shape
    torn = good.folder / "chunk-00003.npz"
    torn.write_bytes(torn.read_bytes()[:100])  # cut short by a crash
    counting = Counting(load_clip(clip_dir, device="cpu"))
    again = F.clip_features(store, counting, config=config, progress=False, chunk_rows=8, batch_rows=8)
    assert counting.image_rows == 16 * VIEWS
    assert torch.equal(again.image, good.image) and torch.equal(again.text, good.text)


def test_a_store_without_captions_is_refused(tmp_path, clip_dir):
    store = StudyStore.open(write_uncaptioned_store(tmp_path / "nocap"))
    with pytest.raises(StoreError, match="no captions.*glfa caption"):
        F.clip_features(store, clip_dir, config=_config(seed=0), progress=False)


def test_clip_width_must_match_the_heads(store, clip_dir):
    config = validate_config({"model": {"preset": "tiny", "heads": {"clip_dim": 16}}})
    with pytest.raises(StoreError, match="clip_dim"):
        F.clip_features(store, load_clip(clip_dir, device="cpu"), config=config, progress=False)


# ----------------------------------------------------------------------------- VAE latents


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    folder = tiny_video_generator(tmp_path_factory.mktemp("gen") / "gen", sample_size=16)
    return load_video_generator(folder, device="cpu")


def test_vae_latents_are_cached_per_window(store, generator, monkeypatch):
    lat = F.vae_latents(store, generator, progress=False, chunk_rows=5)
    train = store.windows("train")
    assert lat.windows == {w.index for w in train} and lat.latents.shape == (len(train), 4, 4, 4, 4)
    direct = generator.encode_videos(np.stack([store.frames(w) for w in train]))  # [b, c, m, h', w']
    torch.testing.assert_close(lat.stack([w.index for w in train]).float(), direct, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lat.get(train[3].index).float(), direct[3], atol=2e-3, rtol=2e-3)
    test_window = store.windows("test")[0].index
    with pytest.raises(StoreError, match=f"window {test_window} has no cached VAE latents") as info:
        lat.get(test_window)
    assert str(store.path) in str(info.value)
    calls = []
    monkeypatch.setattr(generator, "encode_videos", lambda videos: calls.append(len(videos)))
    again = F.vae_latents(store, generator, progress=False, chunk_rows=5)
    assert calls == [] and torch.equal(again.latents, lat.latents)
    with pytest.raises(StoreError, match="glfa train cotrain"):
        F.vae_latents(store, generator, split="test", progress=False, build=False)


def test_vae_latents_need_a_video_size_the_vae_divides(store):
    odd = SimpleNamespace(vae_scale_factor=3)
    with pytest.raises(StoreError, match="16 x 16 pixels, not a multiple of the VAE's factor 3"):
        F.vae_latents(store, odd, progress=False)


# ----------------------------------------------------------------------------- batching


def test_fixed_batches_compute_each_item_with_the_same_neighbours_whatever_is_asked():
    calls = []

    def batch_dependent(a, b):  # a planted function whose results change with the batch they are computed in
        calls.append((a, b))
        return np.arange(a, b) * 1000.0 + (b - a)

    whole = F.FixedBatches(batch_dependent, count=11, size=4).take(np.arange(11))
    pieces = F.FixedBatches(batch_dependent, count=11, size=4)
    parts = []
    for a, b in [(0, 3), (3, 9), (9, 11)]:
        parts.append(pieces.take(np.arange(a, b)))
        pieces.forget_before(b)
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    np.testing.assert_array_equal(whole, np.arange(11) * 1000.0 + np.array([4] * 8 + [3] * 3))
    assert calls == [(0, 4), (4, 8), (8, 11)] * 2  # each batch computed once per FixedBatches
    np.testing.assert_array_equal(pieces.take([10, 8, 10]), whole[[10, 8, 10]])


def test_vae_latents_do_not_depend_on_the_chunking(store, generator):
    three = F.vae_latents(store, generator, progress=False, chunk_rows=3)
    seven = F.vae_latents(store, generator, progress=False, chunk_rows=7)
    assert three.folder != seven.folder and torch.equal(three.latents, seven.latents)
