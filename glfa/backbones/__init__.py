"""Frozen pretrained backbones, loaded from a local folder or a hub id already in the local cache.

One module per concept, in the order a model is loaded and used:

- :mod:`~glfa.backbones.hub`: the local folder of a backbone (a folder, or a cached hub id; never
  the network), its configs, its weights files, dtypes.
- :mod:`~glfa.backbones.image`: frames -> model input (resize, centre crop, normalise), batching.
- :mod:`~glfa.backbones.efficientnet`: the offline ImageNet EfficientNet-Lite0 shared by the two
  stand-ins below.
- :mod:`~glfa.backbones.clip`: :func:`load_clip` -> :class:`ClipBackbone` (transformers
  ``CLIPModel``) or :class:`StandInClip` (offline MiniLM + EfficientNet-Lite0, for the demo).
- :mod:`~glfa.backbones.generator`: :func:`load_video_generator` -> :class:`VideoGenerator`
  (diffusers text-to-video, e.g. zeroscope).
- :mod:`~glfa.backbones.classifiers`: :func:`load_frame_classifier` (ImageNet ViT-B/16, or
  EfficientNet-Lite0) and :func:`load_video_classifier` (VideoMAE, Kinetics-400) for the N-way
  top-K metrics; :func:`classify_and_embed`.
- :mod:`~glfa.backbones.captioner`: :func:`load_captioner` -> :class:`Captioner` (BLIP-2).
- :mod:`~glfa.backbones.tiny`: tiny random models of the same classes for tests and the demo.

Importing this package loads torch but no transformers or diffusers (each loader imports what it
needs) and sets no environment variable.
"""

from glfa.backbones.captioner import Captioner, load_captioner
from glfa.backbones.classifiers import (
    FrameClassifier, VideoClassifier, classify_and_embed, load_frame_classifier, load_video_classifier,
)
from glfa.backbones.clip import STANDIN, ClipBackbone, StandInClip, load_clip
from glfa.backbones.generator import VideoGenerator, load_video_generator
from glfa.backbones.hub import resolve_dtype, resolve_pretrained
from glfa.backbones.image import (
    CLIP_MEAN, CLIP_STD, HALF_MEAN, HALF_STD, IMAGENET_MEAN, IMAGENET_STD, frames_to_tensor, normalize, resize,
    resize_center_crop,
)
from glfa.backbones.tiny import (
    bytes_to_unicode, learn_bpe, tiny_blip2, tiny_clip, tiny_frame_classifier, tiny_tokenizer, tiny_video_classifier,
    tiny_video_generator,
)

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "HALF_MEAN", "HALF_STD", "IMAGENET_MEAN", "IMAGENET_STD", "STANDIN",
    "Captioner", "ClipBackbone", "FrameClassifier", "StandInClip", "VideoClassifier", "VideoGenerator",
    "bytes_to_unicode", "classify_and_embed", "frames_to_tensor", "learn_bpe", "load_captioner", "load_clip",
    "load_frame_classifier", "load_video_classifier", "load_video_generator", "normalize", "resize",
    "resize_center_crop", "resolve_dtype", "resolve_pretrained", "tiny_blip2", "tiny_clip",
    "tiny_frame_classifier", "tiny_tokenizer", "tiny_video_classifier", "tiny_video_generator",
]
