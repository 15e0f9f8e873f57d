"""What every reader of a raw study layout hands to ``glfa prepare``.

A reader (``generic``, ``wen2017``, ``fudan``) walks a study folder and describes it as
subjects, stimuli and runs. Runs load lazily, one at a time, so a study larger than memory
streams into the store. Data flows one way: the reader never sees the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Stimulus:
    """One stimulus clip: its video file, its split and its caption(s).

    ``captions`` holds one caption for the whole clip, or one per stored video frame
    (the store repeats a single caption over every frame), or nothing when the dataset has
    no captions yet (Wen 2017 before ``glfa caption``): the store then holds empty captions
    and the stages that need captions refuse it.
    """

    stimulus_id: str
    video: Path
    split: Split
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Presentation:
    """One showing of a stimulus inside a run; times in seconds from the run's first TR (before any drop)."""

    stimulus_id: str
    onset: float
    duration: float


@dataclass
class Run:
    """One fMRI run of one subject.

    ``load()`` returns the run's data: ``[T, V]`` surface time series over ``vertices``
    (kind ``"surface"``), or ``[T, H, W]`` flat images already on the study's image grid
    (kind ``"image"``). It is called once, when ``prepare`` reaches this run.
    """

    subject: str
    run_id: str
    tr: float
    kind: Literal["surface", "image"]
    load: Callable[[], np.ndarray]
    presentations: list[Presentation]
    files: list[Path] = field(default_factory=list)


class StudySource(ABC):
    """Base class of the readers: subclasses fill ``subjects``, ``stimuli`` and ``runs``.

    Attributes
    ----------
    root : Path
        The study folder.
    layout : str
        The layout's name (``generic``, ``wen2017``, ``fudan``).
    """

    layout: str = ""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @abstractmethod
    def subjects(self) -> list[str]:
        """Subject ids, sorted."""

    @abstractmethod
    def stimuli(self) -> dict[str, Stimulus]:
        """Every stimulus the runs present, by id."""

    @abstractmethod
    def runs(self, subject: str) -> list[Run]:
        """The subject's runs, in acquisition order."""

    #: Image sources: the flat-map geometry their images already have (``"fmri-pte"`` for images
    #: made by the published models' pipeline), recorded in the store; None when unknown.
    image_geometry: str | None = None

    # Image-kind sources (data already flat, e.g. Fudan) also implement the three methods below.
    # ``prepare`` preprocesses the pixels of ``native_mask`` as if they were vertices, then
    # calls ``to_image_grid`` to crop and resize them onto the study's square grid.

    def native_mask(self) -> np.ndarray:
        """Image sources: the cortex pixels ``[H0, W0]`` (bool) of the source images to preprocess."""
        raise TypeError(f"{self.layout} is a surface source: it has no native image mask")

    def image_mask(self, size: int) -> np.ndarray:
        """Image sources: the visual-cortex mask ``[size, size]`` (bool) on the study's grid."""
        raise TypeError(f"{self.layout} is a surface source: use the FlatMapProjector's mask")

    def to_image_grid(self, frames: np.ndarray, size: int) -> np.ndarray:
        """Image sources: preprocessed ``[T, H0, W0]`` frames -> ``[T, size, size]``, zero outside the mask."""
        raise TypeError(f"{self.layout} is a surface source: use the FlatMapProjector")
