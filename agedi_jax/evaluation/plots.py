"""Figures of the evaluation, in the style of the paper: PRD curves with baselines and the
ideal curve (Fig. 4c / 6c), 2D t-SNE maps (Fig. 4b / 6b), formation-energy distributions
(Fig. 5b,c). Matplotlib with the non-interactive Agg backend; each function returns the
figure and optionally saves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from agedi_jax.evaluation.prd import prd_auc

__all__ = ["plot_prd_curves", "plot_embedding", "plot_energy_distributions"]


def _pyplot():
    import sys

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # keep a notebook's backend if one is active
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path | None) -> None:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")


def plot_prd_curves(
    curves: Mapping[str, tuple[Any, Any]],
    baselines: Mapping[str, tuple[Any, Any]] | None = None,
    ideal: bool = True,
    path: str | Path | None = None,
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """PRD curves, recall on x and precision on y, each labelled with its AUC (:func:`prd_auc`).

    Args:
      curves: ``{label: (precision, recall)}`` of the model(s): coloured solid lines.
      baselines: ``{label: (precision, recall)}`` of synthetic baselines: grey dashed lines.
      ideal: draw the perfect-recovery curve (black dashed, AUC 1).
      path: save the figure there (png/pdf by extension).

    Returns:
      the matplotlib Figure.
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    if ideal:
        ax.plot([0, 1, 1], [1, 1, 0], "k--", lw=1.2, label="ideal (AUC 1.00)")
    for k, (label, (p, r)) in enumerate((baselines or {}).items()):
        grey = 0.35 + 0.45 * k / max(1, len(baselines) - 1)
        ax.plot(r, p, "--", color=str(grey), lw=1.0, label=f"{label} (AUC {prd_auc(p, r):.2f})")
    for label, (p, r) in curves.items():
        ax.plot(r, p, "-", lw=2.0, label=f"{label} (AUC {prd_auc(p, r):.2f})")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower left", frameon=False)
    _save(fig, path)
    return fig


def plot_embedding(
    embeddings: Mapping[str, Any],
    path: str | Path | None = None,
    title: str | None = None,
    ax: Any = None,
) -> Any:
    """Scatter of 2D embeddings (e.g. from :func:`~agedi_jax.evaluation.descriptors.tsne_map`)
    coloured by set: ``{"training data": emb_a, "samples": emb_b}``."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
    else:
        fig = ax.figure
    for label, emb in embeddings.items():
        emb = np.asarray(emb)
        ax.scatter(emb[:, 0], emb[:, 1], s=6, alpha=0.6, label=f"{label} ({len(emb)})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, frameon=False, markerscale=2)
    _save(fig, path)
    return fig


def plot_energy_distributions(
    energies: Mapping[str, Sequence[float]],
    path: str | Path | None = None,
    xlabel: str = "formation energy (eV/atom)",
    bins: int = 30,
    ax: Any = None,
) -> Any:
    """Overlaid histograms of energies per set, e.g. ``{"AGeDi": e_model, "RSS": e_rss}``
    (paper Fig. 5b,c); non-finite values are dropped (the legend counts the finite ones)."""
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    values = [np.asarray(v, float) for v in energies.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    edges = np.histogram_bin_edges(finite if finite.size else [0.0, 1.0], bins=bins)
    for label, v in zip(energies, values):
        ax.hist(v[np.isfinite(v)], bins=edges, alpha=0.5, label=f"{label} ({int(np.isfinite(v).sum())})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.legend(fontsize=8, frameon=False)
    _save(fig, path)
    return fig
