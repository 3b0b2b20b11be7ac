"""Cards (CDS Hooks 2.0 "Card Attributes") from assessments.

``summary`` is cut to 140 characters (the spec's limit); ``detail`` is GitHub-flavoured Markdown
with the explanation table; ``source`` names the service and links its documentation or model
card; an assessment that could not be computed gives an ``info``/``warning`` card that names what is
missing instead of a number. A computed risk offers a suggestion to record it as a RiskAssessment
(when the server did not already write one), with ``selectionBehavior: at-most-one``.
"""

from __future__ import annotations

import uuid
from typing import Any

from medcloud.cds.assessment import Assessment

SUMMARY_MAX = 140
OVERRIDE_REASONS = [
    {"system": "http://medcloud.dev/fhir/CodeSystem/cds-override", "code": "data-outdated",
     "display": "The data used is outdated"},
    {"system": "http://medcloud.dev/fhir/CodeSystem/cds-override", "code": "clinically-irrelevant",
     "display": "Not relevant for this patient now"},
]


def summary(text: str) -> str:
    return text if len(text) < SUMMARY_MAX else text[:SUMMARY_MAX - 2].rstrip() + "…"


def explanation_table(a: Assessment) -> str:
    if not a.explanation:
        return ""
    coef = any(c.coefficient is not None for c in a.explanation)
    head = "| term | value | " + ("coefficient | " if coef else "") + f"contribution ({a.explanation_unit}) |"
    sep = "|---|---|" + ("---:|" if coef else "") + "---:|"
    rows = []
    for c in a.explanation:
        cells = [_md(c.name), _md(c.value)] + ([f"{c.coefficient:.3f}" if c.coefficient is not None else ""]
                                               if coef else []) + [f"{c.contribution:+.3f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def card(a: Assessment, *, source_label: str, source_url: str, risk_assessment: dict[str, Any] | None,
         written: str | None) -> dict[str, Any]:
    detail = a.detail
    if a.problems:
        detail += "\n\n**Data problems**\n\n" + "\n".join(f"- {p}" for p in a.problems)
    table = explanation_table(a)
    if table:
        detail += "\n\n**Explanation**\n\n" + table
    if written:
        detail += f"\n\nRecorded as `{written}`."
    out: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary(a.summary),
        "detail": detail.strip(),
        "indicator": a.indicator,
        "source": {"label": source_label, "url": source_url,
                   "topic": {"system": "http://medcloud.dev/fhir/CodeSystem/cds-services", "code": a.service}},
        "overrideReasons": OVERRIDE_REASONS,
    }
    if a.links:
        out["links"] = [{"label": label, "url": url, "type": "absolute"} for label, url in a.links]
    if risk_assessment is not None and written is None:
        out["suggestions"] = [{"label": "Record this risk assessment in the chart", "uuid": str(uuid.uuid4()),
                               "isRecommended": False,
                               "actions": [{"type": "create", "description": "Create a RiskAssessment",
                                            "resource": risk_assessment}]}]
        out["selectionBehavior"] = "at-most-one"
    return out
