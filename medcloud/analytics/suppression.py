"""Small-cell suppression of statistics tables before they are shared (``--suppress K``).

The rule (documented in docs/analytics.md, "Statistics"):

1. **Primary**: every count of persons or events from 1 to K-1 is shown as ``<K``. Zero is shown:
   an empty cell reveals nobody.
2. **Derived figures** computed from a hidden count are hidden too (``suppressed``): percentages,
   rates, proportions and their confidence intervals, and every statistic of a group whose size is
   hidden (a mean of two values is nearly the values).
3. **Complementary**: where a total is published (frequency and histogram columns, cross-tab rows
   and columns with their margins, prevalence's persons = cases + non-cases), a hidden count must not
   be recoverable by subtraction: if a row/column/group holds exactly one hidden cell, the smallest
   other non-zero cell is hidden too (shown as ``suppressed``, not ``<K``, since it may be large),
   repeated until no line has exactly one hidden cell.
   Prevalence hides the cases when the non-cases (persons - cases) are below K.
4. Test statistics and p-values are kept: they do not recover counts that rule 3 protects for
   the usual table sizes, and a paper needs them.

Suppressed tables have text cells, so count columns become strings in CSV/Parquet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

HIDDEN = "suppressed"


def small(value: Any, k: int) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return 0 < v < k


def _mark(df: pd.DataFrame, k: int, count: str, derived: Sequence[str], mask: pd.Series) -> pd.DataFrame:
    """``<K`` on the small counts themselves, ``suppressed`` on cells hidden only to protect them."""
    out = df.astype({c: object for c in [count, *derived] if c in df.columns})
    primary = mask & pd.to_numeric(df[count], errors="coerce").map(lambda v: small(v, k)).astype(bool)
    out.loc[mask & ~primary, count] = HIDDEN
    out.loc[primary, count] = f"<{k}"
    for c in derived:
        if c in out.columns:
            out.loc[mask, c] = HIDDEN
    return out


def _complement(values: pd.Series, mask: pd.Series) -> pd.Series:
    """Add the smallest other non-zero cell when exactly one cell of a line is hidden."""
    mask = mask.copy()
    while int(mask.sum()) == 1:
        rest = values[~mask & (values > 0)]
        if rest.empty:
            break
        mask[rest.idxmin()] = True
    return mask


def counts_table(df: pd.DataFrame, k: int, count: str, derived: Sequence[str] = (),
                 partition: str | None = None, complementary: bool = True) -> pd.DataFrame:
    """Rows of counts (frequencies, histogram bins), one line per ``partition`` value (or all rows)."""
    values = pd.to_numeric(df[count], errors="coerce").fillna(0)
    mask = values.map(lambda v: small(v, k)).astype(bool)
    if complementary:
        groups = [df.index] if partition is None else [g.index for _, g in df.groupby(partition, sort=False)]
        for idx in groups:
            mask.loc[idx] = _complement(values.loc[idx], mask.loc[idx])
    return _mark(df, k, count, derived, mask)


def per_group(df: pd.DataFrame, k: int, size: str, hide: Sequence[str], counts: Sequence[str] = ()) -> pd.DataFrame:
    """One row per group: a group of size 1..K-1 has its size shown as ``<K`` and ``hide`` hidden;
    each other count column in ``counts`` is shown as ``<K`` when small (hiding ``hide`` as well)."""
    out = df.copy()
    for col in [size, *counts]:
        if col not in out.columns:
            continue
        mask = out[col].map(lambda v: small(v, k)).astype(bool)
        out = _mark(out, k, col, hide, mask)
    return out


def crosstab(counts: pd.DataFrame, k: int, margin: str = "Total") -> pd.DataFrame:
    """A cross-tab with margins (first column = row labels, last row and column = totals)."""
    label = counts.columns[0]
    inner_rows = [i for i in counts.index if counts.at[i, label] != margin]
    inner_cols = [c for c in counts.columns[1:] if c != margin]
    values = counts.loc[inner_rows, inner_cols].apply(pd.to_numeric).astype(float)
    mask = values.map(lambda v: small(v, k)).astype(bool)
    changed = True
    while changed:  # secondary suppression until no row or column has exactly one hidden cell
        changed = False
        for i in mask.index:
            fixed = _complement(values.loc[i], mask.loc[i])
            if not fixed.equals(mask.loc[i]):
                mask.loc[i], changed = fixed, True
        for c in mask.columns:
            fixed = _complement(values[c], mask[c])
            if not fixed.equals(mask[c]):
                mask[c], changed = fixed, True
    out = counts.astype(object)
    for i in inner_rows:
        for c in inner_cols:
            if mask.at[i, c]:
                out.at[i, c] = f"<{k}" if small(values.at[i, c], k) else HIDDEN
    # Margins are counts too, and the margin row and column are lines whose total (the grand total)
    # is published: a single hidden margin would be the grand total minus the others.
    total_rows = [i for i in counts.index if counts.at[i, label] == margin]
    if margin in counts.columns:
        lines = [(counts.loc[inner_rows, margin], [(i, margin) for i in inner_rows])]
        lines += [(counts.loc[r, inner_cols], [(r, c) for c in inner_cols]) for r in total_rows]
        for line, cells in lines:
            v = pd.Series(pd.to_numeric(line).astype(float).to_numpy(), index=range(len(cells)))
            m = _complement(v, v.map(lambda x: small(x, k)).astype(bool))
            for j, (i, c) in enumerate(cells):
                if m[j]:
                    out.at[i, c] = f"<{k}" if small(v[j], k) else HIDDEN
    for r in total_rows:
        if small(out.at[r, margin] if margin in out.columns else 0, k):
            out.at[r, margin] = f"<{k}"
    return out
