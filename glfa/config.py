"""Typed configuration for every stage, loaded from YAML.

One :class:`GlfaConfig` holds the data, model, training, generation and evaluation
settings. Defaults are the paper's (main text, supplementary Table 1 and DESIGN.md);
the shipped files in ``configs/`` spell them out per dataset. Unknown keys, wrong types
and impossible values raise :class:`~glfa.errors.ConfigError` naming the file, the key
and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from glfa.errors import ConfigError


class _Strict(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data


class PreprocessConfig(_Strict):
    """Per-run preprocessing of (T, V) surface time series, in this order."""

    drop_initial_trs: int = Field(0, ge=0, description="TRs dropped at the start of every run")
    max_trs: int | None = Field(None, gt=0, description="keep at most this many TRs after the drop")
    detrend_order: int | None = Field(None, ge=0, le=10, description="polynomial detrend order; null = none")
    zscore: bool = Field(True, description="z-score every vertex over the run")
    hrf_lag_seconds: float = Field(0.0, ge=0.0, description="haemodynamic lag: fMRI at t + lag answers the stimulus at t")
    average_repeats: bool = Field(True, description="average repeated presentations of the same stimulus")


class WindowConfig(_Strict):
    """Sliding windows pairing alpha*T seconds of fMRI with T seconds of video."""

    fmri_seconds: float = Field(4.0, gt=0, description="alpha*T: seconds of fMRI per sample")
    video_seconds: float = Field(2.0, gt=0, description="T: seconds of video per sample")
    stride_seconds: float | None = Field(None, gt=0, description="step between window onsets; null = video_seconds")
    fps: float = Field(8.0, gt=0, description="video frames per second stored and fed to the model")
    video_height: int = Field(256, gt=0)
    video_width: int = Field(256, gt=0)

    @property
    def stride(self) -> float:
        """Seconds between consecutive window onsets."""
        return self.stride_seconds if self.stride_seconds is not None else self.video_seconds

    @property
    def video_frames(self) -> int:
        """m: video frames per sample."""
        return max(1, int(round(self.video_seconds * self.fps)))

    def fmri_frames(self, tr: float) -> int:
        """n: fMRI frames per sample at repetition time ``tr`` (seconds)."""
        return max(1, int(round(self.fmri_seconds / tr)))


class DataConfig(_Strict):
    """Where the study comes from and how it becomes a store."""

    layout: Literal["generic", "wen2017", "fudan"] = "generic"
    tr: float | None = Field(None, gt=0, description="repetition time in seconds; null = read from the files")
    subjects: list[str] | None = Field(None, description="subjects to read; null = every subject found")
    rois: Literal["paper", "reference"] = Field(
        "paper", description="paper: 29 HCP-MMP1.0 visual areas (8,405 grayordinates); reference: 31 areas"
    )
    image_size: int = Field(256, ge=16, description="side of the square flat cortical image")
    geometry: Literal["barycentric", "fmri-pte"] = Field(
        "barycentric", description="surface data -> image: fmri-pte = the published models' images (pycortex "
        "raster, the authors' crops, OpenCV resize); barycentric = each hemisphere's ROI interpolated into half "
        "the image. Image sources (fudan) record the geometry of their own images"
    )
    fmri_dtype: Literal["float16", "float32"] = "float16"
    store_compression: Literal["none", "lzf", "gzip"] = Field(
        "none", description="HDF5 chunk filter of the stored fMRI frames: lzf/gzip halve them, reads get slower"
    )
    allow_pickle: bool = Field(False, description="allow reading pickled files (Fudan captions); off by default")
    skip_bad_runs: bool = Field(False, description="skip (and count) unreadable runs instead of failing")
    fudan_part: Literal["webvid", "fcvid"] = "webvid"
    preprocess: PreprocessConfig = PreprocessConfig()
    windows: WindowConfig = WindowConfig()


# ----------------------------------------------------------------------------- model

_PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "pte": {"patch_size": 16, "embed_dim": 1024, "depth": 24, "num_heads": 16,
                "decoder_depth": 24, "decoder_num_heads": 16, "bottleneck_dim": 2048},
        "temporal": {"num_heads": 16},
        "heads": {"num_tokens": 77, "token_dim": 1024, "clip_dim": 1024},
    },
    "tiny": {
        "pte": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                "decoder_depth": 1, "decoder_num_heads": 2, "bottleneck_dim": 64},
        "temporal": {"num_heads": 2},
        "heads": {"num_tokens": 8, "token_dim": 32, "clip_dim": 32},
    },
}


class PteConfig(_Strict):
    """fMRI-PTE ViT autoencoder (DESIGN.md: full size D=1024, L=24, 16 heads)."""

    patch_size: int = Field(16, gt=0)
    embed_dim: int = Field(1024, gt=0)
    depth: int = Field(24, gt=0)
    num_heads: int = Field(16, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    decoder_depth: int = Field(24, gt=0)
    decoder_num_heads: int = Field(16, gt=0)
    bottleneck_dim: int = Field(2048, gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> PteConfig:
        if self.embed_dim % self.num_heads or self.embed_dim % self.decoder_num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_heads and decoder_num_heads")
        return self


class GlfaLayerConfig(_Strict):
    """Global parcel map + locally connected layer (paper section 3.5)."""

    enabled: bool = True
    parcel_size: int = Field(16, gt=0, description="side of a square parcel in pixels")
    kernel_size: int = Field(13, gt=0, description="side of each pixel's local kernel (odd)")
    consistency_weight: float = Field(0.5, ge=0, description="lambda of L_GLFA: the authors' reg_scale, weighing "
                                      "the mean over subjects of MSE(A_s, x_s)")

    @model_validator(mode="after")
    def _odd_kernel(self) -> GlfaLayerConfig:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        return self


class TemporalConfig(_Strict):
    """Spatiotemporal attention block appended to the encoder."""

    depth: int = Field(1, ge=0)
    num_heads: int = Field(16, gt=0)
    mlp_ratio: float = Field(1.0, gt=0)


class HeadsConfig(_Strict):
    """Token projector (K x C) and CLIP head (1 x C)."""

    num_tokens: int = Field(77, gt=0, description="K: text tokens of the generator's text encoder")
    token_dim: int = Field(1024, gt=0, description="C: the generator's cross-attention width")
    clip_dim: int = Field(1024, gt=0, description="width of the CLIP joint space")
    clip_head: Literal["fmri2clip", "linear"] = Field(
        "fmri2clip", description="the authors' fmri2clip_cfg: fmri2clip (1x1 convolutions over the condition tokens, "
        "their stage-1 config) or linear (one linear map of the n frames' [CLS] tokens)")
    dropout: float = Field(0.0, ge=0, lt=1)


class ModelConfig(_Strict):
    """The fMRI encoder; ``preset`` fills every field the file leaves out."""

    preset: Literal["tiny", "full"] = "full"
    pte: PteConfig = PteConfig()
    glfa: GlfaLayerConfig = GlfaLayerConfig()
    temporal: TemporalConfig = TemporalConfig()
    heads: HeadsConfig = HeadsConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        preset = values.get("preset", "full")
        if preset not in _PRESETS:
            return values  # the Literal check reports it
        merged = {k: dict(v) for k, v in _PRESETS[preset].items()}
        for key, value in values.items():
            if key in merged and isinstance(value, dict):
                merged[key].update(value)
            else:
                merged[key] = value
        return merged


# ----------------------------------------------------------------------------- training


class TrainCommon(_Strict):
    """Settings shared by the three training stages."""

    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_checkpointing: bool = False
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    log_every: int = Field(10, gt=0)
    num_workers: int = Field(2, ge=0)


class PretrainConfig(TrainCommon):
    """Stage 0: reconstruction fine-tuning of fMRI-PTE on the training split."""

    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    steps: int = Field(2000, gt=0)


class ContrastiveConfig(TrainCommon):
    """Stage 1: fMRI -> CLIP space, L = (CLIP(f, img) + CLIP(f, txt)) / 2."""

    stimuli_per_batch: int = Field(12, gt=0)
    subjects_per_batch: int = Field(2, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    dropout: float = Field(0.6, ge=0, lt=1)
    steps: int = Field(12000, gt=0)
    clip_model: str | None = Field(None, description="local directory (or hub id) of a transformers CLIPModel")
    crop_scale: float = Field(0.8, gt=0, le=1, description="smallest side fraction of random frame crops")
    word_swap_prob: float = Field(0.1, ge=0, le=1)
    synonym_prob: float = Field(0.1, ge=0, le=1)
    augment_views: int = Field(4, ge=1, description="cached crop views per frame and caption variants per caption "
                               "(view 0 is the plain frame / caption); a step draws one at random")


class CotrainConfig(TrainCommon):
    """Stage 2: L_denoise + L_GLFA with the text-to-video UNet."""

    batch_size: int = Field(12, gt=0, description="samples per step (subject x window): a step takes "
                            "max(1, batch_size // training subjects) windows with every training subject's fMRI")
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    steps: int = Field(30000, gt=0)
    generator: str | None = Field(None, description="local directory (or hub id) of a diffusers text-to-video model")
    trainable_unet_patterns: list[str] = Field(default_factory=lambda: ["attn1", "attn2", "temp_conv"])


class LeaConfig(_Strict):
    """The LEA baseline: ridge regression from the fMRI encoder's latent to the generator's text tokens."""

    alphas: list[float] = Field(default_factory=lambda: [1e-1, 1.0, 1e1, 1e2, 1e3, 1e4],
                                description="ridge penalties tried; the best by k-fold CV on the training windows")
    cv_folds: int = Field(5, ge=2)


class BlurryConfig(LeaConfig):
    """The low-level decoder (``glfa train blurry``): from fMRI features to the generator's VAE latents of the
    window's stored frames, by ridge (with LEA's settings), by a small convolutional network, or by retrieval
    of training windows."""

    kind: Literal["ridge", "conv", "retrieval"] = Field(
        "ridge", description="ridge: cross-validated ridge (alphas, cv_folds); conv: a small convolutional network "
        "from the pooled aligned images (features: aligned) trained with MSE (conv_* settings); retrieval: ridge to "
        "the window's CLIP image embedding, then the mean latents of the retrieval_k training windows nearest to it")
    features: Literal["aligned", "latent"] = Field(
        "aligned", description="aligned: the GLFA-aligned flat images of RUN/cotrain-glfa's encoder, average-pooled "
        "to pool x pool (the raw images for an encoder without GLFA); latent: the stage-1 encoder's pooled latent")
    pool: int = Field(16, gt=0, description="side of the pooled aligned images")
    retrieval_k: int = Field(1, gt=0, description="retrieval: how many nearest training windows' latents are "
                             "averaged (1: the nearest window's own)")
    conv_channels: int = Field(32, gt=0, description="conv: channels of the coarse map and of every hidden "
                               "convolution")
    conv_grid: int = Field(8, gt=0, description="conv: side of the coarse map the linear readout fills")
    conv_steps: int = Field(2000, gt=0, description="conv: AdamW steps")
    conv_batch_size: int = Field(32, gt=0, description="conv: samples (subject x window) per step")
    conv_learning_rate: float = Field(1e-3, gt=0)
    conv_weight_decay: float = Field(1e-4, ge=0)
    conv_validation: float = Field(0.1, ge=0, lt=1, description="conv: share of the training stimuli held out to "
                                   "keep the network of the lowest validation MSE (0: every sample trains, the last "
                                   "step is kept)")
    conv_eval_every: int = Field(50, gt=0, description="conv: steps between validation measurements")
    seed: int = Field(0, description="conv: initial weights and batches")

    @model_validator(mode="after")
    def _conv_reads_images(self) -> BlurryConfig:
        if self.kind == "conv" and self.features != "aligned":
            raise ValueError("kind 'conv' reads images: it needs features 'aligned'")
        return self


class DemoGeneratorConfig(_Strict):
    """The demo's tiny text-to-video model, trained on the synthetic clips (cached once per machine)."""

    vae_steps: int = Field(400, gt=0)
    unet_steps: int = Field(1500, gt=0)
    batch_size: int = Field(16, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    cross_attention_dim: int = Field(32, gt=0, description="must equal model.heads.token_dim")
    seed: int = 0
    cache_dir: str | None = Field(None, description="null = $GLFA_CACHE or ~/.cache/glfa")


class GenerationConfig(_Strict):
    """Inference: DPM-Solver multistep with negative mean-fMRI guidance."""

    num_inference_steps: int = Field(30, gt=0)
    guidance_scale: float = Field(6.0, ge=0)
    num_frames: int = Field(12, gt=0)
    height: int = Field(320, gt=0)
    width: int = Field(576, gt=0)
    fps: float = Field(3.0, gt=0)
    seed: int = 0
    init: Literal["noise", "blurry"] = Field("noise", description="noise: DPM-Solver starts from pure noise; blurry: "
                                             "from the blurry decoder's latents (RUN/blurry/model) noised to "
                                             "init_strength (methods then write generations/METHOD+blurry)")
    init_strength: float = Field(0.6, ge=0, le=1, description="blurry init: the share of the denoising steps run; "
                                 "0 = the blurry latents decoded as they are, 1 = the pure-noise start")


class EvaluationConfig(_Strict):
    """Video metrics: SSIM, PSNR, N-way top-K (MinD-Video protocol), CLIP, each matched and mismatched.

    CLIP similarity, CLIP-pcc and retrieval use the CLIP of stage 1 (``contrastive.clip_model``).
    """

    n_ways: list[int] = Field(default_factory=lambda: [2, 50])
    top_k: int = Field(1, gt=0)
    trials: int = Field(100, gt=0)
    ground_truth_top: int = Field(3, gt=0, description="classifier top-k on the real frame taken as ground truth")
    frame_classifier: str | None = Field(None, description="ImageNet ViT-B/16 directory; null = offline EfficientNet-Lite0")
    video_classifier: str | None = Field(None, description="VideoMAE (Kinetics-400) directory")
    mismatched_partners: int = Field(8, gt=0, description="other test clips (of other stimuli) each decoded clip is "
                                     "also scored against: the mismatched baseline")
    permutations: int = Field(10000, gt=0, description="relabellings of the paired permutation test of the brain "
                              "signal (matched - mismatched)")
    seed: int = 0


# ----------------------------------------------------------------------------- standalone alignment


class AlignConfig(_Strict):
    """GLFA fitted on its own as a functional alignment (``glfa align``, ``glfa evaluate alignment``).

    Parcel size, kernel size and lambda come from ``model.glfa``.
    """

    steps: int = Field(60, gt=0, description="AdamW steps (sized for the 2-minute CPU fit of the default study)")
    batch_size: int = Field(4, gt=0, description="time points per step, taken jointly from every subject")
    learning_rate: float = Field(2e-2, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 0


# ----------------------------------------------------------------------------- few-shot adaptation


class AdaptConfig(_Strict):
    """Adapting a trained cross-subject model to a new subject from a few minutes of data (``glfa adapt``).

    ``glfa``/``full``: the subject's own copy of the trained GLFA layer, fitted with L_GLFA against
    the trained subjects' aligned responses (lambda from ``model.glfa``), optionally plus
    ``denoising_weight`` x the stage-2 denoising loss through the frozen rest of the decoder; ``full``
    then fine-tunes the token projector. ``linear``: cross-validated ridge per parcel
    (``model.glfa.parcel_size``).
    """

    steps: int = Field(100, gt=0, description="AdamW steps fitting the subject's GLFA layer (the cost does not "
                       "grow with the minutes)")
    batch_size: int = Field(8, gt=0, description="fMRI frames per step")
    learning_rate: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="pulls the layer toward the identity, not toward the trained "
                                "layer; off by default")
    denoising_weight: float = Field(0.0, ge=0, description="glfa/full: weight of the denoising loss added to L_GLFA "
                                    "at every step: the subject's windows through its layer, the frozen encoder and "
                                    "the frozen UNet, on the windows' VAE latents (0: L_GLFA alone)")
    denoising_batch_size: int = Field(2, gt=0, description="glfa/full with denoising_weight > 0: windows per step "
                                      "of the denoising loss")
    projector_steps: int = Field(100, gt=0, description="full: AdamW steps fine-tuning the token projector")
    projector_batch_size: int = Field(8, gt=0, description="full: windows per step")
    projector_learning_rate: float = Field(1e-4, gt=0)
    alphas: list[float] = Field(default_factory=lambda: [1e-1, 1.0, 1e1, 1e2, 1e3, 1e4],
                                description="linear: ridge penalties tried per parcel")
    cv_folds: int = Field(5, ge=2, description="linear: folds (by stimulus; fewer when fewer stimuli were seen)")
    seed: int = 0


# ----------------------------------------------------------------------------- simulation


class SimulationConfig(_Strict):
    """The built-in synthetic study (issue "Synthetic study")."""

    n_subjects: int = Field(3, ge=2)
    n_categories: int = Field(12, ge=2)
    train_clips_per_category: int = Field(4, ge=1)
    test_clips_per_category: int = Field(1, ge=1)
    test_repeats: int = Field(2, ge=1)
    clip_seconds: float = Field(8.0, gt=0)
    blank_seconds: float = Field(2.4, ge=0)
    clips_per_run: int = Field(12, ge=1)
    tr: float = Field(0.8, gt=0)
    fps: float = Field(3.0, gt=0)
    frame_size: int = Field(64, ge=16, description="side of the square stimulus frames (pixels)")
    snr: float = Field(1.0, gt=0, description="signal-to-noise ratio (standard deviations)")
    subject_difference: float = Field(1.0, ge=0, description="scales every inter-subject difference; 0 = identical brains")
    deformation_mm: float = Field(4.0, ge=0, description="amplitude of the smooth spatial deformation at difference 1")
    seed: int = 0


# ----------------------------------------------------------------------------- root


class SubjectsConfig(_Strict):
    """Which subjects train the model and which are held out (leave-one-subject-out)."""

    train: list[str] | None = Field(None, description="null = every subject not held out")
    held_out: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _disjoint(self) -> SubjectsConfig:
        both = set(self.train or []) & set(self.held_out)
        if both:
            raise ValueError(f"subjects {sorted(both)} are both in train and held_out")
        return self


class GlfaConfig(_Strict):
    """Root config: one YAML file describes one experiment."""

    name: str = "experiment"
    output_dir: str = "runs"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataConfig = DataConfig()
    subjects: SubjectsConfig = SubjectsConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    cotrain: CotrainConfig = CotrainConfig()
    generation: GenerationConfig = GenerationConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    align: AlignConfig = AlignConfig()
    adapt: AdaptConfig = AdaptConfig()
    lea: LeaConfig = LeaConfig()
    blurry: BlurryConfig = BlurryConfig()
    simulation: SimulationConfig = SimulationConfig()
    demo_generator: DemoGeneratorConfig = DemoGeneratorConfig()

    # Where the config came from; used in error messages, never serialised.
    _source: str = "<config>"

    @property
    def source(self) -> str:
        """The file this config was loaded from, or ``<config>``."""
        return self._source

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data."""
        return self.model_dump(mode="json")

    def digest(self, *sections: str) -> str:
        """A short stable hash of the given sections (all when none), for cache keys."""
        data = self.to_dict()
        if sections:
            data = {s: data[s] for s in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def error(self, field: str, message: str) -> ConfigError:
        """A :class:`ConfigError` for ``field`` of this config's source file."""
        return ConfigError(message, path=self._source, field=field)

    def check_subjects(self, available: list[str]) -> tuple[list[str], list[str]]:
        """Resolve (train, held_out) against the subjects a store holds; unknown names are errors."""
        known = set(available)
        for key, names in (("subjects.held_out", self.subjects.held_out), ("subjects.train", self.subjects.train or [])):
            missing = [s for s in names if s not in known]
            if missing:
                raise self.error(key, f"subject(s) {missing} do not exist; expected some of {sorted(known)}")
        held = list(self.subjects.held_out)
        train = list(self.subjects.train) if self.subjects.train is not None else [s for s in available if s not in held]
        if not train:
            raise self.error("subjects.train", "no training subject left after removing the held-out ones")
        return train, held


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    """(dotted key, 'expected ..., got ...') for one pydantic error."""
    loc = ".".join(str(p) for p in error["loc"]) or "<root>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return loc, "unknown key"
    got = error.get("input")
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind not in ("value_error", "missing"):
        msg = msg.removeprefix("Input should be ").removeprefix("input should be ")
        msg = f"expected {msg}, got {got!r}"
    return loc, msg


def validate_config(data: dict[str, Any] | None, source: str = "<config>") -> GlfaConfig:
    """Build a :class:`GlfaConfig` from plain data; errors name ``source`` and the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path=source)
    try:
        config = GlfaConfig.model_validate(data)
    except ValidationError as exc:
        loc, msg = _describe(exc.errors()[0])
        extra = len(exc.errors()) - 1
        if extra:
            msg += f" (and {extra} more error{'s' if extra > 1 else ''})"
        raise ConfigError(msg, path=source, field=loc) from None
    config._source = source
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> GlfaConfig:
    """Load a YAML config (defaults when ``path`` is None), apply nested ``overrides``, validate.

    A file that names no ``model.preset`` gets the default one, and a :class:`ConfigWarning` says so.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        data = _read_yaml(Path(path))
    if overrides:
        data = _deep_merge(data, overrides)
    config = validate_config(data, source)
    model = data.get("model")
    if path is not None and not (isinstance(model, dict) and "preset" in model):
        warnings.warn(f"{source}: no model.preset; using the {config.model.preset!r} preset (the paper's "
                      "24-layer encoder); set model.preset: tiny for a small test run", ConfigWarning, stacklevel=2)
    return config


class ConfigWarning(UserWarning):
    """A config was read, but something in it was filled in (the model preset)."""


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping of a YAML config file; ConfigError naming the file (and the line of a syntax error)."""
    if path.is_dir():
        raise ConfigError("is a folder; expected a YAML config file", path=path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {exc.problem or exc.context}", path=path) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid YAML ({' '.join(str(exc).split())})", path=path) from None
    if data is None:
        raise ConfigError("is empty; expected a YAML mapping of settings (see the files in configs/)", path=path)
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    return data


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
