"""Configs: the shipped files load with the paper's values; bad files give errors naming file and key."""

from pathlib import Path

import pytest

from glfa.config import load_config, validate_config
from glfa.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["wen2017.yaml", "fudan-webvid.yaml", "fudan-webvid-release.yaml", "fudan-fcvid.yaml",
                                  "demo.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.source.endswith(name)
    assert config.model.glfa.kernel_size in (5, 7, 9, 13)


def test_release_config_matches_the_published_model():
    """The settings of the authors' fmri-video-sub12-funcalign release (window 5, subjects 1,2 -> 3)."""
    release = load_config(CONFIGS / "fudan-webvid-release.yaml")
    assert release.data.windows.fmri_frames(release.data.tr) == 5 and release.data.windows.video_frames == 12
    gen = release.generation
    settings = (gen.num_frames, gen.width, gen.height, gen.guidance_scale, gen.num_inference_steps)
    assert settings == (12, 576, 320, 6.0, 30)
    assert (release.subjects.train, release.subjects.held_out) == (["1", "2"], ["3"])
    assert release.model.heads.clip_head == "fmri2clip" and release.model.heads.num_tokens == 77
    assert release.model.glfa.enabled and release.model.glfa.consistency_weight == 0.5


def test_paper_hyperparameters():
    wen = load_config(CONFIGS / "wen2017.yaml")
    fudan = load_config(CONFIGS / "fudan-webvid.yaml")
    # supplementary Table 1 and section 1
    assert (wen.cotrain.batch_size, wen.cotrain.learning_rate, wen.cotrain.steps) == (16, 3e-5, 18000)
    assert (fudan.cotrain.batch_size, fudan.cotrain.learning_rate, fudan.cotrain.steps) == (12, 1e-4, 30000)
    assert (wen.generation.guidance_scale, wen.generation.num_inference_steps) == (9.0, 25)
    assert (fudan.generation.guidance_scale, fudan.generation.num_inference_steps, fudan.generation.num_frames) == (6.0, 30, 12)
    for c in (wen, fudan):
        assert (c.pretrain.batch_size, c.pretrain.learning_rate, c.pretrain.steps) == (64, 1e-4, 2000)
        assert (c.contrastive.learning_rate, c.contrastive.dropout, c.contrastive.steps) == (2e-5, 0.6, 12000)
        assert c.model.glfa.consistency_weight == 0.5 and c.model.glfa.kernel_size == 13
        assert (c.model.pte.embed_dim, c.model.pte.depth, c.model.pte.num_heads) == (1024, 24, 16)
        assert c.data.windows.fmri_seconds == 4.0
    assert wen.contrastive.stimuli_per_batch * wen.contrastive.subjects_per_batch == 32
    assert fudan.contrastive.stimuli_per_batch * fudan.contrastive.subjects_per_batch == 24
    assert wen.data.preprocess.detrend_order == 4
    # Fudan: 5-TR fMRI windows of 12 frames at 3 fps, 3-TR drop, 5-TR lag
    assert fudan.data.windows.fmri_frames(fudan.data.tr) == 5
    assert fudan.data.windows.video_frames == 12
    assert fudan.data.preprocess.drop_initial_trs == 3
    assert round(fudan.data.preprocess.hrf_lag_seconds / fudan.data.tr) == 5


def test_presets_fill_and_allow_overrides():
    tiny = validate_config({"model": {"preset": "tiny", "pte": {"depth": 3}}})
    assert tiny.model.pte.depth == 3
    assert tiny.model.pte.embed_dim == 32  # from the tiny preset
    full = validate_config({})
    assert full.model.pte.embed_dim == 1024 and full.model.heads.num_tokens == 77


def _error(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_unknown_key_names_file_and_key(tmp_path):
    msg = _error(tmp_path, "data:\n  windows:\n    fsp: 3\n")
    assert "bad.yaml" in msg and "data.windows.fsp" in msg and "unknown key" in msg


def test_wrong_type_says_what_was_expected(tmp_path):
    msg = _error(tmp_path, "pretrain:\n  steps: many\n")
    assert "pretrain.steps" in msg and "expected" in msg and "'many'" in msg


def test_impossible_values(tmp_path):
    assert "data.windows.fps" in _error(tmp_path, "data:\n  windows:\n    fps: -3\n")
    assert "kernel_size must be odd" in _error(tmp_path, "model:\n  glfa:\n    kernel_size: 4\n")
    assert "both in train and held_out" in _error(tmp_path, "subjects:\n  train: ['1']\n  held_out: ['1']\n")
    assert "not valid YAML" in _error(tmp_path, "data: [unclosed\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_held_out_subject_must_exist():
    config = validate_config({"subjects": {"held_out": ["9"]}}, "exp.yaml")
    with pytest.raises(ConfigError, match=r"exp.yaml: subjects.held_out: .*\['9'\] do not exist"):
        config.check_subjects(["1", "2", "3"])
    train, held = validate_config({"subjects": {"held_out": ["3"]}}).check_subjects(["1", "2", "3"])
    assert (train, held) == (["1", "2"], ["3"])


def test_digest_is_stable_and_sensitive():
    a = validate_config({"simulation": {"seed": 1}})
    b = validate_config({"simulation": {"seed": 1}})
    c = validate_config({"simulation": {"seed": 2}})
    assert a.digest("simulation") == b.digest("simulation") != c.digest("simulation")
    assert a.digest("data") == c.digest("data")
