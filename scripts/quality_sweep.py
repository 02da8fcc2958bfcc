#!/usr/bin/env python
"""Quality of GaussianMixtureIC's default sweep against scikit-learn (issue 12's target): on
scikit-learn's iris, wine and breast-cancer data (standardised) and generated data, every
candidate's final mean log-likelihood against scikit-learn's GaussianMixture with the same
n_init, the median over 5 seeds of the difference (ours - scikit-learn's; >= 0 is as good).

    python scripts/quality_sweep.py [--seeds 5] [--n-init 1]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from sklearn import datasets  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGaussianMixture  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from pipeline import GaussianMixtureIC  # noqa: E402
from pipeline.data.synthetic import _mixture_chunk, _mixture_parameters  # noqa: E402

TYPES = ["full", "tied", "diag", "spherical"]
KS = list(range(1, 10))


def data_sets() -> dict[str, np.ndarray]:
    out = {name: StandardScaler().fit_transform(loader().data) for name, loader in
           (("iris", datasets.load_iris), ("wine", datasets.load_wine), ("breast-cancer", datasets.load_breast_cancer))}
    params = _mixture_parameters(8, 5, 0, 2.0)
    out["generated 20000 x 8, K=5"] = _mixture_chunk(params, 20000, np.random.default_rng([0, 0]), np.float64)[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--n-init", type=int, default=1)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print(f"{'data':28s} {'candidates':>10s} {'median diff: min':>17s} {'median':>9s} {'below -1e-3':>12s}  worst")
    for name, X in data_sets().items():
        diffs = {}
        for seed in range(args.seeds):
            ic = GaussianMixtureIC(n_components=KS, covariance_type=TYPES, n_init=args.n_init, random_state=seed).fit(X)
            for c in ic.criteria_:
                sk = SkGaussianMixture(c["n_components"], covariance_type=c["covariance_type"], n_init=args.n_init,
                                       random_state=seed).fit(X)
                ours = c["loglik"] if c["status"] == "ok" else -np.inf
                diffs.setdefault((c["n_components"], c["covariance_type"]), []).append(ours - sk.score(X))
        med = {key: float(np.median(v)) for key, v in diffs.items()}
        worst = min(med, key=med.get)
        below = sum(v < -1e-3 for v in med.values())
        print(f"{name:28s} {len(med):10d} {min(med.values()):17.4f} {np.median(list(med.values())):9.4f} "
              f"{below:12d}  {worst[1]},{worst[0]}")


if __name__ == "__main__":
    main()
