"""Frozen pretrained backbones. This commit only moves backbones.py to backbones/tiny.py (so its
history follows); the next one splits it into one module per concept."""

from glfa.backbones.tiny import *  # noqa: F401,F403
from glfa.backbones.tiny import _efficientnet_lite0, _pooled, _projection  # noqa: F401
