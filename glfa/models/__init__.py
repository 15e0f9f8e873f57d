"""Models: the GLFA layer, fMRI-PTE, the spatiotemporal block, the heads and the fMRI encoder."""

from glfa.models.glfa import GLFA, GlobalParcelMap, LocallyConnected2d

__all__ = ["GLFA", "GlobalParcelMap", "LocallyConnected2d"]
