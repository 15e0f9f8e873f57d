"""Metrics: cross-subject alignment (fSC, ISC), video reconstruction (SSIM, PSNR, N-way top-K, CLIP), the
mismatched baseline and its permutation test, t-tests."""

from glfa.metrics.alignment import fsc, fsc_matrix, isc
from glfa.metrics.baseline import brain_signal, mismatched_partners, retrieval_hits
from glfa.metrics.stats import compare_methods, significance, two_sample_ttest
from glfa.metrics.video import (
    clip_pcc,
    clip_similarity_scores,
    frame_n_way_scores,
    n_way_top_k,
    psnr_scores,
    ssim_scores,
    summarize,
    video_n_way_scores,
)

__all__ = ["fsc", "fsc_matrix", "isc", "brain_signal", "mismatched_partners", "retrieval_hits", "compare_methods",
           "significance", "two_sample_ttest", "clip_pcc", "clip_similarity_scores", "frame_n_way_scores",
           "n_way_top_k", "psnr_scores", "ssim_scores", "summarize", "video_n_way_scores"]
