#!/usr/bin/env python
"""Quality of GaussianMixtureIC's default sweep (issue 12's targets), in two parts.

sklearn: on scikit-learn's iris, wine and breast-cancer data (standardised) and generated data,
every candidate's final mean log-likelihood against scikit-learn's GaussianMixture with the same
n_init, the median over the seeds of the difference (ours - scikit-learn's; >= 0 is as good).

mclust: on R's faithful and iris data (taken from R's datasets package through Rscript), the best
BIC of GaussianMixtureIC(n_components=1..9, covariance_type="all", criterion="bic") per seed
against R mclust's default Mclust(data), computed in the same run, in mclust's sign (higher is
better; ours is its negation), and our parameter count of every candidate against mclust's
nMclustParams.  Skipped, with a message, when Rscript or R's mclust is missing (scripts/setup_mclust
installs them).

    python scripts/quality_sweep.py [--seeds 5] [--n-init 1] [--only sklearn|mclust]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from pipeline import GaussianMixtureIC  # noqa: E402
from pipeline.data.synthetic import _mixture_chunk, _mixture_parameters  # noqa: E402
from pipeline.families import MCLUST_MODELS  # noqa: E402

TYPES = ["full", "tied", "diag", "spherical"]
KS = list(range(1, 10))
#: R's data sets of the mclust part, and the relative slack "at least as good" allows
MCLUST_DATA = ("faithful", "iris")
MCLUST_SLACK = 1e-6
#: writes DIR/NAME.csv (the data, a header line) and prints, per data set, Mclust's default
#: result ("mclust NAME MODEL G BIC LOGLIK DF") and nMclustParams of MODELS x G = 1..9
#: ("count NAME MODEL G N"); mclust runs as an oracle in its own process, none of its code is here
MCLUST_R = r"""
suppressMessages(library(mclust))
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; models <- strsplit(args[2], ",")[[1]]
cat("version", as.character(packageVersion("mclust")), R.version$major, R.version$minor, "\n")
for (name in args[-(1:2)]) {
  X <- switch(name, faithful = as.matrix(datasets::faithful), iris = as.matrix(datasets::iris[, 1:4]))
  dimnames(X) <- NULL
  write.csv(X, file.path(dir, paste0(name, ".csv")), row.names = FALSE)
  fit <- Mclust(X, verbose = FALSE)
  cat("mclust", name, fit$modelName, fit$G, sprintf("%.17g", c(fit$bic, fit$loglik)), fit$df, "\n")
  for (m in models) for (G in 1:9) cat("count", name, m, G, nMclustParams(m, ncol(X), G), "\n")
}
"""


def data_sets() -> dict[str, np.ndarray]:
    out = {name: StandardScaler().fit_transform(loader().data) for name, loader in
           (("iris", datasets.load_iris), ("wine", datasets.load_wine), ("breast-cancer", datasets.load_breast_cancer))}
    params = _mixture_parameters(8, 5, 0, 2.0)
    out["generated 20000 x 8, K=5"] = _mixture_chunk(params, 20000, np.random.default_rng([0, 0]), np.float64)[0]
    return out


def sklearn_part(seeds: int, n_init: int) -> None:
    print(f"{'data':28s} {'candidates':>10s} {'median diff: min':>17s} {'median':>9s} {'below -1e-3':>12s}  worst")
    for name, X in data_sets().items():
        diffs = {}
        for seed in range(seeds):
            ic = GaussianMixtureIC(n_components=KS, covariance_type=TYPES, n_init=n_init, random_state=seed).fit(X)
            for c in ic.criteria_:
                sk = SkGaussianMixture(c["n_components"], covariance_type=c["covariance_type"], n_init=n_init,
                                       random_state=seed).fit(X)
                ours = c["loglik"] if c["status"] == "ok" else -np.inf
                diffs.setdefault((c["n_components"], c["covariance_type"]), []).append(ours - sk.score(X))
        med = {key: float(np.median(v)) for key, v in diffs.items()}
        worst = min(med, key=med.get)
        below = sum(v < -1e-3 for v in med.values())
        print(f"{name:28s} {len(med):10d} {min(med.values()):17.4f} {np.median(list(med.values())):9.4f} "
              f"{below:12d}  {worst[1]},{worst[0]}", flush=True)


def mclust_defaults(tmp: Path) -> tuple[str, dict] | str:
    """R mclust's default ``Mclust`` on each of ``MCLUST_DATA``: (``"mclust V (R V)"``, {name: {"X",
    "model", "G", "bic", "loglik", "df", "counts": {(model, G): nMclustParams}}}), or why not (a
    message) when Rscript or mclust is missing or fails."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript is not on PATH (scripts/setup_mclust installs R and mclust)"
    (tmp / "mclust_default.R").write_text(MCLUST_R)
    try:
        r = subprocess.run([rscript, str(tmp / "mclust_default.R"), str(tmp), ",".join(MCLUST_MODELS), *MCLUST_DATA],
                           capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return "Rscript did not finish in 600 s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["no message"])[-1]
        return f"Rscript failed ({last}); scripts/setup_mclust installs R's mclust"
    version, out = "", {}
    for line in r.stdout.splitlines():
        f = line.split() or [""]
        if f[0] == "version":
            version = f"mclust {f[1]} (R {f[2]}.{f[3]})"
        elif f[0] == "mclust":
            out[f[1]] = {"X": np.loadtxt(tmp / f"{f[1]}.csv", delimiter=",", skiprows=1), "model": f[2],
                         "G": int(f[3]), "bic": float(f[4]), "loglik": float(f[5]), "df": int(f[6]), "counts": {}}
        elif f[0] == "count":
            out[f[1]]["counts"][f[2], int(f[3])] = int(f[4])
    return version, out


def mclust_part(seeds: int, n_init: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        got = mclust_defaults(Path(tmp))
    if isinstance(got, str):
        print(f"mclust comparison skipped: {got}")
        return
    version, ref = got
    print(f"{version}: best BIC (mclust's sign, higher is better) of Mclust(data) against GaussianMixtureIC"
          f"(n_components=1..9, covariance_type='all', criterion='bic', n_init={n_init})")
    print(f"{'data':10s} {'mclust':>7s} {'BIC':>11s} {'seed':>5s} {'ours':>7s} {'BIC':>11s} {'ours - mclust':>14s} "
          f"{'seconds':>8s}")
    for name, m in ref.items():
        wins, wrong, n_candidates = 0, set(), 0
        for seed in range(seeds):
            t = time.perf_counter()
            ic = GaussianMixtureIC(n_components=KS, covariance_type="all", criterion="bic", n_init=n_init,
                                   random_state=seed).fit(m["X"])
            seconds = time.perf_counter() - t
            ok = [c for c in ic.criteria_ if c["status"] == "ok"]
            best = min(ok, key=lambda c: c["bic"])
            ours = -best["bic"]
            wins += ours >= m["bic"] - MCLUST_SLACK * abs(m["bic"])
            wrong |= {(c["covariance_type"], c["n_components"], c["n_parameters"]) for c in ok
                      if c["n_parameters"] != m["counts"][c["covariance_type"], c["n_components"]]}
            n_candidates = len(ok)
            print(f"{name:10s} {m['model'] + ',' + str(m['G']):>7s} {m['bic']:11.4f} {seed:5d} "
                  f"{best['covariance_type'] + ',' + str(best['n_components']):>7s} {ours:11.4f} "
                  f"{ours - m['bic']:+14.6f} {seconds:8.1f}", flush=True)
        counts = ", ".join(f"{ct},{k} ours {n} mclust {m['counts'][ct, k]}" for ct, k, n in sorted(wrong))
        counts = f"parameter counts differ from nMclustParams: {counts}" if wrong else \
            f"parameter counts equal nMclustParams for all {n_candidates} fitted candidates"
        print(f"{name}: {wins} of {seeds} seeds at least mclust's (relative slack {MCLUST_SLACK:g}); {counts}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-init", type=int, default=1)
    ap.add_argument("--only", choices=("sklearn", "mclust"), help="run one part (default: both)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.only != "mclust":
        sklearn_part(args.seeds, args.n_init)
    if args.only != "sklearn":
        if args.only is None:
            print()
        mclust_part(args.seeds, args.n_init)


if __name__ == "__main__":
    main()
