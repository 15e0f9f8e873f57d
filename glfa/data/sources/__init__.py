"""Readers of raw study layouts: ``get_source(layout, root, config)`` -> :class:`StudySource`.

Layouts: ``generic`` (BIDS-like, what ``glfa simulate`` writes), ``wen2017`` (Wen et al. 2017)
and ``fudan`` (Fudan fMRI-Video, WebVid or FCVID part). Each module's docstring describes
its files, timing conventions and bad-input policy.
"""

from __future__ import annotations

from pathlib import Path

from glfa.config import GlfaConfig
from glfa.data.sources.base import Presentation, Run, Stimulus, StudySource
from glfa.errors import ConfigError

__all__ = ["LAYOUTS", "get_source", "StudySource", "Run", "Stimulus", "Presentation"]

#: Layout name -> "module:class" of its reader (imported on demand).
LAYOUTS = {
    "generic": "glfa.data.sources.generic:GenericSource",
    "wen2017": "glfa.data.sources.wen2017:Wen2017Source",
    "fudan": "glfa.data.sources.fudan:FudanSource",
}


def get_source(layout: str | None, root: str | Path, config: GlfaConfig | None = None) -> StudySource:
    """The reader of ``layout`` (``config.data.layout`` when None) for the study folder ``root``."""
    import importlib

    config = config if config is not None else GlfaConfig()
    name = layout if layout is not None else config.data.layout
    if name not in LAYOUTS:
        raise ConfigError(f"unknown layout {name!r}; expected one of {sorted(LAYOUTS)}", path=config.source,
                          field="data.layout")
    module, cls = LAYOUTS[name].split(":")
    return getattr(importlib.import_module(module), cls)(root, config)
