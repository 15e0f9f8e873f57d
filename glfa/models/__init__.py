"""Models: the GLFA layer, fMRI-PTE, the spatiotemporal block, the heads and the fMRI encoder."""

from glfa.models.encoder import FmriEncoder
from glfa.models.glfa import GLFA, GlobalParcelMap, LocallyConnected2d
from glfa.models.heads import ClipHead, TokenProjector
from glfa.models.pte import FmriPTE, PteDecoder, PteEncoder
from glfa.models.temporal import SpatioTemporalBlock, SpatioTemporalLayer

__all__ = [
    "GLFA",
    "ClipHead",
    "FmriEncoder",
    "FmriPTE",
    "GlobalParcelMap",
    "LocallyConnected2d",
    "PteDecoder",
    "PteEncoder",
    "SpatioTemporalBlock",
    "SpatioTemporalLayer",
    "TokenProjector",
]
