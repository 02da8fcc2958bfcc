"""The run's plots (PNG, needs matplotlib): log-likelihood per iteration, a 2-D view of the
clusters with 2-sigma ellipses, and BIC per candidate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.families import get_family
from pipeline.storage.atomic import atomic_write_bytes

PLOT_SAMPLE = 5000


def _sample_rows(X, m, seed=0):
    n = X.shape[0]
    if n <= m:
        return np.asarray(X.compute(), dtype=np.float64)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    return np.asarray(X[idx].compute(), dtype=np.float64)


def _full_covariances(model):
    k, d = model.means_.shape
    return get_family(model.covariance_type).full_covariances(model.covariances_, k, d)


def write_plots(directory: Path, model, X, results, best) -> list[Path]:
    """loglik.png, clusters.png (2-D view with 2-sigma ellipses), bic.png (several candidates)."""
    plt = _pyplot()
    written = [
        _save(plt, _loglik_figure(plt, results, best), directory / "loglik.png"),
        _save(plt, _clusters_figure(plt, model, X, best), directory / "clusters.png"),
    ]
    if len(results) > 1:
        written.append(_save(plt, _bic_figure(plt, results, best), directory / "bic.png"))
    return written


def _pyplot():
    """matplotlib.pyplot on the Agg backend (ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _loglik_figure(plt, results, best):
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(np.arange(1, len(r["history"]) + 1), r["history"], marker=".", label=r["name"],
                lw=2.5 if r is best else 1)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood")
    ax.set_title("Log-likelihood per iteration")
    ax.legend(fontsize=8)
    return fig


def _clusters_figure(plt, model, X, best):
    sample = _sample_rows(X, PLOT_SAMPLE)
    sample = sample[~np.isnan(sample).any(axis=1)]  # rows with missing values have no position to plot
    labels = model.predict(sample) if len(sample) else np.zeros(0, dtype=np.int64)
    centre, axes = _principal_axes(sample if len(sample) > 1 else np.asarray(model.means_, dtype=np.float64))
    proj = (sample - centre) @ axes
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(proj[:, 0], proj[:, 1] if proj.shape[1] > 1 else np.zeros(len(proj)), c=labels, s=3,
               cmap="tab10", alpha=0.5)
    _draw_ellipses(ax, model, centre, axes)
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.set_title(f"{best['name']}: sample of {len(sample):,} complete rows, 2-sigma ellipses")
    return fig


def _principal_axes(sample):
    """The sample's centre and its first two principal axes, (D, 2) (one axis for D = 1)."""
    centre = sample.mean(axis=0)
    if sample.shape[1] >= 2:
        _, _, vt = np.linalg.svd(sample - centre, full_matrices=False)
        axes = vt[:2].T  # (D, 2) first two principal axes
    else:
        axes = np.array([[1.0, 0.0]])
    return centre, axes


def _draw_ellipses(ax, model, centre, axes) -> None:
    """Each component's mean and 2-sigma ellipse, projected on ``axes``."""
    from matplotlib.patches import Ellipse

    covs = _full_covariances(model)
    for k in range(model.n_components):
        m2 = (model.means_[k] - centre) @ axes
        c2 = axes.T @ covs[k] @ axes
        vals, vecs = np.linalg.eigh(c2)
        vals = np.maximum(vals, 0)
        angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
        ax.add_patch(Ellipse(m2, 2 * 2 * np.sqrt(vals[1]), 2 * 2 * np.sqrt(vals[0]), angle=angle,
                             fill=False, lw=1.5, color="black"))
        ax.plot(*m2, "k+")


def _bic_figure(plt, results, best):
    """BIC against G, one line per model (mclust's plot; lower is better here), the selected
    candidate marked; failed candidates are gaps.  The axis spans the values, not zero."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    models = list(dict.fromkeys(r["covariance_type"] for r in results))
    markers = "os^vD<>phHx+*d8"
    for i, m in enumerate(models):
        rows = sorted((r["n_components"], r["bic"]) for r in results if r["covariance_type"] == m)
        ks = [k for k, _ in rows]
        ax.plot(ks, [np.nan if b is None else b for _, b in rows], marker=markers[i % len(markers)],
                ms=4, lw=1.2, label=m)
    ax.plot([best["n_components"]], [best["bic"]], marker="*", ms=16, color="tab:red", ls="none",
            label=f"selected: {best['name']}")
    ax.set_xticks(sorted({r["n_components"] for r in results}))
    ax.set_xlabel("number of components G")
    ax.set_ylabel("BIC (lower is better)")
    ax.set_title("BIC per number of components and covariance model")
    ax.legend(fontsize=7, ncol=2 if len(models) > 7 else 1)
    return fig
