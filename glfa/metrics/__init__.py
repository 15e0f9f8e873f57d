"""Metrics: cross-subject alignment (fSC, ISC), video reconstruction (SSIM, N-way top-K), t-tests."""

from glfa.metrics.alignment import fsc, fsc_matrix, isc
from glfa.metrics.stats import compare_methods, significance, two_sample_ttest
from glfa.metrics.video import frame_n_way_scores, n_way_top_k, ssim_scores, summarize, video_n_way_scores

__all__ = ["fsc", "fsc_matrix", "isc", "compare_methods", "significance", "two_sample_ttest", "frame_n_way_scores",
           "n_way_top_k", "ssim_scores", "summarize", "video_n_way_scores"]
