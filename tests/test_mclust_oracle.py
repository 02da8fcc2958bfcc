"""R's mclust as the oracle of the 14 covariance models (``tests/r/mclust_oracle.R``).

For four data sets (R's faithful and iris, mclust's diabetes, and one generated here), G = 2..4
and every model, both programs start from the same parameters (mclust's first M step from
the partition of its hierarchical clustering) and run EM to convergence with no
regularisation.  Ours must reach mclust's log-likelihood to 1e-8 relative (the issue asks
1e-6, and 1e-4 for EVE, whose orientation problem has local optima), and VVE a higher one than
mclust's (mclust's VVE M step leaves the volumes out of its orientation step, so it does not
maximise; ours does).  BIC and ICL of
the same fits are mclust's with the sign flipped (lower is better here).

R is installed by ``scripts/setup_mclust`` (the ``rscript`` fixture); CI requires it.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections import defaultdict

import dask
import numpy as np
import pytest

from pipeline import GaussianMixture
from pipeline.families import MCLUST_MODELS, get_family
from tests.conftest import REPO

R_SCRIPT = REPO / "tests" / "r" / "mclust_oracle.R"
DATASETS = ("faithful", "iris", "diabetes", "generated")
#: relative, on the converged log-likelihood, every model but VVE.  The issue asks for 1e-6 (EVE
#: 1e-4: its orientation problem has local optima); on these data all reach 2.6e-9 or better.
TOL = 1e-8


def _generated(path):
    """400 x 3: three components of different volumes, shapes and orientations."""
    rng = np.random.default_rng(11)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    parts = [
        rng.multivariate_normal([0, 0, 0], rot @ np.diag([4.0, 1.0, 0.25]) @ rot.T, 150),
        rng.multivariate_normal([6, 1, 0], np.diag([0.5, 2.0, 1.0]) * 3.0, 130),
        rng.multivariate_normal([1, 7, 3], [[1.0, 0.6, 0.0], [0.6, 1.0, 0.3], [0.0, 0.3, 0.5]], 120),
    ]
    np.savetxt(path, np.concatenate(parts), delimiter=",", fmt="%.17g")


@pytest.fixture(scope="module")
def oracle(rscript, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mclust")
    _generated(tmp / "generated.csv")
    out = tmp / "oracle.json"
    specs = ["faithful=faithful", "iris=iris", "diabetes=diabetes", f"generated={tmp / 'generated.csv'}"]
    r = subprocess.run([rscript, str(R_SCRIPT), str(out), *specs], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


def _params(cell, d, prefix=""):
    """mclust's parameters as our weights/means/precisions (R's arrays are column-major):
    ``prefix=""`` its first M step, ``"final_"`` its converged fit."""
    g = cell["G"]
    means = np.array(cell[prefix + "mean"]).reshape(g, d)
    sigma = np.array(cell[prefix + "sigma"]).reshape(g, d, d).transpose(0, 2, 1)
    precisions = np.linalg.inv(sigma)
    return np.array(cell[prefix + "pro"]), means, 0.5 * (precisions + precisions.transpose(0, 2, 1))


def _fit(X, cell, prefix="", max_iter=20000):
    weights, means, precisions = _params(cell, X.shape[1], prefix)
    g = GaussianMixture(
        cell["G"], covariance_type=cell["model"], weights_init=weights, means_init=means,
        precisions_init=precisions, reg_covar=0.0, tol=1e-11, max_iter=max_iter,
    )
    with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
        warnings.simplefilter("ignore")
        return g.fit(X)


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_model_reaches_mclusts_log_likelihood_bic_and_icl(oracle, dataset):
    ds = oracle["data"][dataset]
    X = np.array(ds["X"]).reshape(ds["n"], ds["d"])
    worst, problems, compared = defaultdict(float), [], 0
    ours_bic, theirs_bic = {}, {}
    for cell in ds["cells"]:
        key = (cell["G"], cell["model"])
        if cell["loglik"] is None:  # mclust's NA (degenerate fit): nothing to compare
            continue
        g = _fit(X, cell)
        ic = g.information_criteria(X)
        ll = ic["loglik"] * ic["n_samples"]  # at the final parameters, as mclust's
        rel = (ll - cell["loglik"]) / abs(cell["loglik"])
        model = cell["model"]
        worst[model] = max(worst[model], abs(rel)) if model != "VVE" else min(worst.get(model, np.inf), rel)
        if model == "VVE":  # never below mclust's; on these data strictly above in every cell
            if rel <= 0:
                problems.append(f"{key}: VVE log-likelihood {ll:.6f} not above mclust's {cell['loglik']:.6f}")
            compared += 1
            continue
        if abs(rel) > TOL:
            problems.append(f"{key}: log-likelihood {ll:.8f} against mclust's {cell['loglik']:.8f} ({rel:+.1e})")
        ours_bic[key], theirs_bic[key] = ic["bic"], -cell["bic"]
        # ICL's classification term is first order in the parameters (the log-likelihood is
        # second order at the optimum): compared at 1e-4 after two convergences, exactly below
        for name, ours, theirs, tol in (("BIC", ic["bic"], -cell["bic"], 1e-6), ("ICL", ic["icl"], -cell["icl"], 1e-4)):
            if abs(ours - theirs) > tol * abs(theirs):
                problems.append(f"{key}: {name} {ours:.6f} against mclust's (sign flipped) {theirs:.6f}")
        compared += 1
    print(f"{dataset}: {compared} cells; worst |relative log-likelihood difference| by model:",
          {m: f"{v:.1e}" for m, v in worst.items()})
    assert not problems, "\n".join(problems)
    assert compared >= 40, compared  # 14 models x G = 2..4, minus mclust's NA cells
    # the BIC table over G x model equals mclustBIC's from the same starts (sign flipped)
    table = {(g, m): ds["bic_table"][i][j] for i, g in enumerate((2, 3, 4)) for j, m in enumerate(MCLUST_MODELS)}
    for key, ours in ours_bic.items():
        assert table[key] is not None and abs(ours + table[key]) <= 1e-6 * abs(table[key]), (key, ours, table[key])
    assert min(ours_bic, key=ours_bic.get) == min(theirs_bic, key=theirs_bic.get)


def test_parameter_counts_equal_mclusts(oracle):
    wrong = []
    for c in oracle["counts"]:
        family = get_family(c["model"])
        cov, total = family.n_covariance_parameters(c["G"], c["d"]), family.n_parameters(c["G"], c["d"])
        if (cov, total) != (c["nVarParams"], c["nMclustParams"]):
            wrong.append(f"{c['model']} d={c['d']} G={c['G']}: ours {cov}/{total}, mclust {c['nVarParams']}/{c['nMclustParams']}")
    assert len(oracle["counts"]) == 3 * 2 * len(MCLUST_MODELS)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("dataset", DATASETS)
def test_bic_and_icl_at_mclusts_parameters_equal_mclusts(oracle, dataset):
    """Our criteria evaluated at mclust's converged parameters (max_iter=0 keeps them)."""
    ds = oracle["data"][dataset]
    X = np.array(ds["X"]).reshape(ds["n"], ds["d"])
    problems, compared = [], 0
    for cell in ds["cells"]:
        if cell["bic"] is None:
            continue
        ic = _fit(X, cell, prefix="final_", max_iter=0).information_criteria(X)
        key = (cell["G"], cell["model"])
        for name, ours, theirs in (("loglik", ic["loglik"] * ic["n_samples"], cell["mc_loglik"]),
                                   ("BIC", ic["bic"], -cell["bic"]), ("ICL", ic["icl"], -cell["icl"])):
            if abs(ours - theirs) > 1e-8 * abs(theirs):
                problems.append(f"{key}: {name} {ours:.8f} against mclust's {theirs:.8f}")
        compared += 1
    assert not problems, "\n".join(problems)
    assert compared >= 40, compared
