"""Metrics: cross-subject alignment (fSC, ISC)."""

from glfa.metrics.alignment import fsc, fsc_matrix, isc

__all__ = ["fsc", "fsc_matrix", "isc"]
