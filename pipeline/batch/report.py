"""The run report (``report.json``, ``report.md``) and plots (PNG, needs matplotlib)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from pipeline.storage.atomic import atomic_write_text


def build_report(cfg, X, results, best, timings, cluster_info, fingerprints, missing=None, passes=None) -> dict:
    """The run's report.json; ``passes``: passes over the data by step (summary, initialisation,
    em, outputs, total), counted by :func:`pipeline.engine.graph.counting_passes`."""
    model = best["model"]
    report = {
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
            "missing": missing or {},
        },
        "cluster": cluster_info,
        "candidates": [{k: v for k, v in r.items() if k != "model"} for r in results],
        "criteria": criteria_table(results),
        "selected": {
            "name": best["name"],
            "n_components": best["n_components"],
            "covariance_type": best["covariance_type"],
            "loglik": best["loglik"],
            "bic": best["bic"],
            "aic": best["aic"],
            "icl": best.get("icl"),
            "n_iter": best["n_iter"],
            "converged": best["converged"],
            "weights": model.weights_.tolist(),
            "means": model.means_.tolist(),
        },
        "history": best["history"],
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "versions": versions(),
    }
    if passes is not None:
        report["passes"] = {k: int(passes[k]) for k in ("summary", "initialisation", "em", "outputs", "total")
                            if k in passes}
    return report


def criteria_table(results) -> dict:
    """BIC and ICL over G x model: ``n_components`` (rows), ``models`` (columns, in order of
    first appearance), ``bic``/``icl`` as lists of rows, None where a candidate failed (its
    reason in ``failed``) or was not fitted.  Lower is better (mclust's values are the
    negatives of these)."""
    ks = sorted({r["n_components"] for r in results})
    models = list(dict.fromkeys(r["covariance_type"] for r in results))
    cell = {(r["n_components"], r["covariance_type"]): r for r in results}
    table = {"n_components": ks, "models": models, "lower_is_better": True}
    for key in ("bic", "icl"):
        table[key] = [[cell[(k, m)].get(key) if (k, m) in cell else None for m in models] for k in ks]
    table["failed"] = {r["name"]: r["reason"] for r in results if r.get("status") == "failed"}
    return table


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


def _missing_line(m: dict) -> list[str]:
    if not m.get("n_incomplete_rows"):
        return []
    what = {"omit": "left out of the fit (label -1, no responsibilities)",
            "marginalize": "fitted from their observed values (EM for values missing at random)"}[m["nan_policy"]]
    return [f"- missing values: {m['n_missing_values']:,} NaN in {m['n_incomplete_rows']:,} of {m['n_rows']:,} rows "
            f"({m['n_incomplete_rows'] / m['n_rows']:.1%}); nan_policy `{m['nan_policy']}`: those rows were {what}"]


def report_markdown(r: dict) -> str:
    sel = r["selected"]
    lines = [
        "# gmm-pipeline run report",
        "",
        f"- config: `{r['config_file']}`",
        f"- data: `{r['data']['path']}`, {r['data']['shape'][0]:,} x {r['data']['shape'][1]} "
        f"{r['data']['dtype']}, {r['data']['n_chunks']} chunks of {r['data']['row_chunk']:,} rows",
        *_missing_line(r["data"].get("missing") or {}),
        f"- selected model: **{sel['name']}**, mean log-likelihood {sel['loglik']:.6f}, BIC {sel['bic']:.6g}, "
        f"{sel['n_iter']} iterations, converged: {sel['converged']}",
        f"- time: {r['timings'].get('total_s', float('nan')):.1f} s in all, fitting {r['timings'].get('fit_s', float('nan')):.1f} s",
        "",
        "| candidate | log-likelihood | BIC | ICL | AIC | iterations | converged | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in r["candidates"]:
        if c.get("status", "ok") == "failed":
            lines.append(f"| {c['name']} | failed: {c['reason']} | | | | | | {c['seconds']:.1f} |")
            continue
        lines.append(
            f"| {c['name']} | {c['loglik']:.6f} | {c['bic']:.6g} | {c.get('icl') or float('nan'):.6g} | "
            f"{c['aic']:.6g} | {c['n_iter']} | {c['converged']} | {c['seconds']:.1f} |"
        )
    table = r.get("criteria")
    if table and len(r["candidates"]) > 1:
        for key in ("bic", "icl"):
            lines += ["", f"{key.upper()} over G x model (lower is better; mclust reports the negatives):", "",
                      "| G | " + " | ".join(table["models"]) + " |", "|---" * (len(table["models"]) + 1) + "|"]
            values = [v for row in table[key] for v in row if v is not None]
            best = min(values) if values else None
            for k, row in zip(table["n_components"], table[key]):
                cells = ["failed" if v is None else (f"**{v:.6g}**" if v == best else f"{v:.6g}") for v in row]
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Component weights of the selected model: " + ", ".join(f"{w:.4f}" for w in sel["weights"]), ""]
    return "\n".join(lines)


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("gmm-pipeline", "numpy", "scipy", "dask", "distributed", "zarr", "pyyaml", "scikit-learn"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
