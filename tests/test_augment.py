"""Stage-1 augmentations: random frame crops and caption word swaps / synonyms."""

from collections import Counter

import numpy as np
import pytest
import torch

from glfa.augment import SYNONYMS, augment_caption, random_crop
from glfa.errors import DataError


def _ramp(n=4, h=24, w=32):
    """uint8 frames whose red channel is the column index times 8 (clipped) and blue the row index."""
    cols = np.broadcast_to(np.arange(w)[None, :], (h, w))
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    one = np.stack([np.minimum(cols * 8, 255), np.zeros((h, w)), rows * 10], axis=-1).astype(np.uint8)
    return torch.from_numpy(np.repeat(one[None], n, axis=0).copy())


def test_crop_keeps_shape_and_dtype():
    frames = _ramp()
    out = random_crop(frames, 0.6, torch.Generator().manual_seed(0))
    assert out.shape == frames.shape and out.dtype == torch.uint8
    floats = frames.float() / 255
    out_f = random_crop(floats, 0.6, torch.Generator().manual_seed(0))
    assert out_f.dtype == torch.float32 and out_f.shape == floats.shape
    # the same crops whatever the dtype
    assert (out_f * 255 - out.float()).abs().max() <= 1.0


def test_crop_is_deterministic_by_seed_and_per_frame():
    frames = _ramp(n=6)
    a = random_crop(frames, 0.5, torch.Generator().manual_seed(3))
    b = random_crop(frames, 0.5, torch.Generator().manual_seed(3))
    c = random_crop(frames, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # identical input frames get different crops
    assert len({bytes(f.numpy()) for f in a}) > 1


def test_crop_scale_one_is_identity():
    frames = _ramp()
    assert torch.equal(random_crop(frames, 1.0, torch.Generator().manual_seed(0)), frames)


def test_crop_is_a_zoom_into_the_frame():
    """On a column ramp, a crop of side fraction s >= scale shows a monotone ramp spanning about s of it."""
    w = 32
    frames = _ramp(n=8, w=w)
    out = random_crop(frames, 0.5, torch.Generator().manual_seed(1)).numpy().astype(float)
    red = out[..., 0] / 8  # back to column units (columns < 32 are not clipped)
    assert np.all(np.diff(red, axis=2) >= -0.5)  # monotone along columns
    span = red[:, :, -1].mean(1) - red[:, :, 0].mean(1)  # [n]
    assert np.all(span >= 0.5 * (w - 1) - 2) and np.all(span <= w - 1 + 0.5)
    assert np.all(red.min(axis=(1, 2)) >= -0.5) and np.all(red.max(axis=(1, 2)) <= w - 1 + 0.5)
    assert span.min() < 0.9 * (w - 1)  # some frames were really cropped


def test_crop_bad_input():
    with pytest.raises(DataError, match="frames"):
        random_crop(torch.zeros(8, 8, 3), 0.5)
    with pytest.raises(DataError, match="scale"):
        random_crop(torch.zeros(1, 8, 8, 3), 0.0)


def test_synonym_table_is_symmetric_and_large():
    assert len(SYNONYMS) >= 300
    for word, options in SYNONYMS.items():
        assert word not in options and word == word.lower() and " " not in word
        for other in options:
            assert word in SYNONYMS[other]


CAPTION = "A man walks his dog along the beach, and a woman runs near the big waves."


def test_caption_is_deterministic_by_seed():
    a = augment_caption(CAPTION, np.random.default_rng(5), 0.3, 0.5)
    b = augment_caption(CAPTION, np.random.default_rng(5), 0.3, 0.5)
    assert a == b
    others = {augment_caption(CAPTION, np.random.default_rng(s), 0.3, 0.5) for s in range(10)}
    assert len(others) > 1


def test_zero_probabilities_keep_the_caption():
    assert augment_caption(CAPTION, np.random.default_rng(0), 0.0, 0.0) == CAPTION


def _cores(text):
    return [w.strip(".,") for w in text.split()]


def test_swaps_keep_the_word_multiset_and_punctuation_places():
    changed = 0
    for seed in range(20):
        out = augment_caption(CAPTION, np.random.default_rng(seed), swap_prob=0.5, synonym_prob=0.0)
        assert Counter(_cores(out)) == Counter(_cores(CAPTION))
        assert out.split()[7].endswith(",") and out.endswith(".")
        changed += out != CAPTION
    assert changed >= 15


def test_synonyms_come_from_the_table():
    replaced = 0
    for seed in range(10):
        out = augment_caption(CAPTION, np.random.default_rng(seed), swap_prob=0.0, synonym_prob=1.0)
        for before, after in zip(_cores(CAPTION), _cores(out)):
            key = before.lower()
            if key in SYNONYMS:
                assert after.lower() in SYNONYMS[key]
                assert after[0].isupper() == before[0].isupper()
                replaced += 1
            else:
                assert after == before
    assert replaced >= 10 * 6  # man walks dog beach woman runs big waves ... are all in the table


def test_caption_bad_probability():
    with pytest.raises(DataError, match="swap_prob"):
        augment_caption("a dog", np.random.default_rng(0), swap_prob=1.5)
