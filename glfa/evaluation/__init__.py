"""Evaluation protocols over a study store and over a run's decoded videos.

- :mod:`glfa.evaluation.tables`: table cells and tables (mean ± std, the brain-signal cell,
  significance bands, bold), rendered as Markdown here and as HTML by :mod:`glfa.report`;
- :mod:`glfa.evaluation.alignment`: Table 1, fSC and ISC before and after GLFA (fitted alone
  leave-one-subject-out, or the layer a co-trained decoder learned) and inter-subject decoding;
- :mod:`glfa.evaluation.decoding`: a run's generations folders scored matched against
  mismatched, t-tests, brain-to-video retrieval, evaluations of several runs combined, and
  Tables 2 and 3 and supplementary Tables 2 and 3.

Every public name is importable from here (``from glfa.evaluation import evaluate_run``).
"""

from glfa.evaluation.alignment import (
    AlignmentRow,
    AlignmentTable,
    DecodingRow,
    GlfaAlignment,
    alignment_row,
    decoding_rows,
    evaluate_alignment,
    glfa_alignment,
    timepoint_labels,
    write_alignment_table,
)
from glfa.evaluation.decoding import (
    FRAME_BATCH,
    GENERATE_HINT,
    METHOD_LABELS,
    PROTOCOLS,
    REFERENCE_METHOD,
    RETRIEVAL_TOPS,
    SIGNAL_LEVEL,
    VIDEO_BATCH,
    VIDEO_CLASSIFIER_UNSET,
    ContentCache,
    DecodingResult,
    GenerationsFolder,
    Scorers,
    VideoEvaluation,
    brain_retrieval,
    combine_evaluations,
    evaluate_run,
    extra_metric_keys,
    find_generations,
    has_signal,
    method_label,
    method_order,
    method_ttests,
    metric_keys,
    metric_label,
    score_clips,
    write_video_tables,
)
from glfa.evaluation.tables import Cell, Table, mean_std, significance_band, signal_cell, value_cell

__all__ = [
    "AlignmentRow", "AlignmentTable", "DecodingRow", "GlfaAlignment", "alignment_row", "decoding_rows",
    "evaluate_alignment", "glfa_alignment", "timepoint_labels", "write_alignment_table",
    "FRAME_BATCH", "GENERATE_HINT", "METHOD_LABELS", "PROTOCOLS", "REFERENCE_METHOD", "RETRIEVAL_TOPS",
    "SIGNAL_LEVEL", "VIDEO_BATCH", "VIDEO_CLASSIFIER_UNSET", "ContentCache", "DecodingResult", "GenerationsFolder",
    "Scorers", "VideoEvaluation", "brain_retrieval", "combine_evaluations", "evaluate_run", "extra_metric_keys",
    "find_generations", "has_signal", "method_label", "method_order", "method_ttests", "metric_keys", "metric_label",
    "score_clips", "write_video_tables",
    "Cell", "Table", "mean_std", "significance_band", "signal_cell", "value_cell",
]
