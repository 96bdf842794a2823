"""PNG figures of an evaluation report: the tag x stratum accuracy heatmap and the perception-decay curve.

matplotlib (the ``verl-modality[plots]`` extra) is imported only when a figure is drawn, always with the
non-interactive Agg canvas, so nothing here needs a display and the rest of the package does not need matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verl_modality.vocabulary import STRATA, TAGS


class PlotsUnavailable(RuntimeError):
    """matplotlib is missing, or the report has nothing to draw."""


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise PlotsUnavailable(
            f"plots need matplotlib ({err}); install the extra: pip install 'verl-modality[plots]'"
        ) from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_tag_stratum(section: Mapping[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Heatmap of accuracy (%) per tag (rows) x stratum (columns) from a report task section; empty cells grey."""
    import numpy as np

    tags = [t for t in TAGS if t in section["tag_stratum"]]
    strata = [s for s in STRATA if s in section["per_stratum"]]
    grid = np.full((len(tags), len(strata)), np.nan)
    for i, t in enumerate(tags):
        for j, s in enumerate(strata):
            cell = section["tag_stratum"][t].get(s)
            if cell is not None and cell["accuracy"] is not None:
                grid[i, j] = 100 * cell["accuracy"]
    fig = _figure(1.6 + 1.3 * len(strata), 1.2 + 0.5 * len(tags))
    ax = fig.add_subplot()
    ax.set_facecolor("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(strata)), strata)
    ax.set_yticks(range(len(tags)), tags)
    for i, t in enumerate(tags):
        for j, s in enumerate(strata):
            cell = section["tag_stratum"][t].get(s)
            if cell is None:
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#555555")
            else:
                colour = "white" if grid[i, j] < 60 else "black"
                ax.text(
                    j, i, f"{grid[i, j]:.1f}\n({cell['samples']})", ha="center", va="center", fontsize=7, color=colour
                )
    fig.colorbar(image, ax=ax, label="accuracy %")
    ax.set_xlabel("stratum")
    ax.set_ylabel("modality tag")
    ax.set_title(title or "accuracy per tag and stratum", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def plot_decay(decay: Mapping[str, Any], path: str | os.PathLike, title: str = "", ylabel: str = "accuracy %") -> Path:
    """Accuracy (%) per response-length bin against the bin centre, with the sample count of each bin."""
    bins = [b for b in decay["bins"] if b["samples"]]
    fig = _figure(5.0, 3.5)
    ax = fig.add_subplot()
    xs = [b["centre"] for b in bins]
    ys = [100 * b["accuracy"] for b in bins]
    ax.plot(xs, ys, marker="o")
    for x, y, b in zip(xs, ys, bins, strict=True):
        ax.annotate(f"n={b['samples']}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    r = decay["r_length"]
    ax.set_xlabel(f"response tokens (bin centre, {decay['binning']} bins)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-5, 105)
    ax.set_title((title or "perception decay") + (f"  r = {r:.3f}" if r is not None else "  r undefined"), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_plots(report: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """Both figures for every task of ``report`` (``tag_stratum_<task>.png``, ``decay_<task>.png``) in ``out_dir``."""
    sections = {t: s for t, s in report["tasks"].items() if s is not None}
    if not sections:
        raise PlotsUnavailable("plots need result records (RESULTS.jsonl); a published table alone has no strata")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task, section in sections.items():
        what = "accuracy" if task == "qa" else "judge score"
        written.append(plot_tag_stratum(section, out / f"tag_stratum_{task}.png", f"{task}: {what} per tag x stratum"))
        written.append(
            plot_decay(section["decay"], out / f"decay_{task}.png", f"{task}: {what} by response length", f"{what} %")
        )
    return written
