"""Table cells and tables, rendered as Markdown here and as HTML by :mod:`glfa.report`.

The formats every table and the report share: a value to three decimals, mean ± std over
clips or time points, a matched score beside its mismatched baseline, bold for the best of a
column and the paper's significance bands (p < 0.001 cyan, p < 0.05 pink, else gray).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from glfa.metrics.stats import SIGNIFICANCE_LEVELS


@dataclass
class Cell:
    """One table cell: its text, whether it is the best of its column, and the p-value it shows (if any)."""

    text: str
    bold: bool = False
    p: float | None = None

    def to_markdown(self) -> str:
        """The text, bold as ``**text**``."""
        return f"**{self.text}**" if self.bold else self.text

    @property
    def band(self) -> Literal["strong", "weak", "none"] | None:
        """The significance band of the cell's p-value (:func:`significance_band`); None without one."""
        return None if self.p is None else significance_band(self.p)


@dataclass
class Table:
    """A titled table: rendered as Markdown here and as HTML by :mod:`glfa.report`."""

    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table itself: a header line, a rule, one line per row."""
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(c.to_markdown() for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"

    def to_section(self) -> str:
        """``## title``, the table and its notes."""
        notes = "".join(f"\n{n}\n" for n in self.notes)
        return f"## {self.title}\n\n{self.to_markdown()}{notes}"


def significance_band(p: float) -> Literal["strong", "weak", "none"]:
    """The band of supplementary Table 2's colours: ``strong`` (p < 0.001), ``weak`` (p < 0.05), else ``none``.

    An undefined p (nan) is ``none``.
    """
    strong, weak = SIGNIFICANCE_LEVELS
    if not math.isfinite(p) or p >= weak:
        return "none"
    return "strong" if p < strong else "weak"


def value_text(value: float) -> str:
    """A value to three decimals; ``nan`` for an undefined one."""
    return "nan" if math.isnan(value) else f"{value:.3f}"


def value_cell(value: float, bold: bool = False) -> Cell:
    """A cell of :func:`value_text`."""
    return Cell(value_text(value), bold)


def mean_std(summary: dict[str, float]) -> str:
    """``mean ± std`` of a ``{"mean", "std", ...}`` summary, to three decimals."""
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def signal_cell(record: dict[str, Any]) -> Cell:
    """The mismatched baseline of a :func:`~glfa.metrics.baseline.brain_signal` record beside the brain signal.

    ``0.798 (+0.028, p 0.01)``: the mismatched mean, the difference matched - mismatched and its
    permutation p-value, which sets the cell's significance band.
    """
    return Cell(f"{record['mismatched']:.3f} ({record['difference']:+.3f}, p {record['p']:.2g})", p=record["p"])
