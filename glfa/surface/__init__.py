"""Cortex to image: HCP-MMP1.0 visual ROIs, the flat-map projector and CIFTI-2 input/output."""

from glfa.surface.atlas import PAPER_AREAS, REFERENCE_AREAS, VisualRoi, visual_roi
from glfa.surface.cifti import SurfaceSeries, read_dtseries, series_on, write_dtseries
from glfa.surface.flatmap import FlatMapProjector

__all__ = [
    "PAPER_AREAS",
    "REFERENCE_AREAS",
    "FlatMapProjector",
    "SurfaceSeries",
    "VisualRoi",
    "read_dtseries",
    "series_on",
    "visual_roi",
    "write_dtseries",
]
