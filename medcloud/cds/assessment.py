"""What a service concludes for one patient, before it becomes a card or a RiskAssessment.

One value object for every service, so cards (``cards.py``), RiskAssessments (``risk.py``) and the
cohort evaluation (``evaluate.py``) are built the same way whatever computed the risk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Status = Literal["ok", "incomplete", "not-applicable"]


@dataclass(frozen=True)
class Contribution:
    """One row of an explanation: a term or feature, its value and its contribution."""

    name: str
    value: str
    contribution: float  # log-odds / linear-predictor units (see ``Assessment.explanation_unit``)
    coefficient: float | None = None


@dataclass(frozen=True)
class Assessment:
    service: str
    status: Status
    summary: str  # <= 140 characters
    detail: str = ""  # Markdown
    indicator: Literal["info", "warning", "critical"] = "info"
    probability: float | None = None  # 0..1
    score: float | None = None  # e.g. NEWS2 total
    qualitative: str | None = None  # e.g. NEWS2 band, "high"
    outcome: str = ""  # what the risk is of
    basis: tuple[str, ...] = ()  # references of the resources used
    explanation: tuple[Contribution, ...] = ()
    explanation_unit: str = ""
    problems: tuple[str, ...] = ()  # missing, stale, unit problems, out of range
    method: str = ""  # e.g. "Pooled Cohort Equations (Goff 2013)"
    model: str = ""  # model name
    model_version: str = ""
    links: tuple[tuple[str, str], ...] = ()  # (label, url)
    extra: dict[str, float] = field(default_factory=dict)
