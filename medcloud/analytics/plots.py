"""Figures for a paper: histograms and Kaplan-Meier curves as PNG (matplotlib, Agg backend).

Agg is chosen explicitly (``matplotlib.use`` is never called: the figure is built from
``matplotlib.figure.Figure`` with no pyplot state), so plotting works on a server without a display
and in threads. Each figure labels its axes with units and its legend with n per group.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from medcloud.analytics.suppression import small

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from medcloud.analytics.stats import Survival

DPI = 300


def _figure(width: float = 6.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _axis_label(name: str, unit: str | None) -> str:
    return f"{name} ({unit})" if unit else name


def histogram_figure(bins: pd.DataFrame, column: str, unit: str | None = None, suppress: int | None = None) -> Figure:
    """Bars from ``stats.histogram`` (groups side by side); suppressed bins are left out and noted."""
    fig = _figure()
    ax = fig.add_subplot()
    groups = list(dict.fromkeys(bins["group"]))
    hidden = 0
    for gi, name in enumerate(groups):
        g = bins[bins["group"] == name]
        counts = [0 if suppress and small(n, suppress) else int(n) for n in g["n"]]
        hidden += sum(1 for n in g["n"] if suppress and small(n, suppress))
        width = (g["bin_end"] - g["bin_start"]).to_numpy() / len(groups)
        left = g["bin_start"].to_numpy() + gi * width
        total = int(g["n"].sum())
        n_label = f"<{suppress}" if suppress and small(total, suppress) else str(total)
        label = f"{name} (n={n_label})" if len(groups) > 1 or name != "all" else f"n={n_label}"
        ax.bar(left, counts, width=width, align="edge", edgecolor="white", linewidth=0.5, label=label)
    ax.set_xlabel(_axis_label(column, unit))
    ax.set_ylabel("Number of patients")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    if hidden:
        fig.text(0.01, 0.005, f"Bins with fewer than {suppress} patients are not shown.", fontsize=7)
    return fig


def km_figure(result: Survival, time_unit: str = "days", suppress: int | None = None) -> Figure:
    """Survival curves with confidence bands, censoring ticks and a number-at-risk table below."""
    import numpy as np

    fig = _figure(6.5, 5.0)
    grid = fig.add_gridspec(2, 1, height_ratios=[4, 1])
    ax = fig.add_subplot(grid[0])
    table = fig.add_subplot(grid[1], sharex=ax)
    groups = list(result.summary["group"])
    colours = [f"C{i}" for i in range(len(groups))]
    for colour, name in zip(colours, groups, strict=True):
        c = result.curve[result.curve["group"] == name]
        if c.empty:
            continue
        n = result.summary.loc[result.summary["group"] == name, "n"].iloc[0]
        label = f"{name} (n={n})" if name != "all" else f"n={n}"
        ax.step(c["time"], c["survival"], where="post", color=colour, label=label)
        ax.fill_between(c["time"].to_numpy(dtype=float), c["ci_low"].to_numpy(dtype=float),
                        c["ci_high"].to_numpy(dtype=float), step="post", alpha=0.2, color=colour, linewidth=0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("Survival probability")
    ax.legend(frameon=False, loc="lower left")
    ax.spines[["top", "right"]].set_visible(False)
    if not result.logrank.empty:
        p = float(result.logrank["p_value"].iloc[0])
        ax.text(0.98, 0.98, f"log-rank p {'< 0.001' if p < 0.001 else f'= {p:.3f}'}", transform=ax.transAxes,
                ha="right", va="top", fontsize=8)
    times = sorted(set(result.at_risk["time"]))
    for row, (colour, name) in enumerate(zip(colours, groups, strict=True)):
        r = result.at_risk[result.at_risk["group"] == name]
        for t, n in zip(r["time"], r["at_risk"], strict=True):
            text = f"<{suppress}" if suppress and small(n, suppress) else str(n)
            table.text(t, -row, text, ha="center", va="center", fontsize=7, color=colour)
    table.set_ylim(-len(groups) + 0.5, 0.5)
    table.set_yticks(-np.arange(len(groups)), labels=groups, fontsize=7)
    table.set_xticks(times)
    table.set_xlabel(_axis_label("Time", time_unit))
    table.set_title("Number at risk", fontsize=8, loc="left")
    table.tick_params(axis="y", length=0)
    table.spines[["top", "right", "left"]].set_visible(False)
    ax.tick_params(labelbottom=False)
    return fig


def save_png(fig: Figure, out: str | Path) -> Path:
    """Write the figure through a temporary file, so a failure leaves nothing at ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
