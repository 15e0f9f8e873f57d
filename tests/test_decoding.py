"""Inter-subject decoding (Bazeille et al. 2021): planted classes, the mismatched baseline, labels files, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glfa.errors import DataError
from glfa.metrics.decoding import inter_subject_decoding, read_stimulus_labels


def _study(order, noise: float = 0.3, seed: int = 0):
    """4 stimuli of 10 time points, each with its own 8 x 8 pattern; subjects = pattern + noise.

    ``order`` gives the held-out subject's stimulus -> pattern assignment (identity = aligned)."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(4, 8, 8))
    stimuli = np.repeat([f"clip{k}" for k in range(4)], 10)
    index = np.repeat(np.arange(4), 10)
    train = {s: patterns[index] + noise * rng.normal(size=(40, 8, 8)) for s in ("a", "b")}
    held = 3.0 * patterns[np.asarray(order)[index]] + noise * rng.normal(size=(40, 8, 8))  # another gain
    return train, held, stimuli


def test_aligned_subject_is_decoded_and_mismatched_is_not():
    train, held, stimuli = _study([0, 1, 2, 3])
    out = inter_subject_decoding(train, held, stimuli, stimuli)  # every clip its own class
    assert out["accuracy"] == 1.0 and out["mismatched"] == 0.0  # a derangement never gives a clip its own label
    assert out["chance"] == 0.25 and out["classes"] == 4 and out["n"] == 40
    # two categories of two clips each: a mismatched stimulus shares its category with probability 1/3
    categories = np.where(np.isin(stimuli, ["clip0", "clip1"]), "animal", "vehicle")
    out = inter_subject_decoding(train, held, categories, stimuli, derangements=200)
    assert out["accuracy"] == 1.0 and out["mismatched"] == pytest.approx(1 / 3, abs=0.1)


def test_misaligned_subject_is_decoded_as_the_wrong_stimulus():
    train, held, stimuli = _study([1, 2, 3, 0])  # the held-out subject's patterns are the next clip's
    assert inter_subject_decoding(train, held, stimuli, stimuli)["accuracy"] == 0.0
    mask = np.zeros((8, 8), bool)
    mask[:4] = True  # half the pixels are enough
    train, held, stimuli = _study([0, 1, 2, 3])
    assert inter_subject_decoding(train, held, stimuli, stimuli, mask)["accuracy"] == 1.0


def test_bad_input_and_labels_files(tmp_path):
    train, held, stimuli = _study([0, 1, 2, 3])
    with pytest.raises(DataError, match="at least 2 classes"):
        inter_subject_decoding(train, held, np.array(["x"] * 40), stimuli)
    with pytest.raises(DataError, match="has two labels"):
        inter_subject_decoding(train, held, np.arange(40), stimuli)
    with pytest.raises(DataError, match="one label and one stimulus per time point"):
        inter_subject_decoding(train, held, stimuli[:5], stimuli)
    with pytest.raises(DataError, match="of one shape"):
        inter_subject_decoding({"a": train["a"][:, :4]}, held, stimuli, stimuli)
    clips = tmp_path / "clips.json"
    clips.write_text(json.dumps({"clips": [{"clip_id": "cat_test01", "category_name": "cat"},
                                           {"clip_id": "car_test01", "category_name": "car"}]}))
    assert read_stimulus_labels(clips) == ({"cat_test01": "cat", "car_test01": "car"}, "category")
    flat = tmp_path / "labels.json"
    flat.write_text(json.dumps({"a": 1, "b": "x"}))
    assert read_stimulus_labels(flat) == ({"a": "1", "b": "x"}, "label")
    flat.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="expected {stimulus id: label}"):
        read_stimulus_labels(flat)
    with pytest.raises(DataError, match="not found"):
        read_stimulus_labels(tmp_path / "none.json")
