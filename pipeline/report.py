"""The run report (``report.json``, ``report.md``) and plots (PNG, needs matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.io import atomic_write_bytes, atomic_write_text

PLOT_SAMPLE = 5000


def build_report(cfg, X, results, best, timings, cluster_info, fingerprints) -> dict:
    from pipeline.run import versions

    model = best["model"]
    return {
        "config": cfg.to_dict(),
        "config_file": cfg.source,
        "data": {
            "path": cfg.data.path,
            "shape": list(X.shape),
            "dtype": str(X.dtype),
            "row_chunk": int(X.chunks[0][0]),
            "n_chunks": len(X.chunks[0]),
            "nbytes": int(X.nbytes),
            "fingerprint": fingerprints["data"],
        },
        "cluster": cluster_info,
        "candidates": [{k: v for k, v in r.items() if k != "model"} for r in results],
        "selected": {
            "name": best["name"],
            "n_components": best["n_components"],
            "covariance_type": best["covariance_type"],
            "loglik": best["loglik"],
            "bic": best["bic"],
            "aic": best["aic"],
            "n_iter": best["n_iter"],
            "converged": best["converged"],
            "weights": model.weights_.tolist(),
            "means": model.means_.tolist(),
        },
        "history": best["history"],
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "versions": versions(),
    }


def write_report(directory: Path, report: dict) -> None:
    atomic_write_text(directory / "report.json", json.dumps(report, indent=2, default=_jsonable))
    atomic_write_text(directory / "report.md", report_markdown(report))


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def report_markdown(r: dict) -> str:
    sel = r["selected"]
    lines = [
        "# gmm-pipeline run report",
        "",
        f"- config: `{r['config_file']}`",
        f"- data: `{r['data']['path']}`, {r['data']['shape'][0]:,} x {r['data']['shape'][1]} "
        f"{r['data']['dtype']}, {r['data']['n_chunks']} chunks of {r['data']['row_chunk']:,} rows",
        f"- selected model: **{sel['name']}**, mean log-likelihood {sel['loglik']:.6f}, BIC {sel['bic']:.6g}, "
        f"{sel['n_iter']} iterations, converged: {sel['converged']}",
        f"- time: {r['timings'].get('total_s', float('nan')):.1f} s in all, fitting {r['timings'].get('fit_s', float('nan')):.1f} s",
        "",
        "| candidate | log-likelihood | BIC | AIC | iterations | converged | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in r["candidates"]:
        lines.append(
            f"| {c['name']} | {c['loglik']:.6f} | {c['bic']:.6g} | {c['aic']:.6g} | {c['n_iter']} | "
            f"{c['converged']} | {c['seconds']:.1f} |"
        )
    lines += ["", "Component weights of the selected model: " + ", ".join(f"{w:.4f}" for w in sel["weights"]), ""]
    return "\n".join(lines)


def _sample_rows(X, m, seed=0):
    n = X.shape[0]
    if n <= m:
        return np.asarray(X.compute(), dtype=np.float64)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    return np.asarray(X[idx].compute(), dtype=np.float64)


def _full_covariances(model):
    k, d = model.means_.shape
    c = model.covariances_
    return {
        "full": lambda: c,
        "tied": lambda: np.broadcast_to(c, (k, d, d)),
        "diag": lambda: np.stack([np.diag(v) for v in c]),
        "spherical": lambda: np.stack([np.eye(d) * v for v in c]),
    }[model.covariance_type]()


def write_plots(directory: Path, model, X, results, best) -> list[Path]:
    """loglik.png, clusters.png (2-D view with 2-sigma ellipses), bic.png (several candidates)."""
    import io as _io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    written = []

    def save(fig, name):
        buf = _io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(atomic_write_bytes(directory / name, buf.getvalue()))

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        ax.plot(np.arange(1, len(r["history"]) + 1), r["history"], marker=".", label=r["name"],
                lw=2.5 if r is best else 1)
    ax.set_xlabel("EM iteration")
    ax.set_ylabel("mean log-likelihood")
    ax.set_title("Log-likelihood per iteration")
    ax.legend(fontsize=8)
    save(fig, "loglik.png")

    sample = _sample_rows(X, PLOT_SAMPLE)
    labels = model.predict(sample)
    centre = sample.mean(axis=0)
    if sample.shape[1] >= 2:
        _, _, vt = np.linalg.svd(sample - centre, full_matrices=False)
        axes = vt[:2].T  # (D, 2) first two principal axes
    else:
        axes = np.array([[1.0, 0.0]])
    proj = (sample - centre) @ axes
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(proj[:, 0], proj[:, 1] if proj.shape[1] > 1 else np.zeros(len(proj)), c=labels, s=3,
               cmap="tab10", alpha=0.5)
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
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.set_title(f"{best['name']}: sample of {len(sample):,} points, 2-sigma ellipses")
    save(fig, "clusters.png")

    if len(results) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        names = [r["name"] for r in results]
        ax.bar(range(len(results)), [r["bic"] for r in results],
               color=["tab:red" if r is best else "tab:blue" for r in results])
        ax.set_xticks(range(len(results)), names, rotation=45, ha="right")
        ax.set_ylabel("BIC (lower is better)")
        ax.set_title("BIC per candidate")
        save(fig, "bic.png")
    return written
