"""The caption file format: one JSON list of per-frame captions per stimulus, in a captions folder.

``glfa caption`` writes these files (:mod:`glfa.captioning`); a store reads them for stimuli it was
prepared without captions (:class:`~glfa.data.store.StudyStore`). Both take the format from here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from glfa.errors import DataError

__all__ = ["INDEX", "caption_path", "read_captions"]

INDEX = "index.json"
_UNSAFE = re.compile(r"[^\w.-]")


def caption_path(out_dir: str | Path, stimulus_id: str) -> Path:
    """``out_dir/<stimulus id>.json`` (characters other than letters, digits, ``.-_`` become ``_``)."""
    return Path(out_dir) / f"{_UNSAFE.sub('_', str(stimulus_id))}.json"


def read_captions(path: str | Path) -> list[str]:
    """The per-frame captions in ``path`` (a JSON list of strings); DataError when malformed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the captions ({exc.__class__.__name__}: {exc})", path=path) from None
    if not isinstance(data, list) or not data or not all(isinstance(c, str) for c in data):
        raise DataError("expected a non-empty JSON list of strings (one caption per frame)", path=path)
    return data
